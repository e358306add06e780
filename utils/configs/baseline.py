"""Argument dataclasses of the encoder baseline (``baselines/train_bert.py``), on transformers' TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from utils.configs import BASELINE_MODEL, MEDDEC, TAGGED_DIR

WINDOW = 512

@dataclass
class BaselineArguments:
    """Data and model flags of the encoder baseline."""

    model: str = field(default=BASELINE_MODEL, metadata={"help": "Encoder checkpoint (Hub id or folder)."})
    train_csv: str | None = field(default=str(TAGGED_DIR / "train.csv"), metadata={"help": "gt_to_tag CSV with gold_offsets ('' to only predict)."})
    predict_csv: list[str] = field(default_factory=list, metadata={"help": "CSVs (file_id, raw_text) to predict."})
    window: int = field(default=WINDOW, metadata={"help": "Tokens per window, special tokens included."})
    gold_dir: str | None = field(default=None, metadata={"help": "MedDec data/: score the predictions."})
    raw_text_dir: str = field(default=str(MEDDEC.raw_text_dir), metadata={"help": "MedDec raw_text/ (for scoring)."})
    split_file: str | None = field(default=None, metadata={"help": "Split file restricting the scored notes."})
    stats_csv: str | None = field(default=None, metadata={"help": "stats.csv (adds worst/final to the score)."})


@dataclass
class BaselineTrainingArguments(TrainingArguments):
    """TrainingArguments with the published baseline's defaults."""

    output_dir: str | None = field(default="outputs/roberta_baseline", metadata={"help": "Checkpoints and predictions."})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate (published 2e-5)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (published cosine)."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (published AdamW)."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Epochs (not published; 10 here)."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep our dataset's fields."})
