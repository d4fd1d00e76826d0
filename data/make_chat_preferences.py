"""Generate the shipped sample in trl's conversational format (implicit prompt), deterministically.

    python data/make_chat_preferences.py data/sample/chat_preferences.jsonl

Like data/make_sample.py, this script is the sample's provenance: the JSONL it writes is committed, and a test
regenerates it and checks the bytes match.

Each line has the columns of HuggingFaceH4/ultrafeedback_binarized: `prompt` (the last question, as text),
`prompt_id`, `chosen` and `rejected` (two whole conversations, lists of {role, content} messages, that share
everything but the last answer: the prompt is implicit), `messages` (the chosen conversation again), and
`score_chosen` / `score_rejected` (ratings from 1 to 10, to filter on). A third of the conversations open with a
system turn; earlier exchanges (0 to 2) are other questions of data/sample/preferences.csv's kinds with their
preferred answers; the last answers are the preferred one and a flawed one, as in that sample. As in real
UltraFeedback data, some pairs are rated alike or the chosen answer is rated low (a filter removes them), and a
few rows (EMPTY_TURNS) hold an empty assistant turn: prepare drops and counts them (empty_turn).
"""

import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_conversations import SYSTEMS  # noqa: E402  (the same system prompts)
from make_sample import make_rows  # noqa: E402  (the same questions and answers)

SEED = 20261207
N_ROWS = 400
EMPTY_TURNS = 4


def conversation(system, history, question, answer):
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def make_chat_preferences(n_rows, seed):
    rng = random.Random(seed)
    pool = make_rows(n_rows * 3, seed)  # (question, chosen, rejected, expected answer) rows to draw turns from
    rows = []
    for i in range(n_rows):
        q, chosen, rejected, expected = pool[i]
        history = [(hq, ha) for hq, ha, *_ in rng.sample(pool[n_rows:], rng.choices([0, 1, 2], [5, 3, 2])[0])]
        system = rng.choice(SYSTEMS) if rng.random() < 1 / 3 else None
        score_chosen = rng.choice([9.0, 8.5, 8.0, 7.5, 7.0, 6.0, 5.0])  # 6 and 5: a low-rated chosen answer
        score_rejected = rng.choice([score_chosen, *[s for s in (2.0, 3.0, 4.0, 5.0) if s < score_chosen] * 3])
        rows.append(
            {
                "prompt": q,
                "prompt_id": hashlib.sha256(q.encode()).hexdigest(),
                "chosen": conversation(system, history, q, chosen),
                "rejected": conversation(system, history, q, rejected),
                "messages": conversation(system, history, q, chosen),
                "score_chosen": score_chosen,
                "score_rejected": score_rejected,
                "Answer": "" if expected is None else str(expected),  # the last question's, for verifiable rules
            }
        )
    for i in rng.sample(range(n_rows), EMPTY_TURNS):
        rows[i]["rejected"][-1]["content"] = ""
    return rows


def main(path):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in make_chat_preferences(N_ROWS, SEED):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/make_chat_preferences.py OUTPUT.jsonl")
    main(sys.argv[1])
