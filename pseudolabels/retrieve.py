"""Pick pseudo-label candidates: greedy unique assignment of pool notes to MedDec notes (SPEC section 4).

Top-k per note, the published greedy assignment, its tie rules and the output CSV: ``utils.pseudolabels.retrieval``.

Usage::

    python -m pseudolabels.retrieve --pool_embeddings work/embeddings/pool \\
        --meddec_embeddings work/embeddings/meddec --pool_csv work/unlabeled.csv \\
        --query_splits MedDec/splits/train.txt MedDec/splits/val.txt MedDec/splits/test.txt \\
        --output work/pseudo_candidates.csv
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import RetrieveArguments
from utils.pseudolabels.retrieval import retrieve_candidates


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(RetrieveArguments, argv=argv, description=__doc__.split("\n\n")[0])
        assignments = retrieve_candidates(args)
        notes = len({a.query for a in assignments})
        print(f"assigned {len(assignments)} candidates to {notes} MedDec notes; wrote {args.output}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
