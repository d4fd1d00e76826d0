"""The shipped sample: reproducible from its script, clean, and not separable by length."""

import csv
import subprocess
import sys

from tests.conftest import REPO

SAMPLE = REPO / "data" / "sample" / "preferences.csv"


def rows():
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_sample_is_exactly_what_its_script_writes(tmp_path):
    out = tmp_path / "sample.csv"
    subprocess.run([sys.executable, str(REPO / "data" / "make_sample.py"), str(out)], check=True)
    assert out.read_bytes() == SAMPLE.read_bytes()


def test_sample_shape_and_cleanliness():
    data = rows()
    assert list(data[0]) == ["Question", "More_Prefered", "Less_Prefered", "Answer"]
    assert 2300 <= len(data) <= 2600  # about 2,000 training rows and 200 each for validation and test
    assert all(r["More_Prefered"] != r["Less_Prefered"] for r in data)
    assert len({tuple(r.values()) for r in data}) == len(data)
    assert all(v.strip() == v and v for r in data for k, v in r.items() if k != "Answer")


def test_the_expected_answer_is_the_number_in_the_preferred_answer():
    """Arithmetic and conversion questions hold their expected number in Answer (the verifiable rules' column), the
    number the preferred answer states; other questions leave it empty."""
    data = rows()
    numeric = [r for r in data if r["Answer"]]
    assert 500 <= len(numeric) <= 900
    assert all(r["Answer"].lstrip("-").isdigit() for r in numeric)
    assert all(f" {r['Answer']}" in r["More_Prefered"] for r in numeric)
    assert not any(w in r["Question"] for r in data if not r["Answer"] for w in (" plus ", " minus ", " times "))


def test_sample_covers_several_question_families():
    data = rows()
    families = {
        "arithmetic": lambda q: any(op in q for op in (" plus ", " minus ", " times ")),
        "conversion": lambda q: q.startswith(("How many", "Convert")) or " in " in q and q.startswith("What is"),
        "capital": lambda q: "capital" in q,
        "symbol": lambda q: "symbol" in q,
        "opposite": lambda q: "opposite" in q,
        "young": lambda q: "baby" in q or "young" in q,
        "definition": lambda q: q.startswith(("Can you define", "Please explain")),
    }
    counts = {name: sum(test(r["Question"]) for r in data) for name, test in families.items()}
    assert all(n >= 150 for n in counts.values()), counts


def test_length_alone_does_not_separate_the_answers():
    data = rows()
    longer = sum(len(r["More_Prefered"]) > len(r["Less_Prefered"]) for r in data) / len(data)
    assert 0.4 <= longer <= 0.65, longer


CONVERSATIONS = REPO / "data" / "sample" / "conversations.jsonl"


def test_multi_turn_sample_is_exactly_what_its_script_writes(tmp_path):
    out = tmp_path / "conversations.jsonl"
    subprocess.run([sys.executable, str(REPO / "data" / "make_conversations.py"), str(out)], check=True)
    assert out.read_bytes() == CONVERSATIONS.read_bytes()


def test_multi_turn_sample_shape():
    import json

    from alignkit.conversation import parse_hh

    rows = [json.loads(line) for line in CONVERSATIONS.open(encoding="utf-8")]
    assert len(rows) == 1200 and all(set(r) == {"system", "turns", "chosen", "rejected", "Answer"} for r in rows)
    empty = [r for r in rows if r["chosen"].endswith("\n\nAssistant:")]
    assert len(empty) == 6  # real HH data has such rows; prepare drops and counts them
    for r in rows:
        cut = r["rejected"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        assert r["chosen"][:cut] == r["rejected"][:cut]  # every turn shared but the last answer
        turns = parse_hh(r["rejected"][:cut])
        assert sum(m.role == "user" for m in turns) == r["turns"]
    assert {r["turns"] for r in rows} == {1, 2, 3, 4}


CHAT_PREFERENCES = REPO / "data" / "sample" / "chat_preferences.jsonl"


def test_conversational_sample_is_exactly_what_its_script_writes(tmp_path):
    out = tmp_path / "chat_preferences.jsonl"
    subprocess.run([sys.executable, str(REPO / "data" / "make_chat_preferences.py"), str(out)], check=True)
    assert out.read_bytes() == CHAT_PREFERENCES.read_bytes()


def test_conversational_sample_shape():
    """trl's implicit-prompt conversational format, with HuggingFaceH4/ultrafeedback_binarized's columns."""
    import json

    rows = [json.loads(line) for line in CHAT_PREFERENCES.open(encoding="utf-8")]
    columns = {"prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected", "Answer"}
    assert len(rows) == 400 and all(set(r) == columns for r in rows)
    for r in rows:
        assert r["chosen"][:-1] == r["rejected"][:-1] and r["chosen"] == r["messages"]  # all shared but the answer
        assert r["chosen"][-2] == {"role": "user", "content": r["prompt"]}
        assert [m["role"] for m in r["chosen"] if m["role"] != "system"][-2:] == ["user", "assistant"]
    assert sum(r["rejected"][-1]["content"] == "" for r in rows) == 4  # prepare drops and counts them
    assert sum(r["chosen"][0]["role"] == "system" for r in rows) in range(100, 170)  # about a third
    assert sum(r["score_chosen"] >= 7 and r["score_rejected"] <= 5 for r in rows) in range(200, 300)


FEEDBACK = REPO / "data" / "sample" / "feedback.jsonl"


def test_feedback_sample_is_exactly_what_its_script_writes(tmp_path):
    out = tmp_path / "feedback.jsonl"
    subprocess.run([sys.executable, str(REPO / "data" / "make_feedback.py"), str(out)], check=True)
    assert out.read_bytes() == FEEDBACK.read_bytes()


def test_feedback_sample_shape():
    """trl's unpaired format, desirable and undesirable answers in unequal shares, questions none of which is one
    of the preference sample's (so none of its test questions), and a few broken rows for prepare to count."""
    import csv
    import json

    rows = [json.loads(line) for line in FEEDBACK.open(encoding="utf-8")]
    assert all(set(r) == {"prompt", "completion", "label"} for r in rows)
    labels = [r["label"] for r in rows]
    desirable, undesirable = labels.count(True), labels.count(False)
    assert 0.52 < desirable / (desirable + undesirable) < 0.6  # unequal, within trl's advised weight range at 1/1
    assert labels.count("maybe") == 3 and sum(r["completion"] == "" for r in rows) == 2
    with (REPO / "data" / "sample" / "preferences.csv").open(encoding="utf-8") as f:
        questions = {r["Question"] for r in csv.DictReader(f)}
    assert not questions & {r["prompt"] for r in rows}
    both = {r["prompt"] for r in rows if r["label"] is True} & {r["prompt"] for r in rows if r["label"] is False}
    assert len(both) > 300  # validation pairs for the preference accuracy come from these
