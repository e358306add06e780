"""Per-note, per-category counts behind the per-category table, as arrays a bootstrap can resample.

:meth:`utils.metric.Scorer.score` reports span and token scores per category summed over all notes; a
confidence interval per category needs the same counts note by note. :func:`category_note_counts` gives them
on the rows of a :class:`~utils.metric.notes.NoteSet`, computed from the scorer's public accessors with the
official rules (span keys matched per note; token labels: first overlapping annotation), so summing a column
over the notes gives exactly the report's ``per_category`` counts (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from utils.categories import CATEGORY_IDS
from utils.metric.notes import NoteSet
from utils.metric.readers import prediction_rows
from utils.metric.tokens import AMBIGUOUS, confusion, token_labels, valid_span_array

N_CATEGORIES = len(CATEGORY_IDS)  # column j holds category CATEGORY_IDS[j] (= j + 1)
_COUNTS = ("span_tp", "span_fp", "span_fn", "token_tp", "token_fp", "token_fn")


@dataclass(frozen=True, eq=False)
class CategoryNoteCounts:
    """int64 arrays (notes x 9 categories) on the rows of ``notes``: span tp/fp/fn (official keys, per
    category) and token tp/fp/fn (token labels of the note's confusion matrix; zero for notes without tokens)."""

    notes: NoteSet
    span_tp: np.ndarray
    span_fp: np.ndarray
    span_fn: np.ndarray
    token_tp: np.ndarray
    token_fp: np.ndarray
    token_fn: np.ndarray

    def select(self, rows: np.ndarray) -> "CategoryNoteCounts":
        """The counts at these rows, repeats allowed (as :meth:`utils.metric.NoteScores.select`)."""
        rows = np.asarray(rows, dtype=np.int64)
        return CategoryNoteCounts(self.notes.select(rows), *(getattr(self, name)[rows] for name in _COUNTS))

    def totals(self) -> dict[str, np.ndarray]:
        """Each count summed over the notes (9 values each): what the report's per-category table shows."""
        return {name: getattr(self, name).sum(axis=0) for name in _COUNTS}


def _count_by_category(keys: set) -> np.ndarray:
    out = np.zeros(N_CATEGORIES, dtype=np.int64)
    for category, _ in keys:
        out[category - 1] += 1
    return out


def category_note_counts(scorer: Any, predictions: Mapping[str, Sequence[Any]], notes: NoteSet) -> CategoryNoteCounts:
    """Per-note, per-category span and token counts of one prediction set (``scorer``: a
    :class:`utils.metric.Scorer`; ``notes``: the note set its :meth:`~utils.metric.Scorer.note_scores` used)."""
    n = len(notes)
    arrays = {name: np.zeros((n, N_CATEGORIES), dtype=np.int64) for name in _COUNTS}
    for i, note_id in enumerate(notes.ids):
        rows = prediction_rows(predictions.get(note_id, ())) if scorer.in_split(note_id) else ()
        predicted = {key for key in scorer.span_keys(note_id, rows) if key is not None}
        gold = set(scorer.gold_spans(note_id))
        arrays["span_tp"][i] = _count_by_category(gold & predicted)
        arrays["span_fp"][i] = _count_by_category(predicted - gold)
        arrays["span_fn"][i] = _count_by_category(gold - predicted)
        if not notes.scored[i]:
            continue
        starts, ends = scorer.tokens(note_id)
        pred_labels = token_labels(starts, ends, valid_span_array(rows), scorer.rule)
        matrix = confusion(scorer.gold_token_labels(note_id), pred_labels)[:AMBIGUOUS]  # gold-ambiguous rows out
        diagonal = matrix.diagonal()[1:AMBIGUOUS]
        arrays["token_tp"][i] = diagonal
        arrays["token_fp"][i] = matrix.sum(axis=0)[1:AMBIGUOUS] - diagonal
        arrays["token_fn"][i] = matrix.sum(axis=1)[1:AMBIGUOUS] - diagonal
    return CategoryNoteCounts(notes, **arrays)


__all__ = ["N_CATEGORIES", "CategoryNoteCounts", "category_note_counts"]
