"""Tune the ensemble thresholds on validation predictions with Optuna TPE, then apply them (SPEC section 5).

    python -m ensemble.optimize --predictions val_m1.json val_m2.json val_m3.json \
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text --split_file MedDec/splits/val.txt \
        --stats_csv MedDec/stats.csv --n_trials 5000 --storage sqlite:///study.db --output best.json \
        --apply test_m1.json test_m2.json test_m3.json --apply-output submission.json

What is written, resumed and cross-validated: ``ensemble.study``; how a trial is scored fast and exactly:
``ensemble.tuning``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Sequence

from ensemble.study import optimize
from utils.cli import parse_args, run_cli
from utils.configs.pipeline import OptimizeArguments


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(OptimizeArguments, argv=argv, prog="python -m ensemble.optimize",
                             description=__doc__.split("\n\n")[0])
        optimize(args)

    from utils.metric.punkt import PunktMissingError

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
