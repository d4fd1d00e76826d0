"""Preference data: read raw files, map columns, filter, validate, turn into conversations, split, summarise.

Every pair is normalised to one naming scheme, `prompt`, `chosen`, `rejected`
(as in the DPO reference code), whatever the input's column names: the prompt is
a conversation (a tuple of conversation.Message), chosen and rejected the text
of the final assistant turn.

File-level problems (unreadable file, missing column, malformed CSV or JSON)
raise DataError with one line naming the file and, where it has them, the row
(counted from 1, header excluded), line and column. Row-level problems raise
BadRow, which the caller drops and counts by reason (prepare.on_bad_row: drop)
or turns into the error (on_bad_row: error). Quoted values are cut short.
"""

import csv
import dataclasses
import difflib
import gzip
import io
import json
import math
import random
import statistics
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from alignkit.conversation import Message, as_text, from_json, parse_hh, parse_messages, single_turn, to_json
from alignkit.errors import BadRow, DataError, show

# Each schema's column for each part of a pair; data.columns overrides them one by one.
SCHEMAS = {
    "reference": {"prompt": "Question", "chosen": "More_Prefered", "rejected": "Less_Prefered"},
    "prompt_chosen_rejected": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    "hh": {"chosen": "chosen", "rejected": "rejected"},
    # trl's conversational format: cells hold lists of {role, content} messages. Explicit prompt: prompt holds the
    # conversation so far, chosen and rejected the assistant's turn. Implicit prompt: chosen and rejected hold
    # whole conversations; the prompt is their shared opening (a prompt column, if any, is not read).
    "conversational": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    # Unpaired feedback (KTO; trl's unpaired preference format): a prompt, one completion and a label, true where
    # the completion is desirable (thumbs up). Prompt and completion cells may hold text or lists of messages.
    "unpaired": {"prompt": "prompt", "completion": "completion", "label": "label"},
}
PAIR_PARTS, FEEDBACK_PARTS = ("chosen", "rejected"), ("completion", "label")
HH_TURN = "\n\nAssistant:"
# Cell texts that mean "no value" in files written by pandas, spreadsheets and databases.
NA_STRINGS = {"nan", "NaN", "NAN", "-nan", "null", "NULL", "<NA>", "#N/A"}
# judge: pairs held out for the judges (reward models only evaluation reads), seen by nothing that trains a policy.
SPLITS = ("train", "validation", "test", "judge")
# Why a row was dropped; metrics/data.json counts every one of them.
BAD_ROW_REASONS = (
    "empty_cell",
    "not_text",
    "not_utf8",
    "too_long",
    "no_shared_prompt",
    "malformed_dialogue",
    "empty_answer",
    "identical_pair",
    "duplicate",
    "bad_flag",
    # conversational cells (lists of {role, content}):
    "malformed_messages",  # not a list of {role, content} with text content
    "bad_role",  # a role other than system, user, assistant
    "empty_turn",  # a message with empty content
    "bad_turn_order",  # turns that do not alternate, a prompt not ending with the user, an answer not one turn
    # unpaired feedback:
    "bad_label",  # a label that is not true or false
)


@dataclass(frozen=True)
class Record:
    """One raw row: `row` counts data rows from 1; `line` is its first line in the file, if any."""

    row: int
    line: int | None
    values: dict


@dataclass(frozen=True)
class Pair:
    prompt: tuple  # of conversation.Message, ending with a user turn
    chosen: str
    rejected: str
    row: int  # the row in the raw file, for provenance
    unsafe: bool = False  # the prompt asks for something to decline (data.<set>.columns.unsafe)
    source: str = ""  # the data set it was prepared in (read_sets sets it; not written to the splits)
    answer: str = ""  # the expected answer that verifiable rules check (data.<set>.columns.answer); "": none


@dataclass(frozen=True)
class Feedback:
    """One unpaired answer with a thumbs up or down (schema unpaired): what KTO learns from."""

    prompt: tuple  # of conversation.Message, ending with a user turn
    completion: str
    desirable: bool  # the label: true, a desirable answer
    row: int
    unsafe: bool = False
    source: str = ""


def unpair(pairs):
    """Preference pairs as 2n unpaired examples: each chosen answer desirable, each rejected one not."""
    return [
        Feedback(p.prompt, answer, desirable, p.row, p.unsafe, p.source)
        for p in pairs
        for answer, desirable in ((p.chosen, True), (p.rejected, False))
    ]


def feedback_pairs(items):
    """Preference pairs from unpaired feedback: in each prompt's examples, every undesirable answer against a
    desirable one (taken in turn); pairs among items pass through. Prompts with one kind of answer give none."""
    pairs, groups = [], {}
    for item in items:
        if isinstance(item, Pair):
            pairs.append(item)
        else:
            groups.setdefault(item.prompt, ([], []))[0 if item.desirable else 1].append(item)
    for good, bad in groups.values():
        for k, b in enumerate(bad if good else []):
            g = good[k % len(good)]
            if g.completion != b.completion:
                pairs.append(Pair(g.prompt, g.completion, b.completion, b.row, b.unsafe, b.source))
    return pairs


def where(path, rec, column=None):
    """'data.csv: row 3 (line 4), column 'Question'' -- the location part of an error."""
    out = f"{path}: row {rec.row}"
    if rec.line is not None and rec.line != rec.row:
        out += f" (line {rec.line})"
    return out + (f", column {show(column)}" if column is not None else "")


def _listing(columns, limit=8):
    """'a', 'b', ... (and N more): found columns for a one-line error."""
    shown = ", ".join(show(c, 30) for c in columns[:limit])
    return shown + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


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
        except (OSError, EOFError, zlib.error) as err:  # a bad header, a cut-off or a corrupt body
            raise DataError(f"{path}: not a readable gzip file ({err})") from None
    nul = raw.find(b"\x00")  # anywhere in the file: no text cell holds one
    if kind in (".csv", ".jsonl", ".ndjson") and nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise DataError(
            f"{path}: not a UTF-8 text file (a NUL byte at byte {nul}, line {line}); expected {kind[1:]} text"
        )
    if kind == ".csv":
        return _read_csv(path, raw)
    if kind in (".jsonl", ".ndjson"):
        return _read_jsonl(path, raw)
    raise DataError(f"{path}: unsupported file type {show(''.join(path.suffixes))} (expected .csv, .jsonl or .parquet)")


def _read_csv(path, raw):
    # surrogateescape keeps undecodable bytes as lone surrogates, so the row and
    # column holding them can be named once the CSV is parsed.
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    # No field limit here: an over-long cell is a too-long row (prepare.max_chars), not a broken file.
    limit = csv.field_size_limit(2**31 - 1)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file (no header row)")
        for col in header:
            _check_utf8(path, Record(0, 1, {}), col, col, header=True)
        _no_duplicate_columns(path, header, "header (line 1)")
        if len(header) == 1:
            for sep, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
                if sep in header[0]:
                    raise DataError(
                        f"{path}: header (line 1), column {show(header[0])}: found one column; the file looks "
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
    finally:
        csv.field_size_limit(limit)
    return header, records


def _no_duplicate_columns(path, columns, where_):
    """A column named twice would have one of its values silently overwrite the other's."""
    seen = {}
    for i, column in enumerate(columns, start=1):
        if column in seen:
            raise DataError(
                f"{path}: {where_}, column {show(column)}: named twice (columns {seen[column]} and {i}); "
                "rename one of them"
            )
        seen[column] = i


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
        _no_duplicate_columns(path, pq.read_schema(path).names, "schema")
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable Parquet file ({first})") from None
    return table.column_names, [Record(i, None, v) for i, v in enumerate(table.to_pylist(), start=1)]


# ---------------------------------------------------------------- schema


def resolve_columns(path, columns, schema, mapping, key="data", records=()):
    """(schema name, {part: column}) for a file with `columns`; DataError naming what is missing.

    mapping: data.<set>.columns as a dict (part -> column or None), key that set's params key (errors name
    it). auto picks the first schema whose columns, after the mapping, are all present: reference, then
    prompt/chosen/rejected, then hh -- and conversational instead of the last two when the first of `records`
    with a chosen value holds a list of messages there. The unsafe flag's column, when mapped, is in the layout
    as "unsafe"."""
    every_unsafe = mapping.get("unsafe") is True  # every prompt is one to decline: no column to read
    mapped = {part: column for part, column in mapping.items() if column is not None and column is not True}
    for part, column in mapped.items():
        if column not in columns:
            close = difflib.get_close_matches(column, columns, n=1)
            hint = f"did you mean {show(close[0])}?" if close else f"found columns: {_listing(columns)}"
            raise DataError(f"{key}.columns.{part}: no column {show(column)} in {path} ({hint})")

    def layout(name):
        if name == "hh" and "prompt" in mapped:
            return None
        other = PAIR_PARTS if name == "unpaired" else FEEDBACK_PARTS  # the other kind's parts are not read
        out = {**SCHEMAS[name], **{part: c for part, c in mapped.items() if part not in other}}
        if name == "conversational" and "prompt" not in mapped and out["prompt"] not in columns:
            del out["prompt"]  # the implicit prompt: chosen and rejected share it
        return out

    if schema == "hh" and "prompt" in mapped:
        raise DataError(
            f"{key}.columns.prompt: the hh schema takes the prompt from the dialogues in {path}; set it to null"
        )
    if schema == "auto":
        fitting = [name for name in SCHEMAS if layout(name) and set(layout(name).values()) <= set(columns)]
        if fitting:
            name = fitting[0]
            if name not in ("reference", "unpaired") and _holds_messages(records, layout(name)["chosen"]):
                name = "conversational"
            return name, {**layout(name), **({"unsafe": True} if every_unsafe else {})}
        # The closest schema is the one most of whose columns are present or nearly so.
        schema = max(
            (name for name in SCHEMAS if layout(name)),
            key=lambda name: sum(bool(difflib.get_close_matches(c, columns, 1)) for c in layout(name).values()),
        )
    wanted = layout(schema)
    missing = [c for c in wanted.values() if c not in columns]
    if missing:
        # A near miss is a column the schema does not already use: More_Prefered is no misspelt Less_Prefered.
        close = difflib.get_close_matches(missing[0], [c for c in columns if c not in wanted.values()], n=1)
        hint = f"found {show(close[0])} -- check the spelling" if close else f"found columns: {_listing(columns)}"
        raise DataError(f"{path}: header, column {show(missing[0])}: missing, needed by the {schema} schema ({hint})")
    return schema, {**wanted, **({"unsafe": True} if every_unsafe else {})}


def _holds_messages(records, column):
    """Whether the first non-empty value of `column` is a list of messages (a JSON list, in a CSV)."""
    value = next((r.values.get(column) for r in records if not _empty(r.values.get(column))), None)
    return isinstance(value, (list, tuple)) or (isinstance(value, str) and value.lstrip().startswith("[{"))


# ---------------------------------------------------------------- filtering


def condition_label(condition):
    """'chosen_score >= 8': how a condition is named in metrics/data.json and in errors."""
    return f"{condition.column} {condition.op} {json.dumps(condition.value, ensure_ascii=False)}"


_COMPARE = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "in": lambda a, b: a in b,
}
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _as_kind_of(cell, like):
    """The cell read as the kind of `like` (bool, number or str), or raise ValueError."""
    if isinstance(like, bool):
        if isinstance(cell, bool):
            return cell
        if isinstance(cell, str) and cell.strip().lower() in _TRUE | _FALSE:
            return cell.strip().lower() in _TRUE
        if isinstance(cell, int) and cell in (0, 1):
            return bool(cell)
        raise ValueError("a boolean")
    if isinstance(like, (int, float)):
        if isinstance(cell, (int, float)) and not isinstance(cell, bool):
            return cell
        try:
            number = float(cell) if isinstance(cell, str) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise ValueError("a number")
        return number
    if isinstance(cell, str):
        return cell.strip()
    raise ValueError("a string")


def _empty(cell):
    return (
        cell is None
        or (isinstance(cell, float) and math.isnan(cell))
        or (isinstance(cell, str) and (not cell.strip() or cell.strip() in NA_STRINGS))
    )


def apply_filters(path, columns, records, conditions, key="data"):
    """(records where every condition holds, Counter of removed rows by the first condition they fail).

    An empty cell fails its condition. An unknown column, or a cell that cannot be read as the
    condition value's kind, is a DataError naming the params key <key>.filter[i]."""
    for i, c in enumerate(conditions):
        if c.column not in columns:
            close = difflib.get_close_matches(c.column, columns, n=1)
            hint = f"did you mean {show(close[0])}?" if close else f"found columns: {_listing(columns)}"
            raise DataError(f"{key}.filter[{i}].column: no column {show(c.column)} in {path} ({hint})")
    kept, removed = [], Counter({condition_label(c): 0 for c in conditions})
    for rec in records:
        for i, c in enumerate(conditions):
            cell = rec.values.get(c.column)
            if _empty(cell):
                holds = False
            else:
                values = c.value if c.op == "in" else [c.value]
                try:
                    holds = _COMPARE[c.op](_as_kind_of(cell, values[0]), c.value)
                except ValueError as kind:
                    raise DataError(
                        f"{key}.filter[{i}] ({condition_label(c)}): {where(path, rec, c.column)}: "
                        f"{show(cell)} is not {kind}"
                    ) from None
            if not holds:
                removed[condition_label(c)] += 1
                break
        else:
            kept.append(rec)
    return kept, removed


# ---------------------------------------------------------------- cleaning


def _check_utf8(path, rec, column, text, header=False):
    bad = next((i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff"), None)
    if bad is not None:
        byte = ord(text[bad]) - 0xDC00
        message = f"bytes that are not UTF-8 (0x{byte:02x} at character {bad + 1})"
        if header:
            raise DataError(f"{path}: header (line 1), column {show(column)}: {message}")
        raise BadRow("not_utf8", f"{where(path, rec, column)}: {message}")


def cell_text(path, rec, column, strip=True):
    """The text of one cell (stripped unless strip=False), or BadRow for a missing, non-text or empty value."""
    value = rec.values.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise BadRow("empty_cell", f"{where(path, rec, column)}: missing value (NaN/null)")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRow(
                "not_utf8", f"{where(path, rec, column)}: bytes that are not UTF-8 (at byte {err.start})"
            ) from None
    if not isinstance(value, str):
        hint = " (a list of messages? schema conversational reads them)" if isinstance(value, (list, tuple)) else ""
        raise BadRow(
            "not_text", f"{where(path, rec, column)}: expected text, got {type(value).__name__} {show(value)}{hint}"
        )
    _check_utf8(path, rec, column, value)
    text = value.strip()
    if not text:
        raise BadRow("empty_cell", f"{where(path, rec, column)}: empty cell")
    if text in NA_STRINGS:
        raise BadRow("empty_cell", f"{where(path, rec, column)}: missing value ({text!r})")
    return text if strip else value


def split_hh(path, rec, chosen, rejected):
    """Split two Anthropic-HH dialogues into (prompt text, chosen answer, rejected answer).

    The prompt is the shared prefix up to and including the last 'Assistant:' turn.
    """
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    cut = chosen[:common].rfind(HH_TURN)
    if cut < 0:
        raise BadRow(
            "no_shared_prompt",
            f"{where(path, rec, 'chosen')}: no '\\n\\nAssistant:' turn shared with column 'rejected'",
        )
    prompt = chosen[: cut + len(HH_TURN)]
    return prompt.strip(), chosen[len(prompt) :].strip(), rejected[len(prompt) :].strip()


def row_pair(path, schema, layout, rec, max_chars):
    """One record -> Pair, or BadRow. layout: {part: column} from resolve_columns."""
    layout = dict(layout)
    column = layout.pop("unsafe", None)
    unsafe = column is True or (column is not None and unsafe_flag(path, rec, column))
    expected = expected_answer(path, rec, layout.pop("answer", None))
    if schema == "conversational":
        return dataclasses.replace(conversation_pair(path, rec, layout, max_chars, unsafe), answer=expected)
    texts = {}
    for part, column in layout.items():
        try:
            # HH cells are whole dialogues whose leading "\n\nHuman:" is part of the format
            texts[part] = cell_text(path, rec, column, strip=schema != "hh" or part == "system")
        except BadRow as bad:
            if part == "system" and bad.reason == "empty_cell":  # a system prompt is optional: no system turn
                continue
            raise
    too_long = next((part for part in texts if len(texts[part]) > max_chars), None)
    if too_long is not None:
        raise BadRow(
            "too_long",
            f"{where(path, rec, layout[too_long])}: text of {len(texts[too_long])} characters "
            f"is longer than prepare.max_chars={max_chars}",
        )
    system = texts.get("system")
    if schema == "hh":
        prompt, chosen, rejected = split_hh(path, rec, texts["chosen"], texts["rejected"])
        for part, answer in (("chosen", chosen), ("rejected", rejected)):
            if not answer:
                raise BadRow(
                    "empty_answer", f"{where(path, rec, layout[part])}: empty answer after the last 'Assistant:' turn"
                )
        turns = parse_hh(prompt)
        if turns is None:
            raise BadRow(
                "malformed_dialogue",
                f"{where(path, rec, layout['chosen'])}: the dialogue does not start with 'Human:' or has an empty turn",
            )
        messages = ((Message("system", system),) if system else ()) + turns
    else:
        messages, chosen, rejected = single_turn(texts["prompt"], system), texts["chosen"], texts["rejected"]
    if chosen == rejected:
        raise BadRow(
            "identical_pair",
            f"{where(path, rec, layout['chosen'])}: the same answer as column {show(layout['rejected'])}",
        )
    return Pair(messages, chosen, rejected, rec.row, unsafe, answer=expected)


def expected_answer(path, rec, column):
    """The expected answer of a row (data.<set>.columns.answer), as text: "" where there is no column or the cell is
    empty (not every prompt has one); a number (JSONL, Parquet) is written as text, 480.0 as 480."""
    if column is None:
        return ""
    value = rec.values.get(column)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return cell_text(path, rec, column)
        except BadRow as bad:
            if bad.reason == "empty_cell":
                return ""
            raise
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def cell_messages(path, rec, column):
    """The messages of one conversational cell (a list of {role, content}, or that list as JSON text), or BadRow."""
    value = rec.values.get(column)
    if _empty(value):
        raise BadRow("empty_cell", f"{where(path, rec, column)}: missing value")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(
                "malformed_messages", f"{where(path, rec, column)}: expected a list of messages, got text {show(value)}"
            ) from None
    messages, bad = parse_messages(value)
    if bad:
        raise BadRow(bad[0], f"{where(path, rec, column)}: {bad[1]}")
    return messages


def _conversation_prompt(path, rec, layout, chosen, rejected):
    """(prompt, chosen turns, rejected turns, the prompt's column) of a conversational row: implicit or explicit."""
    if any(m.role != "assistant" for m in chosen + rejected):  # implicit prompt: whole conversations
        common = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        prompt = chosen[:common]
        while prompt and prompt[-1].role != "user":
            prompt = prompt[:-1]
        if not prompt:
            raise BadRow(
                "no_shared_prompt",
                f"{where(path, rec, layout['chosen'])}: no opening user turn shared with column "
                f"{show(layout['rejected'])}",
            )
        return prompt, chosen[len(prompt) :], rejected[len(prompt) :], layout["chosen"]
    if "prompt" not in layout:
        raise BadRow(
            "no_shared_prompt", f"{where(path, rec, layout['chosen'])}: only assistant turns, and no prompt column"
        )
    value = rec.values.get(layout["prompt"])
    if isinstance(value, str) and not value.lstrip().startswith("["):  # a plain question
        return single_turn(cell_text(path, rec, layout["prompt"])), chosen, rejected, layout["prompt"]
    return cell_messages(path, rec, layout["prompt"]), chosen, rejected, layout["prompt"]


def with_system(path, rec, layout, prompt):
    """`prompt` (messages) behind the system turn in the layout's system column, if it has one and the prompt has
    none of its own; an empty system cell is no system turn (a system prompt is optional)."""
    if "system" not in layout or prompt[0].role == "system":
        return prompt
    try:
        return (Message("system", cell_text(path, rec, layout["system"])),) + prompt
    except BadRow as bad:
        if bad.reason != "empty_cell":
            raise
        return prompt


def conversation_pair(path, rec, layout, max_chars, unsafe):
    """A row of trl's conversational format -> Pair (the prompt keeps its system turn), or BadRow."""
    chosen, rejected = (cell_messages(path, rec, layout[part]) for part in ("chosen", "rejected"))
    prompt, chosen, rejected, prompt_column = _conversation_prompt(path, rec, layout, chosen, rejected)
    prompt = with_system(path, rec, layout, prompt)
    if prompt[-1].role != "user":
        raise BadRow("bad_turn_order", f"{where(path, rec, prompt_column)}: the prompt does not end with a user turn")
    for part, answer in (("chosen", chosen), ("rejected", rejected)):
        if [m.role for m in answer] != ["assistant"]:
            got = " > ".join(m.role for m in answer)[:60]
            raise BadRow(
                "bad_turn_order" if answer else "empty_answer",
                f"{where(path, rec, layout[part])}: expected one assistant turn after the prompt, got {got or 'none'}",
            )
    texts = [(prompt_column, m.content) for m in prompt] + [
        (layout[p], a[0].content) for p, a in (("chosen", chosen), ("rejected", rejected))
    ]
    for column, text in texts:
        if len(text) > max_chars:
            raise BadRow(
                "too_long",
                f"{where(path, rec, column)}: text of {len(text)} characters is longer than "
                f"prepare.max_chars={max_chars}",
            )
    if chosen == rejected:
        raise BadRow(
            "identical_pair",
            f"{where(path, rec, layout['chosen'])}: the same answer as column {show(layout['rejected'])}",
        )
    return Pair(prompt, chosen[0].content, rejected[0].content, rec.row, unsafe)


def _turn_text(path, rec, column, role):
    """A cell holding text, or a list of messages: (messages, their text) -- one user question or a conversation
    ending with the user (role user), or one assistant answer (role assistant)."""
    value = rec.values.get(column)
    if isinstance(value, str) and not value.lstrip().startswith("["):
        text = cell_text(path, rec, column)
        return (single_turn(text) if role == "user" else (Message("assistant", text),)), [text]
    messages = cell_messages(path, rec, column)
    if role == "user" and messages[-1].role != "user":
        raise BadRow("bad_turn_order", f"{where(path, rec, column)}: the prompt does not end with a user turn")
    if role == "assistant" and [m.role for m in messages] != ["assistant"]:
        got = " > ".join(m.role for m in messages)[:60]
        raise BadRow("bad_turn_order", f"{where(path, rec, column)}: expected one assistant turn, got {got}")
    return messages, [m.content for m in messages]


def row_feedback(path, layout, rec, max_chars):
    """One record of the unpaired schema -> Feedback, or BadRow."""
    column = layout.get("unsafe")
    unsafe = column is True or (column is not None and unsafe_flag(path, rec, column))
    prompt, texts = _turn_text(path, rec, layout["prompt"], "user")
    prompt = with_system(path, rec, layout, prompt)
    answer, answer_texts = _turn_text(path, rec, layout["completion"], "assistant")
    for part, text in [("prompt", t) for t in texts] + [("completion", t) for t in answer_texts]:
        if len(text) > max_chars:
            raise BadRow(
                "too_long",
                f"{where(path, rec, layout[part])}: text of {len(text)} characters is longer than "
                f"prepare.max_chars={max_chars}",
            )
    value = rec.values.get(layout["label"])
    if _empty(value):
        raise BadRow("empty_cell", f"{where(path, rec, layout['label'])}: missing value")
    try:
        desirable = _as_kind_of(value.decode("utf-8") if isinstance(value, bytes) else value, True)
    except (ValueError, UnicodeDecodeError):
        raise BadRow(
            "bad_label", f"{where(path, rec, layout['label'])}: expected true or false, got {show(value)}"
        ) from None
    return Feedback(prompt, answer[0].content, desirable, rec.row, unsafe)


def unsafe_flag(path, rec, column):
    """The unsafe mark of a row: a boolean, 0/1, or true/false/yes/no/1/0 text; BadRow otherwise."""
    value = rec.values.get(column)
    if _empty(value):
        raise BadRow("empty_cell", f"{where(path, rec, column)}: missing value")
    try:
        return _as_kind_of(value.decode("utf-8") if isinstance(value, bytes) else value, True)
    except (ValueError, UnicodeDecodeError):
        raise BadRow("bad_flag", f"{where(path, rec, column)}: expected true or false, got {show(value)}") from None


def to_pairs(path, schema, layout, records, cfg):
    """Validate records into Pairs (Feedback with schema unpaired); return (them, Counter of dropped rows by reason).

    cfg: the `prepare` params (max_chars, on_bad_row, max_drop_fraction). With on_bad_row: error
    the first bad row stops the stage; with drop, more than max_drop_fraction of the rows does."""
    pairs, dropped, seen, first = [], Counter(), set(), {}
    for rec in records:
        try:
            if schema == "unpaired":
                pair = row_feedback(path, layout, rec, cfg.max_chars)
                key = (pair.prompt, pair.completion, pair.desirable)
            else:
                pair = row_pair(path, schema, layout, rec, cfg.max_chars)
                key = (pair.prompt, pair.chosen, pair.rejected)
            if key in seen:
                raise BadRow("duplicate", f"{where(path, rec)}: the same prompt and answers as an earlier row")
        except BadRow as bad:
            if cfg.on_bad_row == "error":
                raise DataError(f"{bad} (prepare.on_bad_row: drop would drop and count it)") from None
            dropped[bad.reason] += 1
            first.setdefault(bad.reason, str(bad))
            continue
        seen.add(key)
        pairs.append(pair)
    total = sum(dropped.values())
    counts = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none"
    if records and total > cfg.max_drop_fraction * len(records):
        example = first[max(dropped, key=dropped.get)]
        raise DataError(
            f"{path}: {total} of {len(records)} rows are bad ({total / len(records):.1%}, more than "
            f"prepare.max_drop_fraction={cfg.max_drop_fraction}): {counts}; e.g. {example}"
        )
    if not pairs:
        raise DataError(f"{path}: no rows left after cleaning ({len(records)} read; dropped: {counts})")
    return pairs, dropped


# ---------------------------------------------------------------- splitting


def sample_pairs(pairs, max_rows, seed):
    """At most max_rows of the pairs (None: all), a sample drawn with `seed`, in their file order."""
    if max_rows is None or len(pairs) <= max_rows:
        return pairs
    keep = set(random.Random(seed).sample(range(len(pairs)), max_rows))
    return [p for i, p in enumerate(pairs) if i in keep]


def split_pairs(pairs, val_fraction, test_fraction, seed, path="data", judge_fraction=0.0):
    """Seeded split into train/validation/test/judge; all pairs of one prompt share a split.

    Prompts are shuffled with `seed`, then test, validation and judge take whole prompt
    groups until they hold their fraction of the rows; train takes the rest.
    """
    groups = {}
    for pair in pairs:
        groups.setdefault(pair.prompt, []).append(pair)
    order = list(groups)
    random.Random(seed).shuffle(order)
    splits = {name: [] for name in SPLITS}
    fractions = {"test": test_fraction, "validation": val_fraction, "judge": judge_fraction}
    targets = {name: fraction * len(pairs) for name, fraction in fractions.items()}
    for prompt in order:
        name = next((s for s in ("test", "validation", "judge") if len(splits[s]) < targets[s]), "train")
        splits[name].extend(groups[prompt])
    empty = [name for name in SPLITS if not splits[name] and (name == "train" or targets[name] > 0)]
    if empty:
        raise DataError(
            f"{path}: {len(pairs)} rows in {len(groups)} prompt groups are too few to split with "
            f"prepare.val_fraction={val_fraction}, prepare.test_fraction={test_fraction} and "
            f"prepare.judge_fraction={judge_fraction}: "
            f"the {empty[0]} split would be empty"
        )
    return splits


# ---------------------------------------------------------------- output


def describe(rows_in, filtered, pairs, dropped, splits, sampled_out=0):
    """The contents of metrics/data.json."""
    if isinstance(pairs[0], Feedback):
        answer_parts = ("completion",)
        # Unpaired feedback: how many answers are marked desirable (KTO weighs the two kinds: dpo.*_weight).
        kind = {"desirable": sum(p.desirable for p in pairs), "undesirable": sum(not p.desirable for p in pairs)}
    else:
        answer_parts = ("chosen", "rejected")
        # Share of pairs whose chosen answer is the longer one: near 0.5, length alone does not separate them.
        kind = {"chosen_longer_share": round(sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs), 4)}

    def stats(values):
        return {
            "mean": round(statistics.fmean(values), 2),
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }

    return {
        "rows_in": rows_in,
        # Rows removed by data.filter, under the first condition each one fails.
        "rows_filtered": dict(filtered),
        "rows_kept": len(pairs),
        # Good rows left out by data.<set>.max_rows.
        "rows_sampled_out": sampled_out,
        "rows_dropped": {reason: dropped.get(reason, 0) for reason in BAD_ROW_REASONS},
        "splits": {name: len(rows) for name, rows in splits.items()},
        # Pairs whose prompt is marked unsafe (data.<set>.columns.unsafe): a request to decline.
        "unsafe_prompts": sum(p.unsafe for p in pairs),
        "chars": {
            "prompt": stats([len(as_text(p.prompt)) for p in pairs]),
            **{side: stats([len(getattr(p, side)) for p in pairs]) for side in answer_parts},
        },
        # Messages per prompt: system, user and earlier assistant turns.
        "prompt_messages": stats([len(p.prompt) for p in pairs]),
        **kind,
    }


def write_split(path, pairs):
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            if isinstance(p, Feedback):
                row = {"prompt": to_json(p.prompt), "completion": p.completion, "label": p.desirable, "row": p.row}
                f.write(json.dumps({**row, "unsafe": p.unsafe}, ensure_ascii=False) + "\n")
                continue
            f.write(
                json.dumps(
                    {
                        "prompt": to_json(p.prompt),
                        "chosen": p.chosen,
                        "rejected": p.rejected,
                        "row": p.row,
                        "unsafe": p.unsafe,
                        # only where there is one, so a set without expected answers is written as before
                        **({"answer": p.answer} if p.answer else {}),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


def read_split(path):
    """Read one prepared split (JSONL written by write_split) back into Pairs, or Feedback (rows with a label)."""

    def item(row):
        if "label" in row:
            row["desirable"] = row.pop("label")
            return Feedback(**{**row, "prompt": from_json(row["prompt"])})
        return Pair(**{**row, "prompt": from_json(row["prompt"])})

    with open(path, encoding="utf-8") as f:
        return [item(row) for row in map(json.loads, f)]


def read_splits(directory, *names):
    """read_split of each named split ('train', 'validation', 'test') in a prepared directory."""
    return [read_split(Path(directory) / f"{name}.jsonl") for name in names]


def pairs_only(splits, key, name):
    """The splits of data set `name`, when they hold preference pairs; DataError naming the params key `key` that
    names it when they hold unpaired feedback (only dpo with loss_type kto reads that)."""
    if any(isinstance(item, Feedback) for split in splits for item in split[:1]):
        raise DataError(
            f"{key}: data set {show(name)} holds unpaired feedback (prompt, completion, label), not preference "
            "pairs; only dpo with loss_type kto trains on it"
        )
    return splits


def read_sets(root, sets, *names, key="data", unpaired=False):
    """Each named split of the union of prepared data sets root/<set>/ (in the order of `sets`).

    A set missing under root is a DataError naming it: the stage's params name a set that prepare did not write.
    Unpaired feedback is read only with unpaired=True; otherwise it is a DataError naming `key`, the params key
    that lists the sets."""
    missing = [s for s in sets if not (Path(root) / s).is_dir()]
    if missing:
        raise DataError(
            f"{root}: no prepared data set {show(missing[0])} (prepared: "
            f"{', '.join(sorted(p.name for p in Path(root).iterdir() if p.is_dir())) or 'none'})"
        )
    per_set = [
        [
            [dataclasses.replace(p, source=s) for p in split]
            for split in (
                read_splits(Path(root) / s, *names)
                if unpaired
                else pairs_only(read_splits(Path(root) / s, *names), key, s)
            )
        ]
        for s in sets
    ]
    return [[pair for splits in per_set for pair in splits[i]] for i in range(len(names))]
