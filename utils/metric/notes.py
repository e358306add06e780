"""Per-note results of one prediction set and their official aggregation into the headline numbers.

The official score is built from per-note pieces: each note's span tp/fp/fn (summed, then one micro F1)
and each note's token F1 (averaged), over all notes and again over each subgroup's notes. Keeping those
pieces as arrays lets an optimiser (``utils.metric.table``) produce them without the per-note Python
path, and a bootstrap resample notes (:meth:`NoteScores.select`) and aggregate each resample.

Float sums follow the official order: the token F1 mean adds notes in the iteration order of the
official set ``set(gold ids) | set(predicted ids)`` (:attr:`NoteSet.ids`), and each subgroup's mean in
the iteration order of the official set of that group's notes (:attr:`NoteSet.group_rows`). Python's
``sum`` over ``tolist()`` in those orders gives the official numbers bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.metric.readers import SUBGROUPS
from utils.metric.report import Headline, SpanScore, SubgroupScore


def _frozen(array: np.ndarray, dtype: type) -> np.ndarray:
    out = np.array(array, dtype=dtype)  # a private copy: callers' arrays stay theirs
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class NoteSet:
    """The notes one prediction set is scored on: their order, whether each has tokens, and subgroups.

    Fixed for a scorer and a set of predicted note ids; built by :meth:`utils.metric.Scorer.notes`.
    """

    ids: tuple[str, ...]
    """Every gold note and every predicted note (in the split), in the official summation order."""
    scored: np.ndarray
    """bool per note: it has tokens, so it enters the token F1 mean (official: a non-empty token list)."""
    predicted: np.ndarray
    """bool per note: the prediction set has an entry for it (possibly an empty list)."""
    groups: tuple[tuple[str, str], ...]
    """(dimension, group) of every non-empty subgroup, in the official order; empty without stats."""
    group_rows: tuple[np.ndarray, ...]
    """Per group: the rows (indices into ``ids``) of its notes, in the official summation order."""
    has_stats: bool
    """Whether demographics were given: without them worst, final and subgroups are None."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scored", _frozen(self.scored, bool))
        object.__setattr__(self, "predicted", _frozen(self.predicted, bool))
        object.__setattr__(self, "group_rows", tuple(_frozen(rows, np.int64) for rows in self.group_rows))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_prediction_files(self) -> int:
        return int(self.predicted.sum())

    def membership(self) -> np.ndarray:
        """bool array (groups x notes): whether note j belongs to group i (order of :attr:`groups`)."""
        member = np.zeros((len(self.groups), len(self.ids)), dtype=bool)
        for i, rows in enumerate(self.group_rows):
            member[i, rows] = True
        return member

    def select(self, rows: np.ndarray) -> "NoteSet":
        """The notes at these rows, repeats allowed (a bootstrap resample); groups keep their members in
        the new row order (a resample has no official order), and a group none of them belongs to stays
        listed but is left out by :func:`aggregate` (as the official code leaves out empty groups)."""
        rows = np.asarray(rows, dtype=np.int64)
        member = self.membership()[:, rows]
        return NoteSet(
            ids=tuple(self.ids[r] for r in rows.tolist()), scored=self.scored[rows], predicted=self.predicted[rows],
            groups=self.groups, group_rows=tuple(np.flatnonzero(m) for m in member), has_stats=self.has_stats,
        )


@dataclass(frozen=True, eq=False)
class NoteScores:
    """Per-note results of one prediction set: rows follow ``notes.ids``.

    ``tp``/``fp``/``fn`` count the note's refined spans (int64); ``token_f1`` is its official token F1
    (float64, NaN where ``notes.scored`` is False). ``tp + fn`` is the note's number of gold spans.
    """

    notes: NoteSet
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    token_f1: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.notes)
        for name, dtype in (("tp", np.int64), ("fp", np.int64), ("fn", np.int64), ("token_f1", np.float64)):
            array = _frozen(getattr(self, name), dtype)
            if array.shape != (n,):
                raise ValueError(f"NoteScores.{name}: expected shape ({n},), got {array.shape}")
            object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return len(self.notes)

    def select(self, rows: np.ndarray) -> "NoteScores":
        """The results at these rows, repeats allowed: ``aggregate(scores.select(rows))`` scores a resample."""
        rows = np.asarray(rows, dtype=np.int64)
        return NoteScores(self.notes.select(rows), self.tp[rows], self.fp[rows], self.fn[rows], self.token_f1[rows])


def _span_score(scores: NoteScores, rows: np.ndarray | None = None) -> SpanScore:
    tp, fp, fn = scores.tp, scores.fp, scores.fn
    if rows is not None:
        tp, fp, fn = tp[rows], fp[rows], fn[rows]
    return SpanScore.from_counts(int(tp.sum()), int(fp.sum()), int(fn.sum()))


def _token_mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0  # official: builtin sum in the given order


def _subgroups(scores: NoteScores) -> dict[str, dict[str, SubgroupScore]]:
    notes = scores.notes
    out: dict[str, dict[str, SubgroupScore]] = {dim: {} for dim in SUBGROUPS}
    for (dim, value), rows in zip(notes.groups, notes.group_rows):
        if len(rows) == 0:  # only in a resample: left out, as the official code leaves out empty groups
            continue
        span_f1 = _span_score(scores, rows).f1
        token = _token_mean(scores.token_f1[rows][notes.scored[rows]].tolist())
        n_spans = int(scores.tp[rows].sum() + scores.fn[rows].sum())
        out[dim][value] = SubgroupScore(len(rows), n_spans, span_f1, token, (span_f1 + token) / 2)
    return out


def aggregate(scores: NoteScores) -> Headline:
    """The official headline numbers from per-note results (bit-identical in the official orders)."""
    span = _span_score(scores)
    token = _token_mean(scores.token_f1[scores.notes.scored].tolist())
    base = (span.f1 + token) / 2
    if not scores.notes.has_stats:
        return Headline(span, token, base)
    subgroups = _subgroups(scores)
    bases = [s.base_score for groups in subgroups.values() for s in groups.values()]
    worst = min(bases) if bases else 0.0
    return Headline(span, token, base, worst, (base + worst) / 2, subgroups)


__all__ = ["NoteScores", "NoteSet", "aggregate"]
