"""Copy-constrained decoding on vLLM: ``scripts/inference.py --backend vllm --copy_constraint`` runs the constraint as
vLLM 0.31's Model Runner V2 logits processor (utils/generation/copy_decoding_vllm_v2.py) on the tiny random-weight
Qwen3.5. Every finished output, de-tagged, is its note byte for byte (a truncated one is a prefix of it), and the
prediction JSON holds exactly the spans the output tagged, found without alignment fallback. CPU tests check the same
on the transformers backend and the V2 call order with a fake (tests/test_copy_decoding*.py).
"""

from __future__ import annotations

import json

import pytest

from utils.meddec.tables import read_inference_table, read_tagged_table
from utils.tagging.locate import locate_spans
from utils.tagging.tags import strip_tags
from utils.testing.gpu_checks import missing_distribution, record, report, run_script, tokens_per_second

pytestmark = pytest.mark.gpu


SETTINGS = {  # name -> extra flags: the demo's settings, and plain masking (a random model then tags a lot)
    "text_mass": ["--copy_text_mass", "true", "--copy_allow_unclosed", "true"],
    "plain": ["--copy_allow_unclosed", "true"],
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_vllm_copy_constrained_outputs_are_the_notes_with_exact_offsets(tiny, tmp_path, setting) -> None:
    if reason := missing_distribution("vllm"):
        pytest.skip(reason)
    out = tmp_path / "copy.csv"
    run, seconds = run_script(["scripts/inference.py", "--backend", "vllm", "--model", str(tiny["model"]),
                               "--input", str(tiny["csv"]), "--output", str(out), "--max_new_tokens", "7000",
                               "--max_model_len", "8192", "--gpu_memory_utilization", "0.25", "--dtype", "bfloat16",
                               "--vllm_kwargs", '{"enforce_eager": true}', "--copy_constraint", "true", "--locate", "align",
                               *SETTINGS[setting]], tiny["root"] / f"vllm_copy_{setting}.log", timeout=420)
    assert run.returncode == 0, run.stderr[-3000:]
    notes = dict(zip(*(read_tagged_table(tiny["csv"])[c] for c in ("file_id", "raw_text"))))
    frame = read_inference_table(out)
    predictions = {p["file_name"]: p["predictions"] for p in json.loads(out.with_suffix(".json").read_text())}
    finished = spans = 0
    for file_id, predicted, truncated in zip(frame["file_id"], frame["predicted"], frame["truncated"]):
        note = notes[file_id]
        if truncated:
            assert note.startswith(strip_tags(predicted)), file_id
            continue
        finished += 1
        assert strip_tags(predicted) == note, file_id  # the note, byte for byte
        located = locate_spans(note, predicted, locator="align")
        assert located.matches == ["aligned"] * len(located.spans), file_id  # no alignment fallback
        assert [(p["start_offset"], p["end_offset"], p["category"]) for p in predictions[file_id]] == [
            (s.start, s.end, s.category) for s in located.spans]
        spans += len(located.spans)
    assert finished >= 1, "every output hit the token budget"
    if setting == "plain":
        assert spans > 0  # the span comparison above is not vacuous
    generated = int(sum(int(n) for n in frame["num_tokens"]))
    record(report(f"vLLM copy-constrained decoding ({setting}: tiny Qwen3.5, greedy)",
                  [("outputs", f"{finished} of {len(frame)} finished, each the note byte for byte, {spans} spans at "
                               f"exact offsets; {tokens_per_second(generated, seconds):.0f} tokens/s including engine "
                               "start")]))
