"""NLTK's Punkt sentence model (``punkt_tab``), which the official token F1 needs.

On a user's machine it is a one-time setup step (``python -m nltk.downloader punkt_tab``). Nothing here
downloads: offline (tests, CI, the demo without internet) a model is trained from local text with NLTK's
own ``PunktTrainer`` and installed into a private NLTK data folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

PUNKT_INSTALL_COMMAND = "python -m nltk.downloader punkt_tab"
PUNKT_LANGUAGE = "english"


class PunktMissingError(RuntimeError):
    """The punkt_tab model is not installed; the message names the install command."""


def punkt_available(language: str = PUNKT_LANGUAGE) -> bool:
    """Whether ``word_tokenize`` can load its sentence model (never downloads)."""
    from nltk.tokenize import punkt_model_available

    return punkt_model_available(language)


def require_punkt(language: str = PUNKT_LANGUAGE) -> None:
    """Stop with an actionable one-line error when punkt_tab is missing."""
    if not punkt_available(language):
        raise PunktMissingError(
            f"NLTK's punkt_tab model ({language}) is not installed; the official token F1 needs it. "
            f"Install it once with: {PUNKT_INSTALL_COMMAND}"
        )


def use_nltk_data_dir(nltk_data_dir: str | os.PathLike[str]) -> None:
    """Put a folder first on NLTK's data path and forget any cached Punkt tokenizer."""
    import nltk
    from nltk.tokenize import _get_punkt_tokenizer

    folder = str(Path(nltk_data_dir).resolve())
    if folder in nltk.data.path:
        nltk.data.path.remove(folder)
    nltk.data.path.insert(0, folder)
    _get_punkt_tokenizer.cache_clear()


def train_punkt_model(texts: Iterable[str], nltk_data_dir: str | os.PathLike[str], language: str = PUNKT_LANGUAGE) -> Path:
    """Train a Punkt model on ``texts`` and install it as ``tokenizers/punkt_tab/<language>`` under ``nltk_data_dir``.

    Deterministic for the same texts. Returns the model folder; call :func:`use_nltk_data_dir` to use it.
    """
    from nltk.tabdata import TabEncoder
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    for text in texts:
        trainer.train(text, finalize=False)
    trainer.finalize_training()
    params = trainer.get_params()
    model_dir = Path(nltk_data_dir) / "tokenizers" / "punkt_tab" / language
    model_dir.mkdir(parents=True, exist_ok=True)
    encoder = TabEncoder()
    files = {
        "collocations.tab": encoder.tups2tab(sorted(params.collocations)),
        "sent_starters.txt": encoder.set2txt(sorted(params.sent_starters)),
        "abbrev_types.txt": encoder.set2txt(sorted(params.abbrev_types)),
        "ortho_context.tab": encoder.ivdict2tab(dict(sorted(params.ortho_context.items()))),
    }
    for name, content in files.items():
        with open(model_dir / name, "w", encoding="utf-8", newline="") as handle:
            handle.write(content)
    return model_dir


def _texts_under(folder: Path) -> Iterable[str]:
    for path in sorted(Path(folder).glob("*.txt")):
        with open(path, encoding="utf-8", newline="") as handle:
            yield handle.read()


def main(argv: list[str] | None = None) -> int:
    """CLI: train an offline Punkt model from a folder of notes (only where punkt_tab cannot be downloaded)."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Train NLTK's Punkt sentence model with PunktTrainer on local notes and install it as "
        "punkt_tab under an NLTK data folder. Offline stand-in only: with internet use "
        f"'{PUNKT_INSTALL_COMMAND}'. Then export NLTK_DATA=<nltk_data_dir>."
    )
    parser.add_argument("--raw_text_dir", required=True, help="folder of <ID>.txt notes to learn from")
    parser.add_argument("--nltk_data_dir", required=True, help="NLTK data folder to install the model into")
    parser.add_argument("--language", default=PUNKT_LANGUAGE)
    args = parser.parse_args(argv)
    folder = Path(args.raw_text_dir)
    if not folder.is_dir() or not any(folder.glob("*.txt")):
        parser.exit(2, f"error: {folder}: expected a folder of .txt notes\n")
    model_dir = train_punkt_model(_texts_under(folder), args.nltk_data_dir, args.language)
    print(f"Punkt model written to {model_dir}; use it with: export NLTK_DATA={Path(args.nltk_data_dir).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
