"""Official MedExACT 2026 / MedDec scoring from the command line (same flags and numbers as the official script).

Re-implements ``evaluate.py`` of github.com/CLU-UML/MedDec at commit f4374cd (see utils/metric/scorer.py for
what "identical" takes), prints the official report followed by a per-category table, and writes the
official JSON (plus extra keys) with --output.

    python evaluate/evaluate.py --gold_dir MedDec/data --raw_text_dir MedDec/raw_text \\
        --predictions predictions.json --split_file MedDec/splits/val.txt --stats_csv MedDec/stats.csv \\
        --output scores.json

Texts are read as the official script reads them (universal newlines: CRLF counts as one character).
Needs NLTK's punkt_tab model (``python -m nltk.downloader punkt_tab``); nothing is downloaded here.
This folder has no ``__init__.py`` on purpose (the Hugging Face ``evaluate`` package keeps its name):
run this file directly, or load it with ``utils.paths.load_module_from_path``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import sys
from typing import TYPE_CHECKING, Sequence

from utils.fileio import InputError, write_json_atomic, report_input_error
from utils.metric.punkt import PunktMissingError, require_punkt
from utils.predictions import read_predictions

if TYPE_CHECKING:
    from utils.metric import ScoreReport


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="MedDec Shared Task Evaluation (the official MedExACT 2026 score, re-implemented exactly)."
    )
    parser.add_argument("--gold_dir", help="Directory containing gold annotation files (data/)")
    parser.add_argument("--predictions", required=True, help="Path to predictions JSON file")
    parser.add_argument("--raw_text_dir", required=True, help="Directory containing raw text files (raw_text/)")
    parser.add_argument("--gold_file", help="Optional: specific gold file (overrides gold_dir)")
    parser.add_argument("--stats_csv", help="Optional: path to stats.csv for shared-task final scoring")
    parser.add_argument("--split_file", help="Optional: path to split file (e.g. splits/val.txt)")
    parser.add_argument("--output", help="Optional: output file for results (JSON)")
    return parser


def run_evaluation(args: argparse.Namespace) -> ScoreReport:
    """Score as the official main() does, printing the same lines."""
    if not args.gold_file and not args.gold_dir:
        raise InputError("<arguments>", "--gold_dir", "give --gold_dir (or --gold_file)")
    from utils.metric import Scorer  # numpy and tqdm load here, not for --help

    require_punkt()
    predictions = read_predictions(args.predictions)
    scorer = Scorer.from_files(
        gold_dir=args.gold_dir, raw_text_dir=args.raw_text_dir, split_file=args.split_file,
        stats_csv=args.stats_csv, gold_file=args.gold_file, extra_ids=list(predictions),
    )
    if args.split_file:
        kept = sum(1 for name in predictions if name in scorer.split_ids)
        print(f"Filtered to {len(scorer.gold_ids)} gold files and {kept} prediction files based on {args.split_file}")
    report = scorer.score(predictions)
    print(report.format_official())
    print(report.format_per_category())
    if args.output:
        write_json_atomic(args.output, report.to_official_dict())
        print(f"\nResults saved to: {args.output}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_evaluation(args)
    except (InputError, PunktMissingError) as err:
        return report_input_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
