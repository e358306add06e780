"""Gold annotations -> tagged-text training CSVs, one per split (the published ``utils/gt_to_tag.py``).

    python utils/gt_to_tag.py --gold_dir MedDec/data --raw_text_dir MedDec/raw_text \
        --train_split MedDec/splits/train.txt --val_split MedDec/splits/val.txt --out_dir data/tagged

writes ``train.csv`` and ``val.csv`` (and ``test.csv`` with ``--test_split``) with the columns
``file_id, raw_text, gold_span, gold_offsets``. Note text comes from the MedDec ``raw_text/`` folder or from a CSV
with ``file_id`` and ``raw_text`` columns (``--raw_text_csv``, as published). Read the CSVs with
``utils.meddec.tables.read_tagged_table`` (or ``pandas.read_csv(path, dtype=str, keep_default_na=False)``): note
text must stay exactly as is. The conversion itself is ``utils.tagging.splits``. As published, notes are sorted by
file name and exact duplicate gold spans stay doubled; ``--keep_split_order`` and ``--dedupe_spans`` change that.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from pathlib import Path
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import GtToTagArguments
from utils.tagging.splits import RawTexts, convert_splits


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(GtToTagArguments, argv=argv, description=__doc__.split("\n\n")[0])
        split_files = {"train": args.train_split, "val": args.val_split}
        if args.test_split:
            split_files["test"] = args.test_split
        texts = RawTexts(None, args.raw_text_csv) if args.raw_text_csv else RawTexts(args.raw_text_dir)
        summary = convert_splits(args.gold_dir, texts, split_files, args.out_dir, progress=True,
                                 keep_duplicates=not args.dedupe_spans, sort_notes=not args.keep_split_order)
        for name, (notes, spans, reasons) in summary.items():
            left_out = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common()) or "none"
            print(f"{name}: {notes} notes, {spans} gold spans -> {Path(args.out_dir) / (name + '.csv')} "
                  f"(left out: {left_out})")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
