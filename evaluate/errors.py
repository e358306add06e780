"""Error analysis of one or more prediction sets: every gold and predicted span classified as exact match, boundary
error, category error, missed or spurious (definitions: utils/metric/errors.py), counted per category.

Writes to --output_dir: ``errors.json`` (the definitions, and per system the counts per category and class, the
category-confusion matrix, the boundary-offset histogram and per-note counts) and, per system,
``<name>_confusion.png`` and ``<name>_boundary_offsets.png``. Counts and note ids only: no note text.

    python evaluate/errors.py --predictions ensemble.json model1.json --gold_dir MedDec/data \\
        --raw_text_dir MedDec/raw_text --split_file MedDec/splits/val.txt --output_dir outputs/errors

This folder has no ``__init__.py`` on purpose: run this file directly, or load it with
``utils.paths.load_module_from_path``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import re
import sys
from pathlib import Path
from typing import Any, Sequence

from utils.cli import parse_args, run_cli
from utils.configs.evaluation import ErrorArguments, SystemsArguments
from utils.fileio import InputError, check_output_path, write_json_atomic
from utils.metric.punkt import PunktMissingError, require_punkt

DESCRIPTION = "Span error classes per category, category-confusion matrix and boundary offsets of prediction sets."
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
        raise InputError(out_dir, "", "--output_dir: expected a folder, got a file")
    systems = read_systems(systems_args.predictions, systems_args.names)
    stems = [file_stem(name) for name in systems]
    if len(set(stems)) != len(stems):
        raise InputError("<command line>", "--names", "two system names give the same file name: give other --names")
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


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        systems_args, args = parse_args(SystemsArguments, ErrorArguments, argv=argv, description=DESCRIPTION)
        run_error_analysis(systems_args, args)

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
