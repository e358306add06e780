"""scripts/inference.py (utils.generation.runner): output format, exact chosen-token logprobs, resume after a kill,
and the vLLM seams."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from scripts import inference
from utils.configs.pipeline import InferenceArguments
from utils.fileio import InputError
from utils.generation.runner import generate_outputs, plan_jobs
from utils.prompt import render_chat_prompt
from utils.generation.backends import (
    Generation,
    TransformersGenerator,
    adapter_rank,
    generation_from_vllm,
    mean_negative_logprob,
    new_token_budget,
    vllm_engine_kwargs,
    vllm_lora_request_kwargs,
    vllm_max_lora_rank,
    vllm_sampling_kwargs,
)
from utils.testing.tiny_models import SHORT_NOTES, build_tiny_qwen35, build_tiny_tokenizer

NOTES = SHORT_NOTES[:5]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    texts = [t for _, t in NOTES] * 4
    return build_tiny_qwen35(tmp_path_factory.mktemp("tiny_qwen"), build_tiny_tokenizer(texts, vocab_size=400), hidden_size=32, seed=2)


@pytest.fixture(scope="module")
def generator(model_dir) -> TransformersGenerator:
    return TransformersGenerator(str(model_dir))


@pytest.fixture()
def input_csv(tmp_path) -> Path:
    path = tmp_path / "notes.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "raw_text", "gold_span"])
        writer.writerows((i, t, f"<x>{i}</x>") for i, t in NOTES)
    return path


def _args(model_dir, inputs, outputs, **overrides) -> InferenceArguments:
    values = dict(backend="transformers", model=str(model_dir), input=[str(p) for p in inputs],
                  output=[str(p) for p in outputs], max_new_tokens=6, batch_size=2)
    values.update(overrides)
    return InferenceArguments(**values)


def _factory(generator, calls=None, die_on_call=None):
    calls = calls if calls is not None else []

    class Wrapped:
        def prompt_length(self, prompt):
            return generator.prompt_length(prompt)

        def generate(self, prompts, budgets):
            calls.append(len(prompts))
            if die_on_call is not None and len(calls) == die_on_call:
                raise KeyboardInterrupt  # as if the job were killed mid-run
            return generator.generate(prompts, budgets)

    return lambda: (Wrapped(), generator.tokenizer)


def render_prompts(tokenizer, texts) -> list[str]:
    return [render_chat_prompt(tokenizer, text) for text in texts]


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_csv_as_an_uninterrupted_run(tmp_path, model_dir, generator, input_csv):
    whole = tmp_path / "whole.csv"
    generate_outputs(_args(model_dir, [input_csv], [whole]), _factory(generator), progress=False)

    killed = tmp_path / "killed.csv"
    args = _args(model_dir, [input_csv], [killed])
    with pytest.raises(KeyboardInterrupt):
        generate_outputs(args, _factory(generator, die_on_call=2), progress=False)
    assert not killed.exists()  # the CSV only appears when every row is done
    partial = killed.with_name("killed.csv.partial.jsonl")
    lines = partial.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["settings"]["max_new_tokens"] == 6
    assert [json.loads(line)["file_id"] for line in lines[1:]] == ["10_20_30", "10_20_31"]
    with open(partial, "a", encoding="utf-8") as handle:
        handle.write('{"file_id": "10_20_32", "predic')  # killed in the middle of a write

    calls: list[int] = []
    assert generate_outputs(args, _factory(generator, calls), progress=False) == {str(killed): 3}
    assert calls == [2, 1]  # only the three missing rows were generated
    assert killed.read_bytes() == whole.read_bytes()
    # Everything done: a further run loads no model and rewrites the same CSV.
    assert generate_outputs(args, lambda: pytest.fail("model loaded"), progress=False) == {str(killed): 0}
    assert killed.read_bytes() == whole.read_bytes()


@pytest.mark.slow
def test_output_columns_and_exact_chosen_token_logprobs(tmp_path, model_dir, generator, input_csv):
    out = tmp_path / "out.csv"
    generate_outputs(_args(model_dir, [input_csv], [out]), _factory(generator), progress=False)
    frame = _read(out)
    assert list(frame.columns) == ["file_id", "raw_text", "gold_span", "predicted", "entropy", "num_tokens", "truncated",
                                   "spans"]
    assert list(zip(frame.file_id, frame.raw_text)) == NOTES  # CRLF, a lone CR, quotes and "NA" survive
    assert frame.num_tokens.tolist() == ["6"] * 5 and frame.truncated.tolist() == ["True"] * 5  # random model: no EOS
    predictions = json.loads(out.with_suffix(".json").read_text())
    assert [p["file_name"] for p in predictions] == [i for i, _ in NOTES]
    # the JSON holds exactly the spans of the CSV's spans column (located once, at generation)
    assert [[[s["start_offset"], s["end_offset"], s["category"]] for s in p["predictions"]] for p in predictions] == [
        json.loads(cell) for cell in frame.spans]

    # The entropy is the mean -log p of the greedy tokens under the model (teacher-forced check).
    prompt = render_prompts(generator.tokenizer, [NOTES[0][1]])[0]
    gen = generator.generate([prompt], [6])[0]
    ids = generator.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    full = torch.cat([ids, torch.tensor([gen.token_ids])], dim=1)
    with torch.no_grad():
        logp = generator.model(full).logits[0, ids.shape[1] - 1 : -1].float().log_softmax(-1)
    chosen = logp.gather(-1, torch.tensor(gen.token_ids)[:, None]).squeeze(-1)
    assert gen.token_ids == tuple(logp.argmax(-1).tolist())  # greedy
    np.testing.assert_allclose(gen.logprobs, chosen.numpy(), atol=1e-4)
    assert float(frame.entropy[0]) == pytest.approx(-chosen.mean().item(), abs=1e-4)


def test_eos_stops_a_row_and_is_counted_but_not_written(model_dir):
    gen = TransformersGenerator(str(model_dir))
    prompt = render_prompts(gen.tokenizer, ["Follow up in 2 weeks."])[0]
    free = gen.generate([prompt], [5])[0]
    gen.eos_ids = {free.token_ids[2]}  # pretend the third greedy token is the end of turn
    stopped = gen.generate([prompt], [5])[0]
    assert stopped.finished and not stopped.truncated
    assert stopped.token_ids == free.token_ids[:3] and stopped.num_tokens == 3
    assert stopped.text == gen.tokenizer.decode(free.token_ids[:2], skip_special_tokens=True)
    assert stopped.entropy == pytest.approx(-sum(free.logprobs[:3]) / 3)


@pytest.mark.slow
def test_a_prompt_that_fills_the_context_gets_an_empty_truncated_row(tmp_path, model_dir, generator, input_csv):
    lengths = [generator.prompt_length(p) for p in render_prompts(generator.tokenizer, [t for _, t in NOTES])]
    limit = sorted(lengths)[2] + 2  # the two longest prompts leave no room
    out = tmp_path / "out.csv"
    with pytest.warns(UserWarning, match="fills the"):
        generate_outputs(_args(model_dir, [input_csv], [out], max_model_len=limit), _factory(generator), progress=False)
    frame = pd.read_csv(out, keep_default_na=True)
    for length, (_, row) in zip(lengths, frame.iterrows()):
        if length >= limit:
            assert row.num_tokens == 0 and row.truncated and math.isnan(row.entropy) and pd.isna(row.predicted)
        else:
            assert row.num_tokens == min(6, limit - length) and not math.isnan(row.entropy)


def test_settings_change_refuses_to_resume_and_inputs_are_checked_first(tmp_path, model_dir, input_csv):
    out = tmp_path / "o.csv"
    partial = out.with_name("o.csv.partial.jsonl")
    partial.write_text(json.dumps({"settings": {"model": "other"}}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="partial results made with other settings"):
        generate_outputs(_args(model_dir, [input_csv], [out]), lambda: pytest.fail("model loaded"), progress=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("file_id,text\n1,x\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.csv: line 1: missing column\(s\) raw_text"):
        generate_outputs(_args(model_dir, [input_csv, bad], [out, tmp_path / "b.csv"]), lambda: pytest.fail("model loaded"))
    dup = tmp_path / "dup.csv"
    dup.write_text("file_id,raw_text\n1,x\n1,y\n", encoding="utf-8")
    with pytest.raises(InputError, match="row 2: duplicate file_id '1'"):
        generate_outputs(_args(model_dir, [dup], [out]), lambda: pytest.fail("model loaded"))
    with pytest.raises(InputError, match="expected one output per --input"):
        generate_outputs(_args(model_dir, [input_csv], []), lambda: pytest.fail("model loaded"))


def test_val_and_test_csvs_go_to_their_own_outputs(tmp_path):
    for name in ("v.csv", "t.csv"):
        (tmp_path / name).write_text("file_id,raw_text\n1_2_3,x\n", encoding="utf-8")
    args = InferenceArguments(val_csv=str(tmp_path / "v.csv"), test_csv=str(tmp_path / "t.csv"), output_dir=str(tmp_path))
    jobs = plan_jobs(args)
    assert [j.output for j in jobs] == [tmp_path / "val_predictions.csv", tmp_path / "test_predictions.csv"]


def test_cli_with_a_yaml_config_and_a_one_line_error(tmp_path, capsys, input_csv):
    config = tmp_path / "run.yaml"
    config.write_text(f"backend: transformers\ninput: [{tmp_path / 'missing.csv'}]\noutput: [{tmp_path / 'x.csv'}]\n")
    assert inference.main(["--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.csv'}: file not found"
    assert inference.main(["--config", str(config), "--backend", "tgi"]) == 2
    assert capsys.readouterr().err == ("error: <command line>: argument --backend: invalid choice: 'tgi' "
                                       "(choose from 'vllm', 'transformers')\n")


# ------------------------------------------------------------------------------------- the vLLM seams


def test_vllm_engine_gets_a_lora_rank_that_fits_the_adapter(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 256, "lora_alpha": 32, "use_rslora": True}))
    kwargs = vllm_engine_kwargs("Qwen/Qwen3.5-4B", adapter_r=adapter_rank(str(adapter)), tensor_parallel_size=2,
                                extra={"enforce_eager": True})
    assert kwargs == dict(
        model="Qwen/Qwen3.5-4B", tokenizer="Qwen/Qwen3.5-4B", max_model_len=32768, max_num_seqs=8,
        tensor_parallel_size=2, gpu_memory_utilization=0.95, dtype="auto", seed=3407,
        enable_lora=True, max_lora_rank=256, max_loras=1, enforce_eager=True,
    )
    assert "enable_lora" not in vllm_engine_kwargs("merged")  # merged model: no LoRA
    assert [vllm_max_lora_rank(r) for r in (1, 2, 16, 200, 256, 300, 512)] == [1, 8, 16, 256, 256, 320, 512]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        vllm_max_lora_rank(1024)
    assert vllm_lora_request_kwargs(str(adapter)) == {"lora_name": "lamar_adapter", "lora_int_id": 1, "lora_path": str(adapter)}


def test_vllm_generates_every_row_of_an_input_in_one_call_by_default():
    """Published: one llm.generate over all prompts at gpu_memory_utilization 0.95; --flush_every N resumes in steps."""
    from utils.generation.runner import rows_per_step

    args = InferenceArguments()
    assert (args.flush_every, args.gpu_memory_utilization) == (0, 0.95)
    assert vllm_engine_kwargs("m")["gpu_memory_utilization"] == args.gpu_memory_utilization
    assert rows_per_step(args, 1500) == 1500 and rows_per_step(args, 0) == 1
    assert rows_per_step(InferenceArguments(flush_every=64), 1500) == 64
    assert rows_per_step(InferenceArguments(backend="transformers", batch_size=4), 1500) == 4


def test_vllm_sampling_is_greedy_with_the_chosen_token_logprob():
    assert vllm_sampling_kwargs(24576) == dict(temperature=0.0, max_tokens=24576, logprobs=0, seed=3407, skip_special_tokens=True)
    assert vllm_sampling_kwargs(10, logprobs=False)["logprobs"] is None
    assert new_token_budget(8000, 24576, 32768) == 24576
    assert new_token_budget(10000, 24576, 32768) == 22768
    assert new_token_budget(40000, 24576, 32768) == 0


def _fake_vllm_output(token_ids, chosen_logprobs, finish_reason, text="<drug_decision>aspirin</drug_decision>"):
    steps = [
        {t: SimpleNamespace(logprob=lp, rank=1), t + 1000: SimpleNamespace(logprob=-9.0, rank=2)}
        for t, lp in zip(token_ids, chosen_logprobs)
    ]
    completion = SimpleNamespace(text=text, token_ids=token_ids, logprobs=steps, finish_reason=finish_reason,
                                 cumulative_logprob=sum(chosen_logprobs))
    return SimpleNamespace(request_id="0", outputs=[completion])


def test_vllm_outputs_become_rows():
    done = generation_from_vllm(_fake_vllm_output([5, 6, 7, 2], [-0.1, -0.2, -0.3, -0.4], "stop"))
    assert done == Generation("<drug_decision>aspirin</drug_decision>", 4, (-0.1, -0.2, -0.3, -0.4), True, (5, 6, 7, 2))
    assert done.entropy == pytest.approx(0.25) and not done.truncated
    cut = generation_from_vllm(_fake_vllm_output([5, 6], [-1.0, -2.0], "length"))
    assert cut.truncated and cut.entropy == pytest.approx(1.5)
    assert math.isnan(mean_negative_logprob([])) and math.isnan(mean_negative_logprob(None))


def test_a_changed_note_is_generated_again_and_a_second_run_is_refused(tmp_path, model_dir, generator, input_csv):
    from filelock import FileLock

    out = tmp_path / "o.csv"
    args = _args(model_dir, [input_csv], [out])
    assert generate_outputs(args, _factory(generator), progress=False) == {str(out): 5}
    frame = _read(input_csv)
    frame.loc[1, "raw_text"] = "Follow up with neurology in 3 weeks."  # the note behind one cached row changed
    frame.to_csv(input_csv, index=False, quoting=1)
    calls: list[int] = []
    assert generate_outputs(args, _factory(generator, calls), progress=False) == {str(out): 1}  # only that row again
    assert calls == [1]
    rerun = _read(out)
    assert rerun.raw_text[1] == "Follow up with neurology in 3 weeks."
    prompt = render_prompts(generator.tokenizer, [rerun.raw_text[1]])[0]
    assert rerun.predicted[1] == generator.generate([prompt], [6])[0].text  # paired with its own output
    with FileLock(str(out) + ".partial.jsonl.lock"):  # as if another run were writing this output
        with pytest.raises(InputError, match=r"o.csv.partial.jsonl: another inference run is writing this output"):
            generate_outputs(args, lambda: pytest.fail("model loaded"), progress=False)


def test_the_csv_and_its_json_are_replaced_together(tmp_path, model_dir, generator, input_csv, monkeypatch):
    out = tmp_path / "o.csv"
    args = _args(model_dir, [input_csv], [out])
    generate_outputs(args, _factory(generator), progress=False)
    before = (out.read_bytes(), out.with_suffix(".json").read_bytes())

    def failing_dump(handle, data):
        raise OSError("disk full")

    monkeypatch.setattr("utils.generation.runner.dump_json", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        generate_outputs(args, lambda: pytest.fail("model loaded"), progress=False)  # every row cached: only the outputs again
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before  # neither file replaced
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left
