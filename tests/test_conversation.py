"""Conversations: HH dialogues into messages, and the one renderer from messages to token ids (chat and plain)."""

from collections import Counter

import pytest

from alignkit.conversation import (
    Message,
    Renderer,
    as_text,
    drop_oldest_turn,
    parse_hh,
    plain_prompt,
    single_turn,
    to_json,
)
from alignkit.models import train_gpt2_tokenizer, train_llama_tokenizer
from alignkit.policy import collate, prepare_tokenizer

TEXTS = [
    "Question: What is the capital of Italy?\nAnswer: The capital of Italy is Rome.",
    "You are a helpful assistant. What is 2 plus 2? 2 plus 2 equals 4. And 3 plus 3? It is 6.",
] * 20
LLAMA = prepare_tokenizer(train_llama_tokenizer(TEXTS, 500))
GPT2 = prepare_tokenizer(train_gpt2_tokenizer(TEXTS, 500))
CHAT = (
    Message("system", "You are a helpful assistant."),
    Message("user", "What is 2 plus 2?"),
    Message("assistant", "2 plus 2 equals 4."),
    Message("user", "And 3 plus 3?"),
)


def test_an_hh_dialogue_of_three_turns_becomes_its_messages():
    dialogue = "\n\nHuman: What is 2 plus 2?\n\nAssistant: 2 plus 2 equals 4.\n\nHuman: And 3 plus 3?\n\nAssistant:"
    assert parse_hh(dialogue) == (
        Message("user", "What is 2 plus 2?"),
        Message("assistant", "2 plus 2 equals 4."),
        Message("user", "And 3 plus 3?"),
    )
    # Earlier assistant turns are kept, and the text of a turn may hold single newlines.
    assert parse_hh("Human: a\nb\n\nAssistant: c\n\nHuman: d\n\nAssistant:")[0] == Message("user", "a\nb")


@pytest.mark.parametrize(
    "dialogue",
    [
        "\n\nAssistant: hi\n\nHuman: q\n\nAssistant:",  # no Human: first
        "\n\nHuman: \n\nAssistant:",  # empty turn
        "preamble\n\nHuman: q\n\nAssistant:",
    ],
)
def test_malformed_hh_dialogues_are_refused(dialogue):
    assert parse_hh(dialogue) is None


def test_readable_text_for_the_reward_model():
    assert as_text(single_turn("What is 2 plus 2?")) == "What is 2 plus 2?"  # one turn: the question itself
    assert as_text(CHAT) == (
        "System: You are a helpful assistant.\n\nHuman: What is 2 plus 2?\n\n"
        "Assistant: 2 plus 2 equals 4.\n\nHuman: And 3 plus 3?"
    )


def test_the_plain_format_is_the_coursework_one():
    assert plain_prompt(single_turn("What is 2 plus 2?")) == "Question: What is 2 plus 2?\nAnswer:"
    assert plain_prompt(CHAT) == (
        "You are a helpful assistant.\nQuestion: What is 2 plus 2?\n"
        "Answer: 2 plus 2 equals 4.\nQuestion: And 3 plus 3?\nAnswer:"
    )


def test_the_tiny_llama_prompt_is_its_chat_template():
    renderer = Renderer(LLAMA)
    assert renderer.chat and renderer.end_of_turn == "</s>" and renderer.stop_ids == [LLAMA.eos_token_id]
    text = LLAMA.apply_chat_template(to_json(CHAT), tokenize=False, add_generation_prompt=True)
    assert (
        renderer.prompt_text(CHAT)
        == text
        == (
            "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is 2 plus 2?</s>\n<|assistant|>\n"
            "2 plus 2 equals 4.</s>\n<|user|>\nAnd 3 plus 3?</s>\n<|assistant|>\n"
        )
    )
    # The template writes no BOS (TinyLlama-Chat's does not); the tokenizer adds one to text, and so do we, once.
    templated = LLAMA.apply_chat_template(to_json(CHAT), tokenize=True, add_generation_prompt=True)
    assert renderer.prompt_ids(CHAT) == [LLAMA.bos_token_id] + templated


@pytest.mark.parametrize("tokenizer", [GPT2, LLAMA], ids=["plain", "chat"])
def test_the_answer_mask_starts_at_the_first_answer_token(tokenizer):
    renderer = Renderer(tokenizer)
    ids, prompt_len = renderer.encode(CHAT, "It is 6.", max_length=512, max_prompt_length=512)
    assert ids[:prompt_len] == renderer.prompt_ids(CHAT)
    answer = tokenizer.decode(ids[prompt_len:])
    assert answer == ("It is 6.</s>" if renderer.chat else " It is 6.<|endoftext|>")
    batch = collate([(ids, prompt_len)], tokenizer.pad_token_id)
    first = batch["loss_mask"][0].tolist().index(True)
    assert first == prompt_len and ids[first:] == renderer.answer_ids("It is 6.")
    assert tokenizer.decode(ids[:first]).endswith("<|assistant|>\n" if renderer.chat else "Answer:")
    assert tokenizer.decode(ids[first:]).lstrip().startswith("It")
    # The full sequence is the template's own rendering of the conversation with its answer.
    if renderer.chat:
        full = tokenizer.apply_chat_template(to_json(CHAT + (Message("assistant", "It is 6."),)), tokenize=False)
        assert tokenizer.bos_token + full.rstrip() == tokenizer.decode(ids)


@pytest.mark.parametrize("tokenizer", [GPT2, LLAMA], ids=["plain", "chat"])
def test_one_bos_at_most_and_exactly_one_end_of_turn(tokenizer):
    renderer = Renderer(tokenizer)
    for prompt in (single_turn("What is 2 plus 2?"), CHAT):
        ids, prompt_len = renderer.encode(prompt, "2 plus 2 equals 4.", 512, 512)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id != tokenizer.eos_token_id else None
        assert ids.count(bos) == (1 if renderer.chat else 0) and (not renderer.chat or ids[0] == bos)
        assert ids[-1] == tokenizer.eos_token_id and ids[prompt_len:].count(tokenizer.eos_token_id) == 1


def test_truncation_drops_the_oldest_turns_first():
    renderer = Renderer(LLAMA)
    last = (CHAT[0], CHAT[3])  # the system turn and the last question
    assert drop_oldest_turn(CHAT) == last and drop_oldest_turn(last) is None
    budget = len(renderer.prompt_ids(CHAT)) - 1
    assert renderer.fit_prompt(CHAT, budget) == (renderer.prompt_ids(last), "turns_dropped")
    ids, prompt_len = renderer.encode(CHAT, "It is 6.", max_length=512, max_prompt_length=budget)
    assert ids[:prompt_len] == renderer.prompt_ids(last)
    # Earlier exchanges also make room for the answer, so the answer is not cut while one can go.
    answer = renderer.answer_ids("It is 6.")
    ids, prompt_len = renderer.encode(CHAT, "It is 6.", max_length=budget + len(answer), max_prompt_length=512)
    assert ids[:prompt_len] == renderer.prompt_ids(last) and ids[prompt_len:] == answer


def test_a_question_too_long_is_cut_from_its_start_keeping_bos_system_turn_and_framing():
    renderer = Renderer(LLAMA)
    last = (CHAT[0], CHAT[3])
    whole = renderer.prompt_ids(last)
    ids, how = renderer.fit_prompt(CHAT, len(whole) - 2)
    assert how == "question_cut" and len(ids) <= len(whole) - 2
    text = LLAMA.decode(ids)
    assert ids[0] == LLAMA.bos_token_id and ids.count(LLAMA.bos_token_id) == 1
    assert text.startswith("<s><|system|>\nYou are a helpful assistant.</s>\n<|user|>\n")
    assert text.endswith("3?</s>\n<|assistant|>\n")  # the end of the question and the generation prompt
    assert "And" not in text  # its start is what went
    # No room for a single question token: the example is dropped, counted, never trained on.
    framing = len(renderer.prompt_ids((CHAT[0], Message("user", "x")))) - 1
    counts = Counter()
    assert renderer.encode(CHAT, "It is 6.", 512, framing, counts) is None
    assert counts == {"question_dropped": 1, "answers_cut": 0}
    # ... though generation still gets a prompt of the budget's length, its BOS first.
    ids, how = renderer.fit_prompt(CHAT, framing)
    assert how == "question_dropped" and len(ids) == framing and ids[0] == LLAMA.bos_token_id


@pytest.mark.parametrize("tokenizer", [GPT2, LLAMA], ids=["plain", "chat"])
def test_an_over_long_answer_is_cut_and_never_eats_the_question(tokenizer):
    """Real HH dialogues: a long answer used to leave the prompt a single token. Now the prompt keeps up to
    max_prompt_length (as trl's DPOTrainer does) and the answers are cut to what is left."""
    renderer = Renderer(tokenizer)
    long_answer = " ".join(["2 plus 2 equals 4, and 3 plus 3 is 6."] * 40)
    last = (CHAT[0], CHAT[3])
    max_length, max_prompt_length = len(renderer.prompt_ids(last)) + 10, len(renderer.prompt_ids(last)) + 4
    counts = Counter()
    ids, prompt_len = renderer.encode(CHAT, long_answer, max_length, max_prompt_length, counts)
    assert ids[:prompt_len] == renderer.prompt_ids(last)  # BOS, system turn and the whole last question
    assert len(ids) == max_length and ids[prompt_len:] == renderer.answer_ids(long_answer)[:10]
    assert counts == {"turns_dropped": 1, "answers_cut": 1}
    # A pair: one prompt, both answers cut to the room it leaves; encode_all and encode_pairs count them all.
    (c, c_len), (r, r_len) = renderer.encode_pair(CHAT, long_answer, "It is 6.", max_length, max_prompt_length)
    assert c[:c_len] == r[:r_len] == renderer.prompt_ids(last) and len(c) == max_length
    assert r[r_len:] == renderer.answer_ids("It is 6.")
    examples, counts = renderer.encode_all([CHAT, CHAT], [long_answer, "It is 6."], max_length, max_prompt_length)
    assert len(examples) == 2 and counts["answers_cut"] == 1 and counts["question_dropped"] == 0


def test_drop_oldest_turn_keeps_exchanges_whole():
    chat = (
        Message("user", "a"),
        Message("assistant", "b"),
        Message("user", "c"),
        Message("assistant", "d"),
        Message("user", "e"),
    )
    assert drop_oldest_turn(chat) == chat[2:]
    assert drop_oldest_turn(chat[2:]) == chat[4:]


def test_a_preference_pair_shares_one_prompt_fitted_to_the_longer_answer():
    renderer = Renderer(LLAMA)
    short, long = "It is 6.", "3 plus 3 equals 6. You are a helpful assistant, and 2 plus 2 equals 4."
    full = renderer.prompt_ids(CHAT)
    max_length = len(full) + len(renderer.answer_ids(short))  # room for the whole prompt with the short answer only
    (c, c_len), (r, r_len) = renderer.encode_pair(CHAT, short, long, max_length, 512)
    # The longer answer needs the room: the prompt drops its earlier exchange, for both sides.
    assert c[:c_len] == r[:r_len] == renderer.prompt_ids((CHAT[0], CHAT[3]))
    assert c[c_len:] == renderer.answer_ids(short) and r[r_len:] == renderer.answer_ids(long)
    assert c_len < len(full)  # alone, the short answer would have kept the whole prompt
    assert renderer.encode(CHAT, short, max_length, 512)[1] == len(full)
