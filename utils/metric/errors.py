"""Error analysis: every gold and predicted span classified against the other side, as the official span F1 sees it.

The unit is the one the official span F1 counts: a span *key* (category, lowercased refined text) within a note
(:mod:`utils.metric.spans`; position ignored, duplicates collapsed). A key can occur at several places (the same
words written twice); its *occurrences* are the refined (start, end) of each span that produced it. Spans the
official metric ignores (category outside 1-9, or nothing left after refinement) are not classified. Two
occurrences *overlap* when their refined character ranges share at least one character.

A gold key of category c is:

- ``exact``: the predicted keys of the note contain it (exactly the official true positives);
- ``boundary``: otherwise, an occurrence of it overlaps a predicted occurrence of category c (same decision,
  other words);
- ``category``: otherwise, an occurrence of it overlaps a predicted occurrence of another category;
- ``missed``: otherwise.

A predicted key is classified the same way against gold, with ``spurious`` for one that overlaps no gold span.
So per category: gold exact = predicted exact = official tp; gold keys = tp + fn; predicted keys = tp + fp
(tested against the report). A key with both kinds of overlap is a boundary error (same category first).

The category-confusion matrix counts gold keys: row = gold category, column = the category the system gave
them: the same category for exact and boundary errors, the category of the overlapping predicted occurrence with
the largest overlap for category errors (ties: the lowest category id), "none" for missed keys; the extra row
"none" counts spurious predicted keys by predicted category. Boundary offsets: for each gold boundary error, the
same-category predicted occurrence with the largest overlap (ties: the smallest total offset, then the first
seen) gives (predicted start - gold start, predicted end - gold end) in characters of the refined spans.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from utils.categories import CATEGORY_IDS, ID_TO_NAME, ID_TO_TAG, VALID_CATEGORY_IDS
from utils.metric.readers import prediction_rows
from utils.metric.spans import refine_span

GOLD_CLASSES = ("exact", "boundary", "category", "missed")
PRED_CLASSES = ("exact", "boundary", "category", "spurious")
CLASSES = ("exact", "boundary", "category", "missed", "spurious")
NONE = 0  # the "none" row/column of the confusion matrix


@dataclass(frozen=True)
class KeyResult:
    """The class of one key and, for boundary and category errors, what it was matched with."""

    error: str
    other_category: int | None = None  # category errors: the other side's category (largest overlap)
    offsets: tuple[int, int] | None = None  # boundary errors: (predicted - gold start, predicted - gold end)


@dataclass(frozen=True)
class Occurrence:
    """One span as the metric sees it: refined offsets, category and key text, with its key's result."""

    side: str  # "gold" or "pred"
    start: int  # refined offsets
    end: int
    category: int
    text: str  # lowercased refined text (the key's text)
    result: KeyResult

    @property
    def error(self) -> str:
        return self.result.error


@dataclass
class NoteErrors:
    """The classified keys and occurrences of one note (gold and predicted)."""

    note_id: str
    gold_keys: dict[tuple[int, str], KeyResult]
    pred_keys: dict[tuple[int, str], KeyResult]
    occurrences: list[Occurrence]

    def counts(self) -> dict[str, int]:
        """Keys per class: exact/boundary/category/missed of gold keys, spurious of predicted keys."""
        out = Counter(r.error for r in self.gold_keys.values())
        out["spurious"] = sum(1 for r in self.pred_keys.values() if r.error == "spurious")
        return {name: out.get(name, 0) for name in CLASSES}


def _occurrences(text: str, rows: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int, str]]:
    """(refined start, refined end, category, key text) of the rows the official metric counts, in row order."""
    out = []
    for start, end, category in rows:
        if category not in VALID_CATEGORY_IDS:
            continue
        refined = refine_span(text, start, end)
        if refined is None:
            continue
        out.append((refined[0], refined[1], category, text[refined[0]:refined[1]].lower()))
    return out


def _overlap(a: tuple, b: tuple) -> int:
    return min(a[1], b[1]) - max(a[0], b[0])


def _classify_side(own: list[tuple], other: list[tuple], other_keys: set, last: str,
                   own_is_gold: bool) -> dict[tuple[int, str], KeyResult]:
    """The result of each key of ``own`` (occurrences) against the ``other`` side."""
    by_key: dict[tuple[int, str], list[tuple]] = {}
    for occ in own:
        by_key.setdefault((occ[2], occ[3]), []).append(occ)
    results = {}
    for key, occs in by_key.items():
        if key in other_keys:
            results[key] = KeyResult("exact")
            continue
        same, cross = [], []
        for occ in occs:
            for partner in other:
                size = _overlap(occ, partner)
                if size > 0:
                    (same if partner[2] == key[0] else cross).append((size, occ, partner))
        if same:  # largest overlap, then the smallest total offset, then the first seen (min is stable)
            _, occ, partner = min(same, key=lambda t: (-t[0], abs(t[2][0] - t[1][0]) + abs(t[2][1] - t[1][1])))
            gold, pred = (occ, partner) if own_is_gold else (partner, occ)
            results[key] = KeyResult("boundary", offsets=(pred[0] - gold[0], pred[1] - gold[1]))
        elif cross:  # largest overlap, then the lowest category id
            _, _, partner = min(cross, key=lambda t: (-t[0], t[2][2]))
            results[key] = KeyResult("category", other_category=partner[2])
        else:
            results[key] = KeyResult(last)
    return results


def classify_note(note_id: str, text: str, gold_rows: Sequence[tuple[int, int, int]],
                  pred_rows: Sequence[tuple[int, int, int]]) -> NoteErrors:
    """Classify one note's gold and predicted spans (rows: (start, end, category), as the scorer takes them)."""
    gold = _occurrences(text, gold_rows)
    pred = _occurrences(text, pred_rows)
    gold_results = _classify_side(gold, pred, {(o[2], o[3]) for o in pred}, "missed", own_is_gold=True)
    pred_results = _classify_side(pred, gold, {(o[2], o[3]) for o in gold}, "spurious", own_is_gold=False)
    occurrences = [Occurrence(side, start, end, category, key_text, results[(category, key_text)])
                   for side, occs, results in (("gold", gold, gold_results), ("pred", pred, pred_results))
                   for start, end, category, key_text in occs]
    return NoteErrors(note_id, gold_results, pred_results, occurrences)


@dataclass
class ErrorSummary:
    """Counts of one prediction set over notes: per category and class, confusion matrix, boundary offsets."""

    gold: dict[int, dict[str, int]]  # category -> gold class -> keys
    pred: dict[int, dict[str, int]]  # category -> predicted class -> keys
    confusion: list[list[int]]  # 10 x 10: index 0 = none, 1-9 = categories; rows gold, columns system
    start_offsets: list[int]
    end_offsets: list[int]
    per_note: dict[str, dict[str, int]]

    def totals(self) -> dict[str, dict[str, int]]:
        return {side: {c: sum(v[c] for v in table.values()) for c in classes}
                for side, table, classes in (("gold", self.gold, GOLD_CLASSES), ("pred", self.pred, PRED_CLASSES))}

    def to_dict(self) -> dict[str, Any]:
        labels = ["none", *(ID_TO_TAG[c] for c in CATEGORY_IDS)]
        return {
            "totals": self.totals(),
            "per_category": {str(c): {"name": ID_TO_NAME[c], "tag": ID_TO_TAG[c], "gold": self.gold[c],
                                      "pred": self.pred[c]} for c in CATEGORY_IDS},
            "confusion": {"labels": labels, "rows": "gold category ('none': spurious predicted keys)",
                          "columns": "category the system gave ('none': missed)", "matrix": self.confusion},
            "boundary_offsets": {"unit": "characters of the refined spans, predicted minus gold, one pair per gold "
                                         "boundary error", "start": _histogram(self.start_offsets),
                                 "end": _histogram(self.end_offsets)},
            "per_note": self.per_note,
        }


def _histogram(values: Sequence[int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items())}


def summarize(notes: Iterable[NoteErrors]) -> ErrorSummary:
    """Add up classified notes (keys per category and class, confusion matrix, boundary offsets)."""
    gold = {c: dict.fromkeys(GOLD_CLASSES, 0) for c in CATEGORY_IDS}
    pred = {c: dict.fromkeys(PRED_CLASSES, 0) for c in CATEGORY_IDS}
    confusion = [[0] * 10 for _ in range(10)]
    starts: list[int] = []
    ends: list[int] = []
    per_note = {}
    for note in notes:
        per_note[note.note_id] = note.counts()
        for (category, _), result in note.gold_keys.items():
            gold[category][result.error] += 1
            column = {"exact": category, "boundary": category, "missed": NONE}.get(result.error, result.other_category)
            confusion[category][column] += 1
            if result.offsets is not None:
                starts.append(result.offsets[0])
                ends.append(result.offsets[1])
        for (category, _), result in note.pred_keys.items():
            pred[category][result.error] += 1
            if result.error == "spurious":
                confusion[NONE][category] += 1
    return ErrorSummary(gold, pred, confusion, starts, ends, per_note)


def classify_predictions(scorer: Any, predictions: Mapping[str, Sequence[Any]]) -> list[NoteErrors]:
    """Classify every scored note of a prediction set (``scorer``: a :class:`utils.metric.Scorer`; predictions
    outside its split are ignored as officially), in the scorer's note order."""
    notes = scorer.notes(predictions.keys())
    out = []
    for note_id in notes.ids:
        rows = prediction_rows(predictions.get(note_id, ())) if scorer.in_split(note_id) else ()
        out.append(classify_note(note_id, scorer.text(note_id), scorer.gold_rows(note_id), rows))
    return out


__all__ = ["CLASSES", "GOLD_CLASSES", "PRED_CLASSES", "ErrorSummary", "KeyResult", "NoteErrors", "Occurrence",
           "classify_note",
           "classify_predictions", "summarize"]
