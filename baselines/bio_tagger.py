"""The encoder baseline: a RoBERTa-style token classifier with B/I/O labels (SPEC section 6).

As published: 9 categories as B/I/O (19 labels), 512-token windows (a random crop of each note for
training, consecutive windows for inference; ``--window_layout raw``: plain slices of the note tokenised once
with its special tokens, which are labelled O, so no position is ignored by the loss), lr 2e-5, AdamW (weight decay 0.001), cosine schedule with 5 %
warm-up, seed 3407, 250 epochs of batch 32, and the checkpoint with the best validation span F1 (scored every
500 steps on ``--eval_csv``; the published metric: micro F1 over exact token spans, x 100) is the one kept.
Runs on transformers' ``Trainer``: one process by default, several GPUs with ``accelerate launch`` or
``torchrun`` unchanged; checkpoints in ``--output_dir`` (resume with ``--resume_from_checkpoint``). Every
``TrainingArguments`` option is a flag.

Overlapping gold spans: B/I/O holds one label per token. ``--overlap_rule later_wins`` (published): gold
spans are taken in (start, end) order; a span's first token is the one holding its start character (or one
of the next 9), its last the one before the token holding its end character (or the note's last token);
it is written as ``B-`` then ``I-`` over those tokens, relabelling tokens an earlier span had, unless one
of them is already some span's ``B-`` (then the span is skipped); a span whose start maps to no token ends
the labelling of the note. ``first_wins``: a token takes the category of the FIRST annotation in gold order
that overlaps it (the official token score's rule) and is ``B-`` where that annotation's tokens begin,
else ``I-``.

Decoding: a span starts at a ``B-X`` token and runs over the following ``I-X`` tokens; its characters run
from its first token's start to its last token's end. An ``I-X`` token that continues no span of X
(``--orphan_inside``) starts a span only after an ``O`` label (published ``ignore``), or always
(``new_span``). Zero-width tokens are skipped; a span still open at the note's end is kept.

Data: ``utils/gt_to_tag.py`` CSVs (``file_id``, ``raw_text``, ``gold_offsets``) for training; any CSV with
``file_id`` and ``raw_text`` for prediction. Each ``--predict_csv`` gives ``<output_dir>/<stem>_predictions.json``
in the evaluator's format; with ``--gold_dir`` (and ``--raw_text_dir``) it is scored with ``utils.metric``.

Usage::

    python baselines/train_bert.py --train_csv data/tagged/train.csv --predict_csv data/tagged/val.csv \\
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text --split_file MedDec/splits/val.txt \\
        --output_dir outputs/roberta_baseline
    accelerate launch baselines/train_bert.py --train_csv ... (same flags, several GPUs)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from utils.categories import TAGS
from utils.configs.baseline import WINDOW, WINDOW_LAYOUT, BaselineArguments, BaselineTrainingArguments
from utils.fileio import InputError
from utils.meddec.predictions import Span, write_predictions
from utils.meddec.tables import parse_spans_json, read_notes_table, read_tagged_table

IGNORE = -100
LOOKAHEAD = 9  # published: an offset between tokens maps to the token holding one of the next 9 characters


def bio_labels() -> list[str]:
    """The 19 labels: O, then B-<tag>, I-<tag> in category order (ids: B of category c = 2c-1, I = 2c)."""
    return ["O"] + [f"{prefix}-{tag}" for tag in TAGS for prefix in ("B", "I")]


def label_id(prefix: str, category: int) -> int:
    return 2 * category - 1 if prefix == "B" else 2 * category


# ------------------------------------------------------------------------------------------------ labels


def token_labels(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int, int]],
                 rule: str = "first_wins") -> list[int]:
    """B/I/O ids per token under ``rule`` (module docstring); empty tokens are O."""
    if rule == "later_wins":
        return later_wins_labels(offsets, spans)
    owner: list[int] = []
    for start, end in offsets:
        winner = -1
        if end > start:
            for index, (s, e, c) in enumerate(spans):
                if s < end and start < e and 1 <= c <= 9:
                    winner = index
                    break
        owner.append(winner)
    labels = []
    for i, index in enumerate(owner):
        if index < 0:
            labels.append(0)
        else:
            prefix = "I" if i > 0 and owner[i - 1] == index else "B"
            labels.append(label_id(prefix, spans[index][2]))
    return labels


def character_tokens(offsets: Sequence[tuple[int, int]]) -> list[int]:
    """For each character position, the index of the token holding it (-1 between tokens)."""
    owner = [-1] * max((end for _, end in offsets), default=0)
    for index, (start, end) in enumerate(offsets):
        owner[start:end] = [index] * (end - start)
    return owner


def token_at(owner: Sequence[int], position: int) -> int | None:
    """The token holding character ``position``, else one of the next ``LOOKAHEAD`` characters (published)."""
    for c in range(position, position + LOOKAHEAD + 1):
        if 0 <= c < len(owner) and owner[c] >= 0:
            return owner[c]
    return None


def published_token_spans(offsets: Sequence[tuple[int, int]],
                          spans: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(category, first token, token after the last) of the gold spans as the published baseline mapped them: in
    (start, end) order, out-of-scope categories skipped, everything from the first unmappable start on dropped."""
    owner = character_tokens(offsets)
    mapped = []
    for start, end, category in sorted(spans, key=lambda s: (s[0], s[1])):
        first = token_at(owner, start)
        if first is None:
            break
        after = token_at(owner, end)
        after = len(offsets) if after is None else after
        after = after + 1 if after == first else after
        if 1 <= category <= 9:
            mapped.append((category, first, after))
    return mapped


def later_wins_labels(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int, int]]) -> list[int]:
    """The published labelling (``--overlap_rule later_wins``, module docstring)."""
    labels = [0] * len(offsets)
    for category, first, after in published_token_spans(offsets, spans):
        if any(label % 2 == 1 for label in labels[first:after]):  # holds some span's B- token
            continue
        labels[first] = label_id("B", category)
        labels[first + 1 : after] = [label_id("I", category)] * max(0, after - first - 1)
    return labels


def decode_spans(offsets: Sequence[tuple[int, int]], labels: Sequence[int], orphan_inside: str = "new_span") -> list[Span]:
    """Character spans from per-token B/I/O ids (see the module docstring for the rule)."""
    spans: list[Span] = []
    current: list[int] | None = None  # [start, end, category]
    previous = 0
    for (start, end), label in zip(offsets, labels):
        if end <= start:
            continue
        category = (label + 1) // 2 if label > 0 else 0
        inside = label > 0 and label % 2 == 0
        if current is not None and inside and category == current[2]:
            current[1] = end
            previous = label
            continue
        if current is not None:
            spans.append(Span(*current))
            current = None
        if category and (not inside or orphan_inside == "new_span" or previous == 0):
            current = [start, end, category]
        previous = label
    if current is not None:
        spans.append(Span(*current))
    return spans


def published_span_f1(gold: dict[str, set[tuple[int, int, int]]], predicted: dict[str, set[tuple[int, int, int]]]) -> float:
    """The published validation metric: micro F1 (x 100) over exact (note, category, start, end) spans."""
    gold_all = {(note, *span) for note, spans in gold.items() for span in spans}
    predicted_all = {(note, *span) for note, spans in predicted.items() for span in spans}
    tp = len(gold_all & predicted_all)
    wrong = len(gold_all) + len(predicted_all) - 2 * tp
    return 200.0 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def token_snapped_gold(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int, int]]) -> set[tuple[int, int, int]]:
    """Gold spans as the published metric saw them: (category, first token's start, last token's end) characters."""
    snapped = set()
    for category, first, after in published_token_spans(offsets, spans):
        ends = [e for s, e in offsets[first:after] if e > s]
        snapped.add((category, offsets[first][0], max(ends)))
    return snapped


# -------------------------------------------------------------------------------------------------- data


@dataclass
class EncodedNote:
    """A whole note tokenised once (no special tokens), with character offsets and labels per token."""

    file_id: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    labels: list[int]


def encode_note(tokenizer: Any, file_id: str, text: str, spans: Sequence[tuple[int, int, int]] = (),
                overlap_rule: str = "first_wins", special_tokens: bool = False) -> EncodedNote:
    """With ``special_tokens`` (the raw layout) the note's own <s> ... </s> are in, zero-width, so labelled O."""
    enc = tokenizer(text, add_special_tokens=special_tokens, return_offsets_mapping=True, verbose=False)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    return EncodedNote(file_id, list(enc["input_ids"]), offsets, token_labels(offsets, spans, overlap_rule))


def special_wrapping(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the model puts before and after a single sequence (<s> ... </s> for RoBERTa)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    raise ValueError("cannot tell the tokenizer's special tokens apart from the text")


def with_special_tokens(wrapping: tuple[list[int], list[int]], ids: list[int], labels: list[int]) -> dict[str, list[int]]:
    """<s> window </s> (the model's own special tokens), their labels ignored."""
    prefix, suffix = wrapping
    input_ids = prefix + list(ids) + suffix
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE] * len(prefix) + list(labels) + [IGNORE] * len(suffix),
    }


def padded_to_window(note: EncodedNote, window: int, pad_id: int) -> EncodedNote:
    """The published encoding of a short note (``padding='max_length'``): pads up to ``window``, labelled O and
    attended (a crop of it is always a full window); longer notes are left as they are."""
    missing = max(0, window - len(note.input_ids))
    return EncodedNote(note.file_id, note.input_ids + [pad_id] * missing, note.offsets + [(0, 0)] * missing,
                       note.labels + [0] * missing)


class RandomCropDataset:
    """One item per note; each access takes a random window of the note (published: random crop). ``raw``: a plain
    slice of the note encoded with its special tokens (pass notes from ``encode_note(special_tokens=True)``);
    ``wrapped``: <s> + slice + </s> with the special tokens' labels ignored."""

    def __init__(self, notes: list[EncodedNote], tokenizer: Any, window: int, seed: int, layout: str = WINDOW_LAYOUT) -> None:
        self.layout = layout
        if layout == "raw":
            self.notes = [padded_to_window(n, window, tokenizer.pad_token_id) for n in notes]
            self.wrapping: tuple[list[int], list[int]] = ([], [])
        else:
            self.notes = notes
            self.wrapping = special_wrapping(tokenizer)
        self.body = window - sum(map(len, self.wrapping))
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.notes)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        note = self.notes[index]
        start = self.rng.randint(0, max(0, len(note.input_ids) - self.body))
        end = start + self.body
        return with_special_tokens(self.wrapping, note.input_ids[start:end], note.labels[start:end])


def read_training_csv(path: str) -> list[tuple[str, str, list[Span]]]:
    """(file_id, text, gold spans in file order) from a tagged split table."""
    frame = read_tagged_table(path)
    return [(file_id, text, parse_spans_json(offsets, path, f"row {row}", "gold_offsets"))
            for row, (file_id, text, offsets) in enumerate(zip(frame["file_id"], frame["raw_text"], frame["gold_offsets"]),
                                                           start=1)]


def read_predict_csv(path: str) -> list[tuple[str, str]]:
    """(file_id, text) of a notes table to predict."""
    frame = read_notes_table(path)
    return list(zip(frame["file_id"], frame["raw_text"]))


# --------------------------------------------------------------------------------------------- inference


def predict_note(model: Any, tokenizer: Any, text: str, window: int = WINDOW, batch_size: int = 8,
                 orphan_inside: str = "new_span", layout: str = WINDOW_LAYOUT) -> list[Span]:
    """Consecutive windows over the note, argmax label per token, decoded to character spans. ``raw`` (published):
    slices of the note encoded once with its special tokens (their labels are dropped by decoding, being
    zero-width); ``wrapped``: each window between the model's own special tokens."""
    import torch

    raw = layout == "raw"
    note = encode_note(tokenizer, "", text, special_tokens=raw)
    wrapping = ([], []) if raw else special_wrapping(tokenizer)
    body = window - sum(map(len, wrapping))
    windows = [with_special_tokens(wrapping, note.input_ids[s : s + body], [0] * len(note.input_ids[s : s + body]))
               for s in range(0, len(note.input_ids), body)]
    labels: list[int] = []
    device = next(model.parameters()).device
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        width = max(len(w["input_ids"]) for w in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([w["input_ids"] + [pad] * (width - len(w["input_ids"])) for w in batch], device=device)
        mask = torch.tensor([w["attention_mask"] + [0] * (width - len(w["input_ids"])) for w in batch], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        predicted = logits.argmax(-1).tolist()
        for w, row in zip(batch, predicted):
            labels.extend(p for p, gold in zip(row, w["labels"]) if gold != IGNORE)
    return decode_spans(note.offsets, labels, orphan_inside)


def predict_rows(model: Any, tokenizer: Any, rows: Sequence[tuple[str, str]], window: int, batch_size: int,
                 name: str = "notes", progress: bool = True, orphan_inside: str = "new_span",
                 layout: str = WINDOW_LAYOUT) -> dict[str, list[Span]]:
    """Spans of every (file_id, text) row."""
    from tqdm.auto import tqdm

    model.eval()
    return {file_id: predict_note(model, tokenizer, text, window, batch_size, orphan_inside, layout)
            for file_id, text in tqdm(rows, desc=f"predict {name}", unit="note", disable=not progress)}


def validation_gold(tokenizer: Any, rows: Sequence[tuple[str, str, list[Span]]]) -> dict[str, set[tuple[int, int, int]]]:
    """The validation notes' gold spans as the published metric compares them (token-snapped)."""
    return {file_id: token_snapped_gold(encode_note(tokenizer, file_id, text).offsets, spans)
            for file_id, text, spans in rows}


def trainer_class():
    """transformers' Trainer whose evaluation is the published validation span F1 (imported lazily)."""
    from transformers import Trainer

    class BestValidationTrainer(Trainer):
        """Scores the validation notes with the published span F1 at each evaluation; the Trainer keeps the best."""

        def __init__(self, *args: Any, validation: Sequence[tuple[str, str]] = (),
                     validation_gold: dict[str, set] | None = None, window: int = WINDOW,
                     orphan_inside: str = "ignore", layout: str = WINDOW_LAYOUT, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.validation, self.validation_gold = list(validation), validation_gold or {}
            self.window, self.orphan_inside, self.layout = window, orphan_inside, layout

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
            predicted = predict_rows(self.model, self.processing_class, self.validation, self.window,
                                     self.args.per_device_eval_batch_size, "validation", progress=False,
                                     orphan_inside=self.orphan_inside, layout=self.layout)
            spans = {i: {(s.category, s.start, s.end) for s in found} for i, found in predicted.items()}
            metrics = {f"{metric_key_prefix}_f1": published_span_f1(self.validation_gold, spans)}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return BestValidationTrainer


# ------------------------------------------------------------------------------------------------ driver


def load_model(name: str):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    labels = bio_labels()
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForTokenClassification.from_pretrained(
        name, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
    )
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(name, "", "a fast tokenizer (character offsets) is needed")
    return model, tokenizer


def without_selection(training: BaselineTrainingArguments) -> None:
    """No validation CSV: no evaluation, no best checkpoint (the last weights are saved)."""
    training.eval_strategy = "no"
    training.load_best_model_at_end = False
    if training.save_strategy == "best":
        training.save_strategy = "no"


def train(args: BaselineArguments, training: BaselineTrainingArguments,
          rows: Sequence[tuple[str, str, list[Span]]] | None,
          validation: Sequence[tuple[str, str, list[Span]]] | None = None):
    """Fine-tune on the training rows (random windows), keeping the best checkpoint on ``validation`` when given;
    save the model; returns (model, tokenizer)."""
    from transformers import DataCollatorForTokenClassification, set_seed

    set_seed(training.seed)
    model, tokenizer = load_model(args.model)
    if not rows:
        return model, tokenizer
    if not validation:
        without_selection(training)
    raw = args.window_layout == "raw"
    notes = [encode_note(tokenizer, i, t, s, args.overlap_rule, special_tokens=raw) for i, t, s in rows]
    dataset = RandomCropDataset(notes, tokenizer, args.window, training.seed, args.window_layout)
    trainer = trainer_class()(
        model=model,
        args=training,
        train_dataset=dataset,
        eval_dataset=[(i, t) for i, t, _ in validation] if validation else None,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        processing_class=tokenizer,
        validation=[(i, t) for i, t, _ in validation or ()],
        validation_gold=validation_gold(tokenizer, validation or ()),
        window=args.window,
        orphan_inside=args.orphan_inside,
        layout=args.window_layout,
    )
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    trainer.save_model(training.output_dir)
    return trainer.model, tokenizer


def score_predictions(args: BaselineArguments, predictions: dict[str, list[Span]]) -> Any:
    from utils.metric import Scorer

    scorer = Scorer.from_files(gold_dir=args.gold_dir, raw_text_dir=args.raw_text_dir, split_file=args.split_file,
                               stats_csv=args.stats_csv, extra_ids=list(predictions), rule=args.scorer)
    return scorer.score(predictions)


def train_and_predict(args: BaselineArguments, training: BaselineTrainingArguments, progress: bool = True) -> dict[str, Path]:
    """Train (if a train CSV is given), then predict every --predict_csv; returns {csv: prediction JSON}."""
    train_rows = read_training_csv(args.train_csv) if args.train_csv else None  # all input read before any model
    selecting = bool(train_rows and args.eval_csv and training.eval_strategy != "no")
    validation = read_training_csv(args.eval_csv) if selecting else None
    to_predict = {path: read_predict_csv(path) for path in args.predict_csv}
    model, tokenizer = train(args, training, train_rows, validation)
    written: dict[str, Path] = {}
    if training.process_index != 0:  # several processes: the main one predicts
        return written
    for path, rows in to_predict.items():
        predictions = predict_rows(model, tokenizer, rows, args.window, training.per_device_eval_batch_size,
                                   Path(path).name, progress, args.orphan_inside, args.window_layout)
        out = Path(training.output_dir) / f"{Path(path).stem}_predictions.json"
        write_predictions(out, predictions)
        written[path] = out
        if args.gold_dir:
            report = score_predictions(args, predictions)
            print(f"{out}: span F1 {report.span.f1:.4f}, token F1 {report.token_f1:.4f}, base {report.base:.4f}"
                  + (f", final {report.final:.4f}" if report.final is not None else "") + f" ({report.scorer} scorer)")
    return written
