"""Less work per step: length-grouped batches, the reward model's last layer on [CLS] alone, the LM head on
answer positions only, and fused GELU."""

import copy

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from alignkit.batching import LengthGroupedBatches, in_order, sorted_batches
from alignkit.conversation import plain_prompt, single_turn
from alignkit.data import Pair
from alignkit.modeldir import load_policy
from alignkit.models import train_bert_tokenizer
from alignkit.policy import answer_token_logps, collate, disable_dropout, forward_logps, prepare_tokenizer, token_logps
from alignkit.reward import PairCollator, PairDataset, RewardModel
from alignkit.training import seeded_loader

LENGTHS = [(i * 37) % 101 + 1 for i in range(1000)]  # 1000 examples, lengths 1..101 in a scrambled order


def epoch(lengths, batch_size, seed):
    return list(LengthGroupedBatches(lengths, batch_size, torch.Generator().manual_seed(seed)))


def padded_positions(lengths, batches):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches_are_a_permutation_and_seeded():
    batches = epoch(LENGTHS, 16, seed=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(LENGTHS)))  # every example once: nothing lost, nothing repeated
    assert len(batches) == len(LengthGroupedBatches(LENGTHS, 16)) == 63  # ceil(1000 / 16)
    assert list(map(len, batches)) == [16] * 62 + [8]  # one short batch (1000 = 62 * 16 + 8), last
    assert batches == epoch(LENGTHS, 16, seed=3)  # the same seed, the same batches in the same order
    assert batches != epoch(LENGTHS, 16, seed=4)


def test_two_processes_get_the_global_batches_of_one():
    """P processes of batch B share each optimizer step: consecutive per-process batches (which accelerate hands
    out in turn) together make the global batches that one process of batch P x B gets."""
    one = epoch(LENGTHS, 16, seed=3)
    two = list(LengthGroupedBatches(LENGTHS, 8, torch.Generator().manual_seed(3), processes=2))
    assert [sum(two[i : i + 2], []) for i in range(0, len(two), 2)] == one
    assert len(LengthGroupedBatches(LENGTHS, 8, processes=2)) == len(two) == 125  # 62 global batches of 2 x 8, one of 8


def test_length_grouped_batches_pad_less_than_random_ones_and_stay_shuffled():
    generator = torch.Generator().manual_seed(3)
    grouped = list(LengthGroupedBatches(LENGTHS, 16, generator))
    second = list(LengthGroupedBatches(LENGTHS, 16, generator))  # the generator moves on: a new epoch's order
    shuffled = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(3)).tolist()
    random = [shuffled[i : i + 16] for i in range(0, len(shuffled), 16)]
    real = sum(LENGTHS)
    # Random batches of 16 lengths spread over 1..101 pad most of the way to ~95; grouped ones hardly at all.
    assert padded_positions(LENGTHS, random) > 1.6 * real
    assert padded_positions(LENGTHS, grouped) < 1.1 * real
    assert second != grouped
    maxima = [max(LENGTHS[i] for i in b) for b in grouped]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)  # batch order is shuffled


def test_seeded_loader_groups_by_length_and_replays_an_epoch_from_the_generator_state():
    data = [[0] * n for n in LENGTHS[:200]]
    loader = seeded_loader(data, 8, seed=1, collate_fn=lambda b: [len(x) for x in b], lengths=LENGTHS[:200])
    state = loader.generator.get_state()
    first = list(loader)
    loader.generator.set_state(state)
    assert list(loader) == first  # how fit resumes an epoch part-way
    assert sorted(n for b in first for n in b) == sorted(LENGTHS[:200])
    val = seeded_loader(data, 8, seed=1, collate_fn=lambda b: [len(x) for x in b], shuffle=False, lengths=LENGTHS[:200])
    assert [n for b in val for n in b] == sorted(LENGTHS[:200], reverse=True)


def test_sorted_batches_and_results_back_in_order():
    """Lengths [2, 5, 1, 5] in batches of 2: longest first, ties by index -> [[1, 3], [0, 2]];
    per-batch results [10*1, 10*3], [10*0, 10*2] come back as [0, 10, 20, 30]."""
    batches = sorted_batches([2, 5, 1, 5], 2)
    assert batches == [[1, 3], [0, 2]]
    results = [torch.tensor([10.0 * i for i in b]) for b in batches]
    assert in_order(batches, results).tolist() == [0.0, 10.0, 20.0, 30.0]


# ---------------------------------------------------------------- the reward model's last layer on [CLS] alone

WORDS = "what is the capital of france paris a b c d e f g h i j k l m n o p".split()
TOKENIZER = train_bert_tokenizer([" ".join(WORDS)] * 2, 200)


def reward_batch():
    pairs = [
        Pair(single_turn("what is the capital of france"), "paris", "a b c d e f g h i j k", 1),
        Pair(single_turn("what"), "paris is the capital of france", "f", 2),
        Pair(single_turn("a b"), "c", "d e f", 3),
    ]
    dataset = PairDataset(TOKENIZER, pairs, max_length=32)
    return PairCollator(TOKENIZER)([dataset[i] for i in range(len(dataset))])  # padded: lengths differ


def scores_and_grads(model, batch):
    model.zero_grad()
    scores = model(**batch)
    scores.sum().backward()
    return scores.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_cls_only_last_layer_gives_the_full_layers_scores_and_gradients():
    for config, encoder in ((BertConfig, BertModel), (RobertaConfig, RobertaModel)):
        torch.manual_seed(0)
        kwargs = {"pad_token_id": TOKENIZER.pad_token_id} if encoder is RobertaModel else {}
        model = RewardModel(
            encoder(
                config(
                    vocab_size=len(TOKENIZER),
                    hidden_size=16,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=32,
                    max_position_embeddings=70,
                    hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0,
                    **kwargs,
                )
            )
        )
        assert model.cls_only
        last = model.encoder.encoder.layer[-1]
        shapes = []
        last.register_forward_hook(lambda module, args, out: shapes.append(tuple(out[0].shape)))  # noqa: B023
        batch = reward_batch()
        scores, grads = scores_and_grads(model, batch)
        assert shapes == [(6, 1, 16)]  # the last layer's output: [CLS] of each of the 6 inputs alone
        full = copy.deepcopy(model)
        del full.encoder.encoder.layer[-1].forward  # the layer's own forward: every position
        full_scores, full_grads = scores_and_grads(full, batch)
        assert torch.allclose(scores, full_scores, atol=1e-5) and not torch.equal(scores[0], scores[1])
        assert torch.allclose(grads, full_grads, atol=1e-5)
        assert set(model.state_dict()) == set(full.state_dict())  # the same weights under the same keys


def test_an_encoder_of_another_shape_keeps_its_full_forward():
    from transformers import DistilBertConfig, DistilBertModel

    distil = RewardModel(
        DistilBertModel(
            DistilBertConfig(
                vocab_size=len(TOKENIZER), dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64
            )
        )
    )
    assert not distil.cls_only
    assert distil(**{k: v for k, v in reward_batch().items() if k != "token_type_ids"}).shape == (6,)


# ---------------------------------------------------------------- the LM head on answer positions only

TEXTS = [
    plain_prompt(single_turn("What is the capital of Italy?")),
    " The capital of Italy is Rome.",
    plain_prompt(single_turn("What is 2 plus 2?")),
    " 2 plus 2 equals 4.",
] * 10


def policy_batch(tokenizer):
    ids = [tokenizer(t)["input_ids"] for t in TEXTS[:4]]
    examples = [(ids[0] + ids[1], len(ids[0])), (ids[2] + ids[3], len(ids[2])), (ids[2] + ids[1], len(ids[2]))]
    return collate(examples, tokenizer.pad_token_id)


def full_logits_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return token_logps(logits, batch["input_ids"]) * batch["loss_mask"][:, 1:]


def check_same_as_full_logits(model, batch):
    """Values and gradients of answer_token_logps match those of the full (B, T, V) logits."""
    grads = []
    for fn in (full_logits_logps, answer_token_logps):
        model.zero_grad()
        out = fn(model, batch)
        out.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        if fn is full_logits_logps:
            expected = out.detach()
    assert torch.allclose(out.detach(), expected, atol=1e-5)
    assert (out.detach()[~batch["loss_mask"][:, 1:]] == 0).all()
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_answer_only_head_matches_full_logits_gpt2_llama_and_lora():
    for preset in ("tiny-gpt2", "tiny-llama"):
        model, tokenizer = load_policy(preset, texts=TEXTS, seed=0)
        prepare_tokenizer(tokenizer)
        batch = policy_batch(tokenizer)
        check_same_as_full_logits(disable_dropout(model).train(), batch)  # dropout off: two forwards agree
        lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        check_same_as_full_logits(lora, batch)
        calls = []
        head = lora.get_output_embeddings()
        head.register_forward_hook(lambda module, args, out: calls.append(out.shape))  # noqa: B023
        with torch.no_grad():
            forward_logps(lora, batch)
        assert calls == [(int(batch["loss_mask"][:, 1:].sum()), head.out_features)]  # answer positions only
        assert not head._forward_pre_hooks  # the hook is gone after the forward


def test_gpt2_gelu_is_fused_and_saves_unchanged(tmp_path):
    """load_policy swaps GPT-2's gelu_new module for torch's fused tanh GELU: the same outputs within 1e-5,
    and the saved config still says gelu_new."""
    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation, PytorchGELUTanh

    model, tokenizer = load_policy("tiny-gpt2", texts=TEXTS, seed=0)
    assert {type(m) for m in model.modules()} & {NewGELUActivation, PytorchGELUTanh} == {PytorchGELUTanh}
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert plain.config.activation_function == "gelu_new"
    assert any(type(m) is NewGELUActivation for m in plain.modules())
    ids = tokenizer(TEXTS[0] + TEXTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, plain.eval()(ids).logits, atol=1e-5)
