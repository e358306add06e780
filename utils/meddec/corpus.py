"""Reading a MedDec corpus as users have it after download (SPEC section 1).

Layout: ``data/<ID>.json`` gold annotations, ``raw_text/<ID>.txt`` note texts (offsets index this exact
text: read without newline translation), ``stats.csv`` demographics, split files with one ID per line,
and MIMIC-III ``NOTEEVENTS.csv`` for the unlabeled pool.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from utils.categories import parse_gold_category
from utils.fileio import InputError, checked_chunks, first_line, read_json, warn
from utils.guards import check_text_size, note_text_path

DISCHARGE_CATEGORY = "Discharge summary"
NOTEEVENTS_COLUMNS = ("ROW_ID", "SUBJECT_ID", "HADM_ID", "CATEGORY", "DESCRIPTION", "TEXT")
STATS_COLUMNS = ("SUBJECT_ID", "HADM_ID", "ROW_ID", "GENDER", "ETHNICITY", "LANGUAGE")

_NOTE_ID = re.compile(r"^(\d+)_(\d+)_(\d+)(?:-(.+))?$")


@dataclass(frozen=True)
class NoteId:
    """The parts of ``SUBJECTID_HADMID_ROWID[-annotator]``."""

    subject_id: int
    hadm_id: int
    row_id: int
    annotator: str | None = None

    @property
    def key(self) -> tuple[int, int, int]:
        """The (SUBJECT_ID, HADM_ID, ROW_ID) triple that stats.csv and NOTEEVENTS use."""
        return (self.subject_id, self.hadm_id, self.row_id)


def normalize_note_id(raw_id: str) -> str:
    """Strip the trailing underscores some gold files carry in ``discharge_summary_id``."""
    return str(raw_id).rstrip("_")


def parse_note_id(note_id: str) -> NoteId | None:
    """Parse a MedDec note id (a path or ``.json``/``.txt`` name is accepted); None if it is not one."""
    base = os.path.splitext(os.path.basename(str(note_id)))[0]
    match = _NOTE_ID.match(normalize_note_id(base))
    if match is None:
        return None
    sid, hadm, rid, annotator = match.groups()
    return NoteId(int(sid), int(hadm), int(rid), annotator)


@dataclass(frozen=True)
class Annotation:
    """One gold span. ``category`` is 1-9, or 0 when out of scope (TBD, 10, 11)."""

    start: int
    end: int
    category: int
    category_raw: str = ""
    annotation_id: str = ""
    decision: str = ""


@dataclass
class Note:
    """A note's exact text and its gold annotations (all of them, out-of-scope ones included)."""

    note_id: str
    text: str
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def in_scope(self) -> list[Annotation]:
        """Annotations of categories 1-9, in file order."""
        return [a for a in self.annotations if a.category]


def _require_int(value: Any, path: Path, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(path, where, f"field '{name}': expected an integer, got {value!r}")
    return value


def parse_annotation(item: Any, path: Path, where: str) -> Annotation:
    """Validate one gold annotation record."""
    if not isinstance(item, dict):
        raise InputError(path, where, f"expected an object, got {type(item).__name__}")
    for name in ("start_offset", "end_offset", "category"):
        if name not in item:
            raise InputError(path, where, f"missing field '{name}'")
    start = _require_int(item["start_offset"], path, where, "start_offset")
    end = _require_int(item["end_offset"], path, where, "end_offset")
    if not isinstance(item["category"], str):
        raise InputError(path, where, f"field 'category': expected a string like 'Category 3: ...', got {item['category']!r}")
    return Annotation(
        start=start,
        end=end,
        category=parse_gold_category(item["category"]),
        category_raw=item["category"],
        annotation_id=str(item.get("annotation_id", "")),
        decision=str(item.get("decision", "")),
    )


def _parse_gold_record(record: Any, path: Path, where: str) -> tuple[str, list[Annotation]]:
    if not isinstance(record, dict) or "annotations" not in record:
        raise InputError(path, where, "expected an object with 'discharge_summary_id' and 'annotations'")
    note_id = normalize_note_id(record.get("discharge_summary_id", path.stem))
    annotations = record["annotations"]
    if not isinstance(annotations, list):
        raise InputError(path, f"{where}field 'annotations'", "expected a list")
    parsed = [parse_annotation(a, path, f"{where}annotations[{i}]") for i, a in enumerate(annotations)]
    return note_id, parsed


def read_gold_file(path: str | os.PathLike[str]) -> dict[str, list[Annotation]]:
    """Gold annotations of one ``data/<ID>.json`` file (or a list of such records), keyed by note id."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, list):
        out: dict[str, list[Annotation]] = {}
        for i, record in enumerate(data):
            note_id, anns = _parse_gold_record(record, path, f"record {i}: ")
            out[note_id] = anns
        return out
    note_id, anns = _parse_gold_record(data, path, "")
    return {note_id: anns}


def read_gold_dir(gold_dir: str | os.PathLike[str], ids: Iterable[str] | None = None) -> dict[str, list[Annotation]]:
    """All gold files of ``data/`` (sorted by file name), optionally only the given note ids."""
    gold_dir = Path(gold_dir)
    if not gold_dir.is_dir():
        raise InputError(gold_dir, "", "gold directory not found")
    wanted = set(ids) if ids is not None else None
    gold: dict[str, list[Annotation]] = {}
    for path in sorted(gold_dir.glob("*.json")):
        if wanted is not None and normalize_note_id(path.stem) not in wanted:
            continue
        gold.update(read_gold_file(path))
    if wanted is not None:
        gold = {k: v for k, v in gold.items() if k in wanted}
    return gold


def read_raw_text(raw_text_dir: str | os.PathLike[str], note_id: str) -> str:
    """The exact note text: UTF-8, no newline translation, no stripping."""
    path = note_text_path(raw_text_dir, note_id)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return check_text_size(path, handle.read())
    except FileNotFoundError:
        raise InputError(path, "", f"raw text of note {note_id} not found") from None
    except UnicodeDecodeError as err:
        raise InputError(path, f"byte {err.start}", f"raw text of note {note_id} is not UTF-8") from None


def read_split(path: str | os.PathLike[str]) -> list[str]:
    """Note ids of a split file, one per line, in file order (blank lines skipped); an id listed twice is an error."""
    try:
        with open(path, encoding="utf-8") as handle:
            ids: dict[str, int] = {}
            for number, line in enumerate(handle, start=1):
                note_id = normalize_note_id(line.strip())
                if not note_id:
                    continue
                if note_id in ids:
                    raise InputError(path, f"line {number}", f"note {note_id} is listed twice (first on line "
                                                             f"{ids[note_id]})")
                ids[note_id] = number
            return list(ids)
    except FileNotFoundError:
        raise InputError(path, "", "split file not found") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise InputError(path, "", "expected a split file: UTF-8 text with one note id per line") from None


@dataclass(frozen=True)
class Demographics:
    """One stats.csv row, raw values as MedDec writes them."""

    gender: str
    ethnicity: str
    language: str


def read_stats(path: str | os.PathLike[str]) -> dict[tuple[int, int, int], Demographics]:
    """stats.csv keyed by (SUBJECT_ID, HADM_ID, ROW_ID); rows with non-integer ids are skipped as officially."""
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise InputError(path, "", "stats.csv not found") from None
    except IsADirectoryError:
        raise InputError(path, "", "expected stats.csv, got a folder") from None
    stats: dict[tuple[int, int, int], Demographics] = {}
    with handle:
        reader = csv.DictReader(handle)
        try:
            fieldnames = reader.fieldnames or []
        except UnicodeDecodeError:
            raise InputError(path, "line 1", "not UTF-8 text") from None
        missing = [c for c in ("SUBJECT_ID", "HADM_ID", "ROW_ID") if c not in fieldnames]
        if missing:
            raise InputError(path, "line 1", f"missing column(s) {', '.join(missing)}; expected {','.join(STATS_COLUMNS)}")
        absent = [c for c in ("GENDER", "ETHNICITY", "LANGUAGE") if c not in fieldnames]
        if absent:
            warn(f"{path}: no column(s) {', '.join(absent)} (renamed?): every note then falls in the fallback group "
                 "of that dimension (sex: none, race: Other, language: Non-English), as officially")
        try:
            for row in reader:
                try:
                    key = (int(row["SUBJECT_ID"]), int(row["HADM_ID"]), int(row["ROW_ID"]))
                except (TypeError, ValueError):
                    continue
                stats[key] = Demographics(row.get("GENDER") or "", row.get("ETHNICITY") or "", row.get("LANGUAGE") or "")
        except UnicodeDecodeError:
            raise InputError(path, f"line {reader.line_num + 1}", "not UTF-8 text") from None
    return stats


@dataclass(frozen=True)
class MedDecPaths:
    """Where the parts of a MedDec download live under one root folder."""

    root: Path

    @property
    def gold_dir(self) -> Path:
        return self.root / "data"

    @property
    def raw_text_dir(self) -> Path:
        return self.root / "raw_text"

    @property
    def stats_csv(self) -> Path:
        return self.root / "stats.csv"

    def split(self, name: str) -> Path:
        """Path of ``splits/<name>.txt``."""
        return self.root / "splits" / f"{name}.txt"

    @property
    def noteevents_csv(self) -> Path:
        return self.root / "NOTEEVENTS.csv"


def load_notes(
    gold_dir: str | os.PathLike[str] | None,
    raw_text_dir: str | os.PathLike[str],
    ids: Iterable[str],
) -> dict[str, Note]:
    """Notes (exact text + gold, empty gold when ``gold_dir`` is None) for the given ids, in that order."""
    ids = list(ids)
    gold = read_gold_dir(gold_dir, ids) if gold_dir is not None else {}
    if gold_dir is not None:
        missing = [i for i in ids if i not in gold]
        if missing:
            raise InputError(gold_dir, "", f"no gold file for note(s) {', '.join(missing[:5])}")
    return {i: Note(i, read_raw_text(raw_text_dir, i), gold.get(i, [])) for i in ids}


def iter_noteevents(
    path: str | os.PathLike[str],
    chunksize: int = 10_000,
    columns: Sequence[str] = NOTEEVENTS_COLUMNS,
) -> Iterator["pandas.DataFrame"]:  # noqa: F821
    """Stream NOTEEVENTS.csv in chunks of rows so a ~2 GB file never sits in memory at once."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "", "NOTEEVENTS.csv not found")
    try:
        header = pd.read_csv(path, nrows=0).columns
    except ValueError as err:  # pandas' parser errors and UnicodeDecodeError are ValueErrors
        raise InputError(path, "line 1", f"not a readable CSV ({first_line(err)})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(path, "line 1", f"missing column(s) {', '.join(missing)}")
    dtypes = {"ROW_ID": "Int64", "SUBJECT_ID": "Int64", "HADM_ID": "Int64"}
    reader = pd.read_csv(
        path,
        usecols=list(columns),
        chunksize=chunksize,
        dtype={c: dtypes.get(c, "string") for c in columns},
        keep_default_na=False,
        na_values={"ROW_ID": [""], "SUBJECT_ID": [""], "HADM_ID": [""]},
    )
    yield from checked_chunks(path, reader, "NOTEEVENTS CSV")  # a file cut mid-quote, bad bytes, a non-integer id
