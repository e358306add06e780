"""The score as numbers and as text: what the official evaluator prints and writes, plus diagnostics.

:class:`Headline` holds the official numbers only (what an optimiser or a bootstrap needs);
:class:`ScoreReport` adds counts and a per-category table, prints the official report line for line
and writes the official ``--output`` JSON structure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from utils.categories import ID_TO_NAME, ID_TO_TAG
from utils.metric.readers import SUBGROUPS
from utils.metric.rules import SCORER_REFERENCES
from utils.metric.tokens import prf


@dataclass(frozen=True)
class SpanScore:
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> "SpanScore":
        return cls(*prf(tp, fp, fn), tp, fp, fn)


@dataclass(frozen=True)
class SubgroupScore:
    n_files: int
    n_spans: int
    span_f1: float
    token_f1: float
    base_score: float


@dataclass(frozen=True)
class CategoryScore:
    """Per-category diagnostics (not part of the official score).

    Span P/R/F1 as the official span F1 restricted to one category; token F1 pooled over the tokens
    of all scored notes (micro), with the same first-overlap token labels.
    """

    span: SpanScore
    token_precision: float
    token_recall: float
    token_f1: float
    token_tp: int
    token_fp: int
    token_fn: int


@dataclass(frozen=True)
class Headline:
    """The official numbers of one prediction set; worst, final and subgroups are None without stats."""

    span: SpanScore
    token_f1: float
    base: float
    worst: float | None = None
    final: float | None = None
    subgroups: dict[str, dict[str, SubgroupScore]] | None = None

    @property
    def objective(self) -> float:
        """The shared-task final score, or the base score when no stats were given (the tuning objective)."""
        return self.base if self.final is None else self.final


@dataclass
class ScoreReport:
    """Everything the official evaluator reports, plus a per-category table."""

    span: SpanScore
    token_f1: float
    base: float
    worst: float | None = None
    final: float | None = None
    subgroups: dict[str, dict[str, SubgroupScore]] | None = None
    per_category: dict[int, CategoryScore] = field(default_factory=dict)
    gold_files: int = 0
    prediction_files: int = 0
    files_with_text: int = 0
    scorer: str = "published"

    def to_official_dict(self) -> dict[str, Any]:
        """The official ``--output`` JSON structure (tp/fp/fn, per_category and scorer are extra keys)."""
        result: dict[str, Any] = {
            "span_f1": {"precision": self.span.precision, "recall": self.span.recall, "f1": self.span.f1,
                        "tp": self.span.tp, "fp": self.span.fp, "fn": self.span.fn},
            "token_f1": self.token_f1,
            "statistics": {"gold_files": self.gold_files, "prediction_files": self.prediction_files,
                           "files_with_text": self.files_with_text},
        }
        if self.final is not None:
            result["shared_task"] = {
                "base_score": self.base,
                "worst_group_score": self.worst,
                "final_score": self.final,
                "subgroups": {dim: {g: asdict(s) for g, s in groups.items()}
                              for dim, groups in (self.subgroups or {}).items()},
            }
        result["per_category"] = {
            str(cat): {"name": ID_TO_NAME[cat], "tag": ID_TO_TAG[cat], "span": asdict(score.span),
                       **{k: v for k, v in asdict(score).items() if k != "span"}}
            for cat, score in self.per_category.items()
        }
        result["scorer"] = {"name": self.scorer, "reference": SCORER_REFERENCES[self.scorer]}
        return result

    def format_official(self) -> str:
        """The report exactly as the official script prints it."""
        lines = ["=" * 50, "MedDec Shared Task Evaluation Results", "=" * 50,
                 f"\nSpan F1:\n  {self.span.f1:.4f}", f"\nToken F1:\n  {self.token_f1:.4f}"]
        if self.final is not None:
            lines += ["\nShared-task final scoring (uses stats.csv):",
                      f"  Base score:        {self.base:.4f}",
                      f"  Worst group score: {self.worst:.4f}",
                      f"  Final score:       {self.final:.4f}",
                      "\nWorst-group candidates (base_score by subgroup):"]
            for dim in SUBGROUPS:
                for group, m in (self.subgroups or {}).get(dim, {}).items():
                    lines.append(f"  - {dim:8s} = {group:20s} n={m.n_spans:3d}  base={m.base_score:.4f}  "
                                 f"span_f1={m.span_f1:.4f}  token_f1={m.token_f1:.4f}")
        lines.append("=" * 50)
        return "\n".join(lines)

    def format_per_category(self) -> str:
        """Per-category table: span P/R/F1 (with gold/predicted counts) and pooled token F1."""
        header = (f"{'category':34s} {'gold':>5s} {'pred':>5s} {'span_P':>7s} {'span_R':>7s} {'span_F1':>7s} "
                  f"{'tok_F1':>7s}")
        lines = ["\nPer-category scores (diagnostic; span: official matching per category; token: pooled):", header]
        for cat, score in self.per_category.items():
            s = score.span
            label = f"{cat} {ID_TO_NAME[cat]}"
            lines.append(f"{label:34s} {s.tp + s.fn:5d} {s.tp + s.fp:5d} {s.precision:7.4f} {s.recall:7.4f} "
                         f"{s.f1:7.4f} {score.token_f1:7.4f}")
        return "\n".join(lines)

    def format_scorer(self) -> str:
        """One line naming the scorer that made these numbers."""
        return f"Scorer: {self.scorer} ({SCORER_REFERENCES[self.scorer]})"

    def format(self) -> str:
        """The official printed report followed by the per-category table and the scorer's name."""
        return self.format_official() + "\n" + self.format_per_category() + "\n" + self.format_scorer()


__all__ = ["CategoryScore", "Headline", "ScoreReport", "SpanScore", "SubgroupScore"]
