"""vLLM 0.31 itself (its CPU build, or a GPU): every vLLM path of scripts/inference.py against the transformers backend.

One engine serves the in-process tests (see conftest.py); the data-parallel and resume test runs the command as a
user would, in its own processes. What each test proves is in its docstring; README "vLLM on CPU" sums it up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from utils.configs.pipeline import InferenceArguments
from utils.fileio import InputError
from utils.generation.runner import generate_outputs
from utils.meddec.tables import read_inference_table, read_tagged_table
from utils.paths import REPO_ROOT
from utils.tagging.locate import locate_spans
from utils.tagging.tags import strip_tags
from utils.testing.gpu_checks import entropies_agree
from utils.training import layout as L

MAX_NEW_TOKENS = 600
MAX_MODEL_LEN = 2048
LORA_R = 8
WARM_STEPS = 90  # 30 left the model writing one header for every note and no span
COPY_FLAGS = dict(copy_constraint=True, copy_allow_unclosed=True)  # plain masking: raw-logit margins = constrained ones
# bf16 (vLLM) vs float32 (transformers): where the float32 model's two best tokens are closer than this (nats), the
# engines may pick either; an output that differs must differ first at such a near-tie (checked, token by token).
NEAR_TIE_NATS = 0.05


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, tier_env) -> dict[str, Path]:
    """Notes, the warm-started tiny Qwen3.5 (image-text-to-text, bf16) and its two LoRA adapters: one in the
    checkpoint's layout and the same adapter renamed to the text-only layout."""
    from transformers import AutoTokenizer  # noqa: F401  (transformers first: see conftest.py)

    from utils.testing.gpu_checks import build_tiny_gpu_qwen35
    from utils.testing.tiny_models import build_tiny_tokenizer, write_tiny_tagged_csv
    from utils.testing.vllm_tier import make_lora_adapter, warm_start

    root = tmp_path_factory.mktemp("vllm_tier")
    rows = write_tiny_tagged_csv(root / "notes.csv", n_notes=3, seed=1, mean_chars=80, mean_spans=2)
    tokenizer = build_tiny_tokenizer([r["raw_text"] for r in rows] * 3 + [r["gold_span"] for r in rows],
                                     vocab_size=2048)
    base = build_tiny_gpu_qwen35(root / "base", tokenizer, hidden_size=128, num_layers=4)
    assert (base / "processor_config.json").is_file()  # vLLM's multimodal class needs the processor
    model = warm_start(base, rows, root / "model", steps=WARM_STEPS)
    lora_vl = make_lora_adapter(model, root / "lora_vl", r=LORA_R, alpha=LORA_R, seed=5, std=0.05)
    lora_text = L.convert_adapter(str(lora_vl), L.CAUSAL_LM, root / "lora_text")
    return {"root": root, "csv": root / "notes.csv", "model": model, "lora_vl": lora_vl, "lora_text": lora_text}


def _args(tiny: dict[str, Path], name: str, backend: str, **flags) -> InferenceArguments:
    out = tiny["root"] / "runs" / f"{name}.csv"
    vllm = backend == "vllm"
    settings = dict(backend=backend, model=str(tiny["model"]), input=[str(tiny["csv"])], output=[str(out)],
                    max_new_tokens=MAX_NEW_TOKENS, max_model_len=MAX_MODEL_LEN, batch_size=4 if vllm else 1,
                    dtype="bfloat16" if vllm else "float32", seed=0,
                    vllm_kwargs='{"enforce_eager": true}' if vllm else None)
    return InferenceArguments(**{**settings, **flags})


def _notes(tiny: dict[str, Path]) -> dict[str, str]:
    return dict(zip(*(read_tagged_table(tiny["csv"])[c] for c in ("file_id", "raw_text"))))


def _result(args: InferenceArguments) -> dict:
    return _result_at(Path(args.output[0]))


def _result_at(out: Path) -> dict:
    """A finished run's CSV and JSON (its own arguments would have to name an input to be built)."""
    frame = read_inference_table(out)
    return {"frame": frame, "json": json.loads(out.with_suffix(".json").read_text()), "path": out}


RUNS = {"base": {}, "lora_vl": {"adapter": "lora_vl"}, "lora_text": {"adapter": "lora_text"}, "copy": COPY_FLAGS}


@pytest.fixture(scope="session")
def hf(tiny) -> dict[str, dict]:
    """The transformers backend (float32 compute on the bf16 weights; an adapter is merged into the model): the base,
    each adapter, and copy-constrained decoding. Run before any engine starts in this process."""
    from utils.generation.runner import build_generator

    results = {}
    for name, flags in RUNS.items():
        flags = {k: str(tiny[v]) if k == "adapter" else v for k, v in flags.items()}
        args = _args(tiny, f"hf_{name}", "transformers", **flags)
        built = build_generator(args)  # kept: the near-tie check below needs the float32 model after the engine starts
        generate_outputs(args, lambda: built, progress=False)
        results[name] = {**_result(args), "generator": built[0]}
    return results


@pytest.fixture(scope="session")
def engine(tiny, hf):
    """One real engine: LoRA enabled (max_lora_rank from r), the copy-constraint processor of the runner vLLM uses
    here registered, processed logprobs. ``hf`` first (see conftest.py)."""
    from utils.generation.backends import VllmGenerator, copy_model_runner, vllm_engine_kwargs
    from utils.generation.copy_decoding import CopyGuards

    runner = copy_model_runner()
    kwargs = vllm_engine_kwargs(str(tiny["model"]), adapter_r=LORA_R, max_model_len=MAX_MODEL_LEN, max_num_seqs=4,
                                dtype="bfloat16", seed=0, extra={"enforce_eager": True}, copy_constraint=True,
                                copy_runner=runner)
    start = time.perf_counter()
    generator = VllmGenerator(kwargs, None, 0.0, True, 0, copy_guards=CopyGuards())  # each run passes its own guards
    return {"generator": generator, "runner": runner, "seconds": time.perf_counter() - start}


def _vllm_run(tiny, engine, name: str, adapter: str | None = None, rename: bool = True, **flags) -> dict:
    """scripts/inference.py's generate_outputs() on the shared engine (the generator the CLI would build, minus the start)."""
    from utils.generation.backends import VllmGenerator
    from utils.generation.runner import copy_guards

    shared = engine["generator"]
    served = None
    if adapter is not None:
        served = L.adapter_for_vllm(str(tiny[adapter]), str(tiny["model"]), tiny["root"] / f"vllm_{name}") if rename \
            else str(tiny[adapter])
    args = _args(tiny, f"vllm_{name}", "vllm", **flags)
    generator = VllmGenerator.sharing(shared, adapter=served, copy_guards=copy_guards(args))
    if adapter is not None:
        args = replace(args, adapter=str(tiny[adapter]))
    generate_outputs(args, lambda: (generator, generator.tokenizer), progress=False)
    return {**_result(args), "generator": generator}


def _same_outputs(got: dict, want: dict, label: str, notes: dict[str, str] | None = None) -> int:
    """Text, token counts, truncation, spans and prediction JSON equal, entropies within the GPU suite's tolerance
    (0.02 + 2%); returns the number of rows equal. With ``notes`` (a vLLM vs transformers comparison) a row that
    differs must first differ at a near-tie of the float32 model (:func:`_first_divergence`)."""
    g, w = got["frame"], want["frame"]
    assert list(g.file_id) == list(w.file_id)
    same = [k for k in range(len(w)) if g.predicted.iloc[k] == w.predicted.iloc[k]]
    for k in set(range(len(w))) - set(same):
        assert notes is not None, (label, k, g.predicted.iloc[k][:300], w.predicted.iloc[k][:300])
        position, margin = _first_divergence(got["generator"], want["generator"], notes[w.file_id.iloc[k]])
        print(f"\n{label}: row {k} differs from token {position} on, where the float32 model's margin is "
              f"{margin:.4f} nats")
        assert margin <= NEAR_TIE_NATS, (label, k, position, margin)
    assert same, f"{label}: every output differs"
    for column in ("predicted", "num_tokens", "truncated", "spans"):
        assert [g[column].iloc[k] for k in same] == [w[column].iloc[k] for k in same], (label, column)
    by_id = lambda predictions: {p["file_name"]: p for p in predictions}  # noqa: E731
    assert [by_id(got["json"])[w.file_id.iloc[k]] for k in same] == [by_id(want["json"])[w.file_id.iloc[k]]
                                                                     for k in same], label
    for k in same:
        a, b = float(g.entropy.iloc[k]), float(w.entropy.iloc[k])
        assert entropies_agree(a, b), (label, k, a, b)
    return len(same)


def _first_divergence(vllm_generator, hf_generator, note: str) -> tuple[int, float]:
    """Where the two backends' greedy tokens first differ, and the float32 model's log-probability margin there
    between its own choice and the engine's (0 = an exact tie)."""
    import torch

    from utils.generation.backends import new_token_budget
    from utils.prompt import render_chat_prompt
    from utils.testing.vllm_tier import first_difference

    prompt = render_chat_prompt(hf_generator.tokenizer, note)
    budget = new_token_budget(hf_generator.prompt_length(prompt), MAX_NEW_TOKENS, MAX_MODEL_LEN)
    notes = [note] if hf_generator.copy_vocabulary is not None else None
    ours = vllm_generator.generate([prompt], [budget], notes=notes)[0].token_ids
    theirs = hf_generator.generate([prompt], [budget], notes=notes)[0].token_ids
    position = first_difference(ours, theirs)
    assert position is not None and position < min(len(ours), len(theirs)), "same tokens, different text"
    prompt_ids = hf_generator.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = hf_generator.model(input_ids=torch.tensor([prompt_ids + list(theirs[:position])])).logits[0, -1]
    logprobs = logits.float().log_softmax(-1)
    return position, float(logprobs[theirs[position]] - logprobs[ours[position]])


# ------------------------------------------------------------------------------------------------ tests


def test_vllm_inference_equals_the_transformers_backend(tiny, hf, engine) -> None:
    """Greedy outputs of the real engine (bf16) = the transformers backend's (float32 compute): text, token counts,
    spans and prediction JSON exactly, each output's entropy within the GPU suite's tolerance (0.02 + 2%)."""
    got = _vllm_run(tiny, engine, "base")
    equal = _same_outputs(got, hf["base"], "base", _notes(tiny))
    assert sum(len(spans) for spans in got["frame"].spans) > 0  # the model tags: the span comparison is not vacuous
    differences = [abs(a - b) for a, b in zip(got["frame"].entropy.astype(float), hf["base"]["frame"].entropy.astype(float))]
    print(f"\nvLLM engine start {engine['seconds']:.1f} s; {equal} of {len(differences)} outputs equal; entropy "
          f"|vLLM - transformers| per output: {[round(d, 5) for d in differences]}")


@pytest.mark.parametrize("adapter", ["lora_vl", "lora_text"])
def test_adapters_of_both_layouts_reach_vllms_modules(tiny, hf, engine, adapter) -> None:
    """An r=8 LoRA on every projection (vLLM's packed qkv / gate_up / in_proj_qkvz / in_proj_ba included), in the
    checkpoint's layout and in the text-only layout: vLLM's outputs with it change from the base and equal the
    transformers backend with the adapter merged into the model. The text-layout adapter goes through
    ``adapter_for_vllm`` (renamed for vLLM's multimodal class)."""
    from safetensors import safe_open

    from utils.testing.gpu_checks import PACKED_PARTS, adapter_modules

    with safe_open(str(Path(tiny[adapter]) / L.ADAPTER_WEIGHTS), "pt") as handle:
        keys = list(handle.keys())
    assert set(PACKED_PARTS) <= adapter_modules(keys)
    assert L.adapter_layout(keys) == (L.IMAGE_TEXT_TO_TEXT if adapter == "lora_vl" else L.CAUSAL_LM)
    got = _vllm_run(tiny, engine, adapter, adapter=adapter)
    _same_outputs(got, hf[adapter], adapter, _notes(tiny))
    assert list(got["frame"].predicted) != list(hf["base"]["frame"].predicted)  # the adapter acts


def test_without_the_rename_vllm_ignores_a_text_layout_adapter(tiny, engine) -> None:
    """Why ``adapter_for_vllm`` exists: the same text-layout adapter served as it is changes nothing in vLLM's
    multimodal class (its LoRA modules are not mapped, without an error), so the rename is what reaches them."""
    got = _vllm_run(tiny, engine, "lora_text_unrenamed", adapter="lora_text", rename=False)
    base = _vllm_run(tiny, engine, "base_again")
    assert list(got["frame"].predicted) == list(base["frame"].predicted)  # renamed, it changes them (test above)


def test_copy_constraint_runs_on_the_runner_vllm_uses_here(tiny, hf, engine) -> None:
    """Copy-constrained decoding on the real engine (V1 runner on vLLM's CPU build: the BatchUpdate processor; V2 on
    CUDA): every finished output, de-tagged, is its note byte for byte, spans at exact offsets without alignment
    fallback, and the outputs equal the transformers backend's constrained ones (the fake-V2 tests show V2 = the
    transformers backend too: tests/test_copy_decoding_vllm.py)."""
    from utils.generation.copy_decoding_vllm import PROCESSOR_FQCNS

    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == ("0" if engine["runner"] == "v1" else "1")
    config = engine["generator"].llm.llm_engine.vllm_config
    assert config.use_v2_model_runner == (engine["runner"] == "v2")
    got = _vllm_run(tiny, engine, "copy", **COPY_FLAGS)
    notes = _notes(tiny)
    _same_outputs(got, hf["copy"], "copy", notes)
    finished = 0
    for file_id, predicted, truncated in zip(got["frame"].file_id, got["frame"].predicted, got["frame"].truncated):
        if truncated:
            assert notes[file_id].startswith(strip_tags(predicted))
            continue
        finished += 1
        assert strip_tags(predicted).encode() == notes[file_id].encode(), file_id  # byte for byte
        located = locate_spans(notes[file_id], predicted, locator="align")
        assert located.matches == ["aligned"] * len(located.spans)
    assert finished == len(notes)
    assert PROCESSOR_FQCNS[engine["runner"]] in engine["generator"].llm.llm_engine.vllm_config.model_config.logits_processors


def test_model_runner_v2_refusal_reaches_the_user_in_vllms_words(tiny, engine, monkeypatch) -> None:
    """Bugs 3 and 4: pinning Model Runner V2 where vLLM has no Triton (its CPU build) is refused by vLLM itself, and
    the command says so in vLLM's own words on one line (it said "cannot be loaded (1 validation error for
    VllmConfig)")."""
    from utils.generation.backends import vllm_has_triton

    if vllm_has_triton():
        pytest.skip("vLLM has Triton here: Model Runner V2 runs (the copy test above ran on it)")
    import vllm.envs

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    vllm.envs.disable_envs_cache()  # the running engine froze vLLM's view of the environment: read it afresh
    args = _args(tiny, "v2_refused", "vllm", **COPY_FLAGS)
    with pytest.raises(InputError) as caught:
        generate_outputs(args, progress=False)
    assert str(caught.value) == ("<command line>: --backend: got 'vllm': vLLM could not start the engine: Model Runner "
                                 "V2 requires Triton.")
    assert not Path(args.output[0]).exists()


def test_data_parallel_engines_killed_and_resumed(tiny, engine, tier_env) -> None:
    """``scripts/inference.py --backend vllm --data_parallel_size 2``: two real engines in their own processes, each
    on its own shard. Killed once the first rows are saved, the same command resumes (only the missing rows are
    generated) and the merged outputs equal the one-engine run's."""
    reference = _vllm_run(tiny, engine, "dp_reference", batch_size=1, flush_every=1)  # one prompt per call, as the shards
    out = tiny["root"] / "dp" / "out.csv"
    command = [sys.executable, "scripts/inference.py", "--backend", "vllm", "--model", str(tiny["model"]), "--input",
               str(tiny["csv"]), "--output", str(out), "--max_new_tokens", str(MAX_NEW_TOKENS), "--max_model_len",
               str(MAX_MODEL_LEN), "--batch_size", "1", "--flush_every", "1", "--dtype", "bfloat16", "--seed", "0",
               "--vllm_kwargs", '{"enforce_eager": true}', "--data_parallel_size", "2"]
    partials = [out.with_name(f"out.csv.shard-{i}-of-2.partial.jsonl") for i in range(2)]
    env = {k: v for k, v in tier_env.items() if k != "VLLM_USE_V2_MODEL_RUNNER"}
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    while not any(p.is_file() and p.read_text().count("\n") >= 2 for p in partials):  # settings line + one row
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no shard saved a row in 400 s"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and both shards, mid-run
    first.wait()
    saved = sum(p.read_text().count("\n") - 1 for p in partials if p.is_file())
    assert not out.exists() and 1 <= saved < len(reference["frame"])
    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    generated = {line.split("(shard ")[1].split()[0]: int(line.split(": ")[1].split()[0])
                 for line in second.stdout.splitlines() if "note(s) generated now (shard" in line}
    assert set(generated) == {"0", "1"}  # two engine processes
    assert sum(generated.values()) == len(reference["frame"]) - saved  # only the missing rows
    assert "note(s) merged from 2 shard processes" in second.stdout
    assert _same_outputs(_result_at(out), reference, "data parallel") == len(reference["frame"])
    print(f"\nkilled with {saved} row(s) saved; the rerun generated {generated} per shard")
