"""Span viewer: one self-contained HTML file showing each note's text with the gold spans and every system's spans.

Overlapping and nested spans are drawn as separate lanes under the text, one colour per category, error classes
marked (exact, boundary, category, missed, spurious: utils/metric/errors.py); a note list with per-note span and
token F1 per system; filters by category, error class and system. Open the file in any browser: it works
offline and its Content-Security-Policy forbids every network request.

THE FILE CONTAINS NOTE TEXT (PHI): it is written only to --output, and says so in a banner at the top. Keep it
where your data use agreement allows such data; never upload or share it.

    python evaluate/viewer.py --names ensemble model1 \\
        --predictions outputs/ensemble/submission.json outputs/inference/model1/test_predictions.json \\
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text \\
        --split_file MedDec/splits/test.txt --output outputs/viewer_test.html

This folder has no ``__init__.py`` on purpose: run this file directly, or load it with
``utils.paths.load_module_from_path``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Any, Sequence

from utils.cli import parse_args, run_cli
from utils.configs.evaluation import SystemsArguments, ViewerArguments
from utils.fileio import InputError, check_output_path
from utils.metric.punkt import PunktMissingError, require_punkt

DESCRIPTION = "Offline HTML span viewer of gold and system spans (the file contains note text: PHI)."


def run_viewer(systems_args: SystemsArguments, args: ViewerArguments) -> dict[str, Any]:
    from utils.metric.systems import read_systems, scorer_for_systems

    check_output_path(args.output)
    if not args.output.lower().endswith((".html", ".htm")):
        raise InputError(args.output, "--output", "expected an .html file")
    systems = read_systems(systems_args.predictions, systems_args.names)
    require_punkt()
    scorer = scorer_for_systems(systems_args, systems)
    from utils.metric.viewer import write_viewer

    data = write_viewer(args.output, scorer, systems, args.title)
    n_spans = sum(len(note["spans"]) for note in data["notes"])
    print(f"Span viewer of {len(data['notes'])} notes and {n_spans} spans ({', '.join(data['systems'])}) written to "
          f"{args.output}\nIt CONTAINS NOTE TEXT (PHI): keep it on this machine; do not upload or share it.")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        systems_args, args = parse_args(SystemsArguments, ViewerArguments, argv=argv, description=DESCRIPTION)
        run_viewer(systems_args, args)

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
