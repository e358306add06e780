"""Paired bootstrap comparison of prediction sets scored on the same notes.

Every system is scored on the same resamples of the notes (the same rows drawn, :mod:`utils.metric.resampling`),
so the difference of two systems' statistics in one resample compares them on identical notes: a note that is
hard for both moves both scores and cancels in the difference. That is what makes the paired interval
narrower than two separate intervals, and why it answers "is A better than B on these notes?".

For each pair (A, B) and each statistic (final score, or the base score without stats, and its parts) the
report gives the official difference on all notes, the percentile interval of the resampled differences and
the share of resamples in which A scores strictly higher than B. A set compared with itself gives exactly 0
everywhere (the same float operations on the same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping, Sequence

import numpy as np

from utils.metric.notes import NoteScores, aggregate
from utils.metric.resampling import (
    HEADLINE, HEADLINE_LABELS, Interval, headline_values, note_columns, percentile_interval, resampled_statistics,
)

COMPARED = ("final", "base", "worst", "span_f1", "token_f1")  # the objective and its parts, in print order


def _number(value: float) -> str:
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


@dataclass(frozen=True)
class Difference:
    """A - B for one statistic: the official difference, its percentile interval, how often A is ahead."""

    statistic: str
    estimate: float
    low: float
    high: float
    a_better: float  # share of resamples with A > B
    ties: float  # share of resamples with A == B

    def to_dict(self) -> dict[str, float | str]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "share_a_better": self.a_better,
                "share_ties": self.ties}


@dataclass(frozen=True)
class PairComparison:
    """Two systems on the same resamples; ``objective`` names the statistic the verdict is about."""

    a: str
    b: str
    confidence: float
    objective: str
    differences: dict[str, Difference]

    def verdict(self) -> str:
        """'a', 'b' (the interval of A - B lies above / below 0) or 'neither'."""
        diff = self.differences[self.objective]
        return "a" if diff.low > 0 else "b" if diff.high < 0 else "neither"

    def sentence(self) -> str:
        """E.g. 'final score: A - B = 0.012, 95% CI [-0.004, 0.029]: not distinguishable on these notes'."""
        diff = self.differences[self.objective]
        head = (f"{HEADLINE_LABELS[self.objective].lower()}: {self.a} - {self.b} = {_number(diff.estimate)}, "
                f"{self.confidence * 100:g}% CI [{_number(diff.low)}, {_number(diff.high)}]")
        verdict = self.verdict()
        if verdict == "a":
            return f"{head}: {self.a} is better on these notes"
        if verdict == "b":
            return f"{head}: {self.b} is better on these notes"
        if diff.low == diff.high == diff.estimate == 0.0:
            return f"{head}: not distinguishable on these notes (identical in every resample)"
        return f"{head}: not distinguishable on these notes"

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "objective": self.objective, "verdict": self.verdict(),
                "sentence": self.sentence(),
                "differences": {name: diff.to_dict() for name, diff in self.differences.items()}}


@dataclass
class ComparisonReport:
    """Intervals of each system and the paired differences of the compared pairs."""

    n_resamples: int
    seed: int
    confidence: float
    n_notes: int
    systems: dict[str, dict[str, Interval]]
    pairs: list[PairComparison]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "paired percentile bootstrap: the same resamples of the notes for every system",
            "n_resamples": self.n_resamples, "seed": self.seed, "confidence": self.confidence, "n_notes": self.n_notes,
            "systems": {name: {k: v.to_dict() for k, v in values.items()} for name, values in self.systems.items()},
            "pairs": [pair.to_dict() for pair in self.pairs],
        }

    def format(self) -> str:
        percent = f"{self.confidence * 100:g}%"
        width = max(12, *(len(name) for name in self.systems))
        stats = [name for name in ("final", "span_f1", "token_f1") if name in next(iter(self.systems.values()))]
        stats = stats if "final" in stats else ["base", *stats]
        lines = [f"Paired bootstrap: {self.n_resamples:,} resamples of the same {self.n_notes} notes for every system, "
                 f"seed {self.seed}, {percent} percentile intervals (note-sampling variation on these notes only)",
                 "", f"{'system':{width}s} " + " ".join(f"{HEADLINE_LABELS[s]:>26s}" for s in stats)]
        for name, values in self.systems.items():
            lines.append(f"{name:{width}s} " + " ".join(f"{values[s].format():>26s}" for s in stats))
        for pair in self.pairs:
            lines += ["", f"{pair.a} - {pair.b}:"]
            for name, diff in pair.differences.items():
                lines.append(f"  {HEADLINE_LABELS[name]:18s} {diff.estimate:+.4f}  "
                             f"[{diff.low:+.4f}, {diff.high:+.4f}]  "
                             f"{pair.a} ahead in {diff.a_better:.1%} of resamples (ties {diff.ties:.1%})")
            lines.append(f"  => {pair.sentence()}")
        return "\n".join(lines)


def common_note_order(scores: Sequence[NoteScores]) -> tuple[str, ...]:
    """Every note any system is scored on, sorted by id (gold notes are in every system's set; sorted so that a
    seed resamples the same notes in every process, see :mod:`utils.metric.resampling`)."""
    return tuple(sorted({name for s in scores for name in s.notes.ids}))


def _differences(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], head_a: dict[str, float],
                 head_b: dict[str, float], confidence: float) -> dict[str, Difference]:
    out = {}
    for name in COMPARED:
        if name not in head_a:
            continue
        delta = a[name] - b[name]
        interval = percentile_interval(delta, head_a[name] - head_b[name], confidence)
        out[name] = Difference(name, interval.estimate, interval.low, interval.high, float(np.mean(delta > 0)),
                               float(np.mean(delta == 0)))
    return out


def compare_note_scores(scores: Mapping[str, NoteScores], n_resamples: int, seed: int = 0, confidence: float = 0.95,
                        against_first: bool = False, progress: bool = False) -> ComparisonReport:
    """Paired bootstrap of several systems' per-note results (each from ``Scorer.note_scores`` on the same scorer)."""
    names = list(scores)
    if len(names) < 2:
        raise ValueError("a comparison needs at least two prediction sets")
    order = common_note_order(list(scores.values()))
    columns = [note_columns(scores[name], None, order) for name in names]
    stats = dict(zip(names, resampled_statistics(columns, n_resamples, seed, progress=progress)))
    heads = {name: headline_values(aggregate(scores[name])) for name in names}
    systems = {name: {k: percentile_interval(stats[name][k], v, confidence) for k, v in heads[name].items()
                      if k in HEADLINE} for name in names}
    objective = "final" if "final" in heads[names[0]] else "base"
    pairs = [(names[0], other) for other in names[1:]] if against_first else list(combinations(names, 2))
    comparisons = [PairComparison(a, b, confidence, objective,
                                  _differences(stats[a], stats[b], heads[a], heads[b], confidence)) for a, b in pairs]
    return ComparisonReport(n_resamples, seed, confidence, len(order), systems, comparisons)


def compare(scorer: Any, prediction_sets: Mapping[str, Mapping[str, Sequence[Any]]], n_resamples: int, seed: int = 0,
            confidence: float = 0.95, against_first: bool = False, progress: bool = False) -> ComparisonReport:
    """Paired bootstrap comparison of named prediction sets (``scorer``: a :class:`utils.metric.Scorer`)."""
    scores = {name: scorer.note_scores(predictions) for name, predictions in prediction_sets.items()}
    return compare_note_scores(scores, n_resamples, seed, confidence, against_first, progress)


__all__ = ["COMPARED", "ComparisonReport", "Difference", "PairComparison", "common_note_order", "compare",
           "compare_note_scores"]
