"""The official MedExACT 2026 / MedDec metric, re-implemented to give identical numbers (SPEC section 2).

Two scorers, one implementation: ``published`` (the default: biodatlab/medexact-lamar ``evaluate/evaluate.py``)
and ``meddec`` (CLU-UML/MedDec ``evaluate.py`` at f4374cd) differ in the token rule only (plus two input details);
the rule is the ``rule`` argument of :class:`Scorer` and of the token functions (:mod:`~utils.metric.tokens`).

Layers, each usable alone:

- :mod:`~utils.metric.rules` the two scorers' names and the default (no numpy: for argument dataclasses)
- :mod:`~utils.metric.readers` reading inputs the official way (texts, splits, gold folder, subgroups)
- :mod:`~utils.metric.spans` span refinement (what a span's text is when spans are matched)
- :mod:`~utils.metric.tokens` official tokens, token labels, per-note macro token F1
- :mod:`~utils.metric.notes` per-note results (:class:`NoteScores`) and their official aggregation
- :mod:`~utils.metric.report` the headline numbers and the official report/JSON
- :mod:`~utils.metric.scorer` :class:`Scorer`: gold loaded once, many prediction sets scored
- :mod:`~utils.metric.table` :class:`SpanTableScorer`: prediction sets named by rows of one span table
- :mod:`~utils.metric.checks` what the official score accepts silently, as warnings; prediction sets matching no note
  refused
- :mod:`~utils.metric.punkt` NLTK's punkt_tab model that the token F1 needs (``python -m utils.metric.punkt``)

Built on the per-note results, for researchers (not part of the official score):

- :mod:`~utils.metric.breakdown` per-note, per-category span and token counts
- :mod:`~utils.metric.resampling` bootstrap confidence intervals, vectorised (:func:`bootstrap`)
- :mod:`~utils.metric.comparison` paired bootstrap comparison of prediction sets (:func:`compare`)
- :mod:`~utils.metric.errors` span error classes (exact, boundary, category, missed, spurious);
  :mod:`~utils.metric.error_plots` their PNG plots
- :mod:`~utils.metric.viewer` the offline HTML span viewer (:func:`write_viewer`; the file holds note text)
- :mod:`~utils.metric.systems` several named prediction sets scored by one scorer

The names below are imported on first use, so ``python -m utils.metric.punkt`` and CLIs that only need a
reader do not pay for numpy and tqdm (about 0.15 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "readers": ("SUBGROUPS", "demographic_groups", "load_official_texts", "official_note_key",
                "read_gold_dir_official_order", "read_official_split", "read_official_text"),
    "spans": ("refine_span", "refined_text"),
    "tokens": ("AMBIGUOUS", "DEFAULT_SCORER", "N_LABELS", "SCORERS", "SCORER_HELP", "SCORER_REFERENCES",
               "check_scorer", "confusion", "macro_token_f1", "note_token_f1", "official_tokens", "prf",
               "token_labels"),
    "notes": ("NoteScores", "NoteSet", "aggregate"),
    "report": ("CategoryScore", "Headline", "ScoreReport", "SpanScore", "SubgroupScore"),
    "scorer": ("OFFICIAL_REFERENCE", "Scorer", "SpanKey", "score_files"),
    "table": ("SpanTableScorer",),
    "resampling": ("BootstrapReport", "bootstrap", "bootstrap_note_scores"),
    "comparison": ("ComparisonReport", "compare", "compare_note_scores"),
    "errors": ("classify_predictions",),
    "viewer": ("write_viewer",),
    "punkt": ("PUNKT_INSTALL_COMMAND", "PunktMissingError", "punkt_available", "require_punkt", "train_punkt_model",
              "use_nltk_data_dir"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names above load lazily
    from utils.metric.comparison import ComparisonReport, compare, compare_note_scores
    from utils.metric.errors import classify_predictions
    from utils.metric.notes import NoteScores, NoteSet, aggregate
    from utils.metric.punkt import (
        PUNKT_INSTALL_COMMAND, PunktMissingError, punkt_available, require_punkt, train_punkt_model, use_nltk_data_dir,
    )
    from utils.metric.readers import (
        SUBGROUPS, demographic_groups, load_official_texts, official_note_key, read_gold_dir_official_order,
        read_official_split, read_official_text,
    )
    from utils.metric.report import CategoryScore, Headline, ScoreReport, SpanScore, SubgroupScore
    from utils.metric.scorer import OFFICIAL_REFERENCE, Scorer, SpanKey, score_files
    from utils.metric.spans import refine_span, refined_text
    from utils.metric.table import SpanTableScorer
    from utils.metric.resampling import BootstrapReport, bootstrap, bootstrap_note_scores
    from utils.metric.viewer import write_viewer
    from utils.metric.tokens import (
        AMBIGUOUS, DEFAULT_SCORER, N_LABELS, SCORER_HELP, SCORER_REFERENCES, SCORERS, check_scorer, confusion,
        macro_token_f1, note_token_f1, official_tokens, prf, token_labels,
    )
