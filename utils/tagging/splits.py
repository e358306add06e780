"""Gold annotations of MedDec splits -> tagged split tables (the generative taggers' training data).

Per split file, one table (``utils.meddec.tables``): the exact note text, the note with inline tags
(``utils.tagging.convert.spans_to_tagged``) and the in-scope gold spans as JSON in gold-file order (out-of-scope
and invalid spans left out, as in the tagged text). Test notes without a gold file get empty gold columns; train
and validation notes must have one. Nothing is written unless every split can be.

Two choices follow the published ``gt_to_tag.py`` when asked (``utils/gt_to_tag.py`` asks by default): notes
sorted by file name (``sort_notes``; the published split files list ``<ID>.json`` names and it sorted those
strings, so ``1_2_3-anna`` comes before ``1_2_3``) instead of split-file order, and exact duplicate gold spans
kept as doubled tags (``keep_duplicates``) instead of collapsed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from utils.fileio import InputError, atomic_files, check_output_path, warn
from utils.meddec.corpus import Annotation, read_gold_dir, read_raw_text, read_split
from utils.meddec.tables import read_notes_texts, tagged_frame, write_frame
from utils.tagging.convert import gold_row

UNLABELED_SPLITS = ("test",)  # splits whose notes may lack gold


class RawTexts:
    """Exact note texts by id, from a MedDec ``raw_text/`` folder or a notes table (file_id, raw_text)."""

    def __init__(self, raw_text_dir: str | os.PathLike[str] | None = None, raw_text_csv: str | os.PathLike[str] | None = None):
        if (raw_text_dir is None) == (raw_text_csv is None):
            raise ValueError("give exactly one of raw_text_dir and raw_text_csv")
        self.raw_text_dir = raw_text_dir
        self.csv_path = raw_text_csv
        self.from_csv = read_notes_texts(raw_text_csv) if raw_text_csv is not None else None

    def __getitem__(self, note_id: str) -> str:
        if self.from_csv is None:
            return read_raw_text(self.raw_text_dir, note_id)
        if note_id not in self.from_csv:
            raise InputError(self.csv_path, "", f"no raw_text row for note {note_id}")
        return self.from_csv[note_id]


def in_scope_spans(annotations: Sequence[Annotation]) -> list[tuple[int, int, int]]:
    """(start, end, category) of the gold annotations of categories 1-9, in gold-file order."""
    return [(a.start, a.end, a.category) for a in annotations if a.category]


def published_note_order(ids: Sequence[str]) -> list[str]:
    """The published row order: the ``<ID>.json`` file names sorted as strings (``-`` sorts before ``.``)."""
    return sorted(ids, key=lambda note_id: note_id if note_id.endswith(".json") else note_id + ".json")


def build_split_rows(ids: Sequence[str], texts: RawTexts, gold: Mapping[str, list[Annotation]],
                     progress: bool = False, split_name: str = "split", keep_duplicates: bool = False,
                     sort_notes: bool = False) -> tuple[list[dict[str, str]], Counter[str]]:
    """Rows of one split in split-file order, or the published sorted order (notes without gold get empty gold
    columns)."""
    from tqdm.auto import tqdm

    rows: list[dict[str, str]] = []
    reasons: Counter[str] = Counter()
    ordered = published_note_order(ids) if sort_notes else ids
    for note_id in tqdm(ordered, desc=f"tagging {split_name}", unit="note", disable=not progress):
        annotations = gold.get(note_id)
        row, dropped = gold_row(note_id, texts[note_id], None if annotations is None else in_scope_spans(annotations),
                                keep_duplicates)
        rows.append(row)
        reasons.update(dropped)
    return rows, reasons


def convert_splits(
    gold_dir: str | os.PathLike[str],
    texts: RawTexts,
    split_files: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    progress: bool = False,
    keep_duplicates: bool = False,
    sort_notes: bool = False,
) -> dict[str, tuple[int, int, Counter[str]]]:
    """Write ``<split>.csv`` per split file given; returns split -> (notes, spans written, dropped reasons)."""
    for name in split_files:
        check_output_path(Path(out_dir) / f"{name}.csv")
    ids_by_split = {name: read_split(path) for name, path in split_files.items()}
    warn_about_shared_ids(ids_by_split)
    gold = read_gold_dir(gold_dir, [i for ids in ids_by_split.values() for i in ids])
    for name, ids in ids_by_split.items():  # fail before writing anything
        missing = [i for i in ids if i not in gold]
        if missing and name not in UNLABELED_SPLITS:
            raise InputError(gold_dir, "", f"no gold file for {name} note(s) {', '.join(missing[:5])}")
    built = {name: build_split_rows(ids, texts, gold, progress, name, keep_duplicates, sort_notes)
             for name, ids in ids_by_split.items()}
    write_all_or_nothing({Path(out_dir) / f"{name}.csv": rows for name, (rows, _) in built.items()})
    return {name: (len(rows), sum(len(json.loads(r["gold_offsets"])) for r in rows if r["gold_offsets"]), reasons)
            for name, (rows, reasons) in built.items()}


def warn_about_shared_ids(ids_by_split: Mapping[str, Sequence[str]]) -> None:
    """A note in two splits (e.g. train and val) leaks evaluation data into training: say so, once per pair."""
    names = list(ids_by_split)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = sorted(set(ids_by_split[first]) & set(ids_by_split[second]))
            if shared:
                warn(f"{len(shared)} note id(s) are in both the {first} and the {second} split "
                     f"(e.g. {', '.join(shared[:3])}): the {second} scores will not be held out")


def write_all_or_nothing(tables: Mapping[Path, Sequence[Mapping[str, str]]]) -> None:
    """Write several tagged split tables so that either every one is replaced or none is (a failure while
    writing any of them leaves all earlier versions in place)."""
    with atomic_files(list(tables), encoding="utf-8", newline="") as handles:
        for handle, rows in zip(handles, tables.values()):
            write_frame(handle, tagged_frame(rows))
