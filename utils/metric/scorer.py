"""The official MedExACT 2026 score of many prediction sets against one fixed gold set.

References (SPEC section 2), chosen with ``rule`` (``--scorer``): ``published``, the default, is
``evaluate/evaluate.py`` of github.com/biodatlab/medexact-lamar (the script LAMAR shipped and tuned with);
``meddec`` is ``evaluate.py`` of github.com/CLU-UML/MedDec at commit f4374cd. Every number (span
precision/recall/F1 with tp/fp/fn, token F1, base, each subgroup, worst, final) equals the chosen script's bit for
bit. What that takes:

- inputs are read the chosen script's way (:mod:`utils.metric.readers`: universal newlines, listdir order, its
  gold-id and split-line rules);
- spans are refined (:mod:`utils.metric.spans`) and compared as (note, category, lowercased refined
  text); duplicates collapse (the same in both);
- token labels under the chosen rule (:mod:`utils.metric.tokens`: ambiguous tokens, or first overlap wins);
- float sums follow the official summation order, which is the iteration order of Python sets
  (``set(gold) | set(pred)`` for the token mean, one set per subgroup, the set of labels per note).
  String hashing is randomised per process, so the last bits of the official token F1 depend on
  ``PYTHONHASHSEED``; in the same process (or under the same fixed seed) our numbers are identical.

Speed: :class:`Scorer` tokenises and refines the gold once; prediction refinements are cached per
(note, start, end, category). Scoring is two steps, both public: :meth:`Scorer.note_scores` (per-note
span counts and token F1 as arrays) and :meth:`Scorer.aggregate` (the official headline numbers); the
read-only accessors (:meth:`Scorer.span_keys`, :meth:`Scorer.gold_spans`, :meth:`Scorer.tokens`, ...)
let other scorers (``utils.metric.table``) compute the same per-note results their own way.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from utils.categories import VALID_CATEGORY_IDS
from utils.meddec.corpus import Demographics, read_stats
from utils.fileio import InputError
from utils.metric.notes import NoteScores, NoteSet, aggregate
from utils.metric.readers import (
    SpanRow, gold_rows, load_official_texts, prediction_rows, read_gold_dir_official_order, read_official_gold_file,
    read_official_split, subgroup_members,
)
from utils.metric.report import CategoryScore, Headline, ScoreReport, SpanScore
from utils.metric.spans import refined_text
from utils.metric.tokens import (
    AMBIGUOUS, DEFAULT_SCORER, N_LABELS, SCORER_REFERENCES, check_scorer, gold_label_order, note_token_f1,
    official_tokens, prf, token_labels, valid_span_array,
)

#: What the default scorer reproduces.
OFFICIAL_REFERENCE = SCORER_REFERENCES[DEFAULT_SCORER]

#: How spans are matched: (category, lowercased refined text) within a note.
SpanKey = tuple[int, str]

_DROPPED = ("dropped",)  # cache value of a span that is out of scope or refines to nothing


class _Note:
    """One note's text, tokens and the refinement cache of spans seen so far."""

    __slots__ = ("text", "starts", "ends", "refined")

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts, self.ends = official_tokens(text) if text else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.refined: dict[SpanRow, SpanKey | tuple[str]] = {}

    def span_set(self, rows: Sequence[SpanRow]) -> set[SpanKey]:
        """The note's set of (category, lowercased refined text) for its spans of categories 1-9."""
        out = set(self.entries(rows))
        out.discard(_DROPPED)
        return out

    def entries(self, rows: Sequence[SpanRow]) -> list[SpanKey | tuple[str]]:
        """(category, refined text) per (start, end, category) row, ``_DROPPED`` for rows that do not count.

        Refinements are cached per row, so a span seen before costs one C-level dict lookup (``map``),
        which is what makes re-scoring fast.
        """
        cache = self.refined
        values = list(map(cache.get, rows))
        if None in values:
            for row in rows:
                if row not in cache:
                    cache[row] = self._span_entry(*row)
            values = list(map(cache.get, rows))
        return values

    def _span_entry(self, start: int, end: int, category: int) -> SpanKey | tuple[str]:
        if category not in VALID_CATEGORY_IDS:
            return _DROPPED
        text = refined_text(self.text, start, end)
        return _DROPPED if text is None else (category, text)

    @property
    def scored(self) -> bool:
        """Whether the note enters the token F1 (official: non-empty text with at least one token)."""
        return len(self.starts) > 0


@dataclass
class _Details:
    """What the full report needs beyond the per-note numbers."""

    pred_sets: dict[str, set[SpanKey]] = field(default_factory=dict)
    matrices: dict[str, np.ndarray] = field(default_factory=dict)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class Scorer:
    """Official score of many prediction sets against one fixed gold set.

    Build it once (tokenisation and gold refinement happen here), then call :meth:`score` for the full
    report, :meth:`final_score` for the one number an optimiser needs, or :meth:`note_scores` and
    :meth:`aggregate` for the per-note results behind them.
    """

    def __init__(
        self,
        gold: Mapping[str, Sequence[Any]],
        texts: Mapping[str, str],
        stats: Mapping[tuple[int, int, int], Demographics] | None = None,
        *,
        split_ids: Iterable[str] | None = None,
        raw_text_dir: str | os.PathLike[str] | None = None,
        rule: str = DEFAULT_SCORER,
    ) -> None:
        """``gold``: note id -> annotations (utils.meddec.corpus.Annotation, or official JSON dicts), in the order
        the official script would hold them; ``texts``: note id -> text as read by
        :func:`utils.metric.readers.read_official_text` (needed for every gold note and every predicted
        note; with ``raw_text_dir`` the texts of other predicted notes are read from there on demand);
        ``stats``: stats.csv rows (enables worst/final); ``split_ids``: predictions of other notes are
        ignored, as with the official ``--split_file``; ``rule``: the scorer whose token rule applies (``published``
        or ``meddec``, see :mod:`utils.metric.tokens`).
        """
        self.rule = check_scorer(rule)
        self.split_ids = None if split_ids is None else set(split_ids)
        self.raw_text_dir = raw_text_dir
        self._texts = dict(texts)
        self._notes: dict[str, _Note] = {}
        self.gold_ids = list(gold)
        self._gold_sets: dict[str, set[SpanKey]] = {}
        self._gold_labels: dict[str, np.ndarray] = {}
        self._gold_order: dict[str, list[int]] = {}
        self._gold_rows: dict[str, tuple[SpanRow, ...]] = {}
        for note_id, annotations in tqdm(gold.items(), desc="tokenising gold notes", unit="note", leave=False,
                                         disable=len(gold) < 20):
            note = self._note(note_id)
            rows = gold_rows(annotations)
            self._gold_rows[note_id] = tuple(rows)
            self._gold_sets[note_id] = note.span_set(rows)
            if note.scored:
                labels = token_labels(note.starts, note.ends, valid_span_array(rows), self.rule)
                self._gold_labels[note_id] = labels
                self._gold_order[note_id] = gold_label_order(labels)
        self.has_stats = stats is not None
        self._groups: dict[str, dict[str, list[str]]] = {}
        if stats is not None:
            self._groups = subgroup_members(self.gold_ids, stats)

    @classmethod
    def from_files(
        cls,
        gold_dir: str | os.PathLike[str] | None = None,
        raw_text_dir: str | os.PathLike[str] = "raw_text",
        split_file: str | os.PathLike[str] | None = None,
        stats_csv: str | os.PathLike[str] | None = None,
        gold_file: str | os.PathLike[str] | None = None,
        extra_ids: Iterable[str] = (),
        rule: str = DEFAULT_SCORER,
    ) -> "Scorer":
        """A scorer over a MedDec download, loaded as the ``rule``'s script loads it.

        ``gold_file`` overrides ``gold_dir``; ``extra_ids`` are predicted notes outside the gold set
        whose texts should be read now (others are read on demand from ``raw_text_dir``).
        """
        check_scorer(rule)
        if gold_file is not None:
            gold = read_official_gold_file(gold_file, rule)
        elif gold_dir is not None:
            gold = read_gold_dir_official_order(gold_dir, rule)
        else:
            raise InputError.flag("", "give gold_dir or gold_file")
        split_ids = read_official_split(split_file, rule) if split_file is not None else None
        extra_ids = list(extra_ids)
        if split_ids is not None:
            gold = {k: v for k, v in gold.items() if k in split_ids}
            extra_ids = [i for i in extra_ids if i in split_ids]
        wanted = list(gold) + [i for i in extra_ids if i not in gold]
        texts = load_official_texts(raw_text_dir, wanted)
        stats = read_stats(stats_csv) if stats_csv is not None else None
        return cls(gold, texts, stats, split_ids=split_ids, raw_text_dir=raw_text_dir, rule=rule)

    def _note(self, note_id: str) -> _Note:
        note = self._notes.get(note_id)
        if note is None:
            text = self._texts.get(note_id)
            if text is None:
                if self.raw_text_dir is None:
                    raise KeyError(f"no text for note {note_id!r}: pass its text to Scorer (officially needed too)")
                text = load_official_texts(self.raw_text_dir, [note_id])[note_id]
                self._texts[note_id] = text
            note = self._notes[note_id] = _Note(text)
        return note

    # -- read-only accessors ---------------------------------------------------------------------------

    @property
    def note_ids(self) -> list[str]:
        """The gold notes, in the order given."""
        return list(self.gold_ids)

    def text(self, note_id: str) -> str:
        """A note's text as scored (read the official way)."""
        return self._note(note_id).text

    def in_split(self, note_id: str) -> bool:
        """Whether predictions for this note are scored (always, without a split)."""
        return self.split_ids is None or note_id in self.split_ids

    def is_scored(self, note_id: str) -> bool:
        """Whether the note enters the token F1 mean (it has at least one token)."""
        return self._note(note_id).scored

    def tokens(self, note_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The note's official token (starts, ends), read-only int64 arrays."""
        note = self._note(note_id)
        return _read_only(note.starts), _read_only(note.ends)

    def gold_token_labels(self, note_id: str) -> np.ndarray:
        """Gold label (0-9, or AMBIGUOUS under the published rule) per token, read-only; all 0 outside the gold set."""
        labels = self._gold_labels.get(note_id)
        if labels is None:
            return _read_only(np.zeros(len(self._note(note_id).starts), dtype=np.int64))
        return _read_only(labels)

    @property
    def reference(self) -> str:
        """The script this scorer reproduces (named in reports)."""
        return SCORER_REFERENCES[self.rule]

    def gold_label_order(self, note_id: str) -> list[int]:
        """The distinct gold token labels of the kept (not ambiguous) tokens in order of first occurrence ([0]
        outside the gold set), which fixes the official summation order of the note's macro F1 (see
        :func:`utils.metric.tokens.official_label_set`)."""
        return list(self._gold_order.get(note_id, [0]))

    def gold_spans(self, note_id: str) -> frozenset[SpanKey]:
        """The note's gold spans as matched: (category, lowercased refined text); empty outside the gold set."""
        return frozenset(self._gold_sets.get(note_id, ()))

    def gold_rows(self, note_id: str) -> tuple[SpanRow, ...]:
        """The note's gold annotations as (start, end, category 0-9) rows in list order (the positions behind
        :meth:`gold_spans`; category 0 is out of scope); empty outside the gold set."""
        return self._gold_rows.get(note_id, ())

    def span_keys(self, note_id: str, rows: Sequence[SpanRow]) -> list[SpanKey | None]:
        """(category, lowercased refined text) per (start, end, category) row of this note, None for a row
        that does not count (category outside 1-9, or nothing left after refinement). Cached per row."""
        return [None if entry is _DROPPED else entry for entry in self._note(note_id).entries(rows)]

    @property
    def subgroups(self) -> dict[str, dict[str, list[str]]]:
        """Gold notes of each non-empty subgroup (dimension -> group -> ids); empty dims without stats."""
        return {dim: {value: list(ids) for value, ids in groups.items()} for dim, groups in self._groups.items()}

    def notes(self, predicted_ids: Iterable[str]) -> NoteSet:
        """The notes a prediction set with these keys is scored on (predictions outside the split are
        ignored), in the official summation order, with their subgroups."""
        predicted = {name: None for name in predicted_ids if self.in_split(name)}
        all_files = set(self._gold_sets.keys()) | set(predicted.keys())  # the official set, built the official way
        ids = tuple(all_files)
        row = {name: i for i, name in enumerate(ids)}
        groups = [(dim, value) for dim, by_value in self._groups.items() for value in by_value]
        return NoteSet(
            ids=ids,
            scored=np.array([self._note(name).scored for name in ids], dtype=bool),
            predicted=np.array([name in predicted for name in ids], dtype=bool),
            groups=tuple(groups),
            group_rows=tuple(np.array([row[name] for name in self._groups[dim][value]], dtype=np.int64)
                             for dim, value in groups),
            has_stats=self.has_stats,
        )

    # -- scoring -----------------------------------------------------------------------------------------

    def _note_token_f1(self, name: str, note: _Note, rows: Sequence[SpanRow]) -> tuple[float, np.ndarray]:
        gold_labels = self._gold_labels.get(name)
        if gold_labels is None:  # a predicted note outside the gold set: no gold labels
            gold_labels = np.zeros(len(note.starts), dtype=np.int64)
            gold_order = [0]
        else:
            gold_order = self._gold_order[name]
        pred_labels = token_labels(note.starts, note.ends, valid_span_array(rows), self.rule)
        return note_token_f1(gold_labels, pred_labels, gold_order, self.rule)

    def _pass(self, predictions: Mapping[str, Sequence[Any]], details: _Details | None) -> NoteScores:
        if self.split_ids is not None:
            predictions = {k: v for k, v in predictions.items() if k in self.split_ids}
        pred_rows = {name: prediction_rows(spans) for name, spans in predictions.items()}
        pred_sets = {name: self._note(name).span_set(rows) for name, rows in pred_rows.items()}
        notes = self.notes(predictions.keys())
        no_spans: set = set()
        n = len(notes.ids)
        tp, fp, fn = (np.zeros(n, dtype=np.int64) for _ in range(3))
        token_f1 = np.full(n, np.nan)
        for i, name in enumerate(notes.ids):
            gold = self._gold_sets.get(name, no_spans)
            pred = pred_sets.get(name, no_spans)
            common = len(gold & pred)
            tp[i], fp[i], fn[i] = common, len(pred) - common, len(gold) - common
            note = self._note(name)
            if not note.scored:
                continue
            token_f1[i], matrix = self._note_token_f1(name, note, pred_rows.get(name, ()))
            if details is not None:
                details.matrices[name] = matrix
        if details is not None:
            details.pred_sets = pred_sets
        return NoteScores(notes, tp, fp, fn, token_f1)

    def note_scores(self, predictions: Mapping[str, Sequence[Any]]) -> NoteScores:
        """Per-note span tp/fp/fn and token F1 of one prediction set (note id -> spans as
        ``Span``/(start, end, category) tuples or official dicts), in the official note order."""
        return self._pass(predictions, None)

    @staticmethod
    def aggregate(scores: NoteScores) -> Headline:
        """The official headline numbers (span, token F1, base, worst, final, subgroups) of per-note results."""
        return aggregate(scores)

    def score(self, predictions: Mapping[str, Sequence[Any]]) -> ScoreReport:
        """The full official report (plus per-category diagnostics) for one prediction set."""
        details = _Details()
        scores = self._pass(predictions, details)
        head = aggregate(scores)
        return ScoreReport(
            span=head.span, token_f1=head.token_f1, base=head.base, worst=head.worst, final=head.final,
            subgroups=head.subgroups, per_category=self._per_category(scores.notes, details),
            gold_files=len(self.gold_ids), prediction_files=scores.notes.n_prediction_files,
            files_with_text=len(scores.notes), scorer=self.rule,
        )

    def final_score(self, predictions: Mapping[str, Sequence[Any]]) -> float:
        """The shared-task final score (the base score when no stats were given): the tuning objective."""
        return aggregate(self.note_scores(predictions)).objective

    def base_score(self, predictions: Mapping[str, Sequence[Any]]) -> float:
        """(span F1 + token F1) / 2 over all notes."""
        return aggregate(self.note_scores(predictions)).base

    def _per_category(self, notes: NoteSet, details: _Details) -> dict[int, CategoryScore]:
        counts = {kind: Counter() for kind in ("tp", "fp", "fn")}
        empty: set = set()
        for name in notes.ids:
            gold = self._gold_sets.get(name, empty)
            pred = details.pred_sets.get(name, empty)
            counts["tp"].update(cat for cat, _ in gold & pred)
            counts["fp"].update(cat for cat, _ in pred - gold)
            counts["fn"].update(cat for cat, _ in gold - pred)
        total = sum(details.matrices.values(), np.zeros((N_LABELS, N_LABELS), dtype=np.int64))[:AMBIGUOUS]
        gold_tokens, pred_tokens, diagonal = total.sum(axis=1), total.sum(axis=0), total.diagonal()
        out = {}
        for cat in sorted(VALID_CATEGORY_IDS):
            tp = int(diagonal[cat])
            fp, fn = int(pred_tokens[cat]) - tp, int(gold_tokens[cat]) - tp
            out[cat] = CategoryScore(
                SpanScore.from_counts(counts["tp"][cat], counts["fp"][cat], counts["fn"][cat]),
                *prf(tp, fp, fn), tp, fp, fn,
            )
        return out


def score_files(
    predictions: Mapping[str, Sequence[Any]],
    gold_dir: str | os.PathLike[str] | None = None,
    raw_text_dir: str | os.PathLike[str] = "raw_text",
    split_file: str | os.PathLike[str] | None = None,
    stats_csv: str | os.PathLike[str] | None = None,
    gold_file: str | os.PathLike[str] | None = None,
    rule: str = DEFAULT_SCORER,
) -> ScoreReport:
    """One-shot official scoring of predictions against a MedDec folder layout."""
    scorer = Scorer.from_files(gold_dir, raw_text_dir, split_file, stats_csv, gold_file, extra_ids=list(predictions),
                               rule=rule)
    return scorer.score(predictions)


__all__ = ["OFFICIAL_REFERENCE", "Scorer", "SpanKey", "score_files"]
