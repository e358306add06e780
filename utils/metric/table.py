"""The official score of prediction sets that all draw their spans from one fixed table (an ensemble's).

An ensemble only ever outputs spans that its models proposed, so a tuner can name each prediction set by
the table rows it keeps. Everything per row (its refined text and which tokens it covers) is worked out
once here through the :class:`~utils.metric.scorer.Scorer`'s public accessors; a prediction set is then
scored with a few array operations over all notes at once, and the per-note results go through the same
aggregation as :meth:`Scorer.final_score`, which this equals bit for bit (``tests/test_ensemble_batch.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from utils.metric.notes import NoteScores, aggregate
from utils.metric.scorer import Scorer
from utils.metric.tokens import AMBIGUOUS, N_LABELS, macro_token_f1, pred_label_order, token_labels


class SpanTableScorer:
    """Final score of the prediction set made of some rows of one span table (see the module docstring)."""

    def __init__(
        self,
        scorer: Scorer,
        note_ids: Sequence[str],
        span_note: np.ndarray,
        span_start: np.ndarray,
        span_end: np.ndarray,
        span_category: np.ndarray,
    ) -> None:
        """Row r of the table is span (span_start[r], span_end[r], span_category[r]) of note
        ``note_ids[span_note[r]]``; every prediction set has a (possibly empty) list for each of ``note_ids``."""
        self.scorer = scorer
        self.notes = scorer.notes(note_ids)  # official note order; predictions outside the split are ignored
        self.files = list(self.notes.ids)
        file_index = {name: i for i, name in enumerate(self.files)}
        note_file = np.array([file_index[name] if scorer.in_split(name) else -1 for name in note_ids] + [-1],
                             dtype=np.int64)
        span_note = np.asarray(span_note, dtype=np.int64)
        self.row_start = np.asarray(span_start, dtype=np.int64)
        self.row_end = np.asarray(span_end, dtype=np.int64)
        self.row_category = np.asarray(span_category, dtype=np.int64)
        self.row_file = note_file[span_note] if len(span_note) else np.zeros(0, dtype=np.int64)
        # prediction lists are sorted by (start, end, category): a row's rank gives the token-labelling order
        order = np.lexsort((self.row_category, self.row_end, self.row_start, self.row_file))
        self.row_rank = np.empty(len(order), dtype=np.int64)
        self.row_rank[order] = np.arange(len(order))
        self._build_values()
        self._build_tokens()

    @property
    def n_prediction_files(self) -> int:
        """Notes of the table inside the scorer's split (the official 'prediction_files')."""
        return self.notes.n_prediction_files

    def _build_values(self) -> None:
        """An id per distinct (note, category, refined text), for the table rows and the gold spans."""
        ids: dict[tuple[int, Any], int] = {}
        self.row_value = np.full(len(self.row_file), -1, dtype=np.int64)
        rows_by_file = np.argsort(self.row_file, kind="stable")
        bounds = np.searchsorted(self.row_file[rows_by_file], np.arange(len(self.files) + 1))
        for f, name in enumerate(self.files):
            rows = rows_by_file[bounds[f]:bounds[f + 1]]
            if not len(rows):
                continue
            triples = list(zip(self.row_start[rows].tolist(), self.row_end[rows].tolist(),
                               self.row_category[rows].tolist()))
            keys = self.scorer.span_keys(name, triples)
            self.row_value[rows] = [-1 if key is None else ids.setdefault((f, key), len(ids)) for key in keys]
        gold_spans = [self.scorer.gold_spans(name) for name in self.files]
        gold_values = [ids.setdefault((f, key), len(ids)) for f, spans in enumerate(gold_spans) for key in spans]
        self.value_file = np.array([f for f, _ in ids], dtype=np.int64)
        self.value_is_gold = np.zeros(len(ids), dtype=bool)
        self.value_is_gold[gold_values] = True
        self.n_gold = np.array([len(spans) for spans in gold_spans], dtype=np.int64)

    def _build_tokens(self) -> None:
        """All scored notes' tokens on one axis (each note shifted past the previous one's text)."""
        starts, ends, gold, owner = [], [], [], []
        self.scored: list[tuple[int, slice, list[int]]] = []  # file index, its token range, gold label order
        shift = np.zeros(len(self.files) + 1, dtype=np.int64)
        length = np.zeros(len(self.files) + 1, dtype=np.int64)
        scored_file = np.full(len(self.files) + 1, -1, dtype=np.int64)
        position = offset = 0
        for f, name in enumerate(self.files):
            if not self.scorer.is_scored(name):
                continue
            note_starts, note_ends = self.scorer.tokens(name)
            n = len(note_starts)
            text_length = len(self.scorer.text(name))
            starts.append(note_starts + offset)
            ends.append(note_ends + offset)
            gold.append(self.scorer.gold_token_labels(name))
            owner.append(np.full(n, len(self.scored), dtype=np.int64))
            scored_file[f] = len(self.scored)
            self.scored.append((f, slice(position, position + n), self.scorer.gold_label_order(name)))
            shift[f], length[f] = offset, text_length
            offset += text_length + 1  # a gap: a span clipped to one text never reaches the next
            position += n
        empty = np.zeros(0, dtype=np.int64)
        self.token_starts = np.concatenate(starts) if starts else empty
        self.token_ends = np.concatenate(ends) if ends else empty
        self.gold_labels = np.concatenate(gold) if gold else empty
        self.token_note = np.concatenate(owner) if owner else empty
        # rows on the same axis; clipping to [0, len(text)] changes no token overlap
        files = self.row_file
        self.row_scored = scored_file[files] >= 0
        self.row_axis_start = np.clip(self.row_start, 0, length[files]) + shift[files]
        self.row_axis_end = np.clip(self.row_end, 0, length[files]) + shift[files]
        self.row_labels_tokens = self.row_scored & (self.row_category >= 1) & (self.row_category <= 9)

    def note_scores(self, rows: np.ndarray) -> NoteScores:
        """Per-note results of the prediction set made of these table rows (as ``Scorer.note_scores``)."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[self.row_file[rows] >= 0]
        rows = rows[np.argsort(self.row_rank[rows], kind="stable")]
        values = self.row_value[rows]
        present = np.zeros(len(self.value_file), dtype=bool)
        present[values[values >= 0]] = True
        n_files = len(self.files)
        predicted = np.bincount(self.value_file[present], minlength=n_files)
        common = np.bincount(self.value_file[present & self.value_is_gold], minlength=n_files)
        token_f1 = self._token_f1(rows[self.row_labels_tokens[rows]])
        return NoteScores(self.notes, common, predicted - common, self.n_gold - common, token_f1)

    def final_score(self, rows: np.ndarray) -> float:
        """Final score (base score without stats) of the prediction set made of these table rows."""
        return aggregate(self.note_scores(rows)).objective

    def _token_f1(self, rows: np.ndarray) -> np.ndarray:
        """Token F1 per note (NaN for notes without tokens) when these rows, in this order, label the tokens."""
        spans = np.stack([self.row_axis_start[rows], self.row_axis_end[rows], self.row_category[rows]], axis=1)
        rule = self.scorer.rule
        pred_labels = token_labels(self.token_starts, self.token_ends, spans, rule)
        n = len(self.scored)
        cells = self.token_note * (N_LABELS * N_LABELS) + self.gold_labels * N_LABELS + pred_labels
        matrices = np.bincount(cells, minlength=n * N_LABELS * N_LABELS).reshape(n, N_LABELS, N_LABELS)
        present = matrices[:, :AMBIGUOUS].sum(axis=1) > 0  # prediction labels at tokens not ambiguous in gold
        out = np.full(len(self.files), np.nan)
        for i, (f, tokens, gold_order) in enumerate(self.scored):
            kept = lambda tokens=tokens: pred_labels[tokens][self.gold_labels[tokens] != AMBIGUOUS]  # noqa: E731
            order = pred_label_order(gold_order, np.flatnonzero(present[i]).tolist(), kept)
            out[f] = macro_token_f1(matrices[i], gold_order, order, rule)
        return out


__all__ = ["SpanTableScorer"]
