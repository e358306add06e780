"""One Qwen3.5 class end to end: the checkpoint decides the class, and adapters cross layouts only explicitly.

Qwen3.5 comes in two layouts (transformers 5.17): ``Qwen3_5ForConditionalGeneration`` (image-text-to-text: the
published base checkpoint, what Unsloth loads, weights ``model.language_model.layers.*``) and ``Qwen3_5ForCausalLM``
(text only, ``model.layers.*``). A LoRA adapter stores the module names of the model it was trained on, and PEFT
loads an adapter of one layout into the other with nothing but a "missing adapter keys" warning: the adapter is
then silently absent (every ``lora_B`` stays zero, a merge changes nothing). vLLM picks its class from the
checkpoint's ``architectures`` and skips LoRA modules it cannot map (debug log only).

So every part of the project (DFT training on either backend, GRPO's policy, merging, the transformers generator,
push_to_hub, vLLM) uses the class the checkpoint names, as Unsloth and vLLM do (:func:`checkpoint_layout`), and
:func:`load_adapter` is the one way an adapter is loaded: keys of the other layout are renamed with PEFT's
``key_mapping``, and afterwards every adapter tensor must sit, with its exact value, in a LoRA weight of the model
and every LoRA weight must have come from the adapter; anything else is a one-line :class:`InputError` naming the
adapter and an example key. :func:`adapter_for_vllm` writes a renamed copy where vLLM's class would not map the
adapter's names.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

from utils.fileio import InputError, first_line

CAUSAL_LM = "causal_lm"
IMAGE_TEXT_TO_TEXT = "image_text_to_text"
LAYOUTS = (CAUSAL_LM, IMAGE_TEXT_TO_TEXT)
AUTO = "auto"
# Where the decoder layers live in each layout (the start of a parameter name).
LAYER_PREFIX = {CAUSAL_LM: "model.layers.", IMAGE_TEXT_TO_TEXT: "model.language_model."}
# PEFT key_mapping (regex -> replacement, applied after "base_model.model." is stripped), adapter -> model layout.
KEY_MAPPINGS = {
    (IMAGE_TEXT_TO_TEXT, CAUSAL_LM): {r"^model\.language_model\.": "model."},
    (CAUSAL_LM, IMAGE_TEXT_TO_TEXT): {r"^model\.(?!language_model\.|visual\.)": "model.language_model."},
}
PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# PEFT stores "...lora_A.weight" in the file and "...lora_A.<adapter name>.weight" in the model.
_LORA_PART = re.compile(r"\.(lora_(?:A|B|embedding_A|embedding_B|magnitude_vector))(\.|$)")


# --- which layout ----------------------------------------------------------------------------------------------


def layout_of_config(config: Any) -> str:
    """The layout a transformers config loads as (Unsloth's rule: a ``...ForConditionalGeneration`` architecture or a
    vision config means image-text-to-text)."""
    architectures = getattr(config, "architectures", None) or []
    if any(str(a).endswith("ForConditionalGeneration") for a in architectures) or hasattr(config, "vision_config"):
        return IMAGE_TEXT_TO_TEXT
    return CAUSAL_LM


def checkpoint_layout(name: str, revision: str | None = None) -> str:
    """The layout of a checkpoint (local folder or Hub id), from its config."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as err:
        raise InputError(name, "config.json", f"cannot be read ({first_line(err)})") from None
    return layout_of_config(config)


def auto_model_class(layout: str):
    """AutoModelForCausalLM (text only) or AutoModelForImageTextToText (keeps the vision tower)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return AutoModelForCausalLM if layout == CAUSAL_LM else AutoModelForImageTextToText


def load_generative_model(name: str, layout: str = AUTO, **kwargs: Any):
    """The model of a checkpoint in the class its config names (``layout="auto"``) or in the given layout."""
    chosen = checkpoint_layout(name, kwargs.get("revision")) if layout == AUTO else layout
    return auto_model_class(chosen).from_pretrained(name, **kwargs)


def _unwrapped(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_layout(model: Any) -> str | None:
    """The layout of a loaded model (a PEFT wrapper is looked through), None when neither prefix occurs."""
    names = [name for name, _ in _unwrapped(model).named_parameters()]
    for layout in (IMAGE_TEXT_TO_TEXT, CAUSAL_LM):
        if any(name.startswith(LAYER_PREFIX[layout]) for name in names):
            return layout
    return None


def adapter_layout(keys: Any) -> str | None:
    """The layout an adapter was trained in, from its tensor names (None: unknown or mixed)."""
    found = set()
    for key in keys:
        bare = key.removeprefix(PEFT_PREFIX)
        if bare.startswith(LAYER_PREFIX[IMAGE_TEXT_TO_TEXT]):
            found.add(IMAGE_TEXT_TO_TEXT)
        elif bare.startswith(LAYER_PREFIX[CAUSAL_LM]):
            found.add(CAUSAL_LM)
    return found.pop() if len(found) == 1 else None


def key_mapping(adapter: str | None, model: str | None) -> dict[str, str] | None:
    """PEFT ``key_mapping`` taking adapter keys of one layout to the other (None when nothing is to rename)."""
    return KEY_MAPPINGS.get((adapter, model)) if adapter and model and adapter != model else None


def map_key(key: str, mapping: Mapping[str, str] | None) -> str:
    """An adapter key renamed as PEFT's ``key_mapping`` renames it (prefix kept, first matching pattern wins)."""
    if not mapping or not key.startswith(PEFT_PREFIX):
        return key
    bare = key.removeprefix(PEFT_PREFIX)
    for pattern, replacement in mapping.items():
        renamed, count = re.subn(pattern, replacement, bare)
        if count:
            return PEFT_PREFIX + renamed
    return key


def model_state_key(file_key: str, adapter_name: str) -> str:
    """Where PEFT puts an adapter-file tensor in the model's state dict (the adapter name is inserted)."""
    return _LORA_PART.sub(lambda m: f".{m.group(1)}.{adapter_name}{m.group(2)}", file_key, count=1)


# --- loading ------------------------------------------------------------------------------------------------------


def read_adapter_weights(adapter: str) -> dict[str, Any]:
    """The tensors of a PEFT adapter (folder or Hub id), on CPU."""
    from peft.utils import load_peft_weights

    try:
        return load_peft_weights(adapter, device="cpu")
    except (OSError, ValueError) as err:
        raise InputError(adapter, "", f"cannot read the adapter weights ({first_line(err)})") from None


def check_adapter_loaded(peft_model: Any, weights: Mapping[str, Any], adapter: str, adapter_name: str) -> int:
    """Every adapter tensor is a LoRA weight of the model with that exact value, and every LoRA weight of this adapter
    came from the file; returns the number of tensors checked. Raises a one-line InputError otherwise."""
    import torch

    state = dict(peft_model.named_parameters())
    state.update(dict(peft_model.named_buffers()))
    model_class = type(_unwrapped(peft_model)).__name__
    expected = {model_state_key(key, adapter_name): key for key in weights}
    unmatched = [key for name, key in expected.items() if name not in state]
    if unmatched:
        raise InputError(adapter, "", f"{len(unmatched)} of {len(weights)} adapter tensors match no module of "
                                      f"{model_class} (e.g. {unmatched[0]}): the adapter was trained on another "
                                      "model or layout")
    own = re.compile(rf"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.{re.escape(adapter_name)}(\.|$)")
    missing = [name for name in state if own.search(name) and name not in expected]
    if missing:
        raise InputError(adapter, "", f"{len(missing)} LoRA weights of {model_class} have no tensor in the adapter "
                                      f"(e.g. {missing[0]})")
    for name, key in expected.items():
        param = state[name]
        if param.shape != weights[key].shape or not torch.equal(param.detach(), weights[key].to(param.device,
                                                                                              param.dtype)):
            raise InputError(adapter, "", f"adapter tensor {key} did not load into {model_class} (shape "
                                          f"{tuple(weights[key].shape)} vs {tuple(param.shape)} or other values)")
    return len(expected)


def load_adapter(model: Any, adapter: str, *, adapter_name: str = "default", is_trainable: bool = False,
                 flag: str = "--adapter"):
    """``PeftModel`` of ``model`` with ``adapter`` loaded completely, renamed from the other layout when needed.

    The one place adapters are loaded (merge, GRPO start, transformers generation, push_to_hub): PEFT would only warn
    about missing keys; here any mismatch stops with one line naming the adapter and an example key.
    """
    from peft import PeftModel

    if not str(adapter).strip():
        raise InputError.flag(flag, "empty adapter path")
    weights = read_adapter_weights(adapter)
    if not weights:
        raise InputError(adapter, "", "the adapter holds no tensors")
    mapping = key_mapping(adapter_layout(weights), model_layout(model))
    with warnings.catch_warnings():  # reported below, as an error, with an example key
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        try:
            peft_model = PeftModel.from_pretrained(model, adapter, adapter_name=adapter_name,
                                                   is_trainable=is_trainable, key_mapping=mapping)
        except (OSError, ValueError, RuntimeError) as err:  # no adapter_config.json, shape mismatch, ...
            raise InputError(adapter, "", f"cannot be loaded as a LoRA adapter ({first_line(err)})") from None
    renamed = {map_key(key, mapping): value for key, value in weights.items()}
    check_adapter_loaded(peft_model, renamed, adapter, adapter_name)
    return peft_model


# --- adapters for vLLM --------------------------------------------------------------------------------------------


def vllm_accepts(adapter: str | None, checkpoint: str) -> bool:
    """Whether vLLM 0.31 maps an adapter of this layout onto the class of a checkpoint of that layout.

    Its text-only class maps both prefixes (``hf_to_vllm_mapper`` turns ``model.language_model.`` into ``model.``),
    its image-text-to-text class only ``model.language_model.`` (``vllm/model_executor/models/qwen3_vl.py``).
    """
    return adapter is None or checkpoint == CAUSAL_LM or adapter == IMAGE_TEXT_TO_TEXT


def convert_adapter(adapter: str, layout: str, out_dir: str | os.PathLike[str]) -> Path:
    """Write a copy of ``adapter`` whose tensor names are those of ``layout`` (config copied unchanged)."""
    from safetensors.torch import save_file

    weights = read_adapter_weights(adapter)
    mapping = key_mapping(adapter_layout(weights), layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    renamed = {map_key(key, mapping): tensor.contiguous() for key, tensor in weights.items()}
    save_file(renamed, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config_path = Path(adapter) / ADAPTER_CONFIG
    if not config_path.is_file():
        from huggingface_hub import hf_hub_download

        config_path = Path(hf_hub_download(adapter, ADAPTER_CONFIG))
    shutil.copyfile(config_path, out / ADAPTER_CONFIG)
    return out


def adapter_for_vllm(adapter: str, checkpoint: str, workdir: str | os.PathLike[str] | None = None) -> str:
    """``adapter`` itself when vLLM maps its names for ``checkpoint``'s class, else a renamed copy in ``workdir``
    (a new temporary folder by default)."""
    layout = checkpoint_layout(checkpoint)
    found = adapter_layout(read_adapter_weights(adapter))
    if found is None:
        raise InputError(adapter, "", "no decoder-layer tensors (model.layers.* or model.language_model.*): not a "
                                      "Qwen3.5 language-model LoRA adapter")
    if vllm_accepts(found, layout):
        return adapter
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="lamar_vllm_adapter_")
        atexit.register(shutil.rmtree, workdir, True)
    return str(convert_adapter(adapter, layout, workdir))


# vLLM 0.31 renames checkpoint weights with each Qwen3.5 class's ``hf_to_vllm_mapper`` (first matching prefix; None =
# dropped) and then looks them up among its own top-level modules; an unknown name raises "There is no module or
# parameter named ..." (vllm/model_executor/models/qwen3_5.py, qwen3_vl.py, utils.py).
VLLM_WEIGHT_PREFIXES: dict[str, tuple[dict[str, str | None], tuple[str, ...]]] = {
    CAUSAL_LM: ({"model.language_model.": "model.", "mtp.": None}, ("model.", "lm_head.")),
    IMAGE_TEXT_TO_TEXT: ({"model.visual.": "visual.", "lm_head.": "language_model.lm_head.",
                          "model.language_model.": "language_model.model.", "mtp.": None},
                         ("visual.", "language_model.")),
}


def vllm_weight_name(name: str, layout: str) -> str | None:
    """The name vLLM's class for a ``layout`` checkpoint gives a weight (None: dropped, e.g. ``mtp.*``; a name outside
    its modules is returned unchanged and :func:`unmappable_vllm_weights` reports it)."""
    renames, _ = VLLM_WEIGHT_PREFIXES[layout]
    for old, new in renames.items():
        if name.startswith(old):
            return None if new is None else new + name[len(old):]
    return name


def unmappable_vllm_weights(names: Any, layout: str) -> list[str]:
    """The weight names vLLM's class for a checkpoint of ``layout`` would refuse (e.g. TRL's colocated weight sync)."""
    roots = VLLM_WEIGHT_PREFIXES[layout][1]
    mapped = (vllm_weight_name(name, layout) for name in names)
    return [name for name in mapped if name is not None and not name.startswith(roots)]
