"""Entropy threshold for pseudo-labels: explore it on validation, then select and mix (SPEC section 4).

What each command computes (quantiles, per-note scores, the pseudo-label targets): ``utils.pseudolabels.threshold``.

Usage::

    python -m pseudolabels.dynamic_threshold explore --val_predictions outputs/model1/val_predictions.csv \\
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text --pool_predictions work/pseudo_candidates_model1.csv \\
        --report work/threshold_report.json --plot work/threshold.png
    python -m pseudolabels.dynamic_threshold select --pool_predictions work/pseudo_candidates_model1.csv \\
        --train_csv data/tagged/train.csv --threshold 0.10 --output data/tagged/train_mixed.csv
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from dataclasses import asdict
from typing import Any, Sequence

from utils.cli import parse_command, run_cli
from utils.configs.pipeline import ExploreArguments, SelectArguments
from utils.pseudolabels.threshold import explore, select

COMMANDS = {"explore": ExploreArguments, "select": SelectArguments}


def run_command(command: str, args: Any) -> None:
    """Run ``explore`` or ``select`` and print what it found or wrote."""
    if command == "explore":
        result = explore(args)
        print(f"{result['val_notes']} validation notes; Spearman rho(entropy, per-note base) = {result['spearman_rho']}")
        for b in result["bins"]:
            print(f"  entropy {b['entropy_from']:.4f}-{b['entropy_to']:.4f}: {b['notes']} notes, base {b['base']:.4f}")
        for q in result["val_quantiles"]:
            if q["kept"]:
                print(f"  val quantile {q['quantile']:g}: threshold {q['threshold']:.4f}, keeps {q['kept']} notes, mean span "
                      f"F1 {q['mean_span_f1']:.4f}, token F1 {q['mean_token_f1']:.4f}, base {q['base']:.4f}")
        for p in result["pool"]:
            print(f"  pool quantile {p['quantile']:g}: threshold {p['threshold']:.4f}, keeps {p['kept']}/{p['pool']}")
        print(f"wrote {args.report}" + (f" and {args.plot}" if args.plot else ""))
    else:
        summary = select(args)
        print(", ".join(f"{k}: {v}" for k, v in asdict(summary).items()))
        print(f"wrote {args.output}")


def main(argv: Sequence[str] | None = None) -> int:
    from utils.metric.punkt import PunktMissingError

    def body() -> None:
        run_command(*parse_command(COMMANDS, argv=argv, prog="dynamic_threshold.py"))

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
