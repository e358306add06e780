"""Data-parallel inference (utils.generation.data_parallel): 2 engine processes give the one-process outputs byte for
byte, a killed shard resumes alone, and the merge refuses what is not finished.

Byte identity needs the same kernels: shards take whole blocks of --batch_size rows, so each padded batch is a batch
of the one-process run, and every run here uses one CPU thread per process (the thread count changes the order of
float sums on CPU, hence the last digits of an entropy).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from scripts import inference
from utils.configs.pipeline import InferenceArguments
from utils.fileio import InputError
from utils.generation import data_parallel
from utils.generation.runner import Shard, generate_outputs
from utils.testing.tiny_models import SHORT_NOTES, build_tiny_qwen35, build_tiny_tokenizer

NOTES = SHORT_NOTES
# batch 2, 2 shards: blocks {30,31} {32,33} {34,35} {36} -> shard 0: 30 31 34 35, shard 1: 32 33 36
SHARD_ROWS = {0: ["10_20_30", "10_20_31", "10_20_34", "10_20_35"], 1: ["10_20_32", "10_20_33", "10_20_36"]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    texts = [t for _, t in NOTES] * 4
    return build_tiny_qwen35(tmp_path_factory.mktemp("tiny_dp"), build_tiny_tokenizer(texts, vocab_size=400),
                             hidden_size=32, seed=2)


@pytest.fixture()
def notes_csv(tmp_path) -> Path:
    path = tmp_path / "notes.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "raw_text"])
        writer.writerows(NOTES)
    return path


@pytest.fixture()
def one_thread(monkeypatch):
    """This process and the shard processes it starts compute with one thread each (same float sums)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def flags(model_dir: Path, notes: Path, out: Path, *extra: str) -> list[str]:
    return ["--backend", "transformers", "--model", str(model_dir), "--input", str(notes), "--output", str(out),
            "--max_new_tokens", "12", "--batch_size", "2", *extra]


def reference(model_dir: Path, notes: Path, out: Path) -> Path:
    """The one-process run, in this process."""
    assert inference.main(flags(model_dir, notes, out)) == 0
    return out


def test_shards_take_whole_batches_in_input_order() -> None:
    ids = [i for i, _ in NOTES]
    assert {k: Shard(k, 2, 2).rows(ids) for k in (0, 1)} == SHARD_ROWS
    assert sorted(Shard(0, 3, 1).rows(ids) + Shard(1, 3, 1).rows(ids) + Shard(2, 3, 1).rows(ids)) == ids
    assert Shard(3, 4, 8).rows(ids) == []  # more shards than batches: an empty shard


def test_each_shard_process_sees_its_own_gpus_and_no_vllm_dp_rank() -> None:
    args = InferenceArguments(data_parallel_size=2, tensor_parallel_size=2)
    assert data_parallel.gpu_groups(args, ["4", "5", "6", "7"]) == [["4", "5"], ["6", "7"]]
    with pytest.raises(InputError, match="2 engines x 2 GPU\\(s\\) need 4 GPUs, 3 visible"):
        data_parallel.gpu_groups(args, ["0", "1", "2"])
    env = data_parallel.shard_env({"VLLM_DP_RANK": "1", "VLLM_DP_SIZE": "2", "PATH": "/bin"}, ["6", "7"], None)
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "6,7"}
    cpu = data_parallel.shard_env({"PATH": "/bin"}, None, 3)
    assert cpu == {"PATH": "/bin", "OMP_NUM_THREADS": "3"}
    assert data_parallel.shard_env({"OMP_NUM_THREADS": "1"}, None, 3)["OMP_NUM_THREADS"] == "1"  # the user's wins
    command = data_parallel.shard_command(Path("scripts/inference.py"), ["--config", "r.yaml", "--data_parallel_size",
                                                                         "2"], 1, 2)
    assert command[-8:] == ["--data_parallel_size", "2", "--data_parallel_size", "1", "--num_shards", "2",
                            "--shard_index", "1"]


@pytest.mark.slow
def test_two_engine_processes_write_the_one_process_outputs_byte_for_byte(tmp_path, model_dir, notes_csv, one_thread,
                                                                           capfd) -> None:
    ref = reference(model_dir, notes_csv, tmp_path / "one.csv")
    out = tmp_path / "two.csv"
    assert inference.main(flags(model_dir, notes_csv, out, "--data_parallel_size", "2")) == 0
    printed = capfd.readouterr().out
    assert "3 note(s) generated now (shard 1 of 2" in printed and "4 note(s) generated now (shard 0 of 2" in printed
    assert f"{out}: 7 note(s) merged from 2 shard processes" in printed
    assert out.read_bytes() == ref.read_bytes()
    assert out.with_suffix(".json").read_bytes() == ref.with_suffix(".json").read_bytes()
    for index, rows in SHARD_ROWS.items():
        lines = (tmp_path / f"two.csv.shard-{index}-of-2.partial.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["file_id"] for line in lines[1:]] == rows


@pytest.mark.slow
def test_a_killed_shard_resumes_alone_and_the_merge_is_still_identical(tmp_path, model_dir, notes_csv, one_thread,
                                                                        capfd) -> None:
    ref = reference(model_dir, notes_csv, tmp_path / "one.csv")
    out = tmp_path / "dp.csv"
    for index in (0, 1):  # both shards ran in this process ...
        assert inference.main(flags(model_dir, notes_csv, out, "--num_shards", "2", "--shard_index", str(index))) == 0
    assert not out.exists()  # a shard writes no output
    shard0 = tmp_path / "dp.csv.shard-0-of-2.partial.jsonl"
    shard1 = tmp_path / "dp.csv.shard-1-of-2.partial.jsonl"
    # ... and shard 1 was killed during its second batch: its first batch is on disk, the second was being written.
    lines = shard1.read_text(encoding="utf-8").splitlines(keepends=True)
    shard1.write_text("".join(lines[:3]) + lines[3][:40], encoding="utf-8")
    before = shard0.stat().st_mtime_ns, shard0.read_bytes()
    capfd.readouterr()

    assert inference.main(flags(model_dir, notes_csv, out, "--num_shards", "2", "--merge")) == 2
    assert "shard 1 of 2 lacks 1 of its 3 rows (first: 10_20_36)" in capfd.readouterr().err

    assert inference.main(flags(model_dir, notes_csv, out, "--data_parallel_size", "2")) == 0
    printed = capfd.readouterr().out
    assert "0 note(s) generated now (shard 0 of 2" in printed  # the finished shard loaded no model
    assert "1 note(s) generated now (shard 1 of 2" in printed
    assert (shard0.stat().st_mtime_ns, shard0.read_bytes()) == before
    assert out.read_bytes() == ref.read_bytes()
    assert out.with_suffix(".json").read_bytes() == ref.with_suffix(".json").read_bytes()


def test_merge_refuses_a_running_shard_and_shards_that_never_ran(tmp_path, model_dir, notes_csv, capfd) -> None:
    from filelock import FileLock

    out = tmp_path / "m.csv"
    assert inference.main(flags(model_dir, notes_csv, out, "--num_shards", "2", "--merge")) == 2
    assert "missing: no shard of 2 has run for this output" in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == [notes_csv]  # nothing written

    partial = tmp_path / "m.csv.shard-1-of-2.partial.jsonl"
    partial.write_text('{"settings": {}}\n', encoding="utf-8")
    with FileLock(str(partial) + ".lock"):
        assert inference.main(flags(model_dir, notes_csv, out, "--num_shards", "2", "--merge")) == 2
    assert "shard 1 of 2 is still being generated" in capfd.readouterr().err


def test_a_failed_shard_process_is_one_line_with_what_to_do(tmp_path, model_dir, notes_csv, capfd, monkeypatch) -> None:
    failing = tmp_path / "fails.py"
    failing.write_text("import sys\nsys.exit(3 if '1' == sys.argv[-1] else 0)\n", encoding="utf-8")
    args = InferenceArguments(backend="transformers", model=str(model_dir), input=[str(notes_csv)],
                              output=[str(tmp_path / "f.csv")], data_parallel_size=2)
    assert data_parallel.run_inference_command(args, [], script=failing) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["error: shard 1 exited with code 3 (see its messages above); run the same command again: finished "
                   "rows are kept and each shard resumes from its own partial file"]


def test_one_process_run_is_unchanged_by_the_new_flags(tmp_path, model_dir, notes_csv) -> None:
    args = InferenceArguments(backend="transformers", model=str(model_dir), input=[str(notes_csv)],
                              output=[str(tmp_path / "u.csv")], max_new_tokens=2)
    assert (args.data_parallel_size, args.num_shards, args.shard_index, args.merge) == (1, 1, None, False)
    assert generate_outputs(args, progress=False) == {str(tmp_path / "u.csv"): 7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv", "u.csv", "u.csv.partial.jsonl",
                                                          "u.csv.partial.jsonl.lock", "u.json"]
