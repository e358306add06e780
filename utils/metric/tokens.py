"""Official token F1: tokens, token labels, per-note macro F1 (SPEC section 2).

Tokens are NLTK ``word_tokenize`` over the whole note, each located with a forward ``str.find``; tokens
it cannot find (quotes the tokenizer rewrote) vanish. Each token takes the category of the FIRST
annotation in list order that overlaps it. Per note the F1 is a macro mean over the labels present on
either side, summed in the iteration order of the official ``set(gold_labels + pred_labels)`` so the
float result is bit-identical. Labels are painted with numpy and a note's counts come from one
``bincount`` (a 10x10 confusion matrix).
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import numpy as np

N_LABELS = 10  # label 0 (no decision) and categories 1-9


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


def token_labels(starts: np.ndarray, ends: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Label per token: the category of the first span (in row order) that overlaps it, 0 if none.

    ``spans`` is an int array of rows (start, end, category) already restricted to categories 1-9.
    Tokens are sorted and disjoint, so the tokens a span overlaps (token.start < end and token.end >
    start) are one index range found by binary search; the first span wins via ``np.minimum.at``.
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
    return categories[winner]


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


def macro_token_f1(matrix: np.ndarray, label_order: Sequence[int]) -> float:
    """Official per-note token F1 from a confusion matrix.

    Macro mean over the labels present in gold or prediction, summed in the iteration order of
    ``set(gold_labels + pred_labels)`` (``label_order`` is that list's first-occurrence order, which
    builds the same set); 1.0 when no note token has a label on either side.
    """
    labels = set(label_order)
    labels.discard(0)
    if not labels:
        return 1.0
    gold_count = matrix.sum(axis=1).tolist()
    pred_count = matrix.sum(axis=0).tolist()
    diagonal = matrix.diagonal().tolist()
    scores = []
    for label in labels:
        tp = diagonal[label]
        scores.append(prf(tp, pred_count[label] - tp, gold_count[label] - tp)[2])
    return sum(scores) / len(scores)


def label_order_of(
    gold_order: Sequence[int], pred_labels: np.ndarray, pred_present: Iterable[int] | None = None
) -> list[int]:
    """First-occurrence order of ``gold_labels + pred_labels`` given the gold part's order.

    ``pred_present`` (the labels occurring in ``pred_labels``, if already known) skips the search when
    the prediction brings at most one label that gold lacks, which is the common case.
    """
    seen = set(gold_order)
    if pred_present is None:
        pred_present = np.unique(pred_labels).tolist()
    new = [label for label in pred_present if label not in seen]
    if len(new) > 1:
        new = [label for label in first_occurrence_order(pred_labels) if label not in seen]
    return [*gold_order, *new]


__all__ = [
    "N_LABELS", "confusion", "first_occurrence_order", "label_order_of", "macro_token_f1", "official_tokens", "prf",
    "token_labels", "valid_span_array",
]
