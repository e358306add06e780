"""Loading, adapting and merging the generative taggers: dtype, LoRA targets, optimiser fallbacks, adapter merge.

Everything here decides something the training and inference scripts would otherwise each decide on their own
(and did, three times): the torch dtype of ``--dtype``, which modules get LoRA, what runs on a CPU machine.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from utils.configs import DTYPE_NAMES, MODEL_CLASSES
from utils.configs.device import cuda_available
from utils.fileio import InputError, first_line

logger = logging.getLogger(__name__)



def check_model_reference(flag: str, value: str | None) -> None:
    """A model, tokenizer or adapter given as a local path must exist (a Hub id ``org/name`` is left to the Hub).

    Without this a missing folder is taken for a Hub id and fails much later, offline, with a long traceback.
    """
    if not value:
        return
    looks_local = value.startswith(("/", ".", "~")) or value.count("/") > 1 or os.sep != "/" and os.sep in value
    if looks_local and not os.path.exists(os.path.expanduser(value)):
        raise InputError.flag(flag, "no such folder (and not a Hub id of the form org/name)", value=value)


def loading_error(flag: str, value: str, err: BaseException) -> InputError:
    """A one-line error for a model that could not be loaded (transformers, PEFT and the Hub raise OSError)."""
    return InputError.flag(flag, f"cannot be loaded ({first_line(err)})", value=value)


def resolve_dtype(name: str | None, flag: str = "--dtype"):
    """The torch dtype of a ``--dtype`` value: auto = bfloat16 on a GPU (published), float32 on CPU."""
    import torch

    if name in (None, "auto"):
        return torch.bfloat16 if cuda_available() else torch.float32
    if name not in DTYPE_NAMES:
        raise InputError.flag(flag, f"expected one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return getattr(torch, name)


def language_model_targets(names: Sequence[str]) -> str:
    """PEFT ``target_modules`` regex: modules with these names anywhere except inside a vision tower."""
    alternatives = "|".join(re.escape(name) for name in names)
    return rf"^(?!.*(?:visual|vision_tower)).*\.({alternatives})$"


def peft_config(model_args: Any):
    """The LoRA config of a TRL ``ModelConfig`` (``trl.get_peft_config``).

    Several target module names are matched in the language model only, never in a vision tower (Qwen3.5
    checkpoints are multimodal). A single value is passed to PEFT as it is (TRL's convention: a regex, or a
    keyword such as ``all-linear``).
    """
    from trl import get_peft_config

    config = get_peft_config(model_args)
    targets = model_args.lora_target_modules
    if config is not None and targets and not isinstance(targets, str):
        config.target_modules = language_model_targets(targets)
    return config


def load_causal_lm(model_args: Any):
    """(model, tokenizer) of a TRL ``ModelConfig`` (the hf training backend), in the class the checkpoint names.

    A multimodal Qwen3.5 checkpoint loads as ``Qwen3_5ForConditionalGeneration``, as Unsloth and vLLM load it, so an
    adapter trained here has the same module names as one from the Unsloth backend (``utils.training.layout``).
    """
    from transformers import AutoTokenizer

    from utils.training.layout import load_generative_model

    name = model_args.model_name_or_path
    check_model_reference("--model_name_or_path", name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=model_args.model_revision)
        model = load_generative_model(name, revision=model_args.model_revision, dtype=resolve_dtype(model_args.dtype),
                                      attn_implementation=model_args.attn_implementation)
    except (OSError, ValueError) as err:  # a missing or an incomplete model folder
        if isinstance(err, InputError):
            raise
        raise loading_error("--model_name_or_path", name, err) from None
    return model, tokenizer


def _replaceable(out: Path) -> bool:
    """An existing output folder may be replaced only if it is empty or a saved model (files only, a config.json)."""
    entries = list(out.iterdir())
    return not entries or ((out / "config.json").is_file() and all(entry.is_file() for entry in entries))


def merge_adapter(base: str, adapter: str, out_dir: str | os.PathLike[str], dtype=None, *,
                  model_class: str = "auto", overwrite: bool = False) -> Path:
    """Merge a LoRA ``adapter`` into ``base``; save model + tokenizer to ``out_dir`` (kept if already there).

    ``model_class`` ``auto`` keeps the class the base checkpoint names (``utils.training.layout``); the adapter is
    loaded completely or not at all (keys of the other Qwen3.5 layout are renamed, a missing key is an error). The
    folder appears all at once: the model is written to a temporary folder beside it and renamed into place, so a
    killed merge never leaves a half-written model that a later run would take as done. The tokenizer comes from
    the adapter folder when it has one (training saves it there), else from the base.
    """
    from transformers import AutoTokenizer

    from utils.training.layout import load_adapter, load_generative_model

    out = Path(out_dir)
    if (out / "config.json").is_file() and not overwrite:
        return out
    if out.exists() and not (out.is_dir() and _replaceable(out)):
        raise InputError(out, "", "exists and is not a saved model folder; refusing to replace it (choose a new folder)")
    if model_class not in (*MODEL_CLASSES,):
        raise InputError.flag("--model_class", f"expected one of {', '.join(MODEL_CLASSES)}", value=model_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the model folder gets the usual permissions
    try:
        model = load_generative_model(base, layout=model_class, dtype=dtype)
        merged = load_adapter(model, adapter).merge_and_unload()
        merged.save_pretrained(str(tmp))
        tokenizer_source = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
        AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(str(tmp))
        old = tmp.with_suffix(".old") if out.exists() else None
        if old is not None:
            os.replace(out, old)  # set aside, removed once the new folder is in place
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
