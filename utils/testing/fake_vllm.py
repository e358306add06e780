"""A CPU stand-in for the parts of vLLM 0.31 that copy-constrained decoding touches, for tests without a GPU.

vLLM is CUDA-only, so its Model Runner V2 cannot run here. This fake reproduces what a custom logits processor
sees there, read from the pinned sources (``vllm/v1/worker/gpu/``): the interface (``sample/logits_processor/
interface.py``: ``LogitsProcRequestState``, ``LogitsContext``, the ``LogitsProcessor`` ABC), the loader's
"module:Class" resolution and subclass check (``loader.py``), slots taken from a free list and recycled
(``states.py``: ``free_indices.pop()``/``append``), ``add_request`` when a request takes a slot and again after
a preemption with its partial output as prefill (``model_runner.py`` ``add_requests``), ``apply_staged_writes``
once per step, one logits row per request in an order that changes from step to step, ``apply`` only when a
request of the batch asked for processing (``sampler.py`` ``apply_sampling_params``), the chosen token's
logprob from the raw or the processed logits (``logprobs_mode``), and the post-update that appends the sampled
token to ``all_token_ids`` and grows ``total_len`` (``input_batch.py`` ``_post_update_kernel``); a chunked
prefill step samples a token that is thrown away, and async scheduling may run one more step after a stop.

The model is a transformers causal LM with one KV cache per request (rebuilt after a preemption); tiny models only.
:func:`install` puts the fake modules into ``sys.modules`` (``vllm``, ``vllm.lora.request``,
``vllm.v1.worker.gpu.sample.logits_processor``).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

# ------------------------------------------------------------------------------------ the interface


@dataclass(frozen=True)
class LogitsProcRequestState:
    device: Any
    max_num_reqs: int
    vocab_size: int
    all_token_ids: Any  # .gpu: [max_num_reqs, max_model_len]
    prompt_len: Any  # .np / .gpu: [max_num_reqs]
    prefill_len: Any
    total_len: Any  # .gpu: [max_num_reqs]


@dataclass(frozen=True)
class LogitsContext:
    expanded_idx_mapping: torch.Tensor
    idx_mapping: torch.Tensor
    idx_mapping_np: np.ndarray
    expanded_local_pos: torch.Tensor
    input_ids: torch.Tensor
    pos: torch.Tensor
    seq_lens_upper_bound_np: np.ndarray


class LogitsProcessor(ABC):
    def __init__(self, vllm_config: Any, req_states: LogitsProcRequestState):  # noqa: B027
        pass

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:  # noqa: B027
        pass

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return True

    def apply_staged_writes(self) -> None:  # noqa: B027
        pass

    @abstractmethod
    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        raise NotImplementedError


class _DeviceTensor:
    """``StagedWriteTensor``: the device copy as ``.gpu``."""

    def __init__(self, shape: Sequence[int] | int) -> None:
        self.gpu = torch.zeros(shape, dtype=torch.int32)


class _UvaTensor:
    """``UvaBackedTensor``: the host array ``.np`` is the source of truth, ``.gpu`` a view of it."""

    def __init__(self, size: int) -> None:
        self.np = np.zeros(size, dtype=np.int32)
        self.gpu = torch.from_numpy(self.np)


def load_processor_classes(logits_processors: Sequence[str | type]) -> list[type]:
    """The V2 loader: types or "module:Class" names, each a subclass of the V2 ``LogitsProcessor``."""
    classes = []
    for entry in logits_processors:
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) != 2:
                raise ValueError(f"Invalid logits processor FQCN {entry!r}. Expected format: '<module>:<type>'")
            obj: Any = importlib.import_module(parts[0])
            for attr in parts[1].split("."):
                obj = getattr(obj, attr)
            entry = obj
        if not (isinstance(entry, type) and issubclass(entry, LogitsProcessor)):
            raise ValueError(f"{getattr(entry, '__name__', entry)} is not a subclass of "
                             "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor")
        classes.append(entry)
    return classes


# ---------------------------------------------------------------------------------- front-end types


_SAMPLING_FIELDS = ("temperature", "max_tokens", "logprobs", "seed", "skip_special_tokens", "extra_args", "stop_token_ids")


class SamplingParams:
    """The fields the project passes; unknown keywords fail like the real msgspec struct's."""

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(_SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"Unexpected keyword arguments {sorted(unknown)}")
        self.temperature = kwargs.get("temperature", 1.0)
        self.max_tokens = kwargs.get("max_tokens", 16)
        self.logprobs = kwargs.get("logprobs")
        self.seed = kwargs.get("seed")
        self.skip_special_tokens = kwargs.get("skip_special_tokens", True)
        self.extra_args = kwargs.get("extra_args")
        self.stop_token_ids = list(kwargs.get("stop_token_ids") or [])
        _check_extra_args(self.extra_args)


def _check_extra_args(value: Any) -> None:
    """``SamplingParams._verify_extra_args``: integers must fit 64 bits."""
    if isinstance(value, dict):
        for item in value.values():
            _check_extra_args(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_extra_args(item)
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value <= 2**64 - 1:
        raise ValueError("extra_args integers must be between -2**63 and 2**64 - 1.")


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class _Request:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    stop_ids: set[int]
    output: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: str | None = None
    slot: int | None = None
    prefilled: bool = False
    cache: Any = None  # the model's KV cache and how many tokens it holds (dropped on preemption)
    cached: int = 0
    last_logits: Any = None


# --------------------------------------------------------------------------------------- the engine


class LLM:
    """``vllm.LLM`` for tiny transformers models on CPU, driving custom processors as Model Runner V2 does.

    Scheduling quirks a processor must survive, on by default: rows reversed every other step, a chunked
    prefill step whose sample is discarded, one preemption of the first request (freed, then re-added with its
    partial output as prefill), and one extra step after a stop whose sampled token is written to
    ``all_token_ids`` and discarded (async scheduling).
    """

    instances: list["LLM"] = []

    def __init__(self, model: str, tokenizer: str | None = None, max_num_seqs: int = 8, max_model_len: int = 4096,
                 logits_processors: Sequence[str | type] | None = None, logprobs_mode: str = "raw_logprobs",
                 enable_lora: bool = False, **engine_kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        if str(os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "1")).lower() in ("0", "false"):
            raise RuntimeError("fake vLLM: only Model Runner V2 is simulated")
        if logprobs_mode not in ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs"):
            raise ValueError(f"logprobs_mode {logprobs_mode!r}")
        self.engine_kwargs = dict(model=model, tokenizer=tokenizer, max_num_seqs=max_num_seqs,
                                  max_model_len=max_model_len, logits_processors=logits_processors,
                                  logprobs_mode=logprobs_mode, enable_lora=enable_lora, **engine_kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.base_path = model
        self._merged: dict[str, Any] = {}
        try:
            eos = GenerationConfig.from_pretrained(model).eos_token_id
        except OSError:
            eos = None
        self.generation_eos = set([eos] if isinstance(eos, int) else eos or [])
        self.max_num_reqs = max_num_seqs
        self.max_model_len = max_model_len
        self.logprobs_mode = logprobs_mode
        self.processor_classes = load_processor_classes(logits_processors or [])  # the frontend's validator
        self.vllm_config = types.SimpleNamespace(model_config=types.SimpleNamespace(
            tokenizer=tokenizer or model, tokenizer_revision=None, trust_remote_code=False,
            logits_processors=logits_processors, logprobs_mode=logprobs_mode))
        vocab = self.model.config.vocab_size
        self.req_states = LogitsProcRequestState(
            device=torch.device("cpu"), max_num_reqs=max_num_seqs, vocab_size=vocab,
            all_token_ids=_DeviceTensor((max_num_seqs, max_model_len)), prompt_len=_UvaTensor(max_num_seqs),
            prefill_len=_UvaTensor(max_num_seqs), total_len=_DeviceTensor(max_num_seqs))
        self.processors = [cls(self.vllm_config, self.req_states) for cls in self.processor_classes]  # the worker's
        self.free_indices = list(range(max_num_seqs))
        self.needs_processing = np.zeros(max_num_seqs, dtype=bool)
        self.quirks = {"reorder": True, "chunked_prefill": True, "preempt_after": 3, "async_extra_step": True}
        self.steps = 0
        self.preempted = 0
        LLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    # --------------------------------------------------------------------------------------- requests

    def generate(self, prompts: Sequence[str], sampling_params: Any, lora_request: LoRARequest | None = None,
                 use_tqdm: bool = False) -> list[Any]:
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        model = self._model_for(lora_request)
        requests = []
        for k, (prompt, p) in enumerate(zip(prompts, params)):
            for cls in self.processor_classes:
                cls.validate_params(p)  # admission: a bad request fails here
            stop = {self.tokenizer.eos_token_id, *self.generation_eos, *p.stop_token_ids} - {None}
            requests.append(_Request(k, self.tokenizer(prompt)["input_ids"], p, stop))
        self._run(model, requests)
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
            text=self.tokenizer.decode(r.output, skip_special_tokens=r.params.skip_special_tokens),
            token_ids=list(r.output), logprobs=r.logprobs if r.params.logprobs is not None else None,
            finish_reason=r.finish_reason)]) for r in requests]

    def _model_for(self, lora_request: LoRARequest | None) -> Any:
        if lora_request is None:
            return self.model
        if lora_request.lora_path not in self._merged:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=torch.float32)
            self._merged[lora_request.lora_path] = PeftModel.from_pretrained(base, lora_request.lora_path).merge_and_unload().eval()
        return self._merged[lora_request.lora_path]

    def _add(self, request: _Request) -> None:
        """``RequestState.add_request`` + ``Sampler.add_request``: a slot from the free list, the prefill staged."""
        slot = self.free_indices.pop()
        request.slot = slot
        prefill = request.prompt_ids + request.output
        self.req_states.prompt_len.np[slot] = len(request.prompt_ids)
        self.req_states.prefill_len.np[slot] = len(prefill)
        self.req_states.total_len.gpu[slot] = len(prefill)
        self.req_states.all_token_ids.gpu[slot, : len(prefill)] = torch.tensor(prefill, dtype=torch.int32)
        request.prefilled = not self.quirks["chunked_prefill"]
        request.cache, request.cached = None, 0
        needs = False
        for processor in self.processors:
            needs |= bool(processor.add_request(slot, request.params))
        self.needs_processing[slot] = needs

    def _free(self, request: _Request) -> None:
        assert request.slot is not None
        self.free_indices.append(request.slot)
        request.slot = None

    def _run(self, model: Any, requests: list[_Request]) -> None:
        waiting = list(requests)
        running: list[_Request] = []
        lingering: list[_Request] = []  # stopped last step; async scheduling runs them once more
        while waiting or running or lingering:
            while waiting and self.free_indices:
                request = waiting.pop(0)
                self._add(request)
                running.append(request)
            for processor in self.processors:
                processor.apply_staged_writes()
            batch = running + lingering
            if self.quirks["reorder"] and self.steps % 2:
                batch = batch[::-1]
            self._step(model, batch, {id(r) for r in lingering})
            for request in lingering:
                self._free(request)
            finished = [r for r in running if r.finish_reason is not None]
            running = [r for r in running if r.finish_reason is None]
            lingering = finished if self.quirks["async_extra_step"] else []
            if not self.quirks["async_extra_step"]:
                for request in finished:
                    self._free(request)
            after = self.quirks["preempt_after"]
            if after is not None and not self.preempted and running and len(running[0].output) >= after:
                victim = running.pop(0)  # freed, then scheduled again with its output as prefill
                self._free(victim)
                waiting.insert(0, victim)
                self.preempted += 1
            self.steps += 1

    def _step(self, model: Any, batch: list[_Request], lingering: set[int]) -> None:
        states = self.req_states
        slots = np.array([r.slot for r in batch], dtype=np.intp)
        totals = [int(states.total_len.gpu[s]) for s in slots]
        rows = []
        with torch.no_grad():
            for request, total in zip(batch, totals):
                if request.cached < total:  # nothing new after a discarded chunked-prefill sample: same logits
                    new = states.all_token_ids.gpu[request.slot, request.cached : total].long()[None]
                    out = model(input_ids=new, past_key_values=request.cache, use_cache=True)
                    request.cache, request.cached, request.last_logits = out.past_key_values, total, out.logits[0, -1]
                rows.append(request.last_logits)
        raw = torch.stack(rows).float()
        index = torch.tensor(slots, dtype=torch.int32)
        ctx = LogitsContext(expanded_idx_mapping=index, idx_mapping=index, idx_mapping_np=slots,
                            expanded_local_pos=torch.zeros(len(batch), dtype=torch.int32),
                            input_ids=torch.stack([states.all_token_ids.gpu[s, t - 1] for s, t in zip(slots, totals)]),
                            pos=torch.tensor([t - 1 for t in totals], dtype=torch.int32),
                            seq_lens_upper_bound_np=np.array(totals, dtype=np.int32))
        processed = raw
        if np.any(self.needs_processing[slots]):
            processed = torch.empty_like(raw, dtype=torch.float32).copy_(raw)
            for processor in self.processors:
                processed = processor.apply(processed, ctx)
        sampled = processed.argmax(dim=-1)  # greedy (temperature 0)
        scores = processed if self.logprobs_mode.startswith("processed") else raw
        if self.logprobs_mode.endswith("logprobs"):
            scores = scores.log_softmax(dim=-1)
        for row, request in enumerate(batch):
            if not request.prefilled:  # a chunk of the prefill: its sample is discarded, nothing is committed
                request.prefilled = True
                continue
            token = int(sampled[row])
            slot, total = request.slot, totals[row]
            states.all_token_ids.gpu[slot, total] = token  # post_update
            states.total_len.gpu[slot] = total + 1
            if id(request) in lingering:  # async scheduling ran a finished request once more: its token is dropped
                continue
            request.output.append(token)
            request.logprobs.append({token: Logprob(float(scores[row, token]), rank=1)})
            if token in request.stop_ids:
                request.finish_reason = "stop"
            elif len(request.output) >= request.params.max_tokens or total + 1 >= self.max_model_len:
                request.finish_reason = "length"


# ------------------------------------------------------------------------------------- installing


def install(monkeypatch: Any) -> types.ModuleType:
    """Make ``import vllm`` (and the submodules the project imports) resolve to this fake; returns ``vllm``."""
    def module(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    root = module("vllm", LLM=LLM, SamplingParams=SamplingParams, __path__=[])
    module("vllm.lora", __path__=[])
    module("vllm.lora.request", LoRARequest=LoRARequest)
    module("vllm.logprobs", Logprob=Logprob)
    for name in ("vllm.v1", "vllm.v1.worker", "vllm.v1.worker.gpu", "vllm.v1.worker.gpu.sample"):
        module(name, __path__=[])
    module("vllm.v1.worker.gpu.sample.logits_processor", LogitsProcessor=LogitsProcessor, LogitsContext=LogitsContext,
           LogitsProcRequestState=LogitsProcRequestState, __path__=[])
    monkeypatch.delitem(sys.modules, "utils.generation.copy_decoding_vllm_v2", raising=False)  # rebind to this base
    return root
