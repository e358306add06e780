"""Reading the scorer's inputs exactly as the official evaluator reads them.

Both scorers' scripts (SPEC section 2: biodatlab/medexact-lamar ``evaluate/evaluate.py``, the default, and
``evaluate.py`` of github.com/CLU-UML/MedDec at commit f4374cd) read
texts with ``open(path, 'r')``: universal-newline translation (CRLF and lone CR become LF) in the
platform's default encoding. That differs from :func:`utils.meddec.corpus.read_raw_text` (exact bytes, used for
training and tagging): gold offsets of a CRLF file therefore point to slightly different characters when
scored, exactly as officially. Gold files are read in ``os.listdir`` order and split ids are only
stripped (the published script also drops a ``.json`` suffix), because the official note sets (whose iteration
order fixes the last bits of the token F1 sum) are built from them. A single-record gold file's id is its first
three ``_``-separated parts under the published script, ``rstrip('_')`` under f4374cd (a list of records:
``rstrip('_')`` under both). Note ids are parsed loosely and demographics normalised as the official subgroup
code does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from utils.categories import parse_gold_category
from utils.meddec.corpus import Annotation, Demographics, read_gold_file
from utils.fileio import InputError, read_json
from utils.metric.rules import DEFAULT_SCORER, check_scorer

#: Subgroups of the shared-task score, in the official order (dimension -> group values).
SUBGROUPS: dict[str, tuple[str, ...]] = {
    "sex": ("Female", "Male"),
    "race": ("White", "African American", "Hispanic", "Asian", "Other"),
    "language": ("English", "Non-English"),
}

#: A span as the scorer takes it: (start, end, category).
SpanRow = tuple[int, int, int]


def read_official_text(path: str | os.PathLike[str]) -> str:
    """A note text as the official evaluator sees it: default encoding, universal newlines (CRLF -> LF)."""
    with open(path, "r", encoding=None, newline=None) as handle:  # noqa: PLW1514 - deliberately the official way
        return handle.read()


def raw_text_path(raw_text_dir: str | os.PathLike[str], note_id: str) -> Path:
    from utils.guards import note_text_path

    return note_text_path(raw_text_dir, note_id)


def load_official_texts(raw_text_dir: str | os.PathLike[str], note_ids: Iterable[str]) -> dict[str, str]:
    """Texts of the given notes, read the official way; a missing file is a one-line InputError."""
    texts = {}
    for note_id in note_ids:
        path = raw_text_path(raw_text_dir, note_id)
        if not path.is_file():
            raise InputError(path, "", f"raw text of note {note_id} not found (every scored note needs one)")
        texts[note_id] = read_official_text(path)
    return texts


def official_split_id(line: str, rule: str = DEFAULT_SCORER) -> str:
    """A split line as the ``rule``'s script keeps it: stripped; the published script also drops ``.json``."""
    line = line.strip()
    return line.removesuffix(".json") if check_scorer(rule) == "published" else line


def read_official_split(path: str | os.PathLike[str], rule: str = DEFAULT_SCORER) -> set[str]:
    """Split ids as the ``rule``'s script reads them (:func:`official_split_id`; no '_' stripping, a UTF-8 BOM kept
    as part of the first id, as officially)."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return {official_split_id(line, rule) for line in handle}
    except FileNotFoundError:
        raise InputError(path, "", "split file not found") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise InputError(path, "", "expected a split file: UTF-8 text with one note id per line") from None


def official_gold_id(raw_id: str, rule: str = DEFAULT_SCORER) -> str:
    """The note id of a single-record gold file: the published script keeps the first three ``_``-separated parts,
    f4374cd strips trailing underscores (what :func:`utils.meddec.corpus.read_gold_file` does)."""
    if check_scorer(rule) == "published":
        return "_".join(str(raw_id).split("_")[:3])
    return str(raw_id).rstrip("_")


def read_official_gold_file(path: str | os.PathLike[str], rule: str = DEFAULT_SCORER) -> dict[str, list[Annotation]]:
    """One gold JSON file (a record or a list of records) keyed as the ``rule``'s script keys it."""
    gold = read_gold_file(path)
    if check_scorer(rule) == "meddec" or len(gold) != 1:
        return gold
    data = read_json(path)
    if not isinstance(data, dict):  # a list of records: rstrip('_') under both scripts
        return gold
    raw_id = data.get("discharge_summary_id", os.path.basename(path).replace(".json", ""))
    (annotations,) = gold.values()
    return {official_gold_id(raw_id, rule): annotations}


def read_gold_dir_official_order(gold_dir: str | os.PathLike[str],
                                 rule: str = DEFAULT_SCORER) -> dict[str, list[Annotation]]:
    """All ``*.json`` gold files in ``os.listdir`` order, later files overriding earlier ones.

    The order is kept because the official script builds its note sets from this dict; set iteration
    order (and with it the last bits of the token F1 sum) can depend on insertion order.
    """
    gold_dir = Path(gold_dir)
    if not gold_dir.is_dir():
        raise InputError(gold_dir, "", "gold directory not found")
    gold: dict[str, list[Annotation]] = {}
    for name in os.listdir(gold_dir):
        if name.endswith(".json"):
            gold.update(read_official_gold_file(gold_dir / name, rule))
    return gold


def official_note_key(file_name: str) -> tuple[int, int, int] | None:
    """(SUBJECT_ID, HADM_ID, ROW_ID) of a note id as the official subgroup code parses it.

    Looser than :func:`utils.meddec.corpus.parse_note_id` on purpose: base name, extension dropped, split on
    '_', the first three parts read with int() (the ROW part up to a '-annotator' suffix).
    """
    base = os.path.splitext(os.path.basename(str(file_name)))[0]
    parts = base.split("_")
    if len(parts) < 3:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2].split("-")[0])
    except (TypeError, ValueError):
        return None


def normalize_sex(gender: object) -> str:
    value = str(gender or "").strip().upper()
    if value in ("F", "FEMALE"):
        return "Female"
    if value in ("M", "MALE"):
        return "Male"
    return "Other"  # not a scored group


def normalize_language(language: object) -> str:
    return "English" if str(language or "").strip().upper() in ("ENGL", "ENGLISH") else "Non-English"


def normalize_race(ethnicity: object) -> str:
    value = str(ethnicity or "").strip().upper()
    if value == "W" or "WHITE" in value:
        return "White"
    if value == "AA" or "BLACK" in value or "AFRICAN" in value:
        return "African American"
    if value.startswith("HISP"):
        return "Hispanic"
    if "ASIAN" in value:
        return "Asian"
    return "Other"


def demographic_groups(demographics: Demographics) -> dict[str, str]:
    """The subgroup of a note in each dimension."""
    return {
        "sex": normalize_sex(demographics.gender),
        "race": normalize_race(demographics.ethnicity),
        "language": normalize_language(demographics.language),
    }


def subgroup_members(
    note_ids: Iterable[str], stats: Mapping[tuple[int, int, int], Demographics]
) -> dict[str, dict[str, list[str]]]:
    """Notes of each non-empty subgroup (dimension -> group -> note ids), as the official code groups them.

    Each list is in the iteration order of the official set of that group's notes, which is the order
    the official code sums the group's per-note token F1 in.
    """
    note_groups = {}
    for note_id in note_ids:
        key = official_note_key(note_id)
        if key is not None and key in stats:
            note_groups[note_id] = demographic_groups(stats[key])
    members: dict[str, dict[str, list[str]]] = {}
    for dim, values in SUBGROUPS.items():
        members[dim] = {}
        for value in values:
            files = {note_id for note_id, g in note_groups.items() if g[dim] == value}
            if files:
                members[dim][value] = list(files)
    return members


# ---------------------------------------------------------------------------------------------------------
# Gold annotations and predictions in any of their usual shapes


def gold_rows(annotations: Sequence[Any]) -> list[SpanRow]:
    """(start, end, category 0-9) per gold annotation (``Annotation`` or official JSON dict), in list order."""
    rows = []
    for ann in annotations:
        if isinstance(ann, Mapping):
            category = parse_gold_category(ann.get("category", 0))
            rows.append((int(ann.get("start_offset", 0)), int(ann.get("end_offset", 0)), category))
        else:
            rows.append((int(ann.start), int(ann.end), int(ann.category)))
    return rows


def prediction_rows(spans: Sequence[Any]) -> Sequence[SpanRow]:
    """(start, end, category) per prediction; Span/tuples as they are, dicts read as officially (int())."""
    if len(spans) == 0 or isinstance(spans[0], tuple):
        return spans  # Span NamedTuples or (start, end, category) tuples
    rows = []
    for span in spans:
        if isinstance(span, Mapping):
            start, end = int(span.get("start_offset", 0)), int(span.get("end_offset", 0))
            rows.append((start, end, int(span.get("category", 0))))
        else:
            start, end, category = span
            rows.append((int(start), int(end), int(category)))
    return rows


__all__ = [
    "SUBGROUPS", "SpanRow", "demographic_groups", "gold_rows", "load_official_texts", "normalize_language",
    "normalize_race", "normalize_sex", "official_gold_id", "official_note_key", "official_split_id",
    "prediction_rows", "raw_text_path", "read_gold_dir_official_order", "read_official_gold_file",
    "read_official_split", "read_official_text", "subgroup_members",
]
