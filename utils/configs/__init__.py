"""Every argument dataclass of the project, in one place (open-r1 style), and the published names they default to.

- ``utils.configs.pipeline``: data preparation, inference, pseudo-labels, scoring, ensemble, hub, demo (light:
  importing it loads no deep-learning library).
- ``utils.configs.training``: Model 1/3 (DFT) and Model 2 (GRPO), on TRL's ``SFTConfig``, ``GRPOConfig`` and
  ``ModelConfig`` (importing it loads TRL and transformers).
- ``utils.configs.baseline``: the RoBERTa baseline on transformers' ``TrainingArguments``.
- ``utils.configs.evaluation``: bootstrap intervals, paired comparison, error analysis, span viewer (light).

The field defaults ARE the published settings (SPEC sections 4-6): they live here and nowhere else. The YAML
recipes in ``recipes/`` are overlays that only name what a run changes (its data and output folder); every
script takes them with ``--config`` and any flag overrides them (``utils.cli``).
"""

from __future__ import annotations

from pathlib import Path

from utils.meddec.corpus import MedDecPaths

BASE_MODEL = "Qwen/Qwen3.5-4B"
RELEASED_MODEL_1 = "Keetawan/Qwen3.5-4B_LoRA_Exact_BF16_Rank256_Alpha32_DFT"  # Model 1, merged, bf16
EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-4B"
BASELINE_MODEL = "roberta-base"
OPTUNA_STORAGE = "sqlite:///mbr_optuna.db"  # the published tuning study
OPTUNA_STUDY = "mbr_tuning_study"

# Where a MedDec download and the pipeline's own files go when no path is given (the README's layout).
MEDDEC = MedDecPaths(Path("MedDec"))
ALL_SPLITS = ("train", "val", "test")
TAGGED_DIR = Path("data/tagged")
MIXED_TRAIN_CSV = TAGGED_DIR / "train_mixed.csv"  # train + selected pseudo-labels (Model 3's data)
WORK_DIR = Path("work")


def split_files(names: tuple[str, ...] = ALL_SPLITS) -> list[str]:
    """The MedDec split files of the default layout (train, val and test: the published pool exclusion)."""
    return [str(MEDDEC.split(name)) for name in names]


# Choices of model and backend flags (the code that acts on them: ``utils.training.models``, ``.backend``).
# Attention (full attention and Qwen3.5's gated-delta linear attention) and MLP projections of the language model.
LANGUAGE_MODEL_PROJECTIONS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj",  # full attention
    "in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj",  # gated-delta (linear) attention
    "gate_proj", "up_proj", "down_proj",  # MLP
)
DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")
MODEL_CLASSES = ("auto", "causal_lm", "image_text_to_text")  # auto: the class the checkpoint names
DFT_BACKENDS = ("unsloth", "hf")
DEFAULT_DFT_BACKEND = "unsloth"  # published
# fused: the loss each pinned library computes itself on TRL's fused LM head (no full logits); kernel: our Triton DFT
# cross-entropy through Unsloth's full-logits path (the published artefact, memory-hungry).
DFT_ROUTES = ("fused", "kernel")
DEFAULT_DFT_ROUTE = "fused"
LOSS_MASKS = ("response", "answer")  # DFT: after the assistant header (published) or the answer only (utils.training.data)
