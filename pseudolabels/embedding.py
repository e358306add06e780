"""Embed the unlabeled pool and the MedDec notes for retrieval (SPEC section 4).

Resumable shard cache, one or several devices: ``utils.pseudolabels.embedding``.

Usage::

    python -m pseudolabels.embedding --pool_csv work/unlabeled.csv --pool_out work/embeddings/pool \\
        --meddec_raw_text MedDec/raw_text \\
        --meddec_splits MedDec/splits/train.txt MedDec/splits/val.txt MedDec/splits/test.txt \\
        --meddec_out work/embeddings/meddec [--devices cuda:0 cuda:1 cuda:2 cuda:3]
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import EmbeddingArguments
from utils.pseudolabels.embedding import embed_sources


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(EmbeddingArguments, argv=argv, description=__doc__.split("\n\n")[0])
        for source, count in embed_sources(args).items():
            out = args.pool_out if source == "pool" else args.meddec_out
            print(f"{source}: {count} shard(s) embedded now, cache complete in {out}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
