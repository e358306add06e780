"""Test-wide setup: an offline Punkt model for NLTK, so the official token F1 works without downloads."""

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
