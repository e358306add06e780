"""The pipeline's CSV tables: one reader (with its checks) and one writer each.

Every cell is read as the exact string written: no NaN, no type guessing (``dtype=str, keep_default_na=False``), so
note texts such as ``NA`` or texts with ``\\r`` survive. Writers quote every field (``csv.QUOTE_ALL``): a lone
``\\r`` inside a note would otherwise break the row. The tables:

- **notes** (``file_id, raw_text`` + any other columns): what inference reads, the unlabeled pool
  (``pseudolabels/extract_unlabel.py``), the retrieved candidates (``pseudolabels/retrieve.py``) and
  ``--raw_text_csv``. Ids are non-empty and unique (they key caches and predictions).
- **tagged split** (``file_id, raw_text, gold_span, gold_offsets``): written by ``utils/gt_to_tag.py`` (and the
  pseudo-label mix); ``gold_span`` is the note with inline tags, ``gold_offsets`` the JSON spans. The training data.
- **inference output**: the input columns + ``predicted`` (model output), ``entropy`` (mean -log p, empty when
  undefined), ``num_tokens``, ``truncated`` and ``spans`` (JSON ``[[start, end, category], ...]``: the output's
  spans located in the exact note text, once, by ``scripts/inference.py``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

from utils.fileio import InputError, atomic_open, checked_chunks, first_line, reading_errors
from utils.guards import check_text_sizes
from utils.meddec.predictions import Span

NOTE_COLUMNS = ("file_id", "raw_text")
TAGGED_COLUMNS = ("file_id", "raw_text", "gold_span", "gold_offsets")
RESULT_COLUMNS = ("predicted", "entropy", "num_tokens", "truncated", "spans")


def read_csv_strings(path: str | os.PathLike[str], required: Sequence[str]) -> "pandas.DataFrame":  # noqa: F821
    """A CSV with every cell as the exact string written, required columns checked."""
    import pandas as pd

    try:
        with reading_errors(path, "CSV"):
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(path, "", f"not a readable CSV ({first_line(err)})") from None
    check_unique_columns(path)
    check_text_sizes(path, frame)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(path, "line 1", f"missing column(s) {', '.join(missing)}; expected {', '.join(required)}")
    return frame


def check_unique_ids(path: str | os.PathLike[str], ids: Iterable[str], column: str = "file_id") -> None:
    """Ids must be non-empty and unique; the error names the data row (1 = the first row after the header).

    Rows, not lines: a quoted note text spans many physical lines.
    """
    seen: set[str] = set()
    for row, note_id in enumerate(ids, start=1):
        if not note_id.strip():
            raise InputError(path, f"row {row}", f"empty '{column}'")
        if note_id in seen:
            raise InputError(path, f"row {row}", f"duplicate {column} {note_id!r}: each note may appear once")
        seen.add(note_id)


def write_frame(handle: Any, frame: "pandas.DataFrame") -> None:  # noqa: F821
    """A table into an open text file: every field quoted, floats exactly (``%.17g``)."""
    frame.to_csv(handle, index=False, quoting=csv.QUOTE_ALL, lineterminator="\n", float_format="%.17g")


def write_csv(path: str | os.PathLike[str], frame: "pandas.DataFrame") -> None:  # noqa: F821
    """Write a table atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        write_frame(handle, frame)


# --------------------------------------------------------------------------------------------------- notes


def read_notes_table(path: str | os.PathLike[str], id_column: str = "file_id", text_column: str = "raw_text",
                     extra_columns: Sequence[str] = (), forbid_results: bool = False) -> "pandas.DataFrame":  # noqa: F821
    """A notes table (ids unique and non-empty). ``forbid_results``: refuse a table that already holds inference
    result columns (it is an output, and generating into it would overwrite them)."""
    frame = read_csv_strings(path, (id_column, text_column, *extra_columns))
    if forbid_results:
        clash = [c for c in RESULT_COLUMNS if c in frame.columns]
        if clash:
            raise InputError(path, "line 1", f"column(s) {', '.join(clash)} would be overwritten; is this already an output?")
    check_unique_ids(path, frame[id_column], id_column)
    return frame


def read_notes_texts(path: str | os.PathLike[str]) -> dict[str, str]:
    """{file_id: raw_text} of a notes table."""
    frame = read_notes_table(path)
    return dict(zip(frame["file_id"], frame["raw_text"]))


def iter_notes_table(path: str | os.PathLike[str], size: int) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of a notes table, ``size`` rows at a time: the unlabeled pool is streamed, never held whole."""
    import pandas as pd

    read_csv_header(path, NOTE_COLUMNS)
    reader = pd.read_csv(path, usecols=list(NOTE_COLUMNS), dtype=str, keep_default_na=False, chunksize=size)
    for chunk in checked_chunks(path, reader):
        yield chunk["file_id"].tolist(), chunk["raw_text"].tolist()


def read_csv_header(path: str | os.PathLike[str], required: Sequence[str]) -> list[str]:
    """The header of a (possibly huge) CSV, required columns checked, without reading its rows."""
    import pandas as pd

    if not os.path.isfile(path):
        raise InputError(path, "", "file not found")
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except ValueError as err:  # pandas' parser errors and UnicodeDecodeError are ValueErrors
        raise InputError(path, "line 1", f"not a readable CSV ({first_line(err)})") from None
    check_unique_columns(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(path, "line 1", f"missing column(s) {', '.join(missing)}; expected {', '.join(required)}")
    return header


def check_unique_columns(path: str | os.PathLike[str]) -> None:
    """Refuse a header naming a column twice: pandas would silently rename the second (``raw_text.1``) and the
    first one would be used without a word."""
    with reading_errors(path, "CSV"), open(path, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle), [])
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise InputError(path, "line 1", f"column {name!r} appears twice; expected each column once")
        seen.add(name)


# ----------------------------------------------------------------------------------------------- tagged split


def read_tagged_table(path: str | os.PathLike[str], require_gold: bool = False) -> "pandas.DataFrame":  # noqa: F821
    """A tagged split table; with ``require_gold`` (training) every row needs its note and tagged answer."""
    frame = read_csv_strings(path, TAGGED_COLUMNS)
    check_unique_ids(path, frame["file_id"])
    if require_gold:
        if frame.empty:
            raise InputError(path, "", "no rows: a training CSV needs at least one note")
        for row, (file_id, raw_text, gold) in enumerate(zip(frame["file_id"], frame["raw_text"], frame["gold_span"]),
                                                        start=1):
            if not raw_text:
                raise InputError(path, f"row {row} (file_id {file_id})", "empty raw_text")
            if not gold:
                raise InputError(path, f"row {row} (file_id {file_id})",
                                 "empty gold_span: training needs the tagged note (is this the test split?)")
    return frame


def tagged_frame(rows: Iterable[Mapping[str, str]]) -> "pandas.DataFrame":  # noqa: F821
    """Tagged split rows as a table with the columns in their order."""
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(TAGGED_COLUMNS))


def write_tagged_table(path: str | os.PathLike[str], rows: Iterable[Mapping[str, str]]) -> None:
    """Write tagged split rows atomically."""
    write_csv(path, tagged_frame(rows))


def spans_json(spans: Iterable[Sequence[int]]) -> str:
    """The ``gold_offsets`` / ``spans`` cell: ``[[start, end, category], ...]``."""
    return json.dumps([[int(v) for v in span] for span in spans])


def parse_spans_json(value: str, path: str | os.PathLike[str], where: str, column: str) -> list[Span]:
    """Spans of a ``gold_offsets`` / ``spans`` cell (empty cell: none)."""
    try:
        items = json.loads(value) if value.strip() else []
        spans = [Span(*(int(v) for v in item)) for item in items]
        if any(len(item) != 3 for item in items):
            raise ValueError
    except (ValueError, TypeError):
        raise InputError(path, where, f"field '{column}': expected JSON [[start, end, category], ...]") from None
    return spans


def tagged_gold(path: str | os.PathLike[str]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """(note id -> gold annotations, note id -> text) of a tagged split table, as the published tuner scores them:
    the ``gold_offsets`` spans (categories 1-9, duplicates kept, as gt_to_tag wrote them) as official gold dicts and
    the ``raw_text`` cell as the note text (exact, CRLF kept; the gold JSON route reads CRLF as LF)."""
    frame = read_tagged_table(path)
    gold, texts = {}, {}
    for row, (file_id, raw_text, offsets) in enumerate(zip(frame["file_id"], frame["raw_text"], frame["gold_offsets"]),
                                                       start=1):
        spans = parse_spans_json(offsets, path, f"row {row} (file_id {file_id})", "gold_offsets")
        gold[file_id] = [{"start_offset": s.start, "end_offset": s.end, "category": f"Category {s.category}"}
                         for s in spans]
        texts[file_id] = raw_text
    return gold, texts


# ------------------------------------------------------------------------------------------- inference output


def inference_output_frame(inputs: "pandas.DataFrame", records: Sequence[Mapping[str, Any]]) -> "pandas.DataFrame":  # noqa: F821
    """The input columns + one result per row (``records`` in input order)."""
    out = inputs.copy()
    out["predicted"] = [r["predicted"] for r in records]
    out["entropy"] = [math.nan if r["entropy"] is None else float(r["entropy"]) for r in records]
    out["num_tokens"] = [int(r["num_tokens"]) for r in records]
    out["truncated"] = [bool(r["truncated"]) for r in records]
    out["spans"] = [spans_json(r["spans"]) for r in records]
    return out


def read_inference_table(path: str | os.PathLike[str], id_column: str = "file_id",
                         text_column: str = "raw_text") -> "pandas.DataFrame":  # noqa: F821
    """An inference output table: ``entropy`` as float (NaN where empty), ``truncated`` as bool, ``spans`` as Spans."""
    frame = read_csv_strings(path, (id_column, text_column, *RESULT_COLUMNS))
    check_unique_ids(path, frame[id_column], id_column)
    entropy, truncated, spans = [], [], []
    for row, (value, flag, cell) in enumerate(zip(frame["entropy"], frame["truncated"], frame["spans"]), start=1):
        try:
            entropy.append(float(value) if value.strip() else math.nan)
        except ValueError:
            raise InputError(path, f"row {row}", f"field 'entropy': expected a number, got {value!r}") from None
        if flag.strip().lower() not in ("true", "false"):
            raise InputError(path, f"row {row}", f"field 'truncated': expected True or False, got {flag!r}")
        truncated.append(flag.strip().lower() == "true")
        spans.append(parse_spans_json(cell, path, f"row {row}", "spans"))
    frame["entropy"] = entropy
    frame["truncated"] = truncated
    frame["spans"] = spans
    return frame
