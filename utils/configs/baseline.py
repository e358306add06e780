"""Argument dataclasses of the encoder baseline (``baselines/train_bert.py``), on transformers' TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from utils.configs import BASELINE_MODEL, MEDDEC, TAGGED_DIR
from utils.fileio import InputError
from utils.metric.rules import DEFAULT_SCORER, SCORER_HELP, SCORERS

WINDOW = 512
OVERLAP_RULES = ("later_wins", "first_wins")
ORPHAN_RULES = ("ignore", "new_span")
WINDOW_LAYOUTS = ("raw", "wrapped")
WINDOW_LAYOUT = "raw"  # published: plain slices of the note tokenised with its special tokens

@dataclass
class BaselineArguments:
    """Data and model flags of the encoder baseline."""

    model: str = field(default=BASELINE_MODEL, metadata={"help": "Encoder checkpoint (Hub id or folder)."})
    train_csv: str | None = field(default=str(TAGGED_DIR / "train.csv"), metadata={"help": "gt_to_tag CSV with gold_offsets ('' to only predict)."})
    predict_csv: list[str] = field(default_factory=list, metadata={"help": "CSVs (file_id, raw_text) to predict."})
    window: int = field(default=WINDOW, metadata={"help": "Tokens per window, special tokens included."})
    window_layout: str = field(default=WINDOW_LAYOUT, metadata={
        "help": "raw (published): the note is tokenised once with its special tokens (<s> ... </s>, labelled O and "
                "trained), a note shorter than --window is padded to it (pads labelled O, attended), and windows are "
                "plain slices of that sequence, so no position is ignored by the loss; wrapped: each window is "
                "<s> + window - 2 note tokens + </s>, the special tokens ignored by the loss.",
        "choices": list(WINDOW_LAYOUTS)})
    gold_dir: str | None = field(default=None, metadata={"help": "MedDec data/: score the predictions."})
    raw_text_dir: str = field(default=str(MEDDEC.raw_text_dir), metadata={"help": "MedDec raw_text/ (for scoring)."})
    split_file: str | None = field(default=None, metadata={"help": "Split file restricting the scored notes."})
    stats_csv: str | None = field(default=None, metadata={"help": "stats.csv (adds worst/final to the score)."})
    scorer: str = field(default=DEFAULT_SCORER, metadata={"help": SCORER_HELP, "choices": list(SCORERS)})
    eval_csv: str | None = field(default=str(TAGGED_DIR / "val.csv"), metadata={
        "help": "gt_to_tag CSV scored every --eval_steps with the published span F1 (exact token spans, micro); the "
                "best checkpoint is kept and loaded at the end, as published. '' trains without selection (last "
                "weights)."})
    overlap_rule: str = field(default="later_wins", metadata={
        "help": "Labels of overlapping gold spans. later_wins (published): spans in (start, end) order, a later span "
                "relabels the tokens it shares with an earlier one unless it would cover an earlier span's B token; "
                "first_wins: a token keeps the first gold span overlapping it (the meddec scorer's token rule).",
        "choices": list(OVERLAP_RULES)})
    orphan_inside: str = field(default="ignore", metadata={
        "help": "Decoding of an I- label that continues no span of its category. ignore (published): it starts a span "
                "only right after an O label; new_span: it always starts one.", "choices": list(ORPHAN_RULES)})


    def __post_init__(self) -> None:
        if self.window < 8:
            raise InputError.flag("--window", f"expected at least 8 tokens, got {self.window}")

@dataclass
class BaselineTrainingArguments(TrainingArguments):
    """TrainingArguments with the published baseline's defaults."""

    output_dir: str | None = field(default="outputs/roberta_baseline", metadata={"help": "Checkpoints and predictions."})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate (published 2e-5)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (published cosine)."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (published AdamW)."})
    weight_decay: float = field(default=0.001, metadata={"help": "AdamW weight decay (published 0.001)."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up: a ratio of total steps when < 1 (published 5%%)."})
    seed: int = field(default=3407, metadata={"help": "Random seed (published 3407)."})
    num_train_epochs: float = field(default=250.0, metadata={"help": "Epochs (published 250)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Notes (one random window each) per step "
                                                                           "and device (published 32)."})
    eval_strategy: str = field(default="steps", metadata={"help": "Score --eval_csv every --eval_steps (published)."})
    eval_steps: float | None = field(default=500, metadata={"help": "Steps between validation scores (published 500)."})
    save_strategy: str = field(default="best", metadata={"help": "Checkpoint when the validation F1 improves (published)."})
    metric_for_best_model: str | None = field(default="f1", metadata={"help": "Validation metric to keep the best of."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "A higher --metric_for_best_model is better."})
    load_best_model_at_end: bool = field(default=True, metadata={
        "help": "Load the best validation checkpoint at the end; it is saved and predicts (published)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep our dataset's fields."})
