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
import tempfile
from pathlib import Path
from typing import Any, Sequence

from benchmarks.smoke import parse_with_smoke

PROMPT_LIMIT = 10029  # what the published train_grpo.py computed (and never passed)
CONTEXT = 32768  # the published inference context
PUBLISHED_POOL_ASSIGNED = 456 * 5  # MedDec train+val+test notes x 5 candidates each (SPEC section 4)
PUBLISHED_TRAIN_NOTES = 350


def measure_pool(corpus, work: Path) -> dict[str, Any]:
    from utils.pseudolabels.extraction import extract_unlabeled

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
        "notes": len(frame),
        "prompt_tokens_max": max(tokens["published"]),
        "chars_per_token": sum(map(len, frame["raw_text"])) / sum(tokens["no_quote"]),
        "stray_quote_tokens": sorted(set(a - b for a, b in zip(tokens["published"], tokens["no_quote"]))),
        "thinking_off_extra_tokens": sorted(set(b - a for a, b in zip(tokens["published"], tokens["thinking_off"]))),
        "published_generation_prompt_ends_with": rendered[-30:],
        "dropped_by_prompt_limit": sum(n > PROMPT_LIMIT for n in tokens["published"]),
        "first_epoch_positions_equal_42_vs_3407": sum(a == b for a, b in zip(order_42, order_3407)),
        "first_note_42_vs_3407": [order_42[0], order_3407[0]],
    }


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


SMOKE_CORPUS = {"n_train": 12, "n_val": 4, "n_test": 4, "n_unlabeled": 20, "mean_chars": 1500, "mean_spans": 20}


def main(argv: Sequence[str] | None = None) -> None:
    from dataset.synthetic import generate_corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic corpus.")
    parser.add_argument("--out", default=None, help="Write the numbers as JSON here too.")
    parser.add_argument("--nan_experiment", action="store_true", help="Also run the tiny DFT 'nan' experiment.")
    args = parse_with_smoke(parser, argv, {"corpus_sizes": SMOKE_CORPUS})
    from utils.metric.punkt import require_punkt

    require_punkt()  # the official scores of the baseline oracles need NLTK's punkt_tab
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = generate_corpus(work / "MedDec", seed=args.seed, **getattr(args, "corpus_sizes", {}))
        result: dict[str, Any] = {"pool": measure_pool(corpus, work), "gt_to_tag": measure_gt_to_tag(corpus, work)}
        texts = [(corpus.paths.raw_text_dir / f"{i}.txt").read_text(encoding="utf-8") for i in corpus.all_ids]
        tokenizer = proxy_tokenizer(texts)
        result["grpo"] = measure_grpo(corpus, work, tokenizer)
        result["pseudo_labels"] = measure_pseudo_labels(corpus, tokenizer)
        result["baseline"] = measure_baseline(corpus, work)
        if args.nan_experiment:
            result["pseudo_labels"]["tiny_dft"] = measure_nan_training(work)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
