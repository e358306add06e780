"""Official token F1 under either scorer: tokens, token labels, per-note macro F1 (SPEC section 2).

Two scripts define the token F1 and differ only in the token rule (the ``rule`` argument, one of
:data:`SCORERS`; :data:`DEFAULT_SCORER` is the published one):

- ``published`` (biodatlab/medexact-lamar ``evaluate/evaluate.py``): a token covered by exactly one annotation of
  categories 1-9 takes its category; one covered by two or more is ambiguous (the script's -1, here
  :data:`AMBIGUOUS`). Per note, positions whose GOLD label is ambiguous are dropped before the macro F1.
- ``meddec`` (CLU-UML/MedDec ``evaluate.py`` at f4374cd): each token takes the category of the FIRST annotation in
  list order that overlaps it (so the order of predictions matters); nothing is dropped.

Tokens are NLTK ``word_tokenize`` over the whole note, each located with a forward ``str.find``; tokens it cannot
find (quotes the tokenizer rewrote) vanish. Per note the F1 is a macro mean over the labels (not 0, not -1)
present on either side, summed in the iteration order of the Python set each script builds
(:func:`official_label_set`), so the float result is bit-identical. Labels are painted with numpy and a note's
counts come from one ``bincount`` (an 11x11 confusion matrix: labels 0-9 and :data:`AMBIGUOUS`).
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np

from utils.metric.rules import (  # noqa: F401 - re-exported: the token rule's names live with it
    AMBIGUOUS, DEFAULT_SCORER, SCORER_HELP, SCORER_REFERENCES, SCORERS, check_scorer,
)

N_LABELS = 11  # label 0 (no decision), categories 1-9 and AMBIGUOUS


def official_tokens(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token (starts, ends): ``word_tokenize`` then a forward ``str.find``; tokens not found are lost."""
    from nltk.tokenize import word_tokenize

    starts: list[int] = []
    ends: list[int] = []
    position = 0
    for token in word_tokenize(text):
        index = text.find(token, position)
        if index != -1:
            position = index + len(token)
            starts.append(index)
            ends.append(position)
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


_OFFSET_LIMIT = 2**62  # far beyond any text: clipping offsets there keeps every overlap test unchanged


def valid_span_array(rows: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Rows of categories 1-9 as an (n, 3) int64 array, order kept (others never label a token)."""
    if len(rows) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    try:
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=3 * len(rows))
    except OverflowError:  # absurd offsets beyond int64: clip them (category ids that large are invalid anyway)
        values = itertools.chain.from_iterable(rows)
        flat = np.fromiter((max(-_OFFSET_LIMIT, min(_OFFSET_LIMIT, int(v))) for v in values),
                           dtype=np.int64, count=3 * len(rows))
    array = flat.reshape(-1, 3)
    categories = array[:, 2]
    return array[(categories >= 1) & (categories <= 9)]


def token_labels(starts: np.ndarray, ends: np.ndarray, spans: np.ndarray, rule: str = DEFAULT_SCORER) -> np.ndarray:
    """Label per token under ``rule``: 0 if no span overlaps it; else ``meddec``: the category of the first span
    (in row order) that overlaps it; ``published``: that category if it is the only one, :data:`AMBIGUOUS` if two
    or more spans overlap it.

    ``spans`` is an int array of rows (start, end, category) already restricted to categories 1-9.
    Tokens are sorted and disjoint, so the tokens a span overlaps (token.start < end and token.end >
    start) are one index range found by binary search; the first span wins via ``np.minimum.at``, and
    a ``bincount`` of the same positions counts the spans over each token.
    """
    n_tokens = len(starts)
    labels = np.zeros(n_tokens, dtype=np.int64)
    if n_tokens == 0 or len(spans) == 0:
        return labels
    lo = np.searchsorted(ends, spans[:, 0], side="right")
    hi = np.searchsorted(starts, spans[:, 1], side="left")
    lengths = np.maximum(hi - lo, 0)
    total = int(lengths.sum())
    if total == 0:
        return labels
    owner = np.repeat(np.arange(len(spans)), lengths)
    first_of_owner = np.cumsum(lengths) - lengths
    positions = np.arange(total) - np.repeat(first_of_owner - lo, lengths)
    winner = np.full(n_tokens, len(spans), dtype=np.int64)
    np.minimum.at(winner, positions, owner)
    categories = np.append(spans[:, 2], 0)
    labels = categories[winner]
    if check_scorer(rule) == "published":
        labels[np.bincount(positions, minlength=n_tokens) >= 2] = AMBIGUOUS
    return labels


def first_occurrence_order(labels: np.ndarray) -> list[int]:
    """Distinct labels in order of first occurrence."""
    values, first_index = np.unique(labels, return_index=True)
    return values[np.argsort(first_index)].tolist()


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 with the official expressions (0.0 on empty denominators)."""
    precision = tp / (tp + fp) if (tp + fp) > 0 else 0.0
    recall = tp / (tp + fn) if (tp + fn) > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) > 0 else 0.0
    return precision, recall, f1


def confusion(gold_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """10x10 token confusion matrix (rows gold, columns prediction)."""
    return np.bincount(gold_labels * N_LABELS + pred_labels, minlength=N_LABELS * N_LABELS).reshape(N_LABELS, N_LABELS)


def official_label_set(gold_order: Sequence[int], pred_order: Sequence[int], rule: str = DEFAULT_SCORER) -> set[int]:
    """The set of labels a script iterates for a note's macro F1, built the way that script builds it, so its
    iteration order (which fixes the float summation order) is the script's.

    ``gold_order``/``pred_order``: the distinct labels of the note's (kept) gold and prediction token labels in
    order of first occurrence (see :func:`pred_label_order`). ``meddec`` builds ``set(gold_labels +
    pred_labels)``; ``published`` builds ``set(gold) | set(pred)`` over the kept positions, with -1 for ambiguous.
    """
    if check_scorer(rule) == "meddec":
        return set([*gold_order, *pred_order])
    official = lambda labels: [-1 if label == AMBIGUOUS else label for label in labels]  # noqa: E731
    return set(official(gold_order)) | set(official(pred_order))


def pred_label_order(
    gold_order: Sequence[int], pred_present: Sequence[int], kept_pred_labels: Callable[[], np.ndarray]
) -> list[int]:
    """The distinct prediction labels in first-occurrence order, or in any order when at most one of them is
    missing from ``gold_order`` (then the order cannot change either script's set): that case, the common one,
    skips the search over ``kept_pred_labels()`` (the prediction's labels at the kept positions)."""
    seen = set(gold_order)
    if sum(1 for label in pred_present if label not in seen) <= 1:
        return list(pred_present)
    return first_occurrence_order(kept_pred_labels())


def macro_token_f1(
    matrix: np.ndarray, gold_order: Sequence[int], pred_order: Sequence[int], rule: str = DEFAULT_SCORER
) -> float:
    """A note's token F1 from its confusion matrix (rows gold, columns prediction, :data:`N_LABELS` each).

    Rows of gold-ambiguous tokens are dropped (they are empty under ``meddec``): 1.0 if nothing remains; macro
    mean over the labels other than 0 and ambiguous present on either side, summed in the iteration order of
    :func:`official_label_set`; with no such label, 1.0 if the remaining labels agree (no ambiguous prediction
    left) else 0.0.
    """
    kept = matrix[:AMBIGUOUS]
    if not kept.any():
        return 1.0
    labels = official_label_set(gold_order, pred_order, rule)
    labels.discard(0)
    labels.discard(-1)
    if not labels:
        return 1.0 if not kept[:, AMBIGUOUS].any() else 0.0
    gold_count = kept.sum(axis=1).tolist()
    pred_count = kept.sum(axis=0).tolist()
    diagonal = kept.diagonal().tolist()
    scores = []
    for label in labels:
        tp = diagonal[label]
        scores.append(prf(tp, pred_count[label] - tp, gold_count[label] - tp)[2])
    return sum(scores) / len(scores)


def gold_label_order(gold_labels: np.ndarray) -> list[int]:
    """The distinct gold labels of the kept (not ambiguous) tokens in first-occurrence order."""
    return first_occurrence_order(gold_labels[gold_labels != AMBIGUOUS])


def note_token_f1(
    gold_labels: np.ndarray, pred_labels: np.ndarray, gold_order: Sequence[int], rule: str = DEFAULT_SCORER
) -> tuple[float, np.ndarray]:
    """(token F1, confusion matrix) of one note from its gold and prediction token labels under ``rule``."""
    matrix = confusion(gold_labels, pred_labels)
    pred_present = np.flatnonzero(matrix[:AMBIGUOUS].sum(axis=0)).tolist()
    order = pred_label_order(gold_order, pred_present, lambda: pred_labels[gold_labels != AMBIGUOUS])
    return macro_token_f1(matrix, gold_order, order, rule), matrix


__all__ = [
    "AMBIGUOUS", "DEFAULT_SCORER", "N_LABELS", "SCORERS", "SCORER_HELP", "SCORER_REFERENCES", "check_scorer",
    "confusion", "first_occurrence_order", "gold_label_order", "macro_token_f1", "note_token_f1",
    "official_label_set", "official_tokens", "pred_label_order", "prf", "token_labels", "valid_span_array",
]
