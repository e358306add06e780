"""Span-Cluster Consensus: LAMAR's ensemble of several span predictors (SPEC section 5).

Per note and category: models are weighted by how much they agree with the others, overlapping spans of all
models are clustered, a cluster backed by enough model weight becomes one span (its best-supported exact
boundary), and near-duplicates of the same category are merged.

With the published thresholds the output is identical to the published algorithm, tie breaks and floating-point
summation order included, but it never compares all pairs: spans are swept in start order so only overlapping
spans are compared (IoU >= t with t > 0 implies overlap), and the published depth-first visit order is replayed on
the sparse adjacency. ``ensemble.reference`` is the all-pairs oracle it is tested against; ``ensemble.batch``
merges all notes at once on arrays for the tuner and is tested to give exactly this merge. The command-line front
end is ``ensemble/mbr.py``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from utils.categories import CATEGORY_IDS
from utils.meddec.predictions import Predictions, Span

THRESHOLD_NAMES = ("t_cluster", "t_pair", "t_support", "t_dedup")


@dataclass(frozen=True)
class Thresholds:
    """The four thresholds of the ensemble; defaults are the published ones."""

    t_cluster: float = 0.1  # IoU that links two spans of a category into one cluster
    t_pair: float = 0.1  # IoU a span pair needs to count in the model-agreement matching
    t_support: float = 0.34  # summed model weight a cluster needs to be kept
    t_dedup: float = 0.8  # IoU above which two kept spans of a category are duplicates
    # Optional per-category support thresholds (categories 1-9 in order), replacing t_support; not published.
    t_support_by_category: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.t_support_by_category is not None:
            values = tuple(float(v) for v in self.t_support_by_category)
            if len(values) != len(CATEGORY_IDS):
                raise ValueError(f"t_support_by_category needs {len(CATEGORY_IDS)} values, got {len(values)}")
            object.__setattr__(self, "t_support_by_category", values)

    def support_threshold(self, category: int) -> float:
        """The support a cluster of ``category`` needs."""
        if self.t_support_by_category is None:
            return self.t_support
        return self.t_support_by_category[category - 1]

    def as_dict(self) -> dict[str, Any]:
        """The thresholds as JSON-ready values (the per-category list only when set)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in THRESHOLD_NAMES}
        if self.t_support_by_category is not None:
            out["t_support_by_category"] = {str(c): v for c, v in zip(CATEGORY_IDS, self.t_support_by_category)}
        return out


# A (start, end) pair of one category, and a pooled span: (start, end, model index).
Bounds = tuple[int, int]


def _iou(a_start: int, a_end: int, b_start: int, b_end: int) -> float:
    """IoU of two spans that are known to overlap (same expression as the published code)."""
    inter = min(a_end, b_end) - max(a_start, b_start)
    return inter / (max(a_end, b_end) - min(a_start, b_start))


def overlapping_pairs(spans: Sequence[Bounds]) -> list[tuple[int, int, float]]:
    """All (i, j, IoU) with i < j whose spans overlap, by a sweep over start order (no all-pairs loop)."""
    order = sorted(range(len(spans)), key=lambda k: spans[k][0])
    pairs = []
    for pos, i in enumerate(order):
        start, end = spans[i]
        for k in order[pos + 1:]:
            other_start, other_end = spans[k]
            if other_start >= end:
                break
            iou = _iou(start, end, other_start, other_end)
            pairs.append((i, k, iou) if i < k else (k, i, iou))
    return pairs


def cross_pairs(spans_a: Sequence[Bounds], spans_b: Sequence[Bounds]) -> list[tuple[float, int, int]]:
    """Overlapping (IoU, i, j) pairs between two lists, sorted best IoU first, then i, then j."""
    pooled = list(spans_a) + list(spans_b)
    n_a = len(spans_a)
    out = []
    for i, k, iou in overlapping_pairs(pooled):
        if i < n_a <= k:
            out.append((iou, i, k - n_a))
    out.sort(key=lambda c: (-c[0], c[1], c[2]))
    return out


def greedy_matched_prefix(candidates: Sequence[tuple[float, int, int]]) -> list[float]:
    """Matched-IoU sum of the greedy one-to-one matching after each candidate (a leading 0.0 included).

    The greedy matching walks the candidates best IoU first and stops at the first one below t_pair, so
    the matching under any t_pair is a prefix of the full run: its sum is ``prefix[count]``, where count
    is the number of candidates with IoU >= t_pair. The sums are accumulated in the published order.
    """
    used_a: set[int] = set()
    used_b: set[int] = set()
    total = 0.0
    prefix = [total]
    for iou, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            total += iou
        prefix.append(total)
    return prefix


def soft_f1(matched: float, n_a: int, n_b: int) -> float:
    """Agreement of two span lists from their matched-IoU sum: 1 if both are empty, 0 if one is."""
    if n_a == 0 and n_b == 0:
        return 1.0
    if n_a == 0 or n_b == 0:
        return 0.0
    precision = matched / n_a
    recall = matched / n_b
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def dfs_clusters(n: int, neighbours: list[list[tuple[int, float]]] | None, t_link: float = 0.0) -> list[list[int]]:
    """Connected components in the published stack-DFS pop order.

    ``neighbours[i]`` lists (j, IoU) in pool order; a link needs IoU >= ``t_link``. Pushing the
    unvisited linked spans in pool order is exactly what the published all-pairs loop does.
    ``neighbours=None`` means every span links every other (threshold 0): one cluster visited as
    0, n-1, n-2, ..., 1.
    """
    if n == 0:
        return []
    if neighbours is None:
        return [[0, *range(n - 1, 0, -1)]]
    visited = [False] * n
    clusters = []
    for first in range(n):
        if visited[first]:
            continue
        visited[first] = True
        row = neighbours[first]
        if not row or row[0][1] < t_link and all(iou < t_link for _, iou in row):
            clusters.append([first])
            continue
        stack = [first]
        members = []
        while stack:
            current = stack.pop()
            members.append(current)
            for other, iou in neighbours[current]:
                if iou >= t_link and not visited[other]:
                    visited[other] = True
                    stack.append(other)
        clusters.append(members)
    return clusters


def deduplicate_category(candidates: list[Bounds], t_dedup: float) -> list[Bounds]:
    """Published dedup of one category's kept spans, given sorted by (start, end).

    A span is compared with the kept slots in slot order; the first with IoU >= t_dedup is replaced if the span is
    longer, else the span is dropped. For t_dedup > 0 only overlapping slots can match; as starts only grow, a slot
    that ends before the current start can never match again and leaves the active list, so the cost stays
    near-linear. With t_dedup <= 0 every span meets the first slot (IoU 0 >= 0).
    """
    kept: list[Bounds] = []
    if t_dedup <= 0:
        for start, end in candidates:
            if not kept:
                kept.append((start, end))
            elif end - start > kept[0][1] - kept[0][0]:
                kept[0] = (start, end)
        return kept
    active: list[int] = []
    for start, end in candidates:
        active = [k for k in active if kept[k][1] > start]
        for k in active:
            kept_start, kept_end = kept[k]
            if _iou(kept_start, kept_end, start, end) >= t_dedup:
                if end - start > kept_end - kept_start:
                    kept[k] = (start, end)
                break
        else:
            active.append(len(kept))
            kept.append((start, end))
    return kept


def cluster_groups(
    pool: Sequence[tuple[int, int, int]], members: Sequence[int]
) -> tuple[tuple[int, ...], list[tuple[int, int, tuple[int, ...], int]]]:
    """A cluster's distinct models, in the iteration order of the published set (built in visit order),
    and its distinct boundaries in first-seen order as (start, end, voters in visit order, first member).

    Support and boundary votes are sums over exactly these sequences, so summing them in this order
    gives the published floating-point values bit for bit.
    """
    groups: dict[Bounds, list[int]] = {}
    first: dict[Bounds, int] = {}
    for k in members:
        start, end, model = pool[k]
        voters = groups.get((start, end))
        if voters is None:
            groups[start, end] = [model]
            first[start, end] = k
        else:
            voters.append(model)
    models_in_set_order = tuple(set(pool[k][2] for k in members))
    return models_in_set_order, [(s, e, tuple(voters), first[s, e]) for (s, e), voters in groups.items()]


class CategoryPool:
    """One note's spans of one category from all models, with every threshold-independent fact worked out once.

    The pooled spans, their overlapping pairs and IoUs (the cluster graph), and per ordered model pair the greedy
    matching candidates and prefix sums: a merge under any thresholds then only reads these.
    """

    def __init__(self, per_model: list[list[Bounds]], category: int = 0) -> None:
        self.category = category
        self.per_model = per_model
        self.n_models = len(per_model)
        self.sizes = [len(spans) for spans in per_model]
        self.pool: list[tuple[int, int, int]] = [(s, e, m) for m, spans in enumerate(per_model) for s, e in spans]
        edges = overlapping_pairs([(s, e) for s, e, _ in self.pool])
        neighbours: list[list[tuple[int, float]]] = [[] for _ in self.pool]
        for i, j, iou in edges:
            neighbours[i].append((j, iou))
            neighbours[j].append((i, iou))
        for row in neighbours:
            row.sort()
        self.neighbours = neighbours
        self.cluster_levels = sorted({iou for _, _, iou in edges})
        # per ordered model pair: the candidates' IoUs negated (ascending, for bisect) and the greedy prefix sums
        self.matching: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
        for m in range(self.n_models):
            for n in range(m + 1, self.n_models):
                forward = cross_pairs(per_model[m], per_model[n])
                backward = sorted(((iou, j, i) for iou, i, j in forward), key=lambda c: (-c[0], c[1], c[2]))
                for pair, cands in (((m, n), forward), ((n, m), backward)):
                    self.matching[pair] = ([-c[0] for c in cands], greedy_matched_prefix(cands))

    # -- step 1: model weights -------------------------------------------------------------------
    def similarity(self, m: int, n: int, t_pair: float) -> float:
        """Soft F1 of the greedy one-to-one matching of model m's spans with model n's (IoU >= t_pair).

        Pairs that do not overlap have IoU 0 and add nothing to the matched sum, so with t_pair <= 0
        leaving them out of the candidates changes no value.
        """
        negated, prefix = self.matching[m, n]
        return soft_f1(prefix[bisect_right(negated, -t_pair)], self.sizes[m], self.sizes[n])

    def weights(self, t_pair: float) -> list[float]:
        """w_m = mean similarity to the other models, normalised to sum 1 (uniform if all 0; 1 alone)."""
        m_count = self.n_models
        if m_count == 1:
            return [1.0]
        raw = []
        for m in range(m_count):
            sims = [self.similarity(m, n, t_pair) for n in range(m_count) if n != m]
            raw.append(sum(sims) / len(sims))
        total = sum(raw)
        return [w / total for w in raw] if total > 0 else [1.0 / m_count] * m_count

    # -- step 2: clusters --------------------------------------------------------------------------
    def clusters(self, t_cluster: float) -> list[list[int]]:
        """Clusters of "IoU >= t_cluster" as pool indices in published visit order."""
        if t_cluster <= 0:  # IoU 0 >= 0: even spans that do not overlap are linked
            return dfs_clusters(len(self.pool), None)
        if not self.cluster_levels or t_cluster > self.cluster_levels[-1]:  # nothing linked
            return [[k] for k in range(len(self.pool))]
        return dfs_clusters(len(self.pool), self.neighbours, t_cluster)

    # -- steps 3 and 4: support and boundary -------------------------------------------------------
    def structure(self, t_cluster: float) -> list[tuple[tuple[int, ...], tuple]]:
        """Per cluster: the distinct models in the iteration order of the published set (built in visit order),
        and the distinct boundaries in first-seen order, each with its models in visit order.

        Support and boundary votes are sums over exactly these sequences, so they come out bit for bit
        as the published sums.
        """
        result = []
        for members in self.clusters(t_cluster):
            if len(members) == 1:
                start, end, model = self.pool[members[0]]
                result.append(((model,), ((start, end, (model,)),)))
                continue
            models, groups = cluster_groups(self.pool, members)
            result.append((models, tuple((start, end, voters) for start, end, voters, _ in groups)))
        return result

    @staticmethod
    def votes_of(structure: list[tuple[tuple[int, ...], tuple]], weights: list[float]) -> list[tuple[int, int, float]]:
        """(start, end, support) per cluster, in cluster order: support = summed weight of the cluster's distinct
        models; boundary = the exact (start, end) with the largest summed weight; ties: the shorter, then the first
        seen."""
        result = []
        for models, groups in structure:
            support = sum(weights[m] for m in models)
            if len(groups) == 1:
                start, end, _ = groups[0]
            else:
                best_rank = None
                for group_start, group_end, voters in groups:
                    score = 0.0
                    for m in voters:
                        score += weights[m]
                    rank = (score, group_start - group_end)
                    if best_rank is None or rank > best_rank:
                        best_rank, start, end = rank, group_start, group_end
            result.append((start, end, support))
        return result

    def kept_spans(self, thresholds: Thresholds, t_support: float | None = None) -> list[Span]:
        """The category's merged spans (support >= t_support, deduplicated), sorted by (start, end)."""
        if t_support is None:
            t_support = thresholds.t_support
        votes = sorted(self.votes_of(self.structure(thresholds.t_cluster), self.weights(thresholds.t_pair)))
        chosen = [(s, e) for s, e, support in votes if support >= t_support]
        return [Span(s, e, self.category) for s, e in deduplicate_category(chosen, thresholds.t_dedup)]

    def explain(self, thresholds: Thresholds, t_support: float) -> dict[str, Any]:
        """Weights, clusters (members as [start, end, model] in visit order), support, boundary, kept
        flag, and the spans left after deduplication."""
        weights = self.weights(thresholds.t_pair)
        clusters = []
        for members, (models, groups) in zip(self.clusters(thresholds.t_cluster), self.structure(thresholds.t_cluster)):
            start, end, support = self.votes_of([(models, groups)], weights)[0]
            clusters.append({"members": [list(self.pool[k]) for k in members], "support": support,
                             "boundary": [start, end], "kept": support >= t_support})
        return {"weights": weights, "support_threshold": t_support, "clusters": clusters,
                "after_dedup": [[s.start, s.end] for s in self.kept_spans(thresholds, t_support)]}


def _is_int(value: Any) -> bool:
    """An int offset or category as the published code tests it (``isinstance(x, int)``, so bools pass)."""
    return isinstance(value, int)


def _triple(item: Any) -> tuple[Any, Any, Any] | None:
    """(start, end, category) of a Span, a 3-sequence or an evaluator-style dict; None if it is none of these."""
    if isinstance(item, Mapping):
        if "start_offset" in item and "end_offset" in item and "category" in item:
            return item["start_offset"], item["end_offset"], item["category"]
        return None
    if isinstance(item, (str, bytes)):
        return None
    try:
        start, end, category = item
    except (TypeError, ValueError):
        return None
    return start, end, category


def invalid_reason(item: Any) -> str | None:
    """Why the ensemble drops a span (the published rules), None when it is used."""
    triple = _triple(item)
    if triple is None:
        return "not a (start, end, category) span"
    start, end, category = triple
    if not (_is_int(start) and _is_int(end) and _is_int(category)):
        return "offsets or category not integers"
    if category not in CATEGORY_IDS:
        return "category outside 1-9"
    if not 0 <= start < end:
        return "start < 0 or end <= start"
    return None


def valid_spans(spans: Sequence[Any] | None) -> list[Span]:
    """The spans the ensemble uses: int offsets and category, category 1-9, 0 <= start < end (others dropped)."""
    return [Span(*(int(v) for v in _triple(item))) for item in spans or () if invalid_reason(item) is None]


class PreparedNote:
    """One note's validated spans from all models, grouped by category; merge it under any thresholds."""

    def __init__(self, model_spans: Sequence[Sequence[Any]]) -> None:
        cleaned = [valid_spans(spans) for spans in model_spans]
        self.n_models = len(cleaned)
        self.pools: dict[int, CategoryPool] = {}
        for category in CATEGORY_IDS:
            per_model = [[(s.start, s.end) for s in spans if s.category == category] for spans in cleaned]
            if any(per_model):
                self.pools[category] = CategoryPool(per_model, category)

    def merge(self, thresholds: Thresholds = Thresholds(), explain: list | None = None) -> list[Span]:
        """The merged spans of the note, sorted by (start, end, category)."""
        out = []
        for category, pool in self.pools.items():
            t_support = thresholds.support_threshold(category)
            out.extend(pool.kept_spans(thresholds, t_support))
            if explain is not None:
                explain.append({"category": category, **pool.explain(thresholds, t_support)})
        out.sort()
        return out


def merge_note(
    model_spans: Sequence[Sequence[Any]],
    thresholds: Thresholds = Thresholds(),
    explain: list | None = None,
) -> list[Span]:
    """Merge one note's span lists (one per model; Span, (start, end, category) or evaluator dicts).

    Invalid spans are dropped first. If ``explain`` is a list, one record per category with spans is
    appended: model weights, clusters with members, support, chosen boundary, and the spans left
    after deduplication.
    """
    return PreparedNote(model_spans).merge(thresholds, explain=explain)


def note_ids_of(models: Sequence[Predictions]) -> list[str]:
    """The union of note ids across models, sorted (the published output order)."""
    ids: set[str] = set()
    for predictions in models:
        ids.update(predictions)
    return sorted(ids)


def prepare_predictions(models: Sequence[Predictions], note_ids: Iterable[str] | None = None) -> dict[str, PreparedNote]:
    """PreparedNote per note id; a note missing in one model counts as an empty list for it."""
    ids = note_ids_of(models) if note_ids is None else list(note_ids)
    return {note_id: PreparedNote([predictions.get(note_id, []) for predictions in models]) for note_id in ids}


def merge_prepared(prepared: dict[str, PreparedNote], thresholds: Thresholds = Thresholds()) -> Predictions:
    """Merge prepared notes (the tuner's inner loop)."""
    return {note_id: note.merge(thresholds) for note_id, note in prepared.items()}


def merge_predictions(
    models: Sequence[Predictions],
    thresholds: Thresholds = Thresholds(),
    explain: list | None = None,
    progress: bool = False,
) -> Predictions:
    """Merge whole prediction sets (any number of models), notes in sorted id order.

    With ``explain`` a list, records carry a ``note_id`` field besides those of :func:`merge_note`.
    """
    from tqdm.auto import tqdm

    out: Predictions = {}
    for note_id in tqdm(note_ids_of(models), desc="merging notes", unit="note", disable=not progress):
        records: list | None = [] if explain is not None else None
        out[note_id] = merge_note([predictions.get(note_id, []) for predictions in models], thresholds, records)
        if explain is not None:
            explain.extend({"note_id": note_id, **record} for record in records)
    return out
