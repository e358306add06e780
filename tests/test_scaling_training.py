"""Multi-process DFT training: 2 data-parallel CPU processes (gloo) train exactly what 1 process trains.

The run goes through the repository's own DDP launcher recipe (``accelerate launch --config_file
recipes/accelerate/ddp.yaml``) with ``--use_cpu true``: accelerate's multi-GPU launcher (torch elastic) starts 2
processes, and ``use_cpu`` makes each a gloo rank of a MULTI_CPU run (``accelerate --cpu`` would start only one).
Same global batch: 1 process x gradient accumulation 2 against 2 processes x 1, per-device batch 1, 2 optimizer
steps with a learning rate large enough that step 2 depends on step 1's update.

Tolerance: logged loss and grad norm to 1e-5 relative, adapter weights to 1e-6 absolute. What differs between the
runs is only the order of float additions (DDP averages 2 x the rank gradients where one process sums 2 micro-batch
gradients); measured differences are ~1e-7 relative (see the assertion messages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer, write_tiny_tagged_csv

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # a loaded 2-core machine: the whole test normally takes ~40-70 s
TRAIN_FLAGS = ["--backend", "hf", "--lora_r", "8", "--lora_alpha", "16", "--max_length", "2048", "--report_to", "none",
               "--gradient_checkpointing", "false", "--logging_steps", "1", "--dataloader_num_workers", "0",
               "--dataloader_pin_memory", "false", "--max_steps", "2", "--per_device_train_batch_size", "1",
               "--use_cpu", "true", "--save_strategy", "steps", "--save_steps", "2", "--learning_rate", "1e-2",
               "--warmup_steps", "0", "--seed", "0"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def run_checked(command: list[str]) -> str:
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-6000:])
    return done.stderr


def train_logs(out: Path) -> list[dict]:
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def adapter_tensors(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Four short synthetic notes (= 2 steps x global batch 2) and a one-layer tiny Qwen3.5."""
    root = tmp_path_factory.mktemp("ddp")
    rows = write_tiny_tagged_csv(root / "train.csv", n_notes=4, seed=0, mean_chars=150, mean_spans=2)
    tokenizer = build_tiny_tokenizer([r["raw_text"] for r in rows] * 3)
    return {"root": root, "csv": root / "train.csv", "model": build_tiny_qwen35(root / "model", tokenizer, num_layers=1,
                                                                              seed=0)}


def test_the_accelerate_recipes_are_valid_launcher_configs() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    expected = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP"}
    for name, kind in expected.items():
        config = ClusterConfig.from_yaml_file(str(ROOT / "recipes" / "accelerate" / name))
        assert config.distributed_type.value == kind and config.main_process_port == 0
        assert str(config.mixed_precision) == "no"  # the training flags (--bf16) decide, not the launcher
    fsdp = yaml.safe_load((ROOT / "recipes" / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Qwen3_5DecoderLayer"
    from transformers.models.qwen3_5 import modeling_qwen3_5

    assert hasattr(modeling_qwen3_5, fsdp["fsdp_transformer_layer_cls_to_wrap"])


@pytest.mark.slow
def test_two_ddp_processes_train_what_one_process_trains(tiny) -> None:
    base = ["--model_name_or_path", str(tiny["model"]), "--train_csv", str(tiny["csv"]), *TRAIN_FLAGS]
    one, two = tiny["root"] / "one", tiny["root"] / "two"
    run_checked([sys.executable, "scripts/train_dft.py", *base, "--gradient_accumulation_steps", "2",
                 "--output_dir", str(one)])
    log = run_checked([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       "recipes/accelerate/ddp.yaml", "--num_processes", "2", "scripts/train_dft.py", *base,
                       "--gradient_accumulation_steps", "1", "--output_dir", str(two)])
    assert log.count("loss guard passed") == 2  # each rank checked its own first micro-batch

    logs_one, logs_two = train_logs(one), train_logs(two)
    assert [e["step"] for e in logs_one] == [e["step"] for e in logs_two] == [1, 2]
    for a, b in zip(logs_one, logs_two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), (a, b)
        assert b["num_tokens"] == a["num_tokens"]  # the same answer tokens were seen
    assert logs_one[1]["loss"] != logs_one[0]["loss"]

    weights_one, weights_two = adapter_tensors(one), adapter_tensors(two)
    assert weights_one.keys() == weights_two.keys()
    worst = max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one)
    moved = max(float(w.abs().max()) for k, w in weights_one.items() if "lora_B" in k)
    assert worst <= 1e-6, worst
    assert moved > 1e-3  # lora_B starts at zero: the two steps did train
    # One process wrote the run files (rank 0), with its own guard result.
    assert json.loads((two / "run_config.json").read_text())["loss_guard"]["dft"] > 0
