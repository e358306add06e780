"""Bootstrap confidence intervals of the official score: notes resampled with replacement, vectorised.

A resample draws ``n`` notes out of the ``n`` scored notes with replacement; its score is the official
aggregation (:func:`utils.metric.notes.aggregate`) of those notes. Instead of aggregating each resample in
Python, a block of resamples is a matrix ``C`` (resamples x notes) of how often each note was drawn, and every
statistic is a matrix product of ``C`` with per-note columns:

- span tp/fp/fn: ``C @ [tp, fp, fn]``, then the official precision/recall/F1 expressions (element-wise);
- token F1: ``C @ token_f1`` over ``C @ scored`` (the mean over drawn notes that have tokens);
- each subgroup: the same with the columns masked by the group's membership; a group none of whose notes was
  drawn is left out of that resample (as the official code leaves out empty groups); worst = minimum over the
  groups present (0 when none is), final = (base + worst) / 2;
- per category: span tp/fp/fn and pooled token tp/fp/fn per category (:mod:`utils.metric.breakdown`).

Span counts are integers, so span precision/recall/F1 equal the official values bit for bit. The token F1
means sum in a different order than the official set iteration order, so they differ from
``aggregate(scores.select(rows))`` by float rounding only (~1e-16, tested); for a percentile interval the
summation order is irrelevant. The point estimates reported beside the intervals are the official numbers.

Resamples are drawn with ``numpy.random.default_rng(seed)`` in fixed blocks of :data:`BLOCK` resamples, over
the notes sorted by id: the official note order is the iteration order of a Python set, which changes with
``PYTHONHASHSEED`` from one process to the next, so drawing rows of that order would resample other notes in
another process. Sorted, a seed gives the same resamples, and the same intervals, in every process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from utils.categories import CATEGORY_IDS, ID_TO_NAME
from utils.metric.breakdown import N_CATEGORIES, CategoryNoteCounts, category_note_counts
from utils.metric.notes import NoteScores, aggregate
from utils.metric.readers import SUBGROUPS
from utils.metric.report import Headline

BLOCK = 1000  # resamples per matrix product: bounds memory (BLOCK x notes floats) whatever the resample count
HEADLINE = ("span_precision", "span_recall", "span_f1", "token_f1", "base", "worst", "final")
HEADLINE_LABELS = {"span_precision": "Span precision", "span_recall": "Span recall", "span_f1": "Span F1",
                   "token_f1": "Token F1", "base": "Base score", "worst": "Worst group score", "final": "Final score"}


# -- resamples -------------------------------------------------------------------------------------------------

def iter_resample_rows(n_notes: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of resamples, each an int array (resamples x ``n_notes``) of drawn rows; the same for the same
    arguments (fixed block size, one generator)."""
    if n_notes <= 0:
        raise ValueError("cannot resample an empty note set")
    rng = np.random.default_rng(seed)
    for first in range(0, n_resamples, BLOCK):
        yield rng.integers(0, n_notes, size=(min(BLOCK, n_resamples - first), n_notes))


def resample_rows(n_notes: int, n_resamples: int, seed: int) -> np.ndarray:
    """All resamples' rows at once ((resamples x notes)): ``scores.select(rows[b])`` is resample ``b``."""
    return np.concatenate(list(iter_resample_rows(n_notes, n_resamples, seed)), axis=0)


def draw_counts(rows: np.ndarray, n_notes: int) -> np.ndarray:
    """How often each note is drawn in each resample (float64, resamples x notes): the multinomial weights."""
    n_resamples = rows.shape[0]
    flat = (np.arange(n_resamples)[:, None] * n_notes + rows).ravel()
    return np.bincount(flat, minlength=n_resamples * n_notes).reshape(n_resamples, n_notes).astype(np.float64)


# -- per-note columns on a common note order -----------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class NoteColumns:
    """One prediction set's per-note pieces as float columns on a given note order (rows of the resamples).

    A note of that order missing from the set's own note set (a note only another system predicted) has
    zeros everywhere: it adds no span and is not part of the token mean, as officially for this set.
    """

    note_ids: tuple[str, ...]
    groups: tuple[tuple[str, str], ...]
    has_stats: bool
    span: np.ndarray  # (notes, 3): tp, fp, fn
    token_f1: np.ndarray  # (notes,): 0 where not scored
    scored: np.ndarray  # (notes,): 1.0 where the note enters the token mean
    membership: np.ndarray  # (notes, groups) 0/1
    category_span: np.ndarray | None = None  # (notes, 9 * 3): tp, fp, fn per category
    category_token: np.ndarray | None = None  # (notes, 9 * 3)


def note_columns(scores: NoteScores, categories: CategoryNoteCounts | None = None,
                 note_ids: Sequence[str] | None = None) -> NoteColumns:
    """The columns of ``scores`` (and optionally its per-category counts) on ``note_ids`` (default: its own order;
    the bootstrap passes the sorted ids, see the module docstring)."""
    own = scores.notes
    note_ids = tuple(own.ids if note_ids is None else note_ids)
    where = {name: i for i, name in enumerate(own.ids)}
    source = np.array([where.get(name, -1) for name in note_ids], dtype=np.int64)
    present = source >= 0
    take = np.where(present, source, 0)

    def column(values: np.ndarray) -> np.ndarray:
        out = np.asarray(values, dtype=np.float64)[take]
        out[~present] = 0.0
        return out

    scored = column(own.scored)
    token_f1 = np.where(scored > 0, column(np.nan_to_num(scores.token_f1, nan=0.0)), 0.0)
    membership = column(own.membership().T.astype(np.float64)) if own.groups else np.zeros((len(note_ids), 0))
    category_span = category_token = None
    if categories is not None:
        category_span = column(np.stack([categories.span_tp, categories.span_fp, categories.span_fn], axis=2)
                               .reshape(len(own), -1))
        category_token = column(np.stack([categories.token_tp, categories.token_fp, categories.token_fn], axis=2)
                                .reshape(len(own), -1))
    return NoteColumns(note_ids, own.groups, own.has_stats, column(np.stack([scores.tp, scores.fp, scores.fn], 1)),
                       token_f1, scored, membership, category_span, category_token)


# -- statistics of many resamples at once --------------------------------------------------------------------

def prf_arrays(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official precision/recall/F1 expressions element-wise (0.0 on empty denominators)."""
    predicted, gold = tp + fp, tp + fn
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, gold, out=np.zeros_like(tp), where=gold > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1


def _mean(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def statistics(columns: NoteColumns, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every statistic of each resample (rows of ``counts``, see :func:`draw_counts`).

    Keys: the :data:`HEADLINE` names, (resamples,) each (worst/final only with stats); ``group_base``,
    ``group_span_f1``, ``group_token_f1`` and ``group_present`` (resamples x groups); with per-category
    columns ``category_span_f1`` and ``category_token_f1`` (resamples x 9).
    """
    tp, fp, fn = (counts @ columns.span).T
    precision, recall, span_f1 = prf_arrays(tp, fp, fn)
    token_f1 = _mean(counts @ columns.token_f1, counts @ columns.scored)
    base = (span_f1 + token_f1) / 2
    out = {"span_precision": precision, "span_recall": recall, "span_f1": span_f1, "token_f1": token_f1, "base": base}
    if columns.has_stats:
        member = columns.membership  # (notes, groups)
        n_groups = member.shape[1]
        group_span = (counts @ (member[:, :, None] * columns.span[:, None, :]).reshape(len(member), -1))
        group_span = group_span.reshape(len(counts), n_groups, 3)
        group_f1 = prf_arrays(group_span[..., 0], group_span[..., 1], group_span[..., 2])[2]
        group_token = _mean(counts @ (member * columns.token_f1[:, None]), counts @ (member * columns.scored[:, None]))
        group_base = (group_f1 + group_token) / 2
        present = (counts @ member) > 0
        worst = np.where(present, group_base, np.inf).min(axis=1, initial=np.inf)
        worst[~present.any(axis=1)] = 0.0
        out.update(worst=worst, final=(base + worst) / 2, group_base=group_base, group_span_f1=group_f1,
                   group_token_f1=group_token, group_present=present)
    if columns.category_span is not None and columns.category_token is not None:
        for name, matrix in (("category_span_f1", columns.category_span),
                             ("category_token_f1", columns.category_token)):
            summed = (counts @ matrix).reshape(len(counts), N_CATEGORIES, 3)
            out[name] = prf_arrays(summed[..., 0], summed[..., 1], summed[..., 2])[2]
    return out


def resampled_statistics(columns: Sequence[NoteColumns], n_resamples: int, seed: int,
                         progress: bool = False) -> list[dict[str, np.ndarray]]:
    """The statistics of the same ``n_resamples`` resamples for each column set (paired when several)."""
    from tqdm.auto import tqdm

    n_notes = len(columns[0].note_ids)
    if any(c.note_ids != columns[0].note_ids for c in columns):
        raise ValueError("paired resampling needs every prediction set on the same note order")
    blocks: list[list[dict[str, np.ndarray]]] = [[] for _ in columns]
    n_blocks = -(-n_resamples // BLOCK)
    for rows in tqdm(iter_resample_rows(n_notes, n_resamples, seed), total=n_blocks, desc="bootstrap",
                     unit="block", leave=False, disable=not progress or n_blocks < 5):
        counts = draw_counts(rows, n_notes)
        for out, cols in zip(blocks, columns):
            out.append(statistics(cols, counts))
    return [{key: np.concatenate([b[key] for b in out], axis=0) for key in out[0]} for out in blocks]


# -- intervals ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A point estimate (the official number on all notes) and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    n_resamples: int  # resamples in which the statistic exists (a subgroup may be absent from some)

    def to_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n_resamples": self.n_resamples}

    def format(self) -> str:
        if self.n_resamples == 0:
            return f"{self.estimate:.4f}  (no resample)"
        return f"{self.estimate:.4f}  [{self.low:.4f}, {self.high:.4f}]"


def percentile_interval(values: np.ndarray, estimate: float, confidence: float) -> Interval:
    """The central ``confidence`` percentile interval of ``values`` (linear interpolation, NumPy's default)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return Interval(float(estimate), float("nan"), float("nan"), 0)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high), len(values))


@dataclass
class BootstrapReport:
    """Percentile intervals of the headline numbers, each category and each subgroup of one prediction set."""

    n_resamples: int
    seed: int
    confidence: float
    n_notes: int
    headline: dict[str, Interval]
    per_category: dict[int, dict[str, Interval]] = field(default_factory=dict)
    subgroups: dict[str, dict[str, dict[str, Interval]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "percentile bootstrap: the scored notes resampled with replacement",
            "n_resamples": self.n_resamples, "seed": self.seed, "confidence": self.confidence,
            "n_notes": self.n_notes,
            "headline": {name: interval.to_dict() for name, interval in self.headline.items()},
            "per_category": {str(cat): {"name": ID_TO_NAME[cat], **{k: v.to_dict() for k, v in values.items()}}
                             for cat, values in self.per_category.items()},
            "subgroups": {dim: {group: {k: v.to_dict() for k, v in values.items()} for group, values in groups.items()}
                          for dim, groups in self.subgroups.items()},
        }

    def format(self) -> str:
        percent = f"{self.confidence * 100:g}%"
        lines = [f"\nBootstrap confidence intervals: {self.n_resamples:,} resamples of the {self.n_notes} notes "
                 f"(with replacement), seed {self.seed}, {percent} percentile intervals",
                 "(note-sampling variation on these notes only; estimate = the official number)",
                 f"  {'':20s} {'estimate':>8s}  {percent + ' interval':>18s}"]
        for name, interval in self.headline.items():
            lines.append(f"  {HEADLINE_LABELS[name]:20s} {interval.estimate:8.4f}  "
                         f"[{interval.low:.4f}, {interval.high:.4f}]")
        if self.per_category:
            lines.append(f"\n  {'category':34s} {'span F1':>8s}  {'interval':>16s}   "
                         f"{'token F1':>8s}  {'interval':>16s}")
            for cat, values in self.per_category.items():
                span, token = values["span_f1"], values["token_f1"]
                lines.append(f"  {f'{cat} {ID_TO_NAME[cat]}':34s} "
                             f"{span.estimate:8.4f}  [{span.low:.4f}, {span.high:.4f}]"
                             f"   {token.estimate:8.4f}  [{token.low:.4f}, {token.high:.4f}]")
        if self.subgroups:
            lines.append(f"\n  {'subgroup':31s} {'base':>8s}  {'interval':>16s}   resamples with the group")
            for dim in SUBGROUPS:
                for group, values in self.subgroups.get(dim, {}).items():
                    base = values["base_score"]
                    lines.append(f"  {f'{dim} = {group}':31s} {base.format():>28s}   {base.n_resamples:,}")
        return "\n".join(lines)


def _category_estimates(categories: CategoryNoteCounts) -> dict[str, np.ndarray]:
    totals = categories.totals()
    return {"span_f1": prf_arrays(*(totals[f"span_{k}"].astype(np.float64) for k in ("tp", "fp", "fn")))[2],
            "token_f1": prf_arrays(*(totals[f"token_{k}"].astype(np.float64) for k in ("tp", "fp", "fn")))[2]}


def headline_values(head: Headline) -> dict[str, float]:
    """The official numbers under the :data:`HEADLINE` names (worst/final only with stats)."""
    values = {"span_precision": head.span.precision, "span_recall": head.span.recall, "span_f1": head.span.f1,
              "token_f1": head.token_f1, "base": head.base}
    if head.final is not None:
        values.update(worst=head.worst, final=head.final)
    return values


def intervals_from(stats: Mapping[str, np.ndarray], head: Headline, columns: NoteColumns,
                   categories: CategoryNoteCounts | None, n_resamples: int, seed: int,
                   confidence: float) -> BootstrapReport:
    """A :class:`BootstrapReport` from resampled statistics and the official point estimates."""
    headline = {name: percentile_interval(stats[name], value, confidence)
                for name, value in headline_values(head).items()}
    per_category: dict[int, dict[str, Interval]] = {}
    if categories is not None:
        estimates = _category_estimates(categories)
        for j, cat in enumerate(CATEGORY_IDS):
            per_category[cat] = {name: percentile_interval(stats[f"category_{name}"][:, j], estimates[name][j],
                                                           confidence) for name in ("span_f1", "token_f1")}
    subgroups: dict[str, dict[str, dict[str, Interval]]] = {}
    if head.subgroups is not None:
        for k, (dim, group) in enumerate(columns.groups):
            official = head.subgroups.get(dim, {}).get(group)
            if official is None:
                continue
            present = stats["group_present"][:, k]
            subgroups.setdefault(dim, {})[group] = {
                name: percentile_interval(stats[f"group_{key}"][present, k], getattr(official, name), confidence)
                for name, key in (("base_score", "base"), ("span_f1", "span_f1"), ("token_f1", "token_f1"))}
    return BootstrapReport(n_resamples, seed, confidence, len(columns.note_ids), headline, per_category, subgroups)


def bootstrap_note_scores(scores: NoteScores, n_resamples: int, seed: int = 0, confidence: float = 0.95,
                          categories: CategoryNoteCounts | None = None, progress: bool = False) -> BootstrapReport:
    """Percentile bootstrap intervals from per-note results (per category too when ``categories`` is given)."""
    if len(scores) == 0:
        from utils.fileio import InputError

        raise InputError.flag("--bootstrap", "no notes to resample (no gold note and no predicted note)")
    columns = note_columns(scores, categories, sorted(scores.notes.ids))
    (stats,) = resampled_statistics([columns], n_resamples, seed, progress=progress)
    return intervals_from(stats, aggregate(scores), columns, categories, n_resamples, seed, confidence)


def bootstrap(scorer: Any, predictions: Mapping[str, Sequence[Any]], n_resamples: int, seed: int = 0,
              confidence: float = 0.95, progress: bool = False) -> BootstrapReport:
    """Percentile bootstrap intervals for one prediction set (``scorer``: a :class:`utils.metric.Scorer`)."""
    scores = scorer.note_scores(predictions)
    categories = category_note_counts(scorer, predictions, scores.notes)
    return bootstrap_note_scores(scores, n_resamples, seed, confidence, categories, progress)


__all__ = [
    "BLOCK", "HEADLINE", "BootstrapReport", "Interval", "NoteColumns", "bootstrap", "bootstrap_note_scores",
    "draw_counts", "headline_values", "intervals_from", "iter_resample_rows", "note_columns", "percentile_interval",
    "prf_arrays", "resample_rows", "resampled_statistics", "statistics",
]
