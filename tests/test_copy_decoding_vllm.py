"""Copy-constrained decoding on vLLM 0.31 (Model Runner V2 logits processor), on CPU against a fake of the
runner (``utils.testing.fake_vllm``: interface, loader, slot recycling, preemption, chunked prefill, async extra
step and row reordering taken from the pinned sources). The same tiny model must give the same tokens, text
and constrained log-probabilities as the transformers backend. The real engine is in tests/gpu/.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dataset.synthetic import generate_notes
from utils.configs.pipeline import InferenceArguments, check_vllm_copy_settings
from utils.fileio import InputError
from utils.generation.backends import TransformersGenerator, VllmGenerator, copy_model_runner, vllm_engine_kwargs
from utils.generation.copy_decoding import CopyGuards, CopyVocabulary
from utils.generation.copy_decoding_vllm import (
    EXTRA_ARGS_KEY, PROCESSOR_FQCN, PROCESSOR_FQCN_V1, SlotConstraints, copy_request_args, parse_copy_request_args,
)
from utils.generation.runner import generate_outputs
from utils.prompt import render_chat_prompt
from utils.tagging.convert import spans_to_tagged
from utils.tagging.tags import strip_tags
from utils.testing import fake_vllm
from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer

NOTES = ["Continue aspirin 81 mg.\r\nStop é.", "NA", "a<b>\rc", "Start  heparin [**2101-1-2**]\n\nFollow up 😀.",
         "Hold\tlisinopril."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def vllm(monkeypatch):
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    fake_vllm.LLM.instances.clear()
    return fake_vllm.install(monkeypatch)


@pytest.fixture(scope="module", params=["atomic_tags", "spelled_tags"])
def model_dir(request, tmp_path_factory) -> Path:
    notes = generate_notes(8, seed=4, mean_chars=600, mean_spans=8)
    texts = [spans_to_tagged(n.text, [(a.start, a.end, a.category) for a in n.annotations]) for n in notes]
    tokenizer = build_tiny_tokenizer(texts + NOTES, vocab_size=400, tags_as_tokens=request.param == "atomic_tags")
    return build_tiny_qwen35(tmp_path_factory.mktemp(f"vllm_{request.param}"), tokenizer, hidden_size=32, seed=11)


def budget(note: str, guards: CopyGuards) -> int:
    return len(note.encode()) + 2 * guards.max_tags_per_position * len(note) * 25 + 1


# ----------------------------------------------------------------------------- request arguments


def test_request_arguments_round_trip_and_malformed_ones_are_refused():
    args = copy_request_args("Stop é.", [7, 3, 7], CopyGuards(3, 2))
    assert args == {EXTRA_ARGS_KEY: {"note": "Stop é.", "eos_ids": [3, 7], "max_tags_per_position": 3, "max_open": 2,
                                     "word_boundaries": False, "text_mass": False, "max_span_chars": None,
                                     "allow_unclosed": False}}
    assert json.loads(json.dumps(args)) == args  # plain values: they cross the engine's process boundary
    assert parse_copy_request_args(args) == ("Stop é.", (3, 7), CopyGuards(3, 2))
    words = copy_request_args("x", [1], CopyGuards(1, None, True))
    assert parse_copy_request_args(words) == ("x", (1,), CopyGuards(1, None, True))
    credit = copy_request_args("x", [1], CopyGuards(text_mass=True, max_span_chars=40, allow_unclosed=True))
    assert parse_copy_request_args(credit) == ("x", (1,), CopyGuards(text_mass=True, max_span_chars=40,
                                                                     allow_unclosed=True))
    assert parse_copy_request_args(None) is None and parse_copy_request_args({"other": 1}) is None
    bad = [
        ({EXTRA_ARGS_KEY: "note"}, "must be a mapping, got str"),
        ({EXTRA_ARGS_KEY: {"note": 3, "eos_ids": [1]}}, r"\['note'\] must be the note text \(str\), got int"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": []}}, r"\['eos_ids'\] must be a non-empty list of token ids"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [True]}}, r"\['eos_ids'\] must be a non-empty list"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [1], "k": 1}}, r"unknown keys \['k'\]"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [1], "max_tags_per_position": 0}}, "must be at least 1, got 0"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [1], "max_open": "2"}}, "max_open and max_span_chars ints or None"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [1], "word_boundaries": 1}}, "word_boundaries, text_mass and allow_unclosed bools"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [1], "text_mass": "yes"}}, "word_boundaries, text_mass and allow_unclosed bools"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [1], "allow_unclosed": None}}, "and allow_unclosed bools"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [1], "max_span_chars": 2.5}}, "max_span_chars ints or None"),
        ({EXTRA_ARGS_KEY: {"note": "x", "eos_ids": [1], "max_span_chars": 0}}, "max_span_chars must be at least 1"),
    ]
    for extra, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_copy_request_args(extra)


def test_engine_arguments_register_the_processor_and_processed_logprobs():
    kwargs = vllm_engine_kwargs("m", copy_constraint=True, extra={"enforce_eager": True, "logits_processors": ["x:Y"]})
    assert kwargs["logits_processors"] == ["x:Y", PROCESSOR_FQCN] and kwargs["logprobs_mode"] == "processed_logprobs"
    assert kwargs["enforce_eager"] is True
    plain = vllm_engine_kwargs("m")
    assert "logits_processors" not in plain and "logprobs_mode" not in plain  # the published run: vLLM's defaults
    assert PROCESSOR_FQCN == "utils.generation.copy_decoding_vllm_v2:CopyConstraintLogitsProcessor"
    v1 = vllm_engine_kwargs("m", copy_constraint=True, copy_runner="v1", extra={"logits_processors": [PROCESSOR_FQCN]})
    assert v1["logits_processors"] == [PROCESSOR_FQCN_V1]  # one interface per engine: the other one is dropped
    # The runner: the environment decides when set, else vLLM's Triton (V2 on CUDA, V1 on vLLM's CPU build).
    assert copy_model_runner({"VLLM_USE_V2_MODEL_RUNNER": "0"}, has_triton=True) == "v1"
    assert copy_model_runner({"VLLM_USE_V2_MODEL_RUNNER": "1"}, has_triton=False) == "v2"
    assert copy_model_runner({}, has_triton=True) == "v2" and copy_model_runner({}, has_triton=False) == "v1"
    check_vllm_copy_settings({})
    with pytest.raises(ValueError, match="does not support speculative decoding"):
        vllm_engine_kwargs("m", copy_constraint=True, extra={"speculative_config": {"method": "ngram"}})
    with pytest.raises(ValueError, match="got logprobs_mode 'raw_logprobs'"):
        vllm_engine_kwargs("m", copy_constraint=True, extra={"logprobs_mode": "raw_logprobs"})


def test_the_processor_class_subclasses_the_v2_base_and_loads_by_name(vllm):
    classes = fake_vllm.load_processor_classes([PROCESSOR_FQCN])
    from utils.generation.copy_decoding_vllm_v2 import CopyConstraintLogitsProcessor

    assert classes == [CopyConstraintLogitsProcessor]
    assert issubclass(CopyConstraintLogitsProcessor, fake_vllm.LogitsProcessor)
    with pytest.raises(ValueError, match="is not a subclass of vllm.v1.worker.gpu.sample.logits_processor"):
        fake_vllm.load_processor_classes(["utils.generation.copy_decoding_vllm:CopyConstraintProcessorCore"])


# ------------------------------------------------------------------------- the processor, directly


class _HandEngine:
    """Drives one processor by hand through the calls Model Runner V2 makes."""

    def __init__(self, vocabulary: CopyVocabulary, max_num_reqs: int = 4) -> None:
        from utils.generation.copy_decoding_vllm_v2 import CopyConstraintLogitsProcessor

        self.states = fake_vllm.LogitsProcRequestState(
            device=torch.device("cpu"), max_num_reqs=max_num_reqs, vocab_size=len(vocabulary.token_bytes) + 2,
            all_token_ids=fake_vllm._DeviceTensor((max_num_reqs, 64)), prompt_len=fake_vllm._UvaTensor(max_num_reqs),
            prefill_len=fake_vllm._UvaTensor(max_num_reqs), total_len=fake_vllm._DeviceTensor(max_num_reqs))
        processor = CopyConstraintLogitsProcessor.__new__(CopyConstraintLogitsProcessor)
        processor.req_states = self.states
        processor.slots = SlotConstraints(max_num_reqs, lambda eos: vocabulary)
        self.processor = processor

    def add(self, slot: int, prompt: list[int], extra_args) -> bool:
        self.states.prompt_len.np[slot] = len(prompt)
        self.states.total_len.gpu[slot] = len(prompt)
        self.states.all_token_ids.gpu[slot, : len(prompt)] = torch.tensor(prompt)
        return self.processor.add_request(slot, fake_vllm.SamplingParams(extra_args=extra_args))

    def commit(self, slot: int, token: int) -> None:
        total = int(self.states.total_len.gpu[slot])
        self.states.all_token_ids.gpu[slot, total] = token
        self.states.total_len.gpu[slot] = total + 1

    def apply(self, slots: list[int], rows: int | None = None) -> torch.Tensor:
        n = len(slots) if rows is None else rows
        ctx = fake_vllm.LogitsContext(torch.tensor(slots), torch.tensor(slots), np.array(slots), torch.zeros(n),
                                      torch.zeros(n), torch.zeros(n), np.zeros(len(slots)))
        return self.processor.apply(torch.zeros(n, self.states.vocab_size), ctx)


def _allowed(row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(row)).flatten().tolist())


def test_v1_processor_follows_batch_updates_with_the_same_core(vllm):
    """The V1 runner's interface (vLLM's CPU build): removed, added (a live output list), moved (swap and one-way),
    in that order, then one logits row per batch index; masks as the V2 processor does."""
    from types import SimpleNamespace

    from utils.generation.copy_decoding_vllm import CopyConstraintV1ProcessorCore

    vocabulary = CopyVocabulary([bytes([b]) for b in range(256)] + [None], [256])
    core = CopyConstraintV1ProcessorCore.__new__(CopyConstraintV1ProcessorCore)
    core.slots, core.outputs = SlotConstraints(3, lambda eos: vocabulary), [None] * 3
    swap, one_way = SimpleNamespace(name="SWAP"), SimpleNamespace(name="UNIDIRECTIONAL")
    update = lambda removed=(), added=(), moved=(): SimpleNamespace(removed=removed, added=added, moved=moved)  # noqa: E731
    params = lambda note: fake_vllm.SamplingParams(extra_args=None if note is None else copy_request_args(note, [256]))  # noqa: E731
    out_ab, out_plain, out_b = [], [], []
    core.update_state(update(added=[(0, params("ab"), [9], out_ab), (1, params(None), [9], out_plain),
                                    (2, params("b"), [9], out_b)]))
    core.update_state(None)  # no change in the batch
    logits = core.apply(torch.zeros(3, 257))
    assert _allowed(logits[0]) == set(vocabulary.start("ab").allowed()) and torch.isfinite(logits[1]).all()
    out_ab.append(ord("a"))  # the runner appends to the live lists
    out_b.append(ord("b"))
    core.update_state(update(moved=[(0, 2, swap)]))
    logits = core.apply(torch.zeros(3, 257))
    replay = vocabulary.start("ab")
    replay.advance(ord("a"))
    assert _allowed(logits[2]) == set(replay.allowed()) and 256 in _allowed(logits[0])  # "b" written: EOS allowed
    core.update_state(update(removed=[1], moved=[(2, 1, one_way)]))  # condensed: row 2's request now at row 1
    assert core.slots.constraints[2] is None and core.outputs[1] is out_ab
    out_ab.extend([ord("b"), -1])  # -1: a placeholder of async scheduling, not a token
    logits = core.apply(torch.zeros(2, 257))
    assert 256 in _allowed(logits[1]) and core.slots.constraints[1].consumed == 2
    core.update_state(update(added=[(1, params("q"), [9], [])]))  # an index reused by a new request starts afresh
    assert ord("q") in _allowed(core.apply(torch.zeros(2, 257))[1])
    assert core.is_argmax_invariant() is False


def test_processor_masks_constrained_rows_by_slot_and_leaves_others_alone(vllm):
    vocabulary = CopyVocabulary([bytes([b]) for b in range(256)] + [None], [256])
    engine = _HandEngine(vocabulary)
    assert engine.add(2, [9, 9, 9], copy_request_args("ab", [256])) is True
    assert engine.add(0, [9], None) is False  # no note: never masked
    assert engine.add(3, [9, 9], copy_request_args("b", [256])) is True
    logits = engine.apply([3, 0, 2])  # rows in another order than the slots
    assert _allowed(logits[0]) == set(vocabulary.start("b").allowed())
    assert torch.isfinite(logits[1]).all()
    assert _allowed(logits[2]) == set(vocabulary.start("ab").allowed())
    engine.commit(2, ord("a"))
    engine.commit(3, ord("b"))
    logits = engine.apply([2, 3])
    replay = vocabulary.start("ab")
    replay.advance(ord("a"))
    assert _allowed(logits[0]) == set(replay.allowed()) and 256 not in _allowed(logits[0])
    assert 256 in _allowed(logits[1])  # "b" written: EOS allowed
    engine.commit(3, 256)
    engine.commit(3, ord("z"))  # async scheduling ran it once more: ignored, row untouched
    assert torch.isfinite(engine.apply([3])).all()
    # a recycled slot starts afresh
    assert engine.add(3, [9], copy_request_args("q", [256])) is True
    assert ord("q") in _allowed(engine.apply([3])[0])
    with pytest.raises(RuntimeError, match="does not support speculative decoding"):
        engine.apply([2, 3], rows=3)
    engine.states.total_len.gpu[2] = 3  # fewer tokens than taken: a slot reused behind the processor's back
    with pytest.raises(RuntimeError, match="slot 2: 0 generated tokens, but the constraint has taken 1"):
        engine.apply([2])


# ------------------------------------------------------------------ generation through the fake engine


def _transformers_reference(model_dir: Path, notes: list[str], guards: CopyGuards):
    generator = TransformersGenerator(str(model_dir), copy_constraint=True, copy_guards=guards)
    prompts = [render_chat_prompt(generator.tokenizer, n) for n in notes]
    return [generator.generate([p], [budget(n, guards)], notes=[n])[0] for p, n in zip(prompts, notes)]  # unpadded


@pytest.mark.slow
@pytest.mark.parametrize("text_mass", [False, True])
def test_vllm_path_equals_the_transformers_path_through_every_scheduling_quirk(vllm, model_dir, monkeypatch, text_mass):
    guards = CopyGuards(2, 1, text_mass=text_mass)  # at most one span open: short outputs from a random model
    expected = _transformers_reference(model_dir, NOTES, guards)
    engine = vllm_engine_kwargs(str(model_dir), max_num_seqs=2, max_model_len=4096, copy_constraint=True)
    generator = VllmGenerator(engine, None, 0.0, True, 3407, copy_guards=guards)
    assert __import__("os").environ["VLLM_USE_V2_MODEL_RUNNER"] == "1"  # pinned before the engine starts
    llm = fake_vllm.LLM.instances[-1]
    prompts = [render_chat_prompt(generator.tokenizer, n) for n in NOTES]
    got = generator.generate(prompts, [budget(n, guards) for n in NOTES], notes=NOTES)
    assert llm.preempted == 1 and llm.steps > max(g.num_tokens for g in got)  # quirks happened; 5 requests, 2 slots
    for note, want, have in zip(NOTES, expected, got):
        assert have.token_ids == want.token_ids
        assert have.text == want.text and strip_tags(have.text) == note and have.finished
        assert have.logprobs == pytest.approx(want.logprobs, abs=1e-4)  # the constrained distribution
        assert have.text == generator.copy_vocabulary.text(have.token_ids[:-1])  # exact bytes, not the detokenizer


@pytest.mark.slow
def test_raw_logprobs_would_be_the_unconstrained_ones(vllm, model_dir):
    """Why the engine gets processed_logprobs: vLLM's default reports the model's logprob before the mask."""
    guards = CopyGuards()
    note = NOTES[0]
    constrained = VllmGenerator(vllm_engine_kwargs(str(model_dir), copy_constraint=True), None, 0.0, True, 0, copy_guards=guards)
    prompt = render_chat_prompt(constrained.tokenizer, note)
    processed = constrained.generate([prompt], [budget(note, guards)], notes=[note])[0]
    raw_kwargs = {**vllm_engine_kwargs(str(model_dir), copy_constraint=True), "logprobs_mode": "raw_logprobs"}
    llm = fake_vllm.LLM(**raw_kwargs)
    constrained.llm = llm
    raw = constrained.generate([prompt], [budget(note, guards)], notes=[note])[0]
    assert raw.token_ids == processed.token_ids
    assert all(r <= p + 1e-6 for r, p in zip(raw.logprobs, processed.logprobs))
    assert sum(processed.logprobs) > sum(raw.logprobs) + 1.0  # renormalised over the allowed tokens


@pytest.mark.slow
def test_malformed_requests_fail_at_admission_and_unconstrained_engines_refuse_notes(vllm, model_dir):
    generator = VllmGenerator(vllm_engine_kwargs(str(model_dir), copy_constraint=True), None, 0.0, True, 0,
                              copy_guards=CopyGuards())
    llm = fake_vllm.LLM.instances[-1]
    bad = fake_vllm.SamplingParams(max_tokens=3, extra_args={EXTRA_ARGS_KEY: {"note": "x", "eos_ids": []}})
    with pytest.raises(ValueError, match="non-empty list of token ids"):
        llm.generate(["p"], [bad])
    assert llm.steps == 0
    with pytest.raises(ValueError, match="needs the note of every prompt"):
        generator.generate(["p"], [3])
    plain = VllmGenerator(vllm_engine_kwargs(str(model_dir)), None, 0.0, True, 0)
    with pytest.raises(ValueError, match="was not started with copy-constrained decoding"):
        plain.generate(["p"], [3], notes=["x"])


@pytest.mark.slow
def test_inference_cli_on_vllm_with_copy_constraint_matches_the_transformers_backend(vllm, model_dir, tmp_path):
    source = tmp_path / "in.csv"
    with open(source, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("file_id", "raw_text"), *((f"1_1_{k}", n) for k, n in enumerate(NOTES))])
    common = dict(model=str(model_dir), input=[str(source)], max_new_tokens=2000, copy_constraint=True,
                  copy_max_open=1, batch_size=1)
    generate_outputs(InferenceArguments(backend="transformers", output=[str(tmp_path / "hf.csv")], **common), progress=False)
    generate_outputs(InferenceArguments(backend="vllm", output=[str(tmp_path / "vllm.csv")], flush_every=3,
                           **{**common, "batch_size": 2}), progress=False)
    hf = pd.read_csv(tmp_path / "hf.csv", dtype=str, keep_default_na=False)
    vl = pd.read_csv(tmp_path / "vllm.csv", dtype=str, keep_default_na=False)
    assert list(vl.predicted) == list(hf.predicted) and list(vl.spans) == list(hf.spans)
    assert [strip_tags(p) for p in vl.predicted] == NOTES
    assert np.allclose(vl.entropy.astype(float), hf.entropy.astype(float), atol=1e-4)
    assert set(vl.truncated) == {"False"}
    assert json.loads((tmp_path / "vllm.json").read_text()) == json.loads((tmp_path / "hf.json").read_text())
    assert fake_vllm.LLM.instances[-1].engine_kwargs["logprobs_mode"] == "processed_logprobs"


def test_inference_refuses_vllm_settings_the_constraint_cannot_run_with(tmp_path, monkeypatch):
    source = tmp_path / "in.csv"
    source.write_text("file_id,raw_text\n1_1_1,x\n", encoding="utf-8")
    base = dict(input=[str(source)], output=[str(tmp_path / "o.csv")], copy_constraint=True)
    with pytest.raises(InputError,
                       match="<command line>: --copy_constraint: copy-constrained decoding reports logprobs"):
        generate_outputs(InferenceArguments(vllm_kwargs='{"logprobs_mode": "raw_logits"}', **base), lambda: pytest.fail("loaded"))
    with pytest.raises(InputError,
                       match="<command line>: --copy_constraint: copy-constrained decoding does not support "
                             "speculative"):
        generate_outputs(InferenceArguments(vllm_kwargs='{"speculative_config": {"method": "ngram"}}', **base),
            lambda: pytest.fail("loaded"))
    assert not any(tmp_path.glob("o.*"))
