"""Gold annotations -> tagged-text training CSVs, one per split (the generative taggers' data).

    python utils/gt_to_tag.py --gold_dir MedDec/data --raw_text_dir MedDec/raw_text \
        --train_split MedDec/splits/train.txt --val_split MedDec/splits/val.txt --out_dir data/tagged

writes ``train.csv`` and ``val.csv`` (and ``test.csv`` with ``--test_split``) with the columns
``file_id, raw_text, gold_span, gold_offsets``: the exact note text, the note with inline tags
(``utils.tagging.convert.spans_to_tagged``) and a JSON list ``[[start, end, category], ...]`` of the in-scope
gold spans in gold-file order (out-of-scope, invalid and duplicate spans left out, as in the tagged
text). Note text comes from the MedDec ``raw_text/`` folder (``--raw_text_dir``) or from a CSV with
``file_id`` and ``raw_text`` columns (``--raw_text_csv``). Test notes without a gold file get empty
gold columns; train and validation notes must have one.

Every field is quoted (``csv.QUOTE_ALL``), so texts with ``\\r\\n``, a lone ``\\r``, quotes or commas
round-trip exactly with ``pandas.read_csv(path, dtype=str, keep_default_na=False)`` (``read_tagged_csv``).
Without ``keep_default_na=False`` pandas would turn a text such as ``NA`` or an empty gold column into NaN.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from utils.meddec.corpus import Annotation, normalize_note_id, read_gold_dir, read_raw_text, read_split
from utils.fileio import InputError, atomic_open, report_input_error
from utils.tagging.convert import clean_spans, spans_to_tagged

COLUMNS = ("file_id", "raw_text", "gold_span", "gold_offsets")
SPLIT_NAMES = ("train", "val", "test")


class RawTexts:
    """Exact note texts by id, from a MedDec ``raw_text/`` folder or a (file_id, raw_text) CSV."""

    def __init__(self, raw_text_dir: str | os.PathLike[str] | None = None, raw_text_csv: str | os.PathLike[str] | None = None):
        if (raw_text_dir is None) == (raw_text_csv is None):
            raise ValueError("give exactly one of raw_text_dir and raw_text_csv")
        self.raw_text_dir = raw_text_dir
        self.csv_path = raw_text_csv
        self.from_csv = read_raw_text_csv(raw_text_csv) if raw_text_csv is not None else None

    def __getitem__(self, note_id: str) -> str:
        if self.from_csv is None:
            return read_raw_text(self.raw_text_dir, note_id)
        if note_id not in self.from_csv:
            raise InputError(self.csv_path, "", f"no raw_text row for note {note_id}")
        return self.from_csv[note_id]


def read_csv_strings(path: str | os.PathLike[str], required: Sequence[str]) -> "pandas.DataFrame":  # noqa: F821
    """A CSV with every cell as the exact string written (no NaN, no type guessing), required columns checked."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(path, "", "file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, "", f"not a readable CSV ({err})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(path, "line 1", f"missing column(s) {', '.join(missing)}; expected {', '.join(required)}")
    return frame


def read_raw_text_csv(path: str | os.PathLike[str]) -> dict[str, str]:
    """{file_id: raw_text} of a CSV with those two columns; a repeated file_id is an error."""
    frame = read_csv_strings(path, ("file_id", "raw_text"))
    texts: dict[str, str] = {}
    for index, (file_id, text) in enumerate(zip(frame["file_id"], frame["raw_text"])):
        file_id = normalize_note_id(file_id.strip())
        if not file_id or file_id in texts:
            problem = "empty file_id" if not file_id else f"duplicate file_id {file_id!r}"
            raise InputError(path, f"row {index + 1}", problem)
        texts[file_id] = text
    return texts


def read_tagged_csv(path: str | os.PathLike[str]) -> "pandas.DataFrame":  # noqa: F821
    """A split CSV written by this module, every cell the exact string written."""
    return read_csv_strings(path, COLUMNS)


def gold_row(file_id: str, text: str, annotations: Iterable[Annotation] | None) -> tuple[dict[str, str], Counter[str]]:
    """One CSV row for a note, and why gold spans were left out (reason -> count).

    ``annotations`` None means the note has no gold (test): both gold columns are empty strings.
    """
    if annotations is None:
        return {"file_id": file_id, "raw_text": text, "gold_span": "", "gold_offsets": ""}, Counter()
    in_scope = [(a.start, a.end, a.category) for a in annotations if a.category]
    kept, dropped = clean_spans(len(text), in_scope)
    row = {
        "file_id": file_id,
        "raw_text": text,
        "gold_span": spans_to_tagged(text, kept),
        "gold_offsets": json.dumps([list(span) for span in kept]),
    }
    return row, Counter(d.reason for d in dropped)


def build_split_rows(
    ids: Sequence[str],
    texts: RawTexts,
    gold: Mapping[str, list[Annotation]],
    require_gold: bool,
    gold_dir: str | os.PathLike[str] = "gold_dir",
    progress: bool = False,
    split_name: str = "split",
) -> tuple[list[dict[str, str]], Counter[str]]:
    """Rows of one split in split-file order; a note without gold is an error when ``require_gold``."""
    from tqdm.auto import tqdm

    rows: list[dict[str, str]] = []
    reasons: Counter[str] = Counter()
    for note_id in tqdm(ids, desc=f"tagging {split_name}", unit="note", disable=not progress):
        if require_gold and note_id not in gold:
            raise InputError(gold_dir, "", f"no gold file for {split_name} note(s) {note_id}")
        row, dropped = gold_row(note_id, texts[note_id], gold.get(note_id))
        rows.append(row)
        reasons.update(dropped)
    return rows, reasons


def write_tagged_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, str]]) -> None:
    """Write split rows atomically, every field quoted so any text (``\\r``, quotes, commas) round-trips."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False, quoting=csv.QUOTE_ALL, lineterminator="\n")


def convert_splits(
    gold_dir: str | os.PathLike[str],
    texts: RawTexts,
    split_files: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    progress: bool = False,
) -> dict[str, tuple[int, int, Counter[str]]]:
    """Write ``<split>.csv`` per split file given; returns split -> (notes, spans written, dropped reasons)."""
    ids_by_split = {name: read_split(path) for name, path in split_files.items()}
    all_ids = [i for ids in ids_by_split.values() for i in ids]
    gold = read_gold_dir(gold_dir, all_ids)
    for name, ids in ids_by_split.items():  # fail before writing anything
        missing = [i for i in ids if i not in gold]
        if missing and name != "test":
            raise InputError(gold_dir, "", f"no gold file for {name} note(s) {', '.join(missing[:5])}")
    summary: dict[str, tuple[int, int, Counter[str]]] = {}
    for name, ids in ids_by_split.items():
        rows, reasons = build_split_rows(ids, texts, gold, name != "test", gold_dir, progress, name)
        write_tagged_csv(Path(out_dir) / f"{name}.csv", rows)
        spans = sum(len(json.loads(r["gold_offsets"])) for r in rows if r["gold_offsets"])
        summary[name] = (len(rows), spans, reasons)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write MedDec gold annotations as tagged text, one CSV per split.")
    parser.add_argument("--gold_dir", required=True, help="MedDec data/ folder with <ID>.json gold files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw_text_csv", help="CSV with file_id and raw_text columns")
    source.add_argument("--raw_text_dir", help="MedDec raw_text/ folder with <ID>.txt note texts")
    parser.add_argument("--train_split", required=True, help="train split file (one note id per line)")
    parser.add_argument("--val_split", required=True, help="validation split file")
    parser.add_argument("--test_split", default=None, help="optional test split file (notes without gold get empty gold columns)")
    parser.add_argument("--out_dir", required=True, help="folder for train.csv, val.csv (and test.csv)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split_files = {"train": args.train_split, "val": args.val_split}
    if args.test_split:
        split_files["test"] = args.test_split
    try:
        texts = RawTexts(args.raw_text_dir, args.raw_text_csv)
        summary = convert_splits(args.gold_dir, texts, split_files, args.out_dir, progress=True)
    except InputError as err:
        return report_input_error(err)
    for name, (notes, spans, reasons) in summary.items():
        left_out = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common()) or "none"
        print(f"{name}: {notes} notes, {spans} gold spans -> {Path(args.out_dir) / (name + '.csv')} (left out: {left_out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
