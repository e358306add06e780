"""What the ``evaluate/*.py`` commands run on their parsed flags: the official score with its input warnings and
bootstrap intervals (``evaluate/evaluate.py``), and the span error analysis with its plots (``evaluate/errors.py``).
The metric itself is ``utils.metric``; this layer adds reading the files the flags name and writing the outputs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.configs.evaluation import BootstrapArguments, ErrorArguments, SystemsArguments
from utils.configs.pipeline import EvaluateArguments
from utils.fileio import InputError, check_output_path, warn, write_json_atomic
from utils.meddec.predictions import read_predictions
from utils.metric.punkt import require_punkt

if TYPE_CHECKING:
    from utils.metric import ScoreReport


def run_evaluation(args: EvaluateArguments, boot: BootstrapArguments | None = None) -> ScoreReport:
    """Score as the official main() does, printing the same lines (then the bootstrap intervals, if asked)."""
    boot = boot or BootstrapArguments()
    if not args.gold_file and not args.gold_dir:
        raise InputError.flag("--gold_dir", "give --gold_dir (or --gold_file)")
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


DEFINITIONS = {
    "unit": "span key = (category, lowercased refined text) within a note, as the official span F1 counts it",
    "exact": "the other side has the same key (official true positive)",
    "boundary": "otherwise an occurrence overlaps one of the other side with the same category",
    "category": "otherwise an occurrence overlaps one of the other side with another category",
    "missed": "gold key overlapping no predicted span",
    "spurious": "predicted key overlapping no gold span",
}


def file_stem(name: str) -> str:
    """A system name as a safe file-name prefix."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "system"


def run_error_analysis(systems_args: SystemsArguments, args: ErrorArguments) -> dict[str, Any]:
    from utils.metric.systems import read_systems, scorer_for_systems

    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "--output_dir", "expected a folder, got a file")
    systems = read_systems(systems_args.predictions, systems_args.names)
    stems = [file_stem(name) for name in systems]
    if len(set(stems)) != len(stems):
        raise InputError.flag("--names", "two system names give the same file name: give other --names")
    for stem in stems:
        for suffix in ("_confusion.png", "_boundary_offsets.png"):
            check_output_path(out_dir / f"{stem}{suffix}")
    check_output_path(out_dir / "errors.json")
    require_punkt()
    scorer = scorer_for_systems(systems_args, systems)
    from utils.metric.error_plots import plot_boundary_offsets, plot_confusion
    from utils.metric.errors import classify_predictions, summarize

    result: dict[str, Any] = {"definitions": DEFINITIONS, "scorer": {"name": scorer.rule, "reference": scorer.reference},
                              "systems": {}}
    for (name, predictions), stem in zip(systems.items(), stems):
        summary = summarize(classify_predictions(scorer, predictions))
        result["systems"][name] = summary.to_dict()
        plot_confusion(summary, out_dir / f"{stem}_confusion.png", f"{name}: category confusion (span keys)")
        plot_boundary_offsets(summary, out_dir / f"{stem}_boundary_offsets.png", f"{name}: boundary offsets")
        totals = summary.totals()
        print(f"{name}: gold keys " + ", ".join(f"{k} {v}" for k, v in totals["gold"].items())
              + "; predicted keys " + ", ".join(f"{k} {v}" for k, v in totals["pred"].items()))
    write_json_atomic(out_dir / "errors.json", result)
    print(f"Error analysis saved to: {out_dir}")
    return result
