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

import sys
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.evaluation import ErrorArguments, SystemsArguments
from utils.evaluation import run_error_analysis
from utils.metric.punkt import PunktMissingError

DESCRIPTION = "Span error classes per category, category-confusion matrix and boundary offsets of prediction sets."


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        systems_args, args = parse_args(SystemsArguments, ErrorArguments, argv=argv, description=DESCRIPTION)
        run_error_analysis(systems_args, args)

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
