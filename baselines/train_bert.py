"""The encoder baseline: a RoBERTa-style B/I/O token classifier (SPEC section 6; logic in ``baselines.bio_tagger``).

    python baselines/train_bert.py --train_csv data/tagged/train.csv --predict_csv data/tagged/val.csv \
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text --split_file MedDec/splits/val.txt \
        --output_dir outputs/roberta_baseline
    accelerate launch baselines/train_bert.py --train_csv ... (same flags, several GPUs)

Flags: ``utils.configs.baseline`` (every TrainingArguments option too). Each ``--predict_csv`` gives
``<output_dir>/<stem>_predictions.json``; with ``--gold_dir`` it is scored with the official metric.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Sequence

from utils.cli import parse_args, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        from baselines.bio_tagger import train_and_predict
        from utils.configs.baseline import BaselineArguments, BaselineTrainingArguments

        args, training = parse_args(BaselineArguments, BaselineTrainingArguments, argv=argv,
                                    description=__doc__.split("\n\n")[0])
        for source, out in train_and_predict(args, training).items():
            print(f"{source} -> {out}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
