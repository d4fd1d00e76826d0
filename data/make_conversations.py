"""Generate the shipped multi-turn sample (Anthropic-HH dialogues with a system column), deterministically.

    python data/make_conversations.py data/sample/conversations.jsonl

Like data/make_sample.py, this script is the sample's provenance: the JSONL it
writes is committed, and a test regenerates it and checks the bytes match.

Each line holds `system` (a system prompt, one of a few), `turns` (how many
questions the dialogue asks, the last included: a column to filter on), and
`chosen` and `rejected`: two HH dialogues ("\\n\\nHuman: ...\\n\\nAssistant: ...") that share every
turn but the last answer. Earlier turns (0 to 3 exchanges) are other questions of
the same kinds as data/sample/preferences.csv with their preferred answers; the
last answer is the preferred one or a flawed one (wrong, evasive, off-topic,
truncated), as in that sample. As in real HH data, a few rows (EMPTY_ANSWERS) end
with an empty chosen answer: prepare drops and counts them (prepare.on_bad_row).
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample import make_rows  # noqa: E402  (the same questions and answers)

SEED = 20241124
N_ROWS = 1200
EMPTY_ANSWERS = 6
SYSTEMS = [
    "You are a helpful assistant.",
    "You are a friendly tutor. Answer in one or two sentences.",
    "You are a concise assistant that answers factual questions.",
]


def dialogue(turns):
    return "".join(f"\n\nHuman: {q}\n\nAssistant: {a}" for q, a in turns)


def make_conversations(n_rows, seed):
    rng = random.Random(seed)
    pool = make_rows(n_rows * 3, seed)  # (question, chosen, rejected, expected answer) rows to draw turns from
    rows = []
    for i in range(n_rows):
        q, chosen, rejected, expected = pool[i]
        history = [(hq, ha) for hq, ha, *_ in rng.sample(pool[n_rows:], rng.choices([0, 1, 2, 3], [3, 4, 2, 1])[0])]
        rows.append({"system": rng.choice(SYSTEMS), "turns": len(history) + 1,
                     "chosen": dialogue(history + [(q, chosen)]),
                     "rejected": dialogue(history + [(q, rejected)]),
                     "Answer": "" if expected is None else str(expected)})  # what verifiable rules check
    for i in rng.sample(range(n_rows), EMPTY_ANSWERS):
        rows[i]["chosen"] = rows[i]["chosen"][: rows[i]["chosen"].rfind("\n\nAssistant:")] + "\n\nAssistant:"
    return rows


def main(path):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in make_conversations(N_ROWS, SEED):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/make_conversations.py OUTPUT.jsonl")
    main(sys.argv[1])
