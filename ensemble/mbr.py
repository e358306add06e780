"""Merge several models' predictions with Span-Cluster Consensus (LAMAR's ensemble; ``ensemble.consensus``).

    python -m ensemble.mbr --predictions m1.json m2.json m3.json --output merged.json --raw_text_dir MedDec/raw_text \
        [--thresholds_json best.json] [--t_support 0.5] [--explain explain.jsonl]

Inputs and thresholds (defaults < a thresholds JSON < flags): ``ensemble.merging``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Sequence

from ensemble.merging import merge_prediction_files
from utils.cli import parse_args, run_cli
from utils.configs.pipeline import MergeArguments, ThresholdArguments


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        args, flags = parse_args(MergeArguments, ThresholdArguments, argv=argv, prog="python -m ensemble.mbr",
                                 description=__doc__.split("\n\n")[0])
        merged, thresholds, n_models = merge_prediction_files(args, flags)
        n_spans = sum(len(spans) for spans in merged.values())
        print(f"merged {n_models} model(s): {len(merged)} notes, {n_spans} spans -> {args.output} "
              f"({', '.join(f'{k}={v}' for k, v in thresholds.as_dict().items())})")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
