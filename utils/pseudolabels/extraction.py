"""Extracting the unlabeled pool (the command: ``pseudolabels/extract_unlabel.py``): MIMIC-III discharge summaries that are in no MedDec split (SPEC section 4).

NOTEEVENTS.csv is ~2 GB, so it is streamed in chunks of rows and every kept note is written at once to a
temporary CSV that is moved into place at the end: memory stays bounded by the chunk size, whatever the
size of the file. A note is excluded when its ROW_ID is the ROW part of any id in the given split files
(``SUBJECT_HADM_ROW``, annotator suffixes ``-name`` ignored); with ``--exclude_patients`` every note of a
patient (SUBJECT_ID) that appears in those splits is excluded too. The published pool (59,201 notes) used
DESCRIPTION "Report" and exclusion by note id.

The published code compared the whole id string instead (``--exclude_by_exact_id``, which warns): a MedDec id
with an annotator suffix never equals ``SUBJECT_HADM_ROW``, so that note stays in the pool and can come back
as a pseudo-label of its own train, validation or test note (15 of 456 notes on the default synthetic corpus, seed 0,
``python -m dataset.generate``). The count of such notes is printed as ``leaked``.

Output: CSV with columns ``file_id`` (``SUBJECT_HADM_ROW``, like MedDec ids; an empty HADM_ID stays
empty) and ``raw_text`` (the TEXT field, unchanged).
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from utils.configs.pipeline import ANY_DESCRIPTION
from utils.fileio import InputError, atomic_open, check_output_path, warn
from utils.meddec.corpus import DISCHARGE_CATEGORY, iter_noteevents, parse_note_id, read_split
from utils.meddec.tables import NOTE_COLUMNS


@dataclass
class ExtractCounts:
    """What happened to the rows of NOTEEVENTS."""

    rows_read: int = 0
    discharge: int = 0
    excluded_by_id: int = 0
    excluded_by_patient: int = 0
    kept: int = 0
    leaked: int = 0  # kept notes whose ROW_ID is a split note's (only with exclude_by_exact_id)

    def summary(self) -> str:
        return (
            f"rows read: {self.rows_read}, discharge summaries: {self.discharge}, "
            f"excluded by note id: {self.excluded_by_id}, excluded by patient: {self.excluded_by_patient}, "
            f"kept: {self.kept}" + (f", MedDec notes leaked into the pool: {self.leaked}" if self.leaked else "")
        )


@dataclass(frozen=True)
class Exclusions:
    """ROW_IDs, SUBJECT_IDs and whole id strings of the MedDec notes named in the split files."""

    row_ids: frozenset[int]
    subject_ids: frozenset[int]
    note_ids: frozenset[str] = frozenset()  # as written, '.json' cut off (the published comparison)


def read_exclusions(split_files: Iterable[str | Path]) -> Exclusions:
    """Collect the ROW and SUBJECT parts of every id in the split files; a malformed id is an input error."""
    rows: set[int] = set()
    subjects: set[int] = set()
    note_ids: set[str] = set()
    for path in split_files:
        for line_no, note_id in enumerate(read_split(path), start=1):
            parsed = parse_note_id(note_id)
            if parsed is None:
                raise InputError(path, f"id {note_id!r}", "expected a MedDec id SUBJECTID_HADMID_ROWID[-annotator]")
            rows.add(parsed.row_id)
            subjects.add(parsed.subject_id)
            note_ids.add(note_id.split(".json")[0])
    return Exclusions(frozenset(rows), frozenset(subjects), frozenset(note_ids))


def _file_ids(chunk: "pd.DataFrame") -> "pd.Series":  # noqa: F821
    """``SUBJECT_HADM_ROW`` for each row; a missing id part is left empty."""
    parts = [chunk[c].astype("string").fillna("") for c in ("SUBJECT_ID", "HADM_ID", "ROW_ID")]
    return parts[0] + "_" + parts[1] + "_" + parts[2]


def filter_chunk(
    chunk: "pd.DataFrame",  # noqa: F821
    exclusions: Exclusions,
    counts: ExtractCounts,
    description: str = "Report",
    exclude_patients: bool = False,
    exclude_by_exact_id: bool = False,
) -> "pd.DataFrame":  # noqa: F821
    """Keep the discharge summaries of one chunk that are not excluded; update ``counts`` in place."""
    counts.rows_read += len(chunk)
    is_discharge = chunk["CATEGORY"].str.strip() == DISCHARGE_CATEGORY
    if description != ANY_DESCRIPTION:
        is_discharge &= chunk["DESCRIPTION"].str.strip() == description
    notes = chunk[is_discharge.fillna(False).astype(bool)]
    counts.discharge += len(notes)
    same_row = notes["ROW_ID"].isin(exclusions.row_ids).fillna(False).astype(bool)
    by_id = _file_ids(notes).isin(exclusions.note_ids).fillna(False).astype(bool) if exclude_by_exact_id else same_row
    counts.excluded_by_id += int(by_id.sum())
    counts.leaked += int((same_row & ~by_id).sum())
    notes = notes[~by_id]
    if exclude_patients:
        by_patient = notes["SUBJECT_ID"].isin(exclusions.subject_ids).fillna(False).astype(bool)
        counts.excluded_by_patient += int(by_patient.sum())
        notes = notes[~by_patient]
    counts.kept += len(notes)
    return notes


def extract_unlabeled(
    noteevents: str | Path,
    output: str | Path,
    split_files: Sequence[str | Path],
    description: str = "Report",
    exclude_patients: bool = False,
    chunksize: int = 2_000,
    progress: bool = True,
    exclude_by_exact_id: bool = False,
) -> ExtractCounts:
    """Stream NOTEEVENTS and write the pool CSV (file_id, raw_text) atomically; returns the counts."""
    from tqdm.auto import tqdm

    check_output_path(output)
    exclusions = read_exclusions(split_files)
    if exclude_by_exact_id:
        warn("--exclude_by_exact_id: split notes whose id has an annotator suffix (-name) stay in the pool, as in the "
             "published code: evaluation notes can leak into pseudo-label training")
    chunks = iter_noteevents(noteevents, chunksize=chunksize)
    first = next(chunks, None)  # validates the file and its header before any output exists
    counts = ExtractCounts()
    with atomic_open(output, "w", encoding="utf-8", newline="") as handle, tqdm(
        unit=" rows", unit_scale=True, desc="NOTEEVENTS", disable=not progress
    ) as bar:
        writer = csv.writer(handle)
        writer.writerow(NOTE_COLUMNS)
        for chunk in itertools.chain([first] if first is not None else [], chunks):
            kept = filter_chunk(chunk, exclusions, counts, description, exclude_patients, exclude_by_exact_id)
            writer.writerows(zip(_file_ids(kept), kept["TEXT"].fillna("")))
            bar.update(len(chunk))
            bar.set_postfix(kept=counts.kept)
    return counts
