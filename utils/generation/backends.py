"""Greedy generation with the logprob of every chosen token, on vLLM (GPU) or transformers (CPU fallback).

Both backends give the same thing per prompt: a :class:`Generation` (text, number of generated tokens,
the chosen tokens' log-probabilities, whether it stopped at EOS). The published "entropy" of an output is
the mean negative log-probability of its generated tokens (:func:`mean_negative_logprob`).

The vLLM path cannot run without a GPU, so everything around the engine is a plain function tested with
fake objects: engine and sampling arguments, the LoRA request and the adapter's rank (vLLM only accepts a
few ``max_lora_rank`` values and defaults to 16, too small for Model 1's r = 256: a known failure), and
the conversion of vLLM's outputs. Token counts include the EOS token when there is one (as vLLM counts
them); the text never contains it.

Copy-constrained decoding (``copy_constraint=True``, transformers backend; off in the published run):
only tokens that keep the output "the note with tags in between" may be chosen (``utils.generation.copy_decoding``),
so the de-tagged output is the note exactly. The logprob of each chosen token is then taken under the
CONSTRAINED distribution: the log-softmax of the masked logits (the allowed tokens renormalised). It is
never below the unconstrained logprob, so entropies of constrained and unconstrained runs are not
comparable (e.g. with the published pseudo-label quantile). The text is assembled from the tokens' exact
bytes.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from utils.fileio import InputError, read_json

if TYPE_CHECKING:
    from utils.generation.copy_decoding import CopyGuards

VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LORA_NAME = "lamar_adapter"


@dataclass(frozen=True)
class Generation:
    """One greedy completion."""

    text: str
    num_tokens: int
    logprobs: tuple[float, ...] | None  # log p of each generated token (EOS included), None if not requested
    finished: bool  # stopped at EOS (False: ran into the token budget)
    token_ids: tuple[int, ...] = ()  # the generated tokens (EOS included)

    @property
    def truncated(self) -> bool:
        return not self.finished

    @property
    def entropy(self) -> float:
        return mean_negative_logprob(self.logprobs)


def mean_negative_logprob(logprobs: Sequence[float] | None) -> float:
    """The published per-output "entropy": mean of -log p over the generated tokens; NaN when there are none."""
    if not logprobs:
        return math.nan
    return -math.fsum(logprobs) / len(logprobs)


def new_token_budget(prompt_tokens: int, max_new_tokens: int, max_model_len: int) -> int:
    """Tokens that may still be generated: at most ``max_new_tokens`` and never past the context length."""
    return max(0, min(max_new_tokens, max_model_len - prompt_tokens))


class Generator(Protocol):
    """What scripts/inference.py needs from a backend (``notes``: each prompt's note, for copy-constrained decoding)."""

    def prompt_length(self, prompt: str) -> int: ...

    def generate(self, prompts: Sequence[str], budgets: Sequence[int], notes: Sequence[str] | None = None) -> list[Generation]: ...


# ------------------------------------------------------------------------------------------------ LoRA


def adapter_rank(adapter: str) -> int:
    """``r`` of a PEFT LoRA adapter (local folder, or Hub id whose adapter_config.json is fetched)."""
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        if os.path.isdir(adapter):
            raise InputError(path, "", f"not found; is {adapter} a PEFT LoRA adapter folder?")
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(adapter, "adapter_config.json"))
    config = read_json(path)
    if not isinstance(config, dict) or isinstance(config.get("r"), bool) or not isinstance(config.get("r"), int) \
            or config["r"] < 1:
        raise InputError(path, "field 'r'", f"expected a positive integer LoRA rank, got "
                                            f"{config.get('r') if isinstance(config, dict) else config!r}")
    return config["r"]


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank`` (256 for Model 1)."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


# ------------------------------------------------------------------------------------------------ vLLM


def vllm_engine_kwargs(
    model: str,
    *,
    tokenizer: str | None = None,
    adapter_r: int | None = None,
    max_model_len: int = 32768,
    max_num_seqs: int = 8,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    dtype: str = "auto",
    seed: int = 3407,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM``; with an adapter, LoRA is enabled with a rank that fits it."""
    kwargs: dict[str, Any] = dict(
        model=model,
        tokenizer=tokenizer or model,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        dtype=dtype,
        seed=seed,
    )
    if adapter_r is not None:
        kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(adapter_r), max_loras=1)
    kwargs.update(extra or {})
    return kwargs


def vllm_sampling_kwargs(max_tokens: int, temperature: float = 0.0, logprobs: bool = True, seed: int = 3407) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams``: greedy, and ``logprobs=0`` = only the chosen token's."""
    return dict(
        temperature=temperature,
        max_tokens=max_tokens,
        logprobs=0 if logprobs else None,
        seed=seed,
        skip_special_tokens=True,
    )


def vllm_lora_request_kwargs(adapter: str) -> dict[str, Any]:
    """Keyword arguments of ``vllm.lora.request.LoRARequest`` for the single adapter of a run."""
    return dict(lora_name=LORA_NAME, lora_int_id=1, lora_path=adapter)


def generation_from_vllm(request_output: Any) -> Generation:
    """Our Generation from a ``vllm.RequestOutput`` (its first completion)."""
    completion = request_output.outputs[0]
    token_ids = list(completion.token_ids)
    logprobs: tuple[float, ...] | None = None
    if completion.logprobs is not None:
        logprobs = tuple(float(step[token].logprob) for step, token in zip(completion.logprobs, token_ids))
    return Generation(
        text=completion.text,
        num_tokens=len(token_ids),
        logprobs=logprobs,
        finished=completion.finish_reason == "stop",
        token_ids=tuple(token_ids),
    )


class VllmGenerator:
    """vLLM offline engine, base model plus optional LoRA adapter (or a merged model)."""

    def __init__(self, engine_kwargs: dict[str, Any], adapter: str | None, temperature: float, logprobs: bool, seed: int) -> None:
        from vllm import LLM  # GPU only: requirements-gpu.txt

        self.llm = LLM(**engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.adapter = adapter
        self.temperature = temperature
        self.logprobs = logprobs
        self.seed = seed

    def prompt_length(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[str], budgets: Sequence[int], notes: Sequence[str] | None = None) -> list[Generation]:
        if notes is not None:
            raise NotImplementedError("copy-constrained decoding is not available on the vLLM backend yet")
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        params = [SamplingParams(**vllm_sampling_kwargs(b, self.temperature, self.logprobs, self.seed)) for b in budgets]
        lora = LoRARequest(**vllm_lora_request_kwargs(self.adapter)) if self.adapter else None
        outputs = self.llm.generate(list(prompts), params, lora_request=lora, use_tqdm=False)
        return [generation_from_vllm(o) for o in outputs]


# ---------------------------------------------------------------------------------------- transformers


class TransformersGenerator:
    """CPU fallback: ``model.generate`` greedy, chosen-token log-probs from the raw logits (like vLLM's).

    With ``copy_constraint`` every row is constrained to a tagged copy of its note (``generate(..., notes=)``)
    and log-probs come from the masked logits (see the module docstring).
    """

    def __init__(
        self,
        model: str,
        adapter: str | None = None,
        tokenizer: str | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        copy_constraint: bool = False,
        copy_guards: "CopyGuards | None" = None,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        from utils.training.layout import load_adapter, load_generative_model

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # The checkpoint's own class (as vLLM); the adapter loads completely or stops (utils.training.layout).
        self.model = load_generative_model(model, dtype=dtype).to(device)
        if adapter:
            self.model = load_adapter(self.model, adapter).merge_and_unload()
        self.model.eval()
        self.device = device
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.copy_vocabulary = None
        if copy_constraint:
            from utils.generation.copy_decoding import CopyGuards, CopyVocabulary

            self.copy_guards = copy_guards or CopyGuards()
            self.copy_vocabulary = CopyVocabulary.from_tokenizer(self.tokenizer, self.eos_ids)

    def prompt_length(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[str], budgets: Sequence[int], notes: Sequence[str] | None = None) -> list[Generation]:
        """One padded batch; the batch runs for the largest budget and each row is cut at its own."""
        torch = self.torch
        constrained = self.copy_vocabulary is not None
        if constrained and (notes is None or len(notes) != len(prompts)):
            raise ValueError("copy-constrained decoding needs the note of every prompt (notes=...)")
        encoded = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        budget = max(budgets)
        if budget == 0:
            return [Generation("", 0, (), False) for _ in prompts]
        extra: dict[str, Any] = {"output_logits": True}
        if constrained:
            from transformers import LogitsProcessorList

            from utils.generation.copy_decoding_hf import CopyConstraintLogitsProcessor

            processor = CopyConstraintLogitsProcessor(self.copy_vocabulary, notes, self.copy_guards)
            # scores = the logits after the processors: the masked logits whose log-softmax is the constrained distribution
            extra = {"output_scores": True, "logits_processor": LogitsProcessorList([processor])}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. generation-config notes about unused sampling flags
            out = self.model.generate(
                **encoded,
                do_sample=False,
                max_new_tokens=budget,
                min_new_tokens=0,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
                **extra,
            )
        new_tokens = out.sequences[:, encoded["input_ids"].shape[1] :]
        steps = torch.stack(out.scores if constrained else out.logits, dim=1).float().log_softmax(dim=-1)  # (batch, steps, vocab)
        chosen = steps.gather(-1, new_tokens[:, : steps.shape[1], None]).squeeze(-1)
        return [self._row(new_tokens[i].tolist(), chosen[i].tolist(), budgets[i]) for i in range(len(prompts))]

    def _row(self, tokens: list[int], logprobs: list[float], budget: int) -> Generation:
        end = next((i for i, t in enumerate(tokens[:budget]) if t in self.eos_ids), None)
        kept = tokens[: end + 1] if end is not None else tokens[:budget]
        text_tokens = kept[:-1] if end is not None else kept
        if self.copy_vocabulary is not None:
            text = self.copy_vocabulary.text(text_tokens)  # exact bytes, whatever decode() would clean up
        else:
            text = self.tokenizer.decode(text_tokens, skip_special_tokens=True)
        return Generation(text, len(kept), tuple(logprobs[: len(kept)]), end is not None, tuple(kept))
