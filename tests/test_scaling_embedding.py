"""Embedding on several devices (``--devices``): sentence-transformers' multi-process pool with 2 CPU processes gives the
one-process shards (same ids in the same order, vectors equal to float tolerance) and resumes a one-process cache.

Tolerance 1e-5 absolute on unit vectors: the pool encodes chunks of a shard in other batches than one process does,
so padding and the order of float sums differ (measured: ~1e-7).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from utils.pseudolabels import embedding
from utils.pseudolabels.embedding import embed_sources, load_embeddings
from utils.configs.pipeline import EmbeddingArguments
from utils.fileio import InputError


@pytest.fixture()
def pool_csv(tmp_path):
    path = tmp_path / "pool.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "raw_text"])
        for i in range(19):  # lengths differ, so batches are padded differently in the two modes
            writer.writerow([f"7_8_{i}", f"Patient {i} started on aspirin {i} mg." + " Follow up in clinic." * (i % 5)])
    return path


def args_for(tmp_path, minilm_model_path, pool_csv, out: str, **overrides) -> EmbeddingArguments:
    # Right padding: MiniLM has absolute position embeddings, so under the published left padding a note's vector
    # depends on how much its batch pads it, and the pool batches differently from one process.
    values = dict(model=minilm_model_path, sources=["pool"], pool_csv=str(pool_csv), pool_out=str(tmp_path / out),
                  shard_size=8, batch_size=4, max_seq_length=64, padding_side="right")
    values.update(overrides)
    return EmbeddingArguments(**values)


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the spawned pool processes inherit it
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.mark.slow
def test_two_pool_processes_embed_what_one_process_embeds_and_resume_its_cache(tmp_path, minilm_model_path, pool_csv, offline,
                                                                                monkeypatch) -> None:
    """One process embeds the 3 shards; a copy of its cache cut after shard 0 (as if killed) is finished by a pool of
    2 CPU processes, which computes shards 1 and 2 only (one pool start costs two worker start-ups, so one run)."""
    from sentence_transformers import SentenceTransformer

    started: list[list[str]] = []
    original = SentenceTransformer.start_multi_process_pool

    def spy(self, target_devices=None):
        started.append(list(target_devices))
        pool = original(self, target_devices)
        assert len(pool["processes"]) == 2
        return pool

    monkeypatch.setattr(SentenceTransformer, "start_multi_process_pool", spy)
    assert embed_sources(args_for(tmp_path, minilm_model_path, pool_csv, "one", device="cpu"), progress=False) == {"pool": 3}
    assert started == []

    cache = tmp_path / "two"
    cache.mkdir()
    for name in ("meta.json", "shard_00000.npy", "shard_00000.texts.sha256", "shard_00000.ids.txt"):
        (cache / name).write_bytes((tmp_path / "one" / name).read_bytes())
    kept = (cache / "shard_00000.npy").stat().st_mtime_ns
    assert embed_sources(args_for(tmp_path, minilm_model_path, pool_csv, "two", devices=["cpu", "cpu"]), progress=False) == {"pool": 2}
    assert started == [["cpu", "cpu"]]  # one pool for both shards
    assert (cache / "shard_00000.npy").stat().st_mtime_ns == kept

    ids_one, one = load_embeddings(tmp_path / "one")
    ids_two, two = load_embeddings(cache)
    assert ids_two == ids_one == [f"7_8_{i}" for i in range(19)]
    assert two.dtype == np.float32 and two.shape == one.shape == (19, 384)
    worst = float(np.abs(two[8:] - one[8:]).max())  # the rows the pool computed
    assert worst < 1e-5, worst
    np.testing.assert_allclose(np.linalg.norm(two, axis=1), 1.0, rtol=1e-5)
    assert embed_sources(args_for(tmp_path, minilm_model_path, pool_csv, "two", devices=["cpu", "cpu"]), progress=False) == {"pool": 0}
    assert started == [["cpu", "cpu"]]  # a finished cache starts no pool


def test_devices_are_checked_before_any_model_is_loaded(tmp_path, minilm_model_path, pool_csv, monkeypatch) -> None:
    monkeypatch.setattr(embedding, "load_sentence_encoder", lambda *a, **k: pytest.fail("model loaded"))
    cases = {
        ("gpu:0",): "<command line>: --devices: got 'gpu:0': not a device: expected e.g. cuda:0 or cpu",
        ("cuda:64",): "<command line>: --devices: got 'cuda:64': not visible",
    }
    for devices, message in cases.items():
        with pytest.raises(InputError, match=message):
            embed_sources(args_for(tmp_path, minilm_model_path, pool_csv, "bad", devices=list(devices)), progress=False)
    with pytest.raises(InputError, match="give --device .* or --devices .*, not both"):
        embed_sources(args_for(tmp_path, minilm_model_path, pool_csv, "bad", device="cpu", devices=["cpu", "cpu"]), progress=False)
    assert not (tmp_path / "bad").exists()


def test_cpu_workers_share_the_cores_unless_the_user_says_otherwise(monkeypatch) -> None:
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    with embedding.cpu_threads_for(["cpu", "cpu"]):
        assert os.environ["OMP_NUM_THREADS"] == "4"
    assert "OMP_NUM_THREADS" not in os.environ
    with embedding.cpu_threads_for(["cuda:0", "cuda:1"]):
        assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with embedding.cpu_threads_for(["cpu", "cpu"]):
        assert os.environ["OMP_NUM_THREADS"] == "1"
