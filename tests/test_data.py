"""Unit tests of alignkit.data: schema detection and column mapping, filters, HH splitting, seeded splits, summary."""

from collections import Counter

import pytest

from alignkit import data
from alignkit.conversation import Message, single_turn
from alignkit.errors import DataError
from alignkit.params import Condition

UNMAPPED = {"prompt": None, "chosen": None, "rejected": None, "system": None}


def pairs_for(prompts):
    return [data.Pair(single_turn(p), f"good {i}", f"bad {i}", i + 1) for i, p in enumerate(prompts)]


def schema_of(columns, schema="auto", **mapping):
    return data.resolve_columns("f.csv", columns, schema, {**UNMAPPED, **mapping})


def test_schema_detection_prefers_exact_column_sets():
    assert schema_of(["Question", "More_Prefered", "Less_Prefered"]) == (
        "reference",
        {"prompt": "Question", "chosen": "More_Prefered", "rejected": "Less_Prefered"},
    )
    assert schema_of(["prompt", "chosen", "rejected", "id"])[0] == "prompt_chosen_rejected"
    assert schema_of(["chosen", "rejected"]) == ("hh", {"chosen": "chosen", "rejected": "rejected"})


def test_schema_detection_names_the_closest_schema_and_column():
    with pytest.raises(DataError, match=r"column 'Less_Prefered'.*found 'Less_Preferred'"):
        schema_of(["Question", "More_Prefered", "Less_Preferred"])
    # A column the schema already uses is no near miss: More_Prefered is not a misspelt Less_Prefered.
    with pytest.raises(DataError, match=r"column 'Less_Prefered'.*found columns: 'Question', 'More_Prefered'\)$"):
        schema_of(["Question", "More_Prefered"])


def test_column_mapping_of_an_orca_style_table():
    columns = ["system", "input", "chosen", "rejected", "status", "chosen_score", "in_gsm8k_train"]
    assert schema_of(columns, prompt="input", system="system") == (
        "prompt_chosen_rejected",
        {"prompt": "input", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    )
    with pytest.raises(
        DataError, match=r"^data.columns.prompt: no column 'inptu' in f.csv \(did you mean 'input'\?\)$"
    ):
        schema_of(columns, prompt="inptu")
    with pytest.raises(DataError, match=r"^data.columns.prompt: the hh schema takes the prompt from the dialogues"):
        schema_of(columns, "hh", prompt="input")


def rec(row, **values):
    return data.Record(row, row + 1, values)


def test_filters_keep_rows_where_every_condition_holds_and_count_the_rest():
    """Rows 1-5 against status == "tie", chosen_score >= 8, in_gsm8k_train == false (CSV text cells):
    1 passes; 2 fails status; 3 fails the score (7.5); 4 fails gsm8k ("True"); 5 has an empty score."""
    records = [
        rec(1, status="tie", chosen_score="8", in_gsm8k_train="False"),
        rec(2, status="tied", chosen_score="9", in_gsm8k_train="False"),
        rec(3, status="tie", chosen_score="7.5", in_gsm8k_train="false"),
        rec(4, status="tie", chosen_score="10", in_gsm8k_train="True"),
        rec(5, status="tie", chosen_score="", in_gsm8k_train="false"),
    ]
    conditions = [
        Condition(column="status", op="==", value="tie"),
        Condition(column="chosen_score", op=">=", value=8),
        Condition(column="in_gsm8k_train", op="==", value=False),
    ]
    kept, removed = data.apply_filters("f.csv", ["status", "chosen_score", "in_gsm8k_train"], records, conditions)
    assert [r.row for r in kept] == [1]
    assert removed == {'status == "tie"': 1, "chosen_score >= 8": 2, "in_gsm8k_train == false": 1}
    # Typed cells (JSONL, Parquet) compare as they are; `in` takes a list.
    typed = [
        rec(1, score=8, ok=True, kind="a"),
        rec(2, score=7, ok=True, kind="b"),
        rec(3, score=9, ok=False, kind="c"),
    ]
    kept, _ = data.apply_filters(
        "f.jsonl",
        ["score", "ok", "kind"],
        typed,
        [Condition(column="score", op=">", value=7.5), Condition(column="kind", op="in", value=["a", "c"])],
    )
    assert [r.row for r in kept] == [1, 3]


def test_filters_refuse_an_unknown_column_or_a_cell_of_another_kind():
    with pytest.raises(
        DataError, match=r"^data.filter\[1\].column: no column 'statu' in f.csv \(did you mean 'status'\?\)$"
    ):
        data.apply_filters(
            "f.csv",
            ["status"],
            [],
            [Condition(column="status", op="==", value="tie"), Condition(column="statu", op="==", value="tie")],
        )
    with pytest.raises(
        DataError,
        match=r"^data.filter\[0\] \(chosen_score >= 8\): f.csv: row 2 \(line 3\), "
        r"column 'chosen_score': 'high' is not a number$",
    ):
        data.apply_filters(
            "f.csv",
            ["chosen_score"],
            [rec(1, chosen_score="9"), rec(2, chosen_score="high")],
            [Condition(column="chosen_score", op=">=", value=8)],
        )


def test_split_hh_takes_shared_prefix_through_last_assistant_turn():
    """chosen and rejected share '\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant: '
    then differ; the prompt ends at the second 'Assistant:' and the answers are what follows."""
    base = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    assert data.split_hh("f", rec(1), base + " yes", base + " no") == (base.strip(), "yes", "no")


def test_split_hh_answers_that_share_a_beginning():
    """'Assistant: The answer is 4.' vs 'Assistant: The answer is 5.' share 'The answer is ',
    which belongs to the answers, not the prompt."""
    base = "\n\nHuman: 2+2?\n\nAssistant:"
    assert data.split_hh("f", rec(1), base + " The answer is 4.", base + " The answer is 5.")[1:] == (
        "The answer is 4.",
        "The answer is 5.",
    )


def test_split_is_seeded_and_deterministic():
    pairs = pairs_for([f"q{i}" for i in range(100)])
    a = data.split_pairs(pairs, 0.1, 0.2, seed=7)
    b = data.split_pairs(pairs, 0.1, 0.2, seed=7)
    c = data.split_pairs(pairs, 0.1, 0.2, seed=8)
    assert a == b
    assert a["test"] != c["test"]
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "validation": 10, "test": 20, "judge": 0}
    # A judge split takes its share of whole prompt groups from what train had; test and validation stay as they were.
    d = data.split_pairs(pairs, 0.1, 0.2, seed=7, judge_fraction=0.25)
    assert {k: len(v) for k, v in d.items()} == {"train": 45, "validation": 10, "test": 20, "judge": 25}
    assert d["test"] == a["test"] and d["validation"] == a["validation"]
    assert not {p.row for p in d["judge"]} & {p.row for p in d["train"]}


def test_split_keeps_each_prompt_in_one_split():
    prompts = [f"q{i % 30}" for i in range(90)]  # each prompt three times
    splits = data.split_pairs(pairs_for(prompts), 0.1, 0.1, seed=0, judge_fraction=0.2)
    owner = {}
    for name, rows in splits.items():
        for p in rows:
            assert owner.setdefault(p.prompt, name) == name
    assert sum(len(v) for v in splits.values()) == 90


def test_split_too_small_for_a_requested_split():
    with pytest.raises(DataError, match="f.csv: 2 rows in 2 prompt groups .* the train split would be empty"):
        data.split_pairs(pairs_for(["a", "b"]), 0.1, 0.4, seed=0, path="f.csv")


def test_describe_counts_and_lengths():
    """chosen lengths 4 and 6 -> mean 5, median 5; rejected 'x' (1) and 'yyyyyyy' (7):
    chosen is longer in the first pair only -> share 0.5."""
    pairs = [
        data.Pair(single_turn("ab"), "cccc", "x", 1),
        data.Pair((Message("user", "a"), Message("assistant", "b"), Message("user", "c")), "cccccc", "yyyyyyy", 2),
    ]
    splits = {"train": pairs[:1], "validation": pairs[1:], "test": []}
    out = data.describe(7, Counter({"x == 1": 2}), pairs, Counter(duplicate=2, identical_pair=1), splits)
    assert out["rows_in"] == 7 and out["rows_kept"] == 2 and out["rows_filtered"] == {"x == 1": 2}
    assert out["rows_dropped"] == dict.fromkeys(data.BAD_ROW_REASONS, 0) | {"duplicate": 2, "identical_pair": 1}
    assert out["chars"]["chosen"] == {"mean": 5.0, "median": 5.0, "min": 4, "max": 6}
    # The prompt's length is that of its readable text:
    # "Human: a\n\nAssistant: b\n\nHuman: c" has 8 + 2 + 12 + 2 + 8 = 32 characters.
    assert out["chars"]["prompt"]["max"] == 32 and out["prompt_messages"]["max"] == 3
    assert out["chosen_longer_share"] == 0.5
    assert out["splits"] == {"train": 1, "validation": 1, "test": 0}


def test_write_and_read_split_round_trip(tmp_path):
    pairs = [data.Pair((Message("system", "Be brief."), Message("user", "Q\u00e9?")), "line\nbreak", "b", 3)]
    data.write_split(tmp_path / "s.jsonl", pairs)
    assert data.read_split(tmp_path / "s.jsonl") == pairs
