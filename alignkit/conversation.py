"""Conversations, and the one place that turns a conversation into a policy's token ids.

A prompt is a tuple of Messages (role system | user | assistant) that ends with a
user turn; an answer is the text of the assistant turn that follows it. SFT, DPO,
PPO and evaluation all build policy inputs through Renderer, so dvc.yaml lists
this file as a dependency of each of those stages.

- A tokenizer with a chat template (saved in its tokenizer_config.json) renders the
  prompt with `apply_chat_template(messages, add_generation_prompt=True)`, and the
  answer ends with the template's own end-of-turn (TinyLlama-Chat: `</s>`).
- Without one, the plain format of the GPT-2 coursework:

      Question: What is the capital of Italy?
      Answer: The capital of Italy is Rome.<|endoftext|>

  (earlier turns as further Question:/Answer: lines, a system turn as a first line),
  the answer followed by the EOS token id.

Too long, a prompt loses its oldest turns first (the system turn stays, the last
user turn stays); only past max_prompt_length is the last question cut from its
start, keeping BOS, system turn and framing. The answer gets what the prompt leaves
of max_length, as in trl's DPOTrainer: a long answer is cut, never the question.
An example whose question cannot be kept at all is not trained on (FITTED counts).
"""

import re
from collections import Counter
from typing import NamedTuple

from alignkit.errors import ModelError

ROLES = ("system", "user", "assistant")
HH_SPEAKERS = {"Human": "user", "Assistant": "assistant"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_SENTINEL = "\x00answer\x00"
# What fitting examples into max_length / max_prompt_length did, counted in the sft and dpo metrics: prompts that
# lost earlier exchanges, last questions cut from their start, questions with no room left (the example is not
# trained on), and answers cut short.
FITTED = ("turns_dropped", "question_cut", "question_dropped", "answers_cut")


class Message(NamedTuple):
    role: str  # system | user | assistant
    content: str


def single_turn(question, system=None):
    """One user turn, after a system turn when one is given."""
    return ((Message("system", system),) if system else ()) + (Message("user", question),)


def parse_hh(dialogue):
    """An Anthropic-HH prompt ('\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:') -> Messages.

    The trailing empty 'Assistant:' (where the answer goes) is not a turn. Returns None
    when the text has no 'Human:' turn first or a turn is empty.
    """
    parts = _HH_TURN.split(dialogue.strip("\n"))
    if parts[0].strip() or len(parts) < 3:
        return None
    turns = [Message(HH_SPEAKERS[who], text.strip()) for who, text in zip(parts[1::2], parts[2::2])]
    if turns[-1] == Message("assistant", ""):
        turns.pop()
    if not turns or turns[0].role != "user" or turns[-1].role != "user" or any(not t.content for t in turns):
        return None
    return tuple(turns)


def parse_messages(items):
    """A cell of trl's conversational format (a list of {role, content}) -> (Messages, None) or (None, (reason, why)).

    Roles are system, user and assistant (trl's, and the chat templates'); a system turn may only come first; the
    others alternate. The reasons are data.BAD_ROW_REASONS."""
    if not isinstance(items, (list, tuple)) or not items:
        got = "an empty list" if isinstance(items, (list, tuple)) else _kind(items)
        return None, ("malformed_messages", f"expected a list of {{role, content}} messages, got {got}")
    messages = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not {"role", "content"} <= set(item):
            return None, ("malformed_messages", f"message {i + 1}: expected {{role, content}}, got {_kind(item)}")
        role, content = item["role"], item["content"]
        if role not in ROLES:
            return None, ("bad_role", f"message {i + 1}: role {str(role)[:20]!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            return None, ("malformed_messages", f"message {i + 1}: content is {_kind(content)}, not text")
        if not content.strip():
            return None, ("empty_turn", f"message {i + 1} ({role}): empty content")
        messages.append(Message(role, content.strip()))
    turns = [m.role for m in messages[1:]] if messages[0].role == "system" else [m.role for m in messages]
    if any(role == "system" for role in turns) or any(a == b for a, b in zip(turns, turns[1:])):
        order = " > ".join(m.role for m in messages)[:80]
        return None, ("bad_turn_order", f"turns must alternate after an optional first system turn, got {order}")
    return tuple(messages), None


def _kind(value):
    return type(value).__name__ if not isinstance(value, dict) else f"an object with keys {sorted(value)[:4]}"


def to_json(messages):
    return [{"role": m.role, "content": m.content} for m in messages]


def from_json(items):
    return tuple(Message(m["role"], m["content"]) for m in items)


def as_text(messages):
    """Readable text of a prompt, for the reward model (which has its own tokenizer) and for people.

    One user turn is the question itself; longer conversations read as HH dialogues."""
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    names = {"system": "System", "user": "Human", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m.role]}: {m.content}" for m in messages)


def plain_prompt(messages):
    """The plain format: 'Question: {q}\\nAnswer:' for one user turn."""
    lines = {"system": "{}", "user": "Question: {}", "assistant": "Answer: {}"}
    return "".join(lines[m.role].format(m.content) + "\n" for m in messages) + "Answer:"


def plain_answer(answer):
    """The answer as it follows a plain prompt (EOS is appended as a token id, not as text)."""
    return " " + answer


def drop_oldest_turn(messages):
    """The conversation without its oldest exchange (system turns kept), or None if only the last user turn is left."""
    system = [m for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    if len(rest) <= 1:
        return None
    rest = rest[1:]
    while rest[0].role != "user":
        rest = rest[1:]
    return tuple(system + rest)


class Renderer:
    """(prompt messages, answer) -> token ids, for one policy tokenizer, with or without a chat template."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.eos = tokenizer.eos_token_id
        if self.chat:
            # Where the template puts the answer, and what ends its turn: from one sample rendering.
            probe = (Message("user", "x"),)
            prompt = self.prompt_text(probe)
            full = tokenizer.apply_chat_template(to_json(probe + (Message("assistant", _SENTINEL),)), tokenize=False)
            if not full.startswith(prompt) or _SENTINEL not in full[len(prompt) :]:
                raise ModelError(
                    f"the chat template of {tokenizer.name_or_path!r} does not render the prompt "
                    "as the start of the conversation, so the answer tokens cannot be found"
                )
            self.before, after = full[len(prompt) :].split(_SENTINEL)
            self.end_of_turn = after.rstrip()
            # The tokenizer's own BOS, if it adds one to text and the template does not write it.
            bos = tokenizer.bos_token_id
            adds_bos = bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]
            self.bos = bos if adds_bos else None
            eot = tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"][-1:] if self.end_of_turn else []
            self.stop_ids = sorted({self.eos, *eot})
        else:
            self.bos, self.stop_ids = None, [self.eos]

    def prompt_text(self, messages):
        if self.chat:
            return self.tokenizer.apply_chat_template(to_json(messages), tokenize=False, add_generation_prompt=True)
        return plain_prompt(messages)

    def _ids(self, text):
        # verbose=False: a text longer than the model takes is fitted right after (fit_prompt drops turns, encode
        # cuts the answer), so the tokenizer's "longer than the specified maximum sequence length" would be noise.
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def prompt_ids(self, messages):
        ids = self._ids(self.prompt_text(messages))
        if self.bos is not None and ids[:1] != [self.bos]:
            ids = [self.bos] + ids
        return ids

    def answer_ids(self, answer):
        """The answer's ids, ending with exactly one end-of-turn (chat) or EOS (plain)."""
        if self.chat:
            return self._ids(self.before + answer + self.end_of_turn)
        return self._ids(plain_answer(answer)) + [self.eos]

    def fit_prompt(self, messages, budget, room=None):
        """(prompt ids of at most `budget` tokens, how they were fitted: one of FITTED or "" when whole).

        Too long, the prompt first loses its oldest exchanges (the system turn stays), down to the last question;
        then the last question is cut from its start -- BOS, system turn and the template's framing stay. When not
        even one token of the question fits, how is "question_dropped" and the ids are the prompt cut from the left
        (a BOS kept): enough to generate from, never to train on. room: a smaller length to reach by dropping
        earlier exchanges only (to leave the answer room), never by cutting into the last question."""
        ids, how = self.prompt_ids(messages), ""
        while len(ids) > min(budget, budget if room is None else room):
            shorter = drop_oldest_turn(messages)
            if shorter is None:
                break
            messages, ids, how = shorter, self.prompt_ids(shorter), "turns_dropped"
        if len(ids) <= budget:
            return ids, how
        return self._cut_question(messages, ids, budget)

    def _cut_question(self, messages, ids, budget):
        """The prompt with the end of its last question that fits `budget` (binary search on the tokens kept)."""
        head, question = messages[:-1], self._ids(messages[-1].content)

        def prompt(keep):
            text = self.tokenizer.decode(question[len(question) - keep :], clean_up_tokenization_spaces=False)
            return self.prompt_ids(head + (Message("user", text.lstrip()),))

        best, low, high = None, 1, len(question) - 1
        while low <= high:
            mid = (low + high) // 2
            cut = prompt(mid)
            if len(cut) <= budget:
                best, low = cut, mid + 1
            else:
                high = mid - 1
        if best is not None:
            return best, "question_cut"
        lead = ids[:1] if self.bos is not None and ids[:1] == [self.bos] and budget > 1 else []
        return lead + ids[len(ids) - max(0, budget - len(lead)) :], "question_dropped"

    def _examples(self, messages, answers, max_length, max_prompt_length, counts):
        """One prompt fitted for all `answers` (the longest sets the room), each answer cut to what is left."""
        answers = [self.answer_ids(a) for a in answers]
        budget = min(max_prompt_length, max_length - 1)  # at least one answer token
        p, how = self.fit_prompt(messages, budget, room=max_length - max(map(len, answers)))
        if counts is not None:
            if how:
                counts[how] += 1
            counts["answers_cut"] += sum(len(p) + len(a) > max_length for a in answers)
        if how == "question_dropped":
            return None
        return tuple((p + a[: max_length - len(p)], len(p)) for a in answers)

    def encode(self, messages, answer, max_length, max_prompt_length, counts=None):
        """(ids, prompt_len) in at most max_length tokens, or None when the question cannot be kept.

        The prompt keeps up to max_prompt_length tokens (fit_prompt: earlier exchanges dropped first, also to
        leave the answer room; the last question cut only past max_prompt_length) and the answer is cut to what
        is left, as trl's DPOTrainer does. counts (a Counter), if given, adds up what was cut: FITTED."""
        out = self._examples(messages, [answer], max_length, max_prompt_length, counts)
        return out and out[0]

    def encode_all(self, prompts, answers, max_length, max_prompt_length):
        """([(ids, prompt_len)] of the examples that keep their question, Counter of FITTED)."""
        counts = Counter(dict.fromkeys(FITTED, 0))
        encoded = [self.encode(m, a, max_length, max_prompt_length, counts) for m, a in zip(prompts, answers)]
        return [e for e in encoded if e is not None], counts

    def encode_pair(self, messages, chosen, rejected, max_length, max_prompt_length, counts=None):
        """(chosen (ids, prompt_len), rejected (ids, prompt_len)) with one prompt, fitted to the longer answer,
        so a preference pair is always compared in the same context; None when the question cannot be kept."""
        return self._examples(messages, [chosen, rejected], max_length, max_prompt_length, counts)

    def encode_pairs(self, pairs, max_length, max_prompt_length):
        """([(chosen, rejected)] of the pairs (data.Pair) that keep their question, Counter of FITTED)."""
        counts = Counter(dict.fromkeys(FITTED, 0))
        encoded = [
            self.encode_pair(p.prompt, p.chosen, p.rejected, max_length, max_prompt_length, counts) for p in pairs
        ]
        return [e for e in encoded if e is not None], counts
