"""Copy-constrained decoding for vLLM 0.31: custom logits processors for Model Runner V2 and the V1 model runner.

vLLM 0.31 runs Model Runner V2 by default on CUDA (``VllmConfig.use_v2_model_runner``), whose custom
processors subclass ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`` (the V1 runner's
``vllm.v1.sample.logits_processor.LogitsProcessor`` is another interface, refused by the V2 loader and
vice versa). :class:`CopyConstraintProcessorCore` implements the V2 one, :class:`CopyConstraintV1ProcessorCore`
the V1 one (driven by ``BatchUpdate``; the runner of vLLM's CPU build, which has no Triton for V2); both keep one
:class:`SlotConstraints` and mask with :func:`mask_to_allowed`, so they give the same outputs. ``VllmGenerator``
picks the runner before the engine starts and pins it (``VLLM_USE_V2_MODEL_RUNNER``), so vLLM cannot silently fall
back to a runner whose interface the loaded processor does not implement.

How the pieces meet (all read from the pinned sources):

* per request, the note and the guards travel in ``SamplingParams.extra_args[EXTRA_ARGS_KEY]`` (a field vLLM
  passes through untouched) as plain JSON values, with the end-of-sequence ids the constraint may allow;
  the same ids go to ``stop_token_ids`` so vLLM stops on every one of them;
* ``validate_params`` runs at admission in the frontend: a malformed request fails there, not in the worker;
* ``add_request(slot, params)`` runs in the worker when a request takes a slot (slots are recycled and there
  is no removal hook, so every call overwrites the slot; a preempted request comes back through it with its
  partial output as prefill);
* ``apply(logits, ctx)`` runs once per step for the whole batch (rows = batch positions, reordered every
  step, ``ctx.idx_mapping_np`` maps them to slots on the host). The generated tokens are the slot's row of
  ``req_states.all_token_ids`` between ``prompt_len`` and ``total_len`` (written on the device by the
  previous step's post-update); each active row's constraint takes the ones it has not seen (usually one),
  then everything outside its allowed set becomes ``-inf``. Rows of requests without a note, and of
  requests already past their end of sequence (async scheduling may run one more step), are left alone.
  Speculative decoding (several rows per request) is refused.

Entropy: with ``LLM(logprobs_mode="processed_logprobs")`` (set by ``vllm_engine_kwargs(copy_constraint=True)``)
the returned logprob of each chosen token is the log-softmax of the logits after this processor, i.e. under
the CONSTRAINED distribution, as on the transformers backend; vLLM's default ``raw_logprobs`` would give the
unconstrained one.

This module imports without vLLM (the frontend checks and the request arguments need none); it is tested against a
fake of the V2 sampler's call order (``utils.testing.fake_vllm``) and, with the V1 processor, against the real
engine of vLLM's CPU build (``pytest -m vllm``, tests/test_vllm_engine.py).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from utils.generation.copy_decoding import CopyConstraint, CopyGuards, CopyVocabulary, credit_text_mass

EXTRA_ARGS_KEY = "lamar_copy_constraint"
PROCESSOR_FQCN = "utils.generation.copy_decoding_vllm_v2:CopyConstraintLogitsProcessor"  # what LLM(logits_processors=) loads
PROCESSOR_FQCN_V1 = "utils.generation.copy_decoding_vllm_v1:CopyConstraintLogitsProcessor"  # the V1 runner's interface
PROCESSOR_FQCNS = {"v2": PROCESSOR_FQCN, "v1": PROCESSOR_FQCN_V1}  # Model Runner V2 / the V1 model runner
_INT64 = (-(2**63), 2**64 - 1)  # what SamplingParams accepts for integers in extra_args


def copy_request_args(note: str, eos_ids: Sequence[int], guards: CopyGuards = CopyGuards()) -> dict[str, Any]:
    """The ``extra_args`` entry of one constrained request (plain JSON values: msgspec-serialisable)."""
    return {EXTRA_ARGS_KEY: {"note": note, "eos_ids": sorted({int(i) for i in eos_ids}),
                             "max_tags_per_position": guards.max_tags_per_position, "max_open": guards.max_open,
                             "word_boundaries": guards.word_boundaries, "text_mass": guards.text_mass,
                             "max_span_chars": guards.max_span_chars, "allow_unclosed": guards.allow_unclosed}}


def parse_copy_request_args(extra_args: Mapping[str, Any] | None) -> tuple[str, tuple[int, ...], CopyGuards] | None:
    """(note, eos ids, guards) of a request, None when it is not constrained; ValueError when malformed."""
    entry = (extra_args or {}).get(EXTRA_ARGS_KEY)
    if entry is None:
        return None
    where = f"extra_args[{EXTRA_ARGS_KEY!r}]"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(entry).__name__}")
    unknown = set(entry) - {"note", "eos_ids", "max_tags_per_position", "max_open", "word_boundaries", "text_mass",
                            "max_span_chars", "allow_unclosed"}
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}")
    note = entry.get("note")
    if not isinstance(note, str):
        raise ValueError(f"{where}['note'] must be the note text (str), got {type(note).__name__}")
    eos = entry.get("eos_ids")
    if not isinstance(eos, (list, tuple)) or not eos or not all(_is_int(i) and i >= 0 for i in eos):
        raise ValueError(f"{where}['eos_ids'] must be a non-empty list of token ids, got {eos!r}")
    tags, max_open = entry.get("max_tags_per_position", CopyGuards().max_tags_per_position), entry.get("max_open")
    flags = [entry.get(key, False) for key in ("word_boundaries", "text_mass", "allow_unclosed")]
    span_chars = entry.get("max_span_chars")
    if (not _is_int(tags) or any(v is not None and not _is_int(v) for v in (max_open, span_chars))
            or not all(isinstance(flag, bool) for flag in flags)):
        raise ValueError(f"{where}: max_tags_per_position must be an int, max_open and max_span_chars ints or None "
                         "and word_boundaries, text_mass and allow_unclosed bools")
    words, text_mass, unclosed = flags
    return note, tuple(sorted(set(eos))), CopyGuards(tags, max_open, words, text_mass, span_chars, unclosed)  # CopyGuards raises on values below 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]


class SlotConstraints:
    """One :class:`CopyConstraint` per request slot; the framework-free half of the vLLM processor.

    ``vocabulary_for(eos_ids)`` builds the vocabulary of the engine's tokenizer (once per set of EOS ids).
    """

    def __init__(self, max_num_reqs: int, vocabulary_for: Callable[[tuple[int, ...]], CopyVocabulary]) -> None:
        self.constraints: list[CopyConstraint | None] = [None] * max_num_reqs
        self._vocabulary_for = vocabulary_for

    def add(self, slot: int, extra_args: Mapping[str, Any] | None) -> bool:
        """(Re)initialise a slot; True when its request is constrained."""
        parsed = parse_copy_request_args(extra_args)
        if parsed is None:
            self.constraints[slot] = None
            return False
        note, eos_ids, guards = parsed
        self.constraints[slot] = self._vocabulary_for(eos_ids).start(note, guards)
        return True

    def active_rows(self, row_slots: Sequence[int]) -> list[int]:
        """Rows (batch positions) whose request is constrained."""
        return [row for row, slot in enumerate(row_slots) if self.constraints[slot] is not None]

    def pending(self, slot: int, output_len: int) -> int:
        """Generated tokens (of ``output_len`` so far) the slot's constraint has not taken; 0 once it has ended."""
        constraint = self.constraints[slot]
        assert constraint is not None
        if output_len < constraint.consumed:
            raise RuntimeError(f"slot {slot}: {output_len} generated tokens, but the constraint has taken "
                               f"{constraint.consumed} (a slot reused without add_request)")
        return 0 if constraint.finished else output_len - constraint.consumed

    def take(self, slot: int, tokens: Sequence[int]) -> None:
        """Advance over new tokens; those after the end of sequence (one more step that async scheduling ran
        before the stop was seen) are ignored."""
        constraint = self.constraints[slot]
        assert constraint is not None
        for token in tokens:
            if constraint.finished:
                break
            constraint.advance(int(token))

    def text_tokens(self, slot: int) -> list[int] | None:
        """The slot's allowed tokens that only write note text when its guards credit text mass, else None."""
        constraint = self.constraints[slot]
        assert constraint is not None
        return constraint.text_tokens() if constraint.guards.text_mass and not constraint.finished else None

    def allowed(self, slot: int) -> list[int] | None:
        """The slot's allowed token ids; None when its request has ended (leave its row alone)."""
        constraint = self.constraints[slot]
        assert constraint is not None
        return None if constraint.finished else constraint.allowed()


def engine_vocabulary_factory(tokenizer_loader: Callable[[], Any]) -> Callable[[tuple[int, ...]], CopyVocabulary]:
    """Vocabularies of one tokenizer, built on first need (a request without a note costs nothing)."""
    cache: dict[tuple[int, ...], CopyVocabulary] = {}
    token_bytes: list = []

    def vocabulary_for(eos_ids: tuple[int, ...]) -> CopyVocabulary:
        if eos_ids not in cache:
            if not token_bytes:
                from utils.generation.copy_decoding import byte_level_token_bytes

                token_bytes.extend(byte_level_token_bytes(tokenizer_loader()))
            cache[eos_ids] = CopyVocabulary(token_bytes, eos_ids)
        return cache[eos_ids]

    return vocabulary_for


def _engine_tokenizer(vllm_config: Any) -> Callable[[], Any]:
    """The engine's tokenizer, loaded with transformers from the model config (same files vLLM reads)."""
    model_config = vllm_config.model_config

    def load() -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_config.tokenizer, revision=model_config.tokenizer_revision,
                                             trust_remote_code=model_config.trust_remote_code)

    return load


def mask_to_allowed(slots: SlotConstraints, logits: Any, rows: Sequence[int], row_slots: Sequence[int]) -> Any:
    """Set every logit outside each active row's allowed tokens to ``-inf`` (crediting text mass where its guards
    ask); the step both runners' processors share once their constraints have taken the new tokens."""
    import torch

    allowed = {row: slots.allowed(row_slots[row]) for row in rows}
    masked = [row for row in rows if allowed[row] is not None]
    if not masked:
        return logits
    mask_rows = [k for k, row in enumerate(masked) for _ in allowed[row]]  # type: ignore[union-attr]
    mask_cols = [token for row in masked for token in allowed[row]]  # type: ignore[union-attr]
    if max(mask_cols) >= logits.shape[1]:
        raise RuntimeError(f"token id {max(mask_cols)} is outside the model's {logits.shape[1]} logits")
    device = logits.device
    keep = torch.zeros(len(masked), logits.shape[1], dtype=torch.bool, device=device)
    keep[torch.tensor(mask_rows, dtype=torch.long, device=device),
         torch.tensor(mask_cols, dtype=torch.long, device=device)] = True
    index = torch.tensor(masked, dtype=torch.long, device=device)
    credited = [(k, row, text) for k, row in enumerate(masked) if (text := slots.text_tokens(row_slots[row]))]
    if not credited:
        logits[index] = logits[index].masked_fill(~keep, float("-inf"))
        return logits
    rows_logits = logits[index]
    plain = rows_logits.masked_fill(~keep, float("-inf"))
    which = torch.tensor([k for k, _, _ in credited], dtype=torch.long, device=device)
    plain[which] = credit_text_mass(rows_logits[which], [allowed[row] for _, row, _ in credited],
                                    [text for _, _, text in credited])
    logits[index] = plain
    return logits


class CopyConstraintProcessorCore:
    """Masks the logits of every request that carries a note to its allowed next tokens (Model Runner V2's calls).

    The methods of V2's ``LogitsProcessor``; ``copy_decoding_vllm_v2.CopyConstraintLogitsProcessor`` adds vLLM's
    base class (so this module imports without vLLM).
    """

    def __init__(self, vllm_config: Any, req_states: Any) -> None:
        self.req_states = req_states
        self.slots = SlotConstraints(req_states.max_num_reqs, engine_vocabulary_factory(_engine_tokenizer(vllm_config)))

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        parse_copy_request_args(sampling_params.extra_args)

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return self.slots.add(req_idx, sampling_params.extra_args)

    def apply(self, logits: Any, ctx: Any) -> Any:
        row_slots = [int(s) for s in ctx.idx_mapping_np]
        rows = self.slots.active_rows(row_slots)
        if not rows:
            return logits
        if logits.shape[0] != len(row_slots):
            raise RuntimeError("copy-constrained decoding does not support speculative decoding (several logits rows "
                               "per request)")
        slots = [row_slots[r] for r in rows]
        for slot, tokens in zip(slots, self._read_new_tokens(slots)):
            self.slots.take(slot, tokens)
        return mask_to_allowed(self.slots, logits, rows, row_slots)

    def _read_new_tokens(self, slots: list[int]) -> list[list[int]]:
        """Each slot's generated tokens its constraint has not taken yet: the output is ``all_token_ids[slot,
        prompt_len:total_len]``; one small copy of ``total_len`` and one gather per step."""
        import torch

        states = self.req_states
        lengths = states.total_len.gpu[torch.tensor(slots, dtype=torch.long, device=states.total_len.gpu.device)]
        flat_slots: list[int] = []
        flat_cols: list[int] = []
        counts: list[int] = []
        for slot, total in zip(slots, lengths.tolist()):
            prompt = int(states.prompt_len.np[slot])
            n = self.slots.pending(slot, total - prompt)
            first = total - n
            flat_slots.extend([slot] * n)
            flat_cols.extend(range(first, total))
            counts.append(n)
        if not flat_slots:
            return [[] for _ in slots]
        table = states.all_token_ids.gpu
        values = table[torch.tensor(flat_slots, dtype=torch.long, device=table.device),
                       torch.tensor(flat_cols, dtype=torch.long, device=table.device)].tolist()
        out, position = [], 0
        for n in counts:
            out.append(values[position : position + n])
            position += n
        return out


class CopyConstraintV1ProcessorCore:
    """The same constraint for the V1 model runner's interface (``vllm.v1.sample.logits_processor``), which vLLM 0.31
    uses where Model Runner V2 cannot run (no Triton, e.g. the CPU build; features V2 lacks).

    V1 keeps a persistent batch: ``update_state(batch_update)`` reports requests removed from, added to (index,
    params, prompt ids, a live reference to the request's output token list) and moved within it (in that order),
    before each step; ``apply(logits)`` then gets one row per batch index. A row's constraint takes the output tokens
    it has not seen from that live list, then :func:`mask_to_allowed` masks it as on V2.
    ``copy_decoding_vllm_v1.CopyConstraintLogitsProcessor`` adds vLLM's base class.
    """

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        rows = vllm_config.scheduler_config.max_num_seqs
        self.slots = SlotConstraints(rows, engine_vocabulary_factory(_engine_tokenizer(vllm_config)))
        self.outputs: list[list[int] | None] = [None] * rows  # each constrained row's live output token list

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        parse_copy_request_args(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._clear(index)
        for index, params, _prompt, output_ids in batch_update.added:
            self.outputs[index] = output_ids if self.slots.add(index, params.extra_args) else None
        for a, b, direction in batch_update.moved:
            if direction.name == "SWAP":
                self._swap(a, b)
            else:  # UNIDIRECTIONAL: a's request now sits at b, a is empty
                self.slots.constraints[b], self.outputs[b] = self.slots.constraints[a], self.outputs[a]
                self._clear(a)

    def apply(self, logits: Any) -> Any:
        row_slots = list(range(logits.shape[0]))
        rows = [row for row in row_slots if self.slots.constraints[row] is not None]
        if not rows:
            return logits
        for row in rows:
            output = self.outputs[row] or []
            n = self.slots.pending(row, len(output))
            self.slots.take(row, [t for t in output[len(output) - n:] if t >= 0])  # < 0: async placeholders
        return mask_to_allowed(self.slots, logits, rows, row_slots)

    def _clear(self, index: int) -> None:
        self.slots.constraints[index] = None
        self.outputs[index] = None

    def _swap(self, a: int, b: int) -> None:
        constraints, outputs = self.slots.constraints, self.outputs
        constraints[a], constraints[b] = constraints[b], constraints[a]
        outputs[a], outputs[b] = outputs[b], outputs[a]
