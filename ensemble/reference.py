"""Span-Cluster Consensus written the slow, obvious way: a literal reading of SPEC section 5.

Every comparison is made between all pairs of spans, exactly in the order the published description
gives. It is the oracle the fast implementation in ``ensemble.consensus`` is tested against, and the
"before" side of ``benchmarks/bench_ensemble.py``. Do not optimise it: its value is being obviously
right.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

from utils.categories import CATEGORY_IDS
from utils.meddec.predictions import Predictions, Span


def is_int(value: Any) -> bool:
    """An int offset or category as the published code tests it (``isinstance(x, int)``, so bools pass)."""
    return isinstance(value, int)


def as_triple(item: Any) -> tuple[Any, Any, Any] | None:
    """(start, end, category) of a Span, a 3-sequence or an evaluator-style dict; None if it is neither."""
    if isinstance(item, Mapping):
        if not all(k in item for k in ("start_offset", "end_offset", "category")):
            return None
        return item["start_offset"], item["end_offset"], item["category"]
    if isinstance(item, (str, bytes)):
        return None
    try:
        start, end, category = item
    except (TypeError, ValueError):
        return None
    return start, end, category


def valid_spans(spans: Sequence[Any] | None) -> list[Span]:
    """Drop spans without int offsets/category, with a category outside 1-9, start < 0 or end <= start."""
    out = []
    for item in spans or ():
        triple = as_triple(item)
        if triple is None:
            continue
        start, end, category = triple
        if not (is_int(start) and is_int(end) and is_int(category)):
            continue
        if category not in CATEGORY_IDS or start < 0 or end <= start:
            continue
        out.append(Span(int(start), int(end), int(category)))
    return out


def iou(a: Span, b: Span) -> float:
    """Overlap length / (max end - min start); 0.0 when the spans do not overlap."""
    inter = min(a.end, b.end) - max(a.start, b.start)
    if inter <= 0:
        return 0.0
    return inter / (max(a.end, b.end) - min(a.start, b.start))


def similarity(spans_a: list[Span], spans_b: list[Span], t_pair: float) -> float:
    """Soft F1 of a one-to-one greedy matching (best IoU first; ties: A's order, then B's)."""
    if not spans_a and not spans_b:
        return 1.0
    if not spans_a or not spans_b:
        return 0.0
    candidates = []
    for i, a in enumerate(spans_a):
        for j, b in enumerate(spans_b):
            score = iou(a, b)
            if score >= t_pair:
                candidates.append((score, i, j))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    total = 0.0
    for score, i, j in candidates:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        total += score
    precision = total / len(spans_a)
    recall = total / len(spans_b)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def model_weights(per_model: list[list[Span]], t_pair: float) -> list[float]:
    """w_m = mean similarity to the other models, normalised to sum 1 (uniform if all 0; 1 if alone)."""
    m_count = len(per_model)
    if m_count == 1:
        return [1.0]
    raw = []
    for m in range(m_count):
        sims = [similarity(per_model[m], per_model[n], t_pair) for n in range(m_count) if n != m]
        raw.append(sum(sims) / len(sims))
    total = sum(raw)
    if total > 0:
        return [w / total for w in raw]
    return [1.0 / m_count] * m_count


def clusters_in_visit_order(pool: list[tuple[Span, int]], t_cluster: float) -> list[list[int]]:
    """Connected components of "IoU >= t_cluster", each listed in the stack-based DFS pop order."""
    visited = [False] * len(pool)
    clusters = []
    for first in range(len(pool)):
        if visited[first]:
            continue
        visited[first] = True
        stack = [first]
        members = []
        while stack:
            current = stack.pop()
            members.append(current)
            for other in range(len(pool)):
                if not visited[other] and iou(pool[current][0], pool[other][0]) >= t_cluster:
                    visited[other] = True
                    stack.append(other)
        clusters.append(members)
    return clusters


def cluster_support(models_in_order: list[int], weights: list[float]) -> float:
    """Summed weight of the distinct models of a cluster (a set built in visit order, as published)."""
    return sum(weights[m] for m in set(models_in_order))


def boundary_vote(members: list[tuple[Span, int]], weights: list[float]) -> tuple[int, int]:
    """The exact (start, end) with the largest summed weight; ties: shorter, then first seen."""
    votes: dict[tuple[int, int], float] = {}
    for span, model in members:
        key = (span.start, span.end)
        votes[key] = votes.get(key, 0.0) + weights[model]
    best = None
    for key, score in votes.items():
        rank = (score, -(key[1] - key[0]))
        if best is None or rank > best[0]:
            best = (rank, key)
    return best[1]


def deduplicate(spans: list[Span], t_dedup: float) -> list[Span]:
    """Sort by (category, start, end); a span with IoU >= t_dedup to the first such kept span of its
    category replaces it if longer, else is dropped."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.category, s.start, s.end)):
        for index, previous in enumerate(kept):
            if previous.category != span.category:
                continue
            if iou(previous, span) >= t_dedup:
                if span.end - span.start > previous.end - previous.start:
                    kept[index] = span
                break
        else:
            kept.append(span)
    return kept


def merge_note(model_spans: Sequence[Sequence[Any]], thresholds: Any = None, explain: list | None = None) -> list[Span]:
    """All-pairs Span-Cluster Consensus of one note; ``thresholds`` has t_cluster/t_pair/t_support/t_dedup."""
    if thresholds is None:
        from ensemble.consensus import Thresholds

        thresholds = Thresholds()
    cleaned = [valid_spans(spans) for spans in model_spans]
    if not cleaned:
        return []
    chosen: list[Span] = []
    for category in CATEGORY_IDS:
        per_model = [[s for s in spans if s.category == category] for spans in cleaned]
        weights = model_weights(per_model, thresholds.t_pair)
        pool = [(span, m) for m, spans in enumerate(per_model) for span in spans]
        records = []
        for members in clusters_in_visit_order(pool, thresholds.t_cluster):
            in_order = [pool[k] for k in members]
            support = cluster_support([model for _, model in in_order], weights)
            start, end = boundary_vote(in_order, weights)
            keep = support >= thresholds.t_support
            if keep:
                chosen.append(Span(start, end, category))
            records.append({"members": [[s.start, s.end, m] for s, m in in_order], "support": support,
                            "boundary": [start, end], "kept": keep})
        if explain is not None and pool:
            explain.append({"category": category, "weights": weights, "clusters": records})
    return sorted(deduplicate(chosen, thresholds.t_dedup), key=lambda s: (s.start, s.end, s.category))


def merge_predictions(models: Sequence[Predictions], thresholds: Any = None) -> Predictions:
    """Merge whole prediction sets; a note missing in one model counts as an empty list for it."""
    note_ids: dict[str, None] = {}
    for predictions in models:
        note_ids.update(dict.fromkeys(predictions))
    return {
        note_id: merge_note([predictions.get(note_id, []) for predictions in models], thresholds)
        for note_id in sorted(note_ids)
    }
