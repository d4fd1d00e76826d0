"""Unit tests of alignkit.data: schema detection, HH splitting, seeded splits, summary."""

from collections import Counter

import pytest

from alignkit import data
from alignkit.errors import DataError


def pairs_for(prompts):
    return [data.Pair(p, f"good {i}", f"bad {i}", i + 1) for i, p in enumerate(prompts)]


def test_detect_schema_prefers_exact_column_sets():
    assert data.detect_schema("f", ["Question", "More_Prefered", "Less_Prefered"], "auto") == "reference"
    assert data.detect_schema("f", ["prompt", "chosen", "rejected", "id"], "auto") == "prompt_chosen_rejected"
    assert data.detect_schema("f", ["chosen", "rejected"], "auto") == "hh"


def test_detect_schema_names_the_closest_schema_and_column():
    with pytest.raises(DataError, match=r"column 'Less_Prefered'.*found 'Less_Preferred'"):
        data.detect_schema("f.csv", ["Question", "More_Prefered", "Less_Preferred"], "auto")


def test_split_hh_takes_shared_prefix_through_last_assistant_turn():
    """chosen and rejected share '\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant: '
    then differ; the prompt ends at the second 'Assistant:' and the answers are what follows."""
    base = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    rec = data.Record(1, 1, {})
    assert data.split_hh("f", rec, base + " yes", base + " no") == (base.strip(), "yes", "no")


def test_split_hh_answers_that_share_a_beginning():
    """'Assistant: The answer is 4.' vs 'Assistant: The answer is 5.' share 'The answer is ',
    which belongs to the answers, not the prompt."""
    base = "\n\nHuman: 2+2?\n\nAssistant:"
    rec = data.Record(1, 1, {})
    assert data.split_hh("f", rec, base + " The answer is 4.", base + " The answer is 5.")[1:] == (
        "The answer is 4.", "The answer is 5.")


def test_split_is_seeded_and_deterministic():
    pairs = pairs_for([f"q{i}" for i in range(100)])
    a = data.split_pairs(pairs, 0.1, 0.2, seed=7)
    b = data.split_pairs(pairs, 0.1, 0.2, seed=7)
    c = data.split_pairs(pairs, 0.1, 0.2, seed=8)
    assert a == b
    assert a["test"] != c["test"]
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "validation": 10, "test": 20}


def test_split_keeps_each_prompt_in_one_split():
    prompts = [f"q{i % 30}" for i in range(90)]  # each prompt three times
    splits = data.split_pairs(pairs_for(prompts), 0.1, 0.1, seed=0)
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
    pairs = [data.Pair("ab", "cccc", "x", 1), data.Pair("abcd", "cccccc", "yyyyyyy", 2)]
    splits = {"train": pairs[:1], "validation": pairs[1:], "test": []}
    out = data.describe(5, pairs, Counter(duplicate=2, identical_pair=1), splits)
    assert out["rows_in"] == 5 and out["rows_kept"] == 2
    assert out["rows_dropped"] == {"duplicate": 2, "identical_pair": 1, "too_long": 0}
    assert out["chars"]["chosen"] == {"mean": 5.0, "median": 5.0, "min": 4, "max": 6}
    assert out["chars"]["prompt"]["max"] == 4
    assert out["chosen_longer_share"] == 0.5
    assert out["splits"] == {"train": 1, "validation": 1, "test": 0}


def test_write_and_read_split_round_trip(tmp_path):
    pairs = [data.Pair("Q\u00e9?", "line\nbreak", "b", 3)]
    data.write_split(tmp_path / "s.jsonl", pairs)
    assert data.read_split(tmp_path / "s.jsonl") == pairs
