"""Policy inputs: the prompt format, answer-only masks from lengths, and sequence log-probs."""

import math

import pytest
import torch

from alignkit.conversation import Renderer, plain_prompt, single_turn
from alignkit.modeldir import load_policy
from alignkit.policy import collate, prepare_tokenizer, sequence_logps, token_logps

TEXTS = [
    plain_prompt(single_turn("What is the capital of Italy?")),
    " The capital of Italy is Rome.",
    plain_prompt(single_turn("What is 2 plus 2?")),
    " 2 plus 2 equals 4.",
] * 10
MODEL, TOKENIZER = load_policy("tiny-gpt2", texts=TEXTS, seed=0)
prepare_tokenizer(TOKENIZER)
MODEL.eval()


def encode_examples(questions, answers, max_length, max_prompt_length=1000):
    """[(ids, prompt_len)] of one-turn questions in the plain format (tiny-gpt2 has no chat template)."""
    return Renderer(TOKENIZER).encode_all([single_turn(q) for q in questions], answers, max_length, max_prompt_length)[
        0
    ]


def test_prompt_format_and_eos():
    ((ids, prompt_len),) = encode_examples(["What is 2 plus 2?"], ["2 plus 2 equals 4."], 64)
    assert TOKENIZER.decode(ids[:prompt_len]) == "Question: What is 2 plus 2?\nAnswer:"
    assert TOKENIZER.decode(ids[prompt_len:]) == " 2 plus 2 equals 4.<|endoftext|>"
    assert ids[-1] == TOKENIZER.eos_token_id


def test_over_long_examples_cut_the_answer_and_keep_the_question():
    ((full, full_prompt),) = encode_examples(["What is the capital of Italy?"], ["Rome is the capital of Italy."], 64)
    ((ids, prompt_len),) = encode_examples(
        ["What is the capital of Italy?"], ["Rome is the capital of Italy."], full_prompt + 2
    )
    assert ids[:prompt_len] == full[:full_prompt]  # the whole question
    assert ids[prompt_len:] == full[full_prompt : full_prompt + 2]  # the answer's start
    # max_prompt_length cuts the question from its start, the plain format's framing kept.
    ((short, short_prompt),) = encode_examples(["What is the capital of Italy?"], ["Rome."], 64, max_prompt_length=8)
    assert short_prompt <= 8 and TOKENIZER.decode(short[:short_prompt]).startswith("Question: ")
    assert TOKENIZER.decode(short[:short_prompt]).endswith(" Italy?\nAnswer:")
    # With no room for any of the question, the example is not trained on.
    assert encode_examples(["What is the capital of Italy?"], ["Rome."], 64, max_prompt_length=3) == []


def test_loss_mask_keeps_the_eos_although_it_is_also_the_pad_token():
    examples = encode_examples(["What is 2 plus 2?", "Hi?"], ["4.", "Hello there, how are you today?"], 64)
    batch = collate(examples, TOKENIZER.pad_token_id)
    assert TOKENIZER.pad_token_id == TOKENIZER.eos_token_id
    for i, (ids, prompt_len) in enumerate(examples):
        marked = batch["input_ids"][i][batch["loss_mask"][i]].tolist()
        assert marked == ids[prompt_len:] and marked[-1] == TOKENIZER.eos_token_id
        assert batch["attention_mask"][i].sum() == len(ids)
    # A mask built as input_ids != pad would have dropped the real EOS:
    assert (batch["input_ids"][0] != TOKENIZER.pad_token_id).sum() < batch["attention_mask"][0].sum()


def test_token_and_sequence_logps_by_hand():
    """Vocabulary of 2, logits 0 and ln 3 everywhere: p(token 0) = 1/4, p(token 1) = 3/4.
    Sequence [5th position unused] ids [1, 0, 1, 1], answer = positions 2..3 (tokens 1, 1):
    position 1 predicts token 2 (= 1): log 3/4; position 2 predicts token 3 (= 1): log 3/4.
    The prompt's own tokens (positions 0, 1) never count."""
    logits = torch.tensor([0.0, math.log(3)]).expand(1, 4, 2)
    ids = torch.tensor([[1, 0, 1, 1]])
    loss_mask = torch.tensor([[False, False, True, True]])
    per_token = token_logps(logits, ids)
    assert torch.allclose(per_token, torch.log(torch.tensor([[0.25, 0.75, 0.75]])))
    assert math.isclose(sequence_logps(logits, ids, loss_mask).item(), 2 * math.log(0.75), rel_tol=1e-6)


def test_padding_leaves_sequence_logps_unchanged():
    examples = encode_examples(
        ["What is 2 plus 2?", "What is the capital of Italy?"], ["2 plus 2 equals 4.", "Rome."], 64
    )
    with torch.no_grad():
        batch = collate(examples, TOKENIZER.pad_token_id)
        tight = sequence_logps(
            MODEL(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            batch["input_ids"],
            batch["loss_mask"],
        )
        padded = collate(examples + [([TOKENIZER.eos_token_id] * 40, 1)], TOKENIZER.pad_token_id)
        loose = sequence_logps(
            MODEL(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits,
            padded["input_ids"],
            padded["loss_mask"],
        )[:2]
        alone = [
            sequence_logps(MODEL(input_ids=b["input_ids"]).logits, b["input_ids"], b["loss_mask"])
            for b in (collate([e], TOKENIZER.pad_token_id) for e in examples)
        ]
    assert torch.allclose(tight, loose, atol=1e-5)
    assert torch.allclose(tight, torch.cat(alone), atol=1e-5)


def test_prompt_tokens_never_count():
    """Changing the prompt's last token changes the answer's conditioning, not which tokens are summed:
    the sum always runs over exactly the answer's tokens."""
    ((ids, prompt_len),) = encode_examples(["What is 2 plus 2?"], ["4."], 64)
    batch = collate([(ids, prompt_len)], TOKENIZER.pad_token_id)
    logits = torch.zeros(1, len(ids), len(TOKENIZER))
    logits[0, : prompt_len - 1] = 100.0  # any value on positions that predict prompt tokens
    uniform = -math.log(len(TOKENIZER)) * (len(ids) - prompt_len)
    assert math.isclose(sequence_logps(logits, batch["input_ids"], batch["loss_mask"]).item(), uniform, rel_tol=1e-5)


def test_new_tokens_that_leave_no_room_for_a_prompt_are_one_line_naming_the_key():
    """Prompt + new tokens must fit the model's context: 300 new tokens on a 256-token model is the key's error
    (it died inside generate with an IndexError), not a negative prompt budget."""
    from types import SimpleNamespace

    from alignkit.errors import ParamsError
    from alignkit.policy import max_prompt_tokens

    config = SimpleNamespace(max_position_embeddings=256)
    assert max_prompt_tokens(config, 20, 512) == 236 and max_prompt_tokens(config, 255, 512) == 1
    for new in (256, 300, 100000):
        with pytest.raises(
            ParamsError,
            match=rf"^ppo\.max_new_tokens: {new} new tokens leave no room for a prompt in "
            r"the model's context of 256 tokens; at most 255$",
        ):
            max_prompt_tokens(config, new, 512, "ppo.max_new_tokens")
