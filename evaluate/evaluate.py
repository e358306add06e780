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
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.evaluation import BootstrapArguments
from utils.configs.pipeline import EvaluateArguments
from utils.evaluation import run_evaluation
from utils.metric.punkt import PunktMissingError

DESCRIPTION = "MedDec Shared Task Evaluation (the official MedExACT 2026 score, re-implemented exactly)."


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        args, boot = parse_args(EvaluateArguments, BootstrapArguments, argv=argv, description=DESCRIPTION)
        run_evaluation(args, boot)

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
