"""trl's conversational preference format (cells holding lists of {role, content} messages), explicit and implicit
prompt, from JSONL and Parquet: the prompt messages and answers they become, and bad rows counted by reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.conversation import Message, parse_messages
from alignkit.data import BAD_ROW_REASONS, read_split

SPLITS = {"val_fraction": 0.2, "test_fraction": 0.2}
SYSTEM = {"role": "system", "content": "You are a careful tutor."}


def turn(role, content):
    return {"role": role, "content": content}


def question(i):
    return f"What is {i} times 3?"


def explicit(i):
    """trl-lib/ultrafeedback_binarized's layout: prompt = the conversation so far, chosen/rejected = one turn."""
    return {
        "prompt": [SYSTEM, turn("user", question(i))],
        "chosen": [turn("assistant", f"{i} times 3 is {3 * i}.")],
        "rejected": [turn("assistant", f"It is {3 * i + 2}.")],
    }


def implicit(i):
    """HuggingFaceH4/ultrafeedback_binarized's layout: two whole conversations sharing their opening, and extra
    columns (a prompt string, messages, scores, an id) to filter or map on."""
    opening = [turn("user", "Let us do some sums."), turn("assistant", "Gladly."), turn("user", question(i))]
    chosen = opening + [turn("assistant", f"{i} times 3 is {3 * i}.")]
    return {
        "prompt": question(i),
        "prompt_id": f"id-{i}",
        "chosen": chosen,
        "rejected": opening + [turn("assistant", f"It is {3 * i + 2}.")],
        "messages": chosen,
        "score_chosen": 8.0 if i % 4 else 5.0,
        "score_rejected": 3.0,
    }


def write(tmp_path, rows, kind):
    path = tmp_path / f"prefs.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:  # list<struct<role, content>> columns, as the Hub's Parquet files hold them
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def prepared(prepare):
    """Every prepared pair, in raw row order."""
    pairs = [p for s in ("train", "validation", "test") for p in read_split(prepare.out_dir / f"{s}.jsonl")]
    return sorted(pairs, key=lambda p: p.row)


def summary(prepare):
    return json.loads(prepare.metrics.read_text())


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_explicit_prompt_rows_become_their_prompt_messages_and_answers(prepare, tmp_path, kind):
    path = write(tmp_path, [explicit(i) for i in range(20)], kind)
    result = prepare(path, prepare=SPLITS)
    assert result.returncode == 0, result.stderr
    assert summary(prepare)["schema"] == "conversational" and summary(prepare)["rows_kept"] == 20
    first = prepared(prepare)[0]
    assert first.prompt == (Message("system", "You are a careful tutor."), Message("user", "What is 0 times 3?"))
    assert (first.chosen, first.rejected) == ("0 times 3 is 0.", "It is 2.")


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_implicit_prompt_rows_share_their_opening_as_the_prompt_and_filter_on_scores(prepare, tmp_path, kind):
    path = write(tmp_path, [implicit(i) for i in range(24)], kind)
    result = prepare(path, data={"filter": [{"column": "score_chosen", "op": ">=", "value": 7}]}, prepare=SPLITS)
    assert result.returncode == 0, result.stderr
    assert summary(prepare)["rows_filtered"] == {"score_chosen >= 7": 6} and summary(prepare)["rows_kept"] == 18
    first = prepared(prepare)[0]
    assert first.row == 2 and first.prompt == (
        Message("user", "Let us do some sums."),
        Message("assistant", "Gladly."),
        Message("user", "What is 1 times 3?"),
    )
    assert (first.chosen, first.rejected) == ("1 times 3 is 3.", "It is 5.")
    assert summary(prepare)["prompt_messages"]["mean"] == 3


def test_a_system_column_adds_a_system_turn_to_conversations_without_one(prepare, tmp_path):
    rows = [dict(implicit(i), system="Be brief." if i % 2 else "") for i in range(10)]
    path = write(tmp_path, rows, "jsonl")
    result = prepare(path, data={"columns": {"system": "system"}}, prepare=SPLITS)
    assert result.returncode == 0, result.stderr
    pairs = prepared(prepare)
    assert pairs[1].prompt[0] == Message("system", "Be brief.") and pairs[0].prompt[0].role == "user"


def test_a_csv_whose_cells_hold_messages_as_json_reads_the_same(prepare, tmp_path):
    path = tmp_path / "prefs.csv"
    lines = ["chosen,rejected"]
    for i in range(10):
        row = implicit(i)
        lines.append(",".join('"' + json.dumps(row[c]).replace('"', '""') + '"' for c in ("chosen", "rejected")))
    path.write_text("\n".join(lines) + "\n")
    result = prepare(path, prepare=SPLITS)
    assert result.returncode == 0, result.stderr
    assert summary(prepare)["schema"] == "conversational" and prepared(prepare)[3].chosen == "3 times 3 is 9."


BAD = {
    "malformed_messages": {"chosen": []},
    "bad_role": {"chosen": [turn("human", question(1)), turn("assistant", "3.")]},
    "empty_turn": {"rejected": [turn("user", question(1)), turn("assistant", "  ")]},
    "bad_turn_order": {"chosen": [turn("user", "a"), turn("user", question(1)), turn("assistant", "3.")]},
    "no_shared_prompt": {"chosen": [turn("user", "Another question?"), turn("assistant", "Yes.")]},
    "empty_cell": {"rejected": None},
}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_bad_message_lists_are_dropped_and_counted_by_reason(prepare, tmp_path, kind):
    rows = [implicit(i) for i in range(40)]
    for i, change in enumerate(BAD.values()):
        rows[3 * i + 1] = rows[3 * i + 1] | change
    # Turns after the answer: the answer must be one assistant turn.
    rows[30]["chosen"] = rows[30]["chosen"] + [turn("user", "And more?"), turn("assistant", "More.")]
    path = write(tmp_path, rows, kind)
    result = prepare(path, prepare={"max_drop_fraction": 0.2, **SPLITS})
    assert result.returncode == 0, result.stderr
    counts = summary(prepare)["rows_dropped"]
    assert counts == dict.fromkeys(BAD_ROW_REASONS, 0) | dict.fromkeys(BAD, 1) | {"bad_turn_order": 2}
    assert summary(prepare)["rows_kept"] == 33
    # With on_bad_row: error, the first names its row, column and what is wrong with it.
    result = prepare(path, prepare={"on_bad_row": "error", **SPLITS})
    assert result.returncode == 2
    assert f"{path}: row 2, column 'chosen': expected a list of {{role, content}} messages, got an empty list" in (
        result.stderr
    )


def test_explicit_rows_need_a_prompt_ending_with_the_user():
    assert parse_messages([turn("user", " hi "), turn("assistant", "hello")]) == (
        (Message("user", "hi"), Message("assistant", "hello")),
        None,
    )
    assert parse_messages([SYSTEM, turn("system", "again"), turn("user", "q")])[1][0] == "bad_turn_order"
    assert parse_messages("text")[1] == ("malformed_messages", "expected a list of {role, content} messages, got str")
    assert parse_messages([{"role": "user"}])[1][0] == "malformed_messages"
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]  # multimodal content parts
    assert parse_messages(parts)[1] == ("malformed_messages", "message 1: content is list, not text")
    assert parse_messages([])[1][0] == "malformed_messages"


def test_an_explicit_prompt_that_ends_with_the_assistant_is_a_bad_turn_order(prepare, tmp_path):
    rows = [explicit(i) for i in range(20)]
    rows[4]["prompt"] = [turn("user", "q"), turn("assistant", "a")]
    result = prepare(write(tmp_path, rows, "jsonl"), prepare={"max_drop_fraction": 0.1, **SPLITS})
    assert result.returncode == 0, result.stderr
    assert summary(prepare)["rows_dropped"]["bad_turn_order"] == 1


def test_a_red_team_set_declares_every_prompt_one_to_decline(prepare, tmp_path):
    """HH harmless-base and other red-team data have no unsafe column: columns.unsafe: true marks every prompt, so
    the safety violation rate covers them."""
    path = write(tmp_path, [implicit(i) for i in range(20)], "jsonl")
    result = prepare(path, data={"columns": {"unsafe": True}}, prepare=SPLITS)
    assert result.returncode == 0, result.stderr
    assert summary(prepare)["unsafe_prompts"] == summary(prepare)["rows_kept"] == 20
    assert all(p.unsafe for p in prepared(prepare))
