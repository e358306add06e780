"""Paired bootstrap comparison of two or more prediction sets on the same notes: is A better than B here?

Every system is scored on the same resamples of the notes (utils/metric/comparison.py); for each pair the
official difference of the final score (the base score without --stats_csv) and of its parts, the percentile
interval of the difference, the share of resamples in which A is ahead, and one sentence such as
"final score: A - B = 0.012, 95% CI [-0.004, 0.029]: not distinguishable on these notes".

    python evaluate/compare.py --predictions ensemble.json model1.json model2.json \\
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text --split_file MedDec/splits/val.txt \\
        --stats_csv MedDec/stats.csv --bootstrap 10000 --output comparison.json [--against_first]

This folder has no ``__init__.py`` on purpose: run this file directly, or load it with
``utils.paths.load_module_from_path``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import TYPE_CHECKING, Sequence

from utils.cli import parse_args, run_cli
from utils.configs.evaluation import CompareArguments, SystemsArguments
from utils.fileio import check_output_path, write_json_atomic
from utils.metric.punkt import PunktMissingError, require_punkt

if TYPE_CHECKING:
    from utils.metric.comparison import ComparisonReport

DESCRIPTION = "Paired bootstrap comparison of prediction sets on the same notes (official score and its parts)."


def run_comparison(systems_args: SystemsArguments, args: CompareArguments) -> ComparisonReport:
    from utils.metric.systems import read_systems, scorer_for_systems

    if args.output:
        check_output_path(args.output)
    systems = read_systems(systems_args.predictions, systems_args.names, at_least=2)
    require_punkt()
    scorer = scorer_for_systems(systems_args, systems)
    from utils.metric.comparison import compare

    report = compare(scorer, systems, args.bootstrap, args.seed, args.confidence, args.against_first, progress=True)
    print(report.format())
    print(f"Scorer: {scorer.rule} ({scorer.reference})")
    if args.output:
        write_json_atomic(args.output, {**report.to_dict(), "scorer": {"name": scorer.rule, "reference": scorer.reference}})
        print(f"\nComparison saved to: {args.output}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        systems_args, args = parse_args(SystemsArguments, CompareArguments, argv=argv, description=DESCRIPTION)
        run_comparison(systems_args, args)

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
