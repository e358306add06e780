"""Official MedExACT 2026 / MedDec scoring from the command line (same flags and numbers as the official script).

By default re-implements the published ``evaluate/evaluate.py`` of github.com/biodatlab/medexact-lamar (the script
LAMAR shipped and tuned with); ``--scorer meddec`` gives ``evaluate.py`` of github.com/CLU-UML/MedDec at commit
f4374cd instead (SPEC section 2; utils/metric/scorer.py says what "identical" takes). Prints the official report
followed by a per-category table and the scorer's name, and writes the official JSON (plus extra keys, ``scorer``
among them) with --output.

    python evaluate/evaluate.py --gold_dir MedDec/data --raw_text_dir MedDec/raw_text \\
        --predictions predictions.json --split_file MedDec/splits/val.txt --stats_csv MedDec/stats.csv \\
        --output scores.json

With ``--bootstrap 10000`` (and ``--seed``, ``--confidence``), percentile confidence intervals of every number
(notes resampled with replacement, utils/metric/resampling.py) are printed after the report and written under
the key ``bootstrap`` of the JSON; without it the output is exactly the official one.

Texts are read as the official script reads them (universal newlines: CRLF counts as one character).
Needs NLTK's punkt_tab model (``python -m nltk.downloader punkt_tab``); nothing is downloaded here.
This folder has no ``__init__.py`` on purpose (the Hugging Face ``evaluate`` package keeps its name):
run this file directly, or load it with ``utils.paths.load_module_from_path``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import TYPE_CHECKING, Sequence

from utils.cli import parse_args, run_cli
from utils.configs.evaluation import BootstrapArguments
from utils.configs.pipeline import EvaluateArguments
from utils.fileio import InputError, check_output_path, warn, write_json_atomic
from utils.meddec.predictions import read_predictions
from utils.metric.punkt import PunktMissingError, require_punkt

if TYPE_CHECKING:
    from utils.metric import ScoreReport

DESCRIPTION = "MedDec Shared Task Evaluation (the official MedExACT 2026 score, re-implemented exactly)."


def run_evaluation(args: EvaluateArguments, boot: BootstrapArguments | None = None) -> ScoreReport:
    """Score as the official main() does, printing the same lines (then the bootstrap intervals, if asked)."""
    boot = boot or BootstrapArguments()
    if not args.gold_file and not args.gold_dir:
        raise InputError("<arguments>", "--gold_dir", "give --gold_dir (or --gold_file)")
    from utils.metric.resampling import check_bootstrap_options

    check_bootstrap_options(boot.bootstrap, boot.confidence)
    if args.output:
        check_output_path(args.output)
    from utils.metric import Scorer  # numpy and tqdm load here, not for --help
    from utils.metric.checks import input_warnings, require_a_match

    require_punkt()
    predictions = read_predictions(args.predictions)
    scorer = Scorer.from_files(
        gold_dir=args.gold_dir, raw_text_dir=args.raw_text_dir, split_file=args.split_file,
        stats_csv=args.stats_csv, gold_file=args.gold_file, extra_ids=list(predictions), rule=args.scorer,
    )
    require_a_match(scorer, predictions, args.predictions)
    if args.split_file:
        kept = sum(1 for name in predictions if name in scorer.split_ids)
        print(f"Filtered to {len(scorer.gold_ids)} gold files and {kept} prediction files based on {args.split_file}")
    for line in input_warnings(scorer, predictions):
        warn(line)
    report = scorer.score(predictions)
    print(report.format_official())
    print(report.format_per_category())
    print(report.format_scorer())
    result = report.to_official_dict()
    if boot.bootstrap > 0:
        from utils.metric.resampling import bootstrap

        intervals = bootstrap(scorer, predictions, boot.bootstrap, boot.seed, boot.confidence, progress=True)
        print(intervals.format())
        result["bootstrap"] = intervals.to_dict()
    if args.output:
        write_json_atomic(args.output, result)
        print(f"\nResults saved to: {args.output}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        args, boot = parse_args(EvaluateArguments, BootstrapArguments, argv=argv, description=DESCRIPTION)
        run_evaluation(args, boot)

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
