"""Tagged model outputs -> prediction JSON with character offsets (the published ``utils/pred_to_offset.py``).

    python utils/pred_to_offset.py --input pred.csv --output pred.json [--raw_text_dir DIR] [--report r.jsonl]
        [--locate published|align]

The CSV has ``file_id``, ``predicted`` (the model output) and ``raw_text`` columns; ``--raw_text_dir`` reads the
note texts exactly from a MedDec ``raw_text/`` folder instead. ``scripts/inference.py`` already locates the spans
of its own outputs (its ``spans`` column and ``<output>.json``): this command is for outputs made elsewhere. By default
(``--locate published``) the spans are exactly those of the published script (each span's text searched in the
note; duplicates kept; sorted by start, end; ``utils.tagging.locate_published``); ``--locate align`` aligns the
whole output to the note instead (``utils.tagging.locate``), which recovers more spans exactly from damaged output.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import json
import sys
from typing import Any, Iterable, Sequence

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import PredToOffsetArguments
from utils.fileio import atomic_open, check_output_path
from utils.meddec.corpus import read_raw_text
from utils.meddec.predictions import write_predictions
from utils.meddec.tables import read_notes_table
from utils.tagging.locate import outputs_to_predictions, summarize_reports


def read_output_rows(args: PredToOffsetArguments) -> list[tuple[str, str, str]]:
    """(file_id, exact note text, model output) per row; note text from the CSV or from ``--raw_text_dir``."""
    if args.raw_text_dir:
        frame = read_notes_table(args.input, args.id_column, args.output_column)
        texts = [read_raw_text(args.raw_text_dir, file_id) for file_id in frame[args.id_column]]
    else:
        frame = read_notes_table(args.input, args.id_column, args.text_column, extra_columns=(args.output_column,))
        texts = list(frame[args.text_column])
    return list(zip(frame[args.id_column], texts, frame[args.output_column]))


def write_reports(path: str, reports: Iterable[dict[str, Any]]) -> None:
    """JSON Lines, one note per line, written atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for report in reports:
            handle.write(json.dumps(report, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(PredToOffsetArguments, argv=argv, description=__doc__.split("\n\n")[0])
        for path in (args.output, args.report):
            if path:
                check_output_path(path)
        predictions, reports = outputs_to_predictions(read_output_rows(args), args.unclosed, progress=True,
                                                     locator=args.locate)
        write_predictions(args.output, predictions)
        if args.report:
            write_reports(args.report, reports)
        print(summarize_reports(reports))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
