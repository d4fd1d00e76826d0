"""The prepare stage on bad and unusual input: one-line errors naming file, row and
column, a non-zero exit, and no output; or rows dropped and counted by reason."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.data import BAD_ROW_REASONS

HEADER = "Question,More_Prefered,Less_Prefered\n"
GOOD = [
    "What is 2 plus 2?,2 plus 2 equals 4.,2 plus 2 equals 5.\n",
    "What is the capital of France?,The capital of France is Paris.,I would rather not say.\n",
    "What is a baby cat called?,A baby cat is called a kitten.,A baby cat is\n",
    "Convert 2 hours to minutes.,2 hours is 120 minutes.,2 hours is 120 grams.\n",
]
TINY_SPLITS = {"val_fraction": 0.25, "test_fraction": 0.25}


def dropped(**counts):
    """metrics/data.json's rows_dropped: every reason, zero unless given."""
    return dict.fromkeys(BAD_ROW_REASONS, 0) | counts


def csv_file(tmp_path, *rows, header=HEADER, name="prefs.csv"):
    path = tmp_path / name
    path.write_bytes((header + "".join(rows)).encode() if isinstance(header, str) else header + b"".join(rows))
    return path


def assert_error(result, path, *parts):
    """Exit code 2, one line on stderr naming the file and each part, nothing else said."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}"), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def test_missing_file(prepare, tmp_path):
    path = tmp_path / "nope.csv"
    assert_error(prepare(path), path, "file not found")
    assert prepare.wrote_nothing()


def test_misspelled_column_names_the_column_and_the_near_miss(prepare, tmp_path):
    path = csv_file(tmp_path, *GOOD, header="Question,More_Preferred,Less_Prefered\n")
    msg = assert_error(prepare(path), path, "header", "column 'More_Prefered'", "'More_Preferred'")
    assert "reference schema" in msg
    assert prepare.wrote_nothing()


def test_missing_column(prepare, tmp_path):
    """The hint names only a near miss: More_Prefered is a column of its own, not a misspelt Less_Prefered."""
    path = csv_file(tmp_path, "What?,Yes.\n", header="Question,More_Prefered\n")
    msg = assert_error(prepare(path), path, "header", "column 'Less_Prefered'")
    assert "found columns: 'Question', 'More_Prefered'" in msg and "check the spelling" not in msg
    assert prepare.wrote_nothing()


@pytest.mark.parametrize("cell", ['""', '"   "', '" \t "'])
def test_empty_or_whitespace_cell(prepare, tmp_path, cell):
    path = csv_file(tmp_path, GOOD[0], f"What is 3 plus 3?,{cell},3 plus 3 equals 7.\n", *GOOD[1:])
    assert_error(prepare(path), path, "row 2 (line 3)", "column 'More_Prefered'", "empty cell")
    assert prepare.wrote_nothing()


@pytest.mark.parametrize("token", ["NaN", "nan", "NULL"])
def test_nan_in_csv(prepare, tmp_path, token):
    path = csv_file(tmp_path, *GOOD[:3], f"What is 3 plus 3?,3 plus 3 equals 6.,{token}\n")
    assert_error(prepare(path), path, "row 4 (line 5)", "column 'Less_Prefered'", "missing value")
    assert prepare.wrote_nothing()


@pytest.mark.parametrize("value", ["null", "NaN"])
def test_null_and_nan_in_jsonl(prepare, tmp_path, value):
    path = tmp_path / "prefs.jsonl"
    good = '{"prompt": "Hi?", "chosen": "Hello, how can I help?", "rejected": "Go away."}\n'
    path.write_text(good + f'{{"prompt": "Yo?", "chosen": {value}, "rejected": "No."}}\n')
    assert_error(prepare(path), path, "row 2", "column 'chosen'", "missing value")
    assert prepare.wrote_nothing()


def test_null_in_parquet(prepare, tmp_path):
    path = tmp_path / "prefs.parquet"
    pq.write_table(
        pa.table({"prompt": ["a?", "b?", "c?"], "chosen": ["A.", None, "C."], "rejected": ["x", "y", "z"]}), path
    )
    assert_error(prepare(path), path, "row 2", "column 'chosen'", "missing value")
    assert prepare.wrote_nothing()


def test_bytes_that_are_not_utf8(prepare, tmp_path):
    bad = b"What is 3 plus 3?,3 plus 3 equals 6.,3 plus 3 equals \xff\xfe.\n"
    path = csv_file(tmp_path, GOOD[0].encode(), bad, header=HEADER.encode())
    assert_error(prepare(path), path, "row 2 (line 3)", "column 'Less_Prefered'", "not UTF-8", "0xff")
    assert prepare.wrote_nothing()


def test_latin1_file_in_jsonl(prepare, tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes('{"prompt": "Caf\u00e9?", "chosen": "Yes.", "rejected": "No."}\n'.encode("latin-1"))
    assert_error(prepare(path), path, "row 1", "column 'prompt'", "not UTF-8")
    assert prepare.wrote_nothing()


@pytest.mark.parametrize("sep, name", [(";", "semicolon"), ("\t", "tab")])
def test_wrong_delimiter(prepare, tmp_path, sep, name):
    rows = [r.replace(",", sep) for r in GOOD]
    path = csv_file(tmp_path, *rows, header=HEADER.replace(",", sep))
    assert_error(prepare(path), path, "header (line 1)", "column 'Question", f"{name}-delimited")
    assert prepare.wrote_nothing()


def test_row_with_too_many_fields(prepare, tmp_path):
    path = csv_file(tmp_path, GOOD[0], "What is 1, 2 or 3?,It is 1.,It is 4.\n")
    assert_error(prepare(path), path, "row 2 (line 3)", "expected 3 fields, got 4")
    assert prepare.wrote_nothing()


def test_text_longer_than_max_chars_stops_with_on_bad_row_error(prepare, tmp_path):
    path = csv_file(tmp_path, *GOOD[:2], "What is long?,Long answer " + "x" * 300 + ".,Short.\n", *GOOD[2:])
    msg = assert_error(
        prepare(path, prepare={"max_chars": 100, "on_bad_row": "error"}),
        path,
        "row 3 (line 4)",
        "column 'More_Prefered'",
    )
    assert "prepare.max_chars=100" in msg and "prepare.on_bad_row: drop would drop and count it" in msg
    assert prepare.wrote_nothing()


def test_text_longer_than_max_chars_dropped_when_asked(prepare, tmp_path):
    path = csv_file(tmp_path, *GOOD, "What is long?,Long answer " + "x" * 300 + ".,Short.\n")
    result = prepare(path, prepare={"max_chars": 100, "max_drop_fraction": 0.25, **TINY_SPLITS})
    assert result.returncode == 0, result.stderr
    metrics = json.loads(prepare.metrics.read_text())
    assert metrics["rows_in"] == 5 and metrics["rows_kept"] == 4
    assert metrics["rows_dropped"] == dropped(too_long=1)


def test_identical_pairs_and_duplicates_are_dropped_and_counted(prepare, tmp_path):
    identical = "What is 5 plus 5?,5 plus 5 equals 10.,5 plus 5 equals 10.\n"
    path = csv_file(tmp_path, *GOOD, GOOD[0], GOOD[1], identical)
    result = prepare(path, prepare={"max_drop_fraction": 0.5, **TINY_SPLITS})
    assert result.returncode == 0, result.stderr
    metrics = json.loads(prepare.metrics.read_text())
    assert metrics["rows_in"] == 7 and metrics["rows_kept"] == 4
    assert metrics["rows_dropped"] == dropped(duplicate=2, identical_pair=1)
    kept = [
        json.loads(line) for s in ("train", "validation", "test") for line in (prepare.out_dir / f"{s}.jsonl").open()
    ]
    assert sorted(r["row"] for r in kept) == [1, 2, 3, 4]


def test_zero_rows_left_after_cleaning(prepare, tmp_path):
    path = csv_file(tmp_path, "Same?,Yes.,Yes.\n", "Again?,No.,No.\n")
    assert_error(
        prepare(path, prepare={"max_drop_fraction": 1.0}),
        path,
        "no rows left after cleaning",
        "2 read",
        "identical_pair=2",
    )
    assert prepare.wrote_nothing()


def test_header_only_file(prepare, tmp_path):
    path = csv_file(tmp_path)
    assert_error(prepare(path), path, "no rows left after cleaning", "0 read")
    assert prepare.wrote_nothing()


def test_invalid_json_line(prepare, tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", \n')
    assert_error(prepare(path), path, "row 2", "invalid JSON")
    assert prepare.wrote_nothing()


def test_unsupported_extension(prepare, tmp_path):
    path = tmp_path / "prefs.xlsx"
    path.write_bytes(b"PK")
    assert_error(prepare(path), path, "unsupported file type '.xlsx'")


# ------------------------------------------------------------ accepted inputs


def read_outputs(prepare):
    rows = {
        s: [json.loads(line) for line in (prepare.out_dir / f"{s}.jsonl").open()]
        for s in ("train", "validation", "test")
    }
    return rows, json.loads(prepare.metrics.read_text())


def test_prompt_chosen_rejected_jsonl_gz(prepare, tmp_path):
    path = tmp_path / "prefs.jsonl.gz"
    lines = [json.dumps({"prompt": f"Q{i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}."}) for i in range(8)]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    result = prepare(path, prepare=TINY_SPLITS)
    assert result.returncode == 0, result.stderr
    rows, metrics = read_outputs(prepare)
    assert metrics["splits"] == {"train": 4, "validation": 2, "test": 2, "judge": 0}
    assert {
        "prompt": [{"role": "user", "content": "Q3?"}],
        "chosen": "Good 3.",
        "rejected": "Bad 3.",
        "row": 4,
        "unsafe": False,
    } in sum(rows.values(), [])


def test_reference_schema_parquet(prepare, tmp_path):
    path = tmp_path / "prefs.parquet"
    pq.write_table(
        pa.table(
            {
                "Question": ["a?", "b?", "c?", "d?"],
                "More_Prefered": ["A", "B", "C", "D"],
                "Less_Prefered": ["x", "y", "z", "w"],
            }
        ),
        path,
    )
    result = prepare(path, prepare=TINY_SPLITS)
    assert result.returncode == 0, result.stderr
    rows, metrics = read_outputs(prepare)
    assert metrics["rows_kept"] == 4 and "reference schema" in result.stdout


def test_anthropic_hh_dialogues(prepare, tmp_path):
    dialogue = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    records = [
        {"chosen": dialogue + " It is 4.", "rejected": dialogue + " I don't know."},
        {
            "chosen": "\n\nHuman: Name a color.\n\nAssistant: Blue.",
            "rejected": "\n\nHuman: Name a color.\n\nAssistant: No.",
        },
        {
            "chosen": "\n\nHuman: Bye\n\nAssistant: Goodbye, take care!",
            "rejected": "\n\nHuman: Bye\n\nAssistant: Whatever.",
        },
        {
            "chosen": "\n\nHuman: Thanks\n\nAssistant: You're welcome.",
            "rejected": "\n\nHuman: Thanks\n\nAssistant: Sure",
        },
    ]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = prepare(path, prepare=TINY_SPLITS)
    assert result.returncode == 0, result.stderr
    assert "hh schema" in result.stdout
    rows, _ = read_outputs(prepare)
    first = next(r for r in sum(rows.values(), []) if r["row"] == 1)
    assert first == {
        "prompt": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 2+2?"},
        ],
        "chosen": "It is 4.",
        "rejected": "I don't know.",
        "row": 1,
        "unsafe": False,
    }


def test_hh_dialogues_without_shared_assistant_turn(prepare, tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "Something else"}) + "\n")
    assert_error(
        prepare(path), path, "1 of 1 rows are bad", "no_shared_prompt=1", "row 1", "column 'chosen'", "Assistant:"
    )
    assert prepare.wrote_nothing()


def test_explicit_schema_that_does_not_match(prepare, tmp_path):
    path = csv_file(tmp_path, *GOOD)
    assert_error(prepare(path, data={"schema": "prompt_chosen_rejected"}), path, "column 'prompt'")


def test_too_few_rows_to_split(prepare, tmp_path):
    path = csv_file(tmp_path, *GOOD[:2])
    assert_error(prepare(path, prepare=TINY_SPLITS), path, "too few to split", "train split would be empty")
    assert prepare.wrote_nothing()


# ------------------------------------------------------------ real data: mapping, filters, bad rows

BOOK_FILTER = [
    {"column": "status", "op": "!=", "value": "tie"},  # as the book's code: a tie holds no preference
    {"column": "chosen_score", "op": ">=", "value": 8},
    {"column": "in_gsm8k_train", "op": "==", "value": False},
]


def orca_rows():
    """20 orca-style rows, i = 0..19: status is 'tie' where i % 4 == 3 (3, 7, 11, 15, 19: 5 rows), else 'unchanged';
    chosen_score is 9, 8, 7.5 by i % 3, below 8 for the others 2, 5, 8, 14, 17 (5); in_gsm8k_train is true for odd
    i, which of the 10 left are 1, 9, 13 (3). The 7 rows 0, 4, 6, 10, 12, 16, 18 pass all three conditions."""
    rows = []
    for i in range(20):
        status = "tie" if i % 4 == 3 else "unchanged"
        rows.append(
            {
                "system": "You are an AI assistant.",
                "input": f"Question {i}?",
                "chosen": f"Good answer {i}.",
                "rejected": f"Bad answer {i}.",
                "status": status,
                "chosen_score": [9, 8, 7.5][i % 3],
                "in_gsm8k_train": i % 2 == 1,
                "question": f"extra {i}",
            }
        )
    return rows


def test_orca_style_table_with_the_book_filters(prepare, tmp_path):
    rows = orca_rows()
    path = tmp_path / "orca.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = prepare(
        path,
        data={
            "columns": {"prompt": "input", "chosen": None, "rejected": None, "system": "system"},
            "filter": BOOK_FILTER,
        },
        prepare={"val_fraction": 0.2, "test_fraction": 0.2},
    )
    assert result.returncode == 0, result.stderr
    out, metrics = read_outputs(prepare)
    # By hand: the first failing condition counts each removed row.
    passing = [
        i for i, r in enumerate(rows) if r["status"] != "tie" and r["chosen_score"] >= 8 and not r["in_gsm8k_train"]
    ]
    ties = sum(r["status"] == "tie" for r in rows)
    low = sum(r["status"] != "tie" and r["chosen_score"] < 8 for r in rows)
    assert metrics["rows_filtered"] == {
        'status != "tie"': ties,
        "chosen_score >= 8": low,
        "in_gsm8k_train == false": 20 - ties - low - len(passing),
    }
    assert metrics["rows_filtered"] == {'status != "tie"': 5, "chosen_score >= 8": 5, "in_gsm8k_train == false": 3}
    assert metrics["rows_in"] == 20 and metrics["rows_kept"] == len(passing) == 7
    assert metrics["rows_dropped"] == dropped()
    kept = sorted(sum(out.values(), []), key=lambda r: r["row"])
    assert [r["row"] - 1 for r in kept] == passing
    assert kept[0]["prompt"] == [
        {"role": "system", "content": "You are an AI assistant."},
        {"role": "user", "content": f"Question {passing[0]}?"},
    ]


def test_an_empty_system_cell_means_no_system_turn_not_a_bad_row(prepare, tmp_path):
    """A system prompt is optional: rows whose system cell is empty (CSV), null or blank (Parquet) keep their pair,
    with no system turn; nothing is dropped."""
    rows = orca_rows()
    for i in (0, 4, 6):
        rows[i]["system"] = [None, "", "   "][(0, 4, 6).index(i)]
    path = tmp_path / "orca.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    columns = {"prompt": "input", "chosen": None, "rejected": None, "system": "system"}
    result = prepare(path, data={"columns": columns}, prepare={"val_fraction": 0.2, "test_fraction": 0.2})
    assert result.returncode == 0, result.stderr
    out, metrics = read_outputs(prepare)
    assert metrics["rows_kept"] == 20 and metrics["rows_dropped"] == dropped()
    prompts = {r["row"] - 1: r["prompt"] for r in sum(out.values(), [])}
    assert prompts[0] == [{"role": "user", "content": "Question 0?"}]
    assert prompts[4] == [{"role": "user", "content": "Question 4?"}] and len(prompts[6]) == 1
    assert prompts[1][0] == {"role": "system", "content": "You are an AI assistant."}
    csv_path = csv_file(
        tmp_path,
        "What is 2 plus 2?,2 plus 2 equals 4.,2 plus 2 equals 5.,\n",
        *[row.rstrip("\n") + ",Be brief.\n" for row in GOOD[1:]],
        header=HEADER.rstrip("\n") + ",system\n",
    )
    result = prepare(
        csv_path, data={"columns": {"system": "system"}}, prepare={"max_drop_fraction": 0.0, **TINY_SPLITS}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(prepare.metrics.read_text())["rows_kept"] == 4


def test_a_corrupt_gzip_body_is_one_line(prepare, tmp_path):
    """Valid gzip magic and header, garbage after: zlib's error is named in one line, nothing written."""
    path = tmp_path / "prefs.csv.gz"
    good = gzip.compress((HEADER + "".join(GOOD)).encode())
    path.write_bytes(good[:10] + bytes(range(7, 250)) + good[-8:])
    msg = assert_error(prepare(path), path, "not a readable gzip file")
    assert prepare.wrote_nothing() and len(msg) < 200


def test_a_nul_byte_anywhere_in_a_text_file_is_refused_naming_its_line(prepare, tmp_path):
    """Past the first 64 KB too: a NUL in row 1,200 of a ~90 KB CSV never reaches the prepared data."""
    rows = [f"Why is the sky blue {i}?,Rayleigh scattering {i}.,Because it is {i}.\n" for i in range(1, 1300)]
    rows[1199] = rows[1199].replace("Why", "Why\x00", 1)
    path = csv_file(tmp_path, *rows)
    assert path.stat().st_size > 65536
    msg = assert_error(prepare(path), path, "a NUL byte at byte", "line 1201")
    assert prepare.wrote_nothing() and len(msg) < 200


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_column_named_twice_is_refused(prepare, tmp_path, kind):
    """Question,Question,...: one column's values would silently overwrite the other's."""
    if kind == "csv":
        path = csv_file(tmp_path, "Q?,Q2?,A.,B.\n", header="Question,Question,More_Prefered,Less_Prefered\n")
        where = "header (line 1)"
    else:
        path = tmp_path / "prefs.parquet"
        table = pa.table(
            [pa.array(["Q?"]), pa.array(["A."]), pa.array(["B."]), pa.array(["C."])],
            names=["Question", "More_Prefered", "Less_Prefered", "Question"],
        )
        pq.write_table(table, path)
        where = "schema"
    msg = assert_error(prepare(path), path, where, "column 'Question'", "named twice (columns 1 and ")
    assert prepare.wrote_nothing() and "rename one" in msg


def test_the_same_filters_on_csv_text_cells(prepare, tmp_path):
    rows = orca_rows()
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(str(r[c]) for c in header) for r in rows]  # True/False, 7.5 as text
    path = tmp_path / "orca.csv"
    path.write_text("\n".join(lines) + "\n")
    result = prepare(
        path,
        data={"columns": {"prompt": "input", "chosen": None, "rejected": None, "system": None}, "filter": BOOK_FILTER},
        prepare={"val_fraction": 0.2, "test_fraction": 0.2},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(prepare.metrics.read_text())["rows_kept"] == 7


def test_a_filter_on_an_unknown_column_names_the_params_key(prepare, tmp_path):
    path = tmp_path / "orca.parquet"
    pq.write_table(pa.Table.from_pylist(orca_rows()), path)
    result = prepare(
        path,
        data={
            "columns": {"prompt": "input", "chosen": None, "rejected": None, "system": None},
            "filter": [{"column": "chosen_scores", "op": ">=", "value": 8}],
        },
    )
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: data.helpful.filter[0].column: no column 'chosen_scores' in {path} (did you mean 'chosen_score'?)"
    )
    assert prepare.wrote_nothing()


def hh_rows(n, empty):
    """n HH rows; the first `empty` of them end with an empty chosen answer, as 4 in 2,312 rows of a real set did."""
    rows = []
    for i in range(n):
        prompt = f"\n\nHuman: Hello {i}\n\nAssistant: Hi!\n\nHuman: What is {i} plus {i}?\n\nAssistant:"
        rows.append(
            {"chosen": prompt + ("" if i < empty else f" {i} plus {i} is {2 * i}."), "rejected": prompt + " No idea."}
        )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_rows_with_an_empty_last_answer_are_dropped_and_counted(prepare, tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_rows(100, empty=4))
    result = prepare(path)  # the defaults: on_bad_row drop, max_drop_fraction 0.05
    assert result.returncode == 0, result.stderr
    metrics = json.loads(prepare.metrics.read_text())
    assert metrics["rows_in"] == 100 and metrics["rows_kept"] == 96
    assert metrics["rows_dropped"] == dropped(empty_answer=4)
    assert "4 {'empty_answer': 4} dropped, 96 kept" in result.stdout


def test_more_bad_rows_than_max_drop_fraction_stops_with_one_line(prepare, tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_rows(100, empty=6))
    msg = assert_error(
        prepare(path),
        path,
        "6 of 100 rows are bad (6.0%, more than prepare.max_drop_fraction=0.05)",
        "empty_answer=6",
        "row 1",
        "column 'chosen'",
        "empty answer",
    )
    assert prepare.wrote_nothing() and len(msg) < 400


def test_on_bad_row_error_stops_at_the_first_bad_row(prepare, tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_rows(100, empty=0) + hh_rows(3, empty=1)[:1])
    assert_error(
        prepare(path, prepare={"on_bad_row": "error"}),
        path,
        "row 101",
        "column 'chosen'",
        "empty answer after the last 'Assistant:' turn",
    )
    assert prepare.wrote_nothing()


def test_a_cell_past_the_csv_field_limit_is_a_too_long_row(prepare, tmp_path):
    huge = "What is huge?,Huge " + "x" * 200_000 + ".,Small.\n"  # the csv module's default limit is 131072
    path = csv_file(tmp_path, *GOOD, huge)
    result = prepare(path, prepare={"max_drop_fraction": 0.25, **TINY_SPLITS})
    assert result.returncode == 0, result.stderr
    assert json.loads(prepare.metrics.read_text())["rows_dropped"] == dropped(too_long=1)


def test_a_binary_file_is_named_as_such_in_a_short_line(prepare, tmp_path):
    path = tmp_path / "model.csv"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # a zip archive renamed to .csv
    msg = assert_error(prepare(path), path, "not a UTF-8 text file (a NUL byte at byte 4, line 1)")
    assert len(msg) < 200 and prepare.wrote_nothing()


def test_quoted_values_in_errors_are_cut_short(prepare, tmp_path):
    path = csv_file(tmp_path, "x;" * 500 + "\n", header="a;" * 1000 + "\n")
    msg = assert_error(prepare(path), path, "semicolon-delimited")
    assert len(msg) < 300 and "..." in msg


def test_the_unsafe_column_marks_prompts_and_a_bad_mark_is_dropped_and_counted(prepare, tmp_path):
    """data.<set>.columns.unsafe: true/false/yes/no/1/0 cells become each pair's unsafe mark; anything else
    is a bad row (bad_flag), dropped and counted."""
    rows = [row.rstrip("\n") + f",{mark}\n" for row, mark in zip(GOOD, ["false", "TRUE", "0", "yes"])]
    path = csv_file(
        tmp_path,
        *rows,
        "How do I pick a lock?,I can't help with that.,Sure! First...,maybe\n",
        header="Question,More_Prefered,Less_Prefered,harmful\n",
    )
    result = prepare(
        path,
        data={"columns": {"prompt": None, "chosen": None, "rejected": None, "system": None, "unsafe": "harmful"}},
        prepare={"max_drop_fraction": 0.25, **TINY_SPLITS},
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(prepare.metrics.read_text())
    assert metrics["rows_dropped"] == dropped(bad_flag=1) and metrics["unsafe_prompts"] == 2
    kept = {
        line["row"]: line["unsafe"]
        for s in ("train", "validation", "test")
        for line in map(json.loads, (prepare.out_dir / f"{s}.jsonl").open())
    }
    assert kept == {1: False, 2: True, 3: False, 4: True}


def test_a_bad_unsafe_mark_with_on_bad_row_error_names_row_and_column(prepare, tmp_path):
    path = csv_file(
        tmp_path, GOOD[0].rstrip("\n") + ",perhaps\n", header="Question,More_Prefered,Less_Prefered,harmful\n"
    )
    result = prepare(
        path,
        data={"columns": {"prompt": None, "chosen": None, "rejected": None, "system": None, "unsafe": "harmful"}},
        prepare={"on_bad_row": "error"},
    )
    assert_error(result, path, "row 1 (line 2), column 'harmful': expected true or false, got 'perhaps'")


def test_an_unsafe_column_that_is_not_there_names_the_key(prepare, tmp_path):
    path = csv_file(tmp_path, *GOOD)
    result = prepare(
        path, data={"columns": {"prompt": None, "chosen": None, "rejected": None, "system": None, "unsafe": "harmfull"}}
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: data.helpful.columns.unsafe: no column 'harmfull' in {path} "
        f"(found columns: 'Question', 'More_Prefered', 'Less_Prefered')"
    )


# ---------------------------------------------------------------- unpaired feedback (KTO)


def test_unpaired_feedback_jsonl_is_found_prepared_and_its_bad_labels_counted(prepare, tmp_path):
    """trl's unpaired format (prompt, completion, label): schema auto finds it; labels may be booleans or
    true/false/yes/no/1/0 text; anything else is a bad row (bad_label), dropped and counted; no judge split."""
    rows = [
        {"prompt": f"Q{i}?", "completion": f"Answer {i}.", "label": label}
        for i, label in enumerate([True, False, "yes", "0", True, True, False, 1])
    ]
    rows.append({"prompt": "Q9?", "completion": "Answer 9.", "label": "maybe"})
    path = tmp_path / "feedback.jsonl"
    write_jsonl(path, rows)
    result = prepare(path, prepare={"max_drop_fraction": 0.2, "judge_fraction": 0.2, **TINY_SPLITS})
    assert result.returncode == 0, result.stderr
    assert "unpaired schema" in result.stdout
    metrics = json.loads(prepare.metrics.read_text())
    assert metrics["rows_dropped"] == dropped(bad_label=1)
    assert (metrics["desirable"], metrics["undesirable"]) == (5, 3) and "chosen_longer_share" not in metrics
    assert metrics["splits"]["judge"] == 0 and sum(metrics["splits"].values()) == 8
    written = [
        json.loads(line) for s in ("train", "validation", "test") for line in (prepare.out_dir / f"{s}.jsonl").open()
    ]
    assert {
        "prompt": [{"role": "user", "content": "Q2?"}],
        "completion": "Answer 2.",
        "label": True,
        "row": 3,
        "unsafe": False,
    } in written


def test_conversational_unpaired_feedback_with_mapped_columns(prepare, tmp_path):
    """Cells holding messages, as trl's conversational unpaired format, under other column names."""
    rows = [
        {
            "messages": [{"role": "user", "content": f"Q{i}?"}],
            "reply": [{"role": "assistant", "content": f"A{i}."}],
            "thumbs_up": i % 3 != 0,
        }
        for i in range(8)
    ]
    rows[5]["reply"] = [{"role": "user", "content": "not an answer"}]  # bad_turn_order, dropped and counted
    path = tmp_path / "kto.jsonl"
    write_jsonl(path, rows)
    columns = {"prompt": "messages", "chosen": None, "rejected": None, "system": None, "unsafe": None, "answer": None}
    result = prepare(
        path,
        data={"schema": "unpaired", "columns": {**columns, "completion": "reply", "label": "thumbs_up"}},
        prepare={"max_drop_fraction": 0.2, **TINY_SPLITS},
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(prepare.metrics.read_text())
    assert metrics["rows_dropped"] == dropped(bad_turn_order=1) and metrics["rows_kept"] == 7
    written = [
        json.loads(line) for s in ("train", "validation", "test") for line in (prepare.out_dir / f"{s}.jsonl").open()
    ]
    assert {
        "prompt": [{"role": "user", "content": "Q1?"}],
        "completion": "A1.",
        "label": True,
        "row": 2,
        "unsafe": False,
    } in written


def test_an_unpaired_file_without_its_label_column_names_it(prepare, tmp_path):
    path = tmp_path / "feedback.jsonl"
    write_jsonl(path, [{"prompt": "Q?", "completion": "A.", "thumbs": True}])
    result = prepare(path, data={"schema": "unpaired"})
    assert_error(result, path, "column 'label': missing, needed by the unpaired schema")
