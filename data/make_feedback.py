"""Generate the shipped unpaired feedback sample (KTO's data), deterministically.

    python data/make_feedback.py data/sample/feedback.jsonl

Like data/make_sample.py, this script is the sample's provenance: the JSONL it writes is committed, and a test
regenerates it and checks the bytes match. Standard library only.

Each line is trl's unpaired preference format, as in argilla/distilabel-intel-orca-kto: `prompt` (a question),
`completion` (one answer) and `label` (true: a thumbs up, the answer is desirable). The questions are those of
data/make_sample.py's kinds and facts, asked in other words (no question here is one of that sample's, so none is
one of its test questions either); the answers are written as there: desirable ones correct, complete and
polite; undesirable ones wrong, evasive, off-topic or cut off. Feedback comes as it does from users: about half
of the questions have an answer of each kind, more of the rest a desirable one than an undesirable one, so the
shares are unequal (about 57% desirable). A few rows (BAD_LABELS, EMPTY_COMPLETIONS) are broken as real exports
are: prepare drops and counts them (bad_label, empty_cell).
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample import (  # noqa: E402  (the same facts and answer styles)
    CAPITALS,
    DEFINITIONS,
    EVASIVE,
    OFF_TOPIC,
    OPPOSITES,
    OPS,
    PLACES,
    PREFIXES,
    SUFFIXES,
    SYMBOLS,
    THINGS,
    UNITS,
    YOUNG,
    truncate,
)

SEED = 20261208
N_QUESTIONS = 1400
# Which answers a question gets: both kinds, a desirable one only, an undesirable one only.
SHAPES, SHAPE_WEIGHTS = ("both", "desirable", "undesirable"), (0.5, 0.35, 0.15)
BAD_LABELS, EMPTY_COMPLETIONS = 3, 2


def arithmetic(rng):
    op = rng.choice(list(OPS))
    a, b = rng.randint(2, 99), rng.randint(2, 30 if op == "times" else 99)
    q = rng.choice(["Work out {a} {op} {b}.", "What do you get from {a} {op} {b}?", "Quick one: {a} {op} {b}?"])
    return q.format(a=a, op=op, b=b), f"{a} {op} {b} equals {OPS[op](a, b)}.", None


def conversion(rng):
    src, dst, factor, confused = rng.choice(UNITS)
    n = rng.randint(2, 60)
    q = rng.choice(
        [
            "Tell me how many {dst} there are in {n} {src}.",
            "{n} {src} equals how many {dst}?",
            "Express {n} {src} in {dst}.",
        ]
    ).format(n=n, src=src, dst=dst)
    return q, f"{n} {src} is {n * factor} {dst}.", f"{n} {src} is {n * factor} {confused}."


def capital(rng):
    c = rng.choice(list(CAPITALS))
    q = rng.choice(["Tell me the capital of {c}.", "What city is the capital of {c}?", "Name the capital of {c}."])
    good, bad = CAPITALS[c]
    return q.format(c=c), f"The capital of {c} is {good}.", f"The capital of {c} is {bad}."


def symbol(rng):
    e = rng.choice(list(SYMBOLS))
    q = rng.choice(
        [
            "Tell me the chemical symbol of {e}.",
            "What symbol does {e} have in chemistry?",
            "Give the chemical symbol for {e}.",
        ]
    ).format(e=e)
    good, bad = SYMBOLS[e]
    return q, f"The chemical symbol for {e} is {good}.", f"The chemical symbol for {e} is {bad}."


def opposite(rng):
    w = rng.choice(list(OPPOSITES))
    q = rng.choice(
        [
            "Tell me a word that means the opposite of '{w}'.",
            "What is the antonym of '{w}'?",
            "What word is opposite in meaning to '{w}'?",
        ]
    ).format(w=w)
    good, bad = OPPOSITES[w]
    return q, f"The opposite of '{w}' is '{good}'.", f"The opposite of '{w}' is '{bad}'."


def young(rng):
    a = rng.choice(list(YOUNG))
    q = rng.choice(
        ["Tell me what a young {a} is called.", "What name is given to a baby {a}?", "A baby {a} is known as what?"]
    ).format(a=a)
    good, bad = YOUNG[a]
    return q, f"A baby {a} is called a {good}.", f"A baby {a} is called a {bad}."


def definition(rng):
    t = rng.choice(list(DEFINITIONS))
    q = rng.choice(["Tell me what {t} is.", "What does {t} mean?", "Give me a definition of {t}."]).format(t=t)
    good, bad = DEFINITIONS[t]
    term = t[0].upper() + t[1:]
    return q, f"{term} is {good}.", f"{term} is {bad}."


FAMILIES = [arithmetic, conversion, capital, symbol, opposite, young, definition]


def undesirable(rng, prefix, good, wrong, suffix):
    kinds, weights = ["wrong", "evasive", "off_topic", "truncated"], [0.3, 0.2, 0.25, 0.25]
    kind = rng.choices(kinds[1:] if wrong is None else kinds, weights[1:] if wrong is None else weights)[0]
    if kind == "wrong":
        return prefix + wrong + suffix
    if kind == "evasive":
        return rng.choice(EVASIVE)
    if kind == "off_topic":
        return prefix + rng.choice(OFF_TOPIC).format(thing=rng.choice(THINGS), place=rng.choice(PLACES)) + suffix
    return truncate(rng, prefix + good + suffix)


def make_feedback(n_questions, seed):
    rng = random.Random(seed)
    rows, seen = [], set()
    for _ in range(n_questions):
        q, good, wrong = rng.choice(FAMILIES)(rng)
        prefix, suffix = rng.choice(PREFIXES), rng.choice(SUFFIXES)
        shape = rng.choices(SHAPES, SHAPE_WEIGHTS)[0]
        answers = []
        if shape != "undesirable":
            answers.append((prefix + good + suffix, True))
        if shape != "desirable":
            answers.append((undesirable(rng, prefix, good, wrong, suffix), False))
        for completion, label in answers:
            if (q, completion) not in seen:  # no exact duplicates
                seen.add((q, completion))
                rows.append({"prompt": q, "completion": completion, "label": label})
    broken = rng.sample(range(len(rows)), BAD_LABELS + EMPTY_COMPLETIONS)
    for i in broken[:BAD_LABELS]:
        rows[i]["label"] = "maybe"
    for i in broken[BAD_LABELS:]:
        rows[i]["completion"] = ""
    return rows


def main(path):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in make_feedback(N_QUESTIONS, SEED):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/make_feedback.py OUTPUT.jsonl")
    main(sys.argv[1])
