"""Preference data: read raw files, validate, normalise, split, summarise.

Every pair is normalised to one naming scheme, `prompt`, `chosen`, `rejected`
(as in the DPO reference code), whatever the input's column names.

Bad input raises DataError with one line naming the file, the row (counted from
1, header excluded), the line where the format has lines, and the column.
Rows that are better dropped than fixed (exact duplicates, chosen identical to
rejected, and over-long rows when asked) are dropped and counted by reason.
"""

import csv
import difflib
import gzip
import io
import json
import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import DataError

SCHEMAS = {
    "reference": ("Question", "More_Prefered", "Less_Prefered"),
    "prompt_chosen_rejected": ("prompt", "chosen", "rejected"),
    "hh": ("chosen", "rejected"),
}
HH_TURN = "\n\nAssistant:"
# Cell texts that mean "no value" in files written by pandas, spreadsheets and databases.
NA_STRINGS = {"nan", "NaN", "NAN", "-nan", "null", "NULL", "<NA>", "#N/A"}
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Record:
    """One raw row: `row` counts data rows from 1; `line` is its first line in the file, if any."""

    row: int
    line: int | None
    values: dict


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    row: int  # the row in the raw file, for provenance


def where(path, rec, column=None):
    """'data.csv: row 3 (line 4), column 'Question'' -- the location part of an error."""
    out = f"{path}: row {rec.row}"
    if rec.line is not None and rec.line != rec.row:
        out += f" (line {rec.line})"
    return out + (f", column '{column}'" if column is not None else "")


# ---------------------------------------------------------------- reading


def read_table(path):
    """Read a CSV, JSONL or Parquet file into (column names, [Record])."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffixes = [s.lower() for s in path.suffixes]
    compressed = suffixes[-1:] == [".gz"]
    kind = suffixes[-2 if compressed else -1] if suffixes else ""
    if kind == ".parquet" and not compressed:
        return _read_parquet(path)
    raw = path.read_bytes()
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a readable gzip file ({err})") from None
    if kind == ".csv":
        return _read_csv(path, raw)
    if kind in (".jsonl", ".ndjson"):
        return _read_jsonl(path, raw)
    raise DataError(f"{path}: unsupported file type '{''.join(path.suffixes)}' (expected .csv, .jsonl or .parquet)")


def _read_csv(path, raw):
    # surrogateescape keeps undecodable bytes as lone surrogates, so the row and
    # column holding them can be named once the CSV is parsed.
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file (no header row)")
        for col in header:
            _check_utf8(path, Record(0, 1, {}), col, col, header=True)
        if len(header) == 1:
            for sep, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
                if sep in header[0]:
                    raise DataError(
                        f"{path}: header (line 1), column {header[0]!r}: found one column; the file looks "
                        f"{name}-delimited, but CSV input must be comma-delimited"
                    )
        records, start = [], reader.line_num + 1
        for values in reader:
            rec = Record(len(records) + 1, start, {})
            start = reader.line_num + 1
            if values == []:  # a blank line
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{where(path, rec)}: expected {len(header)} fields, got {len(values)} "
                    "(check the delimiter and the quoting)"
                )
            records.append(Record(rec.row, rec.line, dict(zip(header, values))))
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None
    return header, records


def _read_jsonl(path, raw):
    records, columns = [], None
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        rec = Record(len(records) + 1, n, {})
        try:
            obj = json.loads(line.decode("utf-8", errors="surrogateescape"))
        except json.JSONDecodeError as err:
            raise DataError(f"{where(path, rec)}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where(path, rec)}: expected a JSON object, got {type(obj).__name__}")
        columns = columns if columns is not None else list(obj)
        records.append(Record(rec.row, n, obj))
    return columns or [], records


def _read_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return table.column_names, [Record(i, None, v) for i, v in enumerate(table.to_pylist(), start=1)]


# ---------------------------------------------------------------- schema


def detect_schema(path, columns, schema):
    """Return the schema name to use; raise naming the missing column."""
    if schema == "auto":
        fitting = [name for name, cols in SCHEMAS.items() if set(cols) <= set(columns)]
        if fitting:
            return fitting[0]  # reference, then prompt/chosen/rejected, then hh
        # The closest schema is the one most of whose columns are present or nearly so.
        schema = max(SCHEMAS, key=lambda s: sum(bool(difflib.get_close_matches(c, columns, 1)) for c in SCHEMAS[s]))
    missing = [c for c in SCHEMAS[schema] if c not in columns]
    if missing:
        # A near miss is a column the schema does not already use: More_Prefered is no misspelt Less_Prefered.
        close = difflib.get_close_matches(missing[0], [c for c in columns if c not in SCHEMAS[schema]], n=1)
        hint = f"found '{close[0]}' -- check the spelling" if close else f"found columns: {', '.join(map(repr, columns))}"
        raise DataError(f"{path}: header, column '{missing[0]}': missing, needed by the {schema} schema ({hint})")
    return schema


# ---------------------------------------------------------------- cleaning


def _check_utf8(path, rec, column, text, header=False):
    bad = next((i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff"), None)
    if bad is not None:
        byte = ord(text[bad]) - 0xDC00
        loc = f"{path}: header (line 1), column {column!r}" if header else where(path, rec, column)
        raise DataError(f"{loc}: bytes that are not UTF-8 (0x{byte:02x} at character {bad + 1})")


def cell_text(path, rec, column, strip=True):
    """The text of one cell (stripped unless strip=False), or DataError for a missing, non-text or empty value."""
    value = rec.values.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise DataError(f"{where(path, rec, column)}: missing value (NaN/null)")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where(path, rec, column)}: bytes that are not UTF-8 (at byte {err.start})") from None
    if not isinstance(value, str):
        raise DataError(f"{where(path, rec, column)}: expected text, got {type(value).__name__} {value!r}")
    _check_utf8(path, rec, column, value)
    text = value.strip()
    if not text:
        raise DataError(f"{where(path, rec, column)}: empty cell")
    if text in NA_STRINGS:
        raise DataError(f"{where(path, rec, column)}: missing value ({text!r})")
    return text if strip else value


def split_hh(path, rec, chosen, rejected):
    """Split two Anthropic-HH dialogues into (prompt, chosen answer, rejected answer).

    The prompt is the shared prefix up to and including the last 'Assistant:' turn.
    """
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    cut = chosen[:common].rfind(HH_TURN)
    if cut < 0:
        raise DataError(f"{where(path, rec, 'chosen')}: no '\\n\\nAssistant:' turn shared with column 'rejected'")
    prompt = chosen[: cut + len(HH_TURN)]
    return prompt.strip(), chosen[len(prompt) :].strip(), rejected[len(prompt) :].strip()


def to_pairs(path, schema, records, max_chars, on_too_long):
    """Validate records into Pairs; return (pairs, Counter of dropped rows by reason)."""
    pairs, dropped, seen = [], Counter(), set()
    columns = SCHEMAS[schema]
    for rec in records:
        texts = {}
        for column in columns:
            # HH cells are whole dialogues whose leading "\n\nHuman:" is part of the format
            texts[column] = cell_text(path, rec, column, strip=schema != "hh")
        too_long = next((c for c in columns if len(texts[c]) > max_chars), None)
        if too_long is not None:
            if on_too_long == "error":
                raise DataError(
                    f"{where(path, rec, too_long)}: text of {len(texts[too_long])} characters is longer than "
                    f"prepare.max_chars={max_chars} (raise it, or set prepare.on_too_long: drop)"
                )
            dropped["too_long"] += 1
            continue
        if schema == "hh":
            prompt, chosen, rejected = split_hh(path, rec, texts["chosen"], texts["rejected"])
            for column, answer in (("chosen", chosen), ("rejected", rejected)):
                if not answer:
                    raise DataError(f"{where(path, rec, column)}: empty answer after the last 'Assistant:' turn")
        else:
            prompt, chosen, rejected = (texts[c] for c in columns)
        if chosen == rejected:
            dropped["identical_pair"] += 1
        elif (prompt, chosen, rejected) in seen:
            dropped["duplicate"] += 1
        else:
            seen.add((prompt, chosen, rejected))
            pairs.append(Pair(prompt, chosen, rejected, rec.row))
    if not pairs:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none"
        raise DataError(f"{path}: no rows left after cleaning ({len(records)} read; dropped: {reasons})")
    return pairs, dropped


# ---------------------------------------------------------------- splitting


def split_pairs(pairs, val_fraction, test_fraction, seed, path="data"):
    """Seeded split into train/validation/test; all pairs of one prompt share a split.

    Prompts are shuffled with `seed`, then test and validation take whole prompt
    groups until they hold their fraction of the rows; train takes the rest.
    """
    groups = {}
    for pair in pairs:
        groups.setdefault(pair.prompt, []).append(pair)
    order = list(groups)
    random.Random(seed).shuffle(order)
    splits = {name: [] for name in SPLITS}
    targets = {"test": test_fraction * len(pairs), "validation": val_fraction * len(pairs)}
    for prompt in order:
        name = next((s for s in ("test", "validation") if len(splits[s]) < targets[s]), "train")
        splits[name].extend(groups[prompt])
    empty = [name for name in SPLITS if not splits[name] and (name == "train" or targets[name] > 0)]
    if empty:
        raise DataError(
            f"{path}: {len(pairs)} rows in {len(groups)} prompt groups are too few to split with "
            f"prepare.val_fraction={val_fraction} and prepare.test_fraction={test_fraction}: "
            f"the {empty[0]} split would be empty"
        )
    return splits


# ---------------------------------------------------------------- output


def describe(rows_in, pairs, dropped, splits):
    """The contents of metrics/data.json."""

    def stats(values):
        return {"mean": round(statistics.fmean(values), 2), "median": statistics.median(values),
                "min": min(values), "max": max(values)}

    return {
        "rows_in": rows_in,
        "rows_kept": len(pairs),
        "rows_dropped": {reason: dropped.get(reason, 0) for reason in ("duplicate", "identical_pair", "too_long")},
        "splits": {name: len(rows) for name, rows in splits.items()},
        "chars": {field: stats([len(getattr(p, field)) for p in pairs]) for field in ("prompt", "chosen", "rejected")},
        # Share of pairs whose chosen answer is the longer one: near 0.5 means length alone does not separate them.
        "chosen_longer_share": round(sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs), 4),
    }


def write_split(path, pairs):
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "row": p.row},
                               ensure_ascii=False) + "\n")


def read_split(path):
    """Read one prepared split (JSONL written by write_split) back into Pairs."""
    with open(path, encoding="utf-8") as f:
        return [Pair(**json.loads(line)) for line in f]


def read_splits(directory, *names):
    """read_split of each named split ('train', 'validation', 'test') in a prepared directory."""
    return [read_split(Path(directory) / f"{name}.jsonl") for name in names]
