"""Extract the unlabeled pool: MIMIC-III discharge summaries that are in no MedDec split (SPEC section 4).

Streaming, exclusion rules and counts: ``utils.pseudolabels.extraction``.

Usage::

    python -m pseudolabels.extract_unlabel --noteevents MedDec/NOTEEVENTS.csv \\
        --splits MedDec/splits/train.txt MedDec/splits/val.txt MedDec/splits/test.txt \\
        --output work/unlabeled.csv
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import ExtractArguments
from utils.pseudolabels.extraction import extract_unlabeled


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(ExtractArguments, argv=argv, description=__doc__.split("\n\n")[0])
        counts = extract_unlabeled(args.noteevents, args.output, args.splits, args.description, args.exclude_patients,
                                   args.chunksize, exclude_by_exact_id=args.exclude_by_exact_id)
        print(counts.summary())
        print(f"wrote {args.output}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
