"""Span-Cluster Consensus: LAMAR's ensemble of several span predictors (SPEC section 5).

Per note and category: models are weighted by how much they agree with the others, overlapping spans
of all models are clustered, a cluster backed by enough model weight becomes one span (its
best-supported exact boundary), and near-duplicates of the same category are merged.

With the published thresholds the output is identical to the published algorithm, tie breaks and
floating-point summation order included, but it never compares all pairs: spans are swept in start
order so only overlapping spans are compared (IoU >= t with t > 0 implies overlap), and the published
depth-first visit order is replayed on the sparse adjacency. ``ensemble.reference`` is the all-pairs
oracle it is tested against.

Threshold-independent work (validation, grouping, overlapping pairs and their IoUs) is done once per
note in :class:`PreparedNote`; re-merging a prepared note with ``cache=True`` reuses each step for as long
as a threshold stays between the same IoU/support levels. The tuner (``ensemble.optimize``) merges all
prepared notes at once on arrays (``ensemble.batch``), which is tested to give exactly this merge.

CLI::

    python -m ensemble.mbr --predictions m1.json m2.json m3.json --output merged.json [--explain e.jsonl]
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import json
import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from utils.categories import CATEGORY_IDS
from utils.fileio import InputError, atomic_open, report_input_error
from utils.meddec.predictions import Predictions, Span, read_predictions, write_predictions

from ensemble.reference import valid_spans

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
    """Published dedup of one category's kept spans, given sorted by (start, end)."""
    return deduplicate_with_bounds(candidates, t_dedup)[0]


def deduplicate_with_bounds(candidates: list[Bounds], t_dedup: float) -> tuple[list[Bounds], float, float]:
    """Published dedup, plus the interval (low, high] of thresholds that give the same result.

    A span is compared with the kept slots in slot order; the first with IoU >= t_dedup is replaced if
    the span is longer, else the span is dropped. For t_dedup > 0 only overlapping slots can match; as
    starts only grow, a slot that ends before the current start can never match again and leaves the
    active list, so the cost stays near-linear. Every IoU compared bounds the interval: the result only
    depends on which side of t_dedup each compared IoU fell.
    """
    kept: list[Bounds] = []
    if t_dedup <= 0:  # IoU 0 >= 0: every span meets the first slot
        for start, end in candidates:
            if not kept:
                kept.append((start, end))
            elif end - start > kept[0][1] - kept[0][0]:
                kept[0] = (start, end)
        return kept, float("-inf"), 0.0
    low, high = 0.0, float("inf")
    active: list[int] = []
    for start, end in candidates:
        active = [k for k in active if kept[k][1] > start]
        for k in active:
            kept_start, kept_end = kept[k]
            iou = _iou(kept_start, kept_end, start, end)
            if iou >= t_dedup:
                if iou < high:
                    high = iou
                if end - start > kept_end - kept_start:
                    kept[k] = (start, end)
                break
            if iou > low:
                low = iou
        else:
            active.append(len(kept))
            kept.append((start, end))
    return kept, low, high


# A cached step result is looked up by which side of every relevant IoU/support level a threshold falls;
# a pool's caches are emptied when they grow past this many entries, to bound memory on long studies.
CACHE_LIMIT = 2048


def _level_key(levels: list[float], threshold: float, zero_links_all: bool = False) -> int:
    """How many levels lie below the threshold: values >= threshold are exactly levels[key:].

    With ``zero_links_all`` a threshold <= 0 gets its own key -1, because then non-overlapping pairs
    (IoU 0, never among the levels) are linked as well.
    """
    if zero_links_all and threshold <= 0:
        return -1
    return bisect_left(levels, threshold)


def _remember(cache: dict, key: Any, value: Any) -> Any:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


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
    """One note's spans of one category from all models, with every threshold-independent fact.

    Each step's result only changes when a threshold crosses one of the IoU (or support) values that
    occur in this pool, so with ``cache=True`` results are kept per such interval: the tuner then
    redoes only what a new trial really changes.
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
        self.candidates: dict[tuple[int, int], list[tuple[float, int, int]]] = {}
        if self.n_models > 1:
            for m in range(self.n_models):
                for n in range(m + 1, self.n_models):
                    forward = cross_pairs(per_model[m], per_model[n])
                    self.candidates[m, n] = forward
                    self.candidates[n, m] = sorted(((iou, j, i) for iou, i, j in forward), key=lambda c: (-c[0], c[1], c[2]))
        self.pair_levels = sorted({c[0] for cands in self.candidates.values() for c in cands})
        # per ordered model pair: the candidates' IoUs negated (ascending, for bisect) and the greedy prefix sums
        self.matching: dict[tuple[int, int], tuple[list[float], list[float]]] = {
            pair: ([-c[0] for c in cands], greedy_matched_prefix(cands)) for pair, cands in self.candidates.items()
        }
        self._weights: dict[int, list[float]] = {}
        self._clusters: dict[int, list[list[int]]] = {}
        self._structures: dict[int, list[tuple[tuple[int, ...], tuple]]] = {}
        self._votes: dict[tuple[int, int], tuple[list[tuple[int, int, float]], list[float]]] = {}
        self._chosen: dict[tuple[int, int, int], list[Any]] = {}

    # -- step 1: model weights -------------------------------------------------------------------
    def similarity(self, m: int, n: int, t_pair: float) -> float:
        """Soft F1 of the greedy one-to-one matching of model m's spans with model n's (IoU >= t_pair).

        Pairs that do not overlap have IoU 0 and add nothing to the matched sum, so with t_pair <= 0
        leaving them out of the candidates changes no value.
        """
        negated, prefix = self.matching[m, n]
        return soft_f1(prefix[bisect_right(negated, -t_pair)], self.sizes[m], self.sizes[n])

    def weights(self, t_pair: float, cache: bool = False) -> list[float]:
        """w_m = mean similarity to the other models, normalised to sum 1 (uniform if all 0; 1 alone)."""
        key = _level_key(self.pair_levels, t_pair)
        if cache and key in self._weights:
            return self._weights[key]
        m_count = self.n_models
        if m_count == 1:
            weights = [1.0]
        else:
            raw = []
            for m in range(m_count):
                sims = [self.similarity(m, n, t_pair) for n in range(m_count) if n != m]
                raw.append(sum(sims) / len(sims))
            total = sum(raw)
            weights = [w / total for w in raw] if total > 0 else [1.0 / m_count] * m_count
        return _remember(self._weights, key, weights) if cache else weights

    # -- step 2: clusters --------------------------------------------------------------------------
    def clusters(self, t_cluster: float, cache: bool = False) -> list[list[int]]:
        """Clusters of "IoU >= t_cluster" as pool indices in published visit order."""
        key = _level_key(self.cluster_levels, t_cluster, zero_links_all=True)
        if cache and key in self._clusters:
            return self._clusters[key]
        if key == -1:
            result = dfs_clusters(len(self.pool), None)
        elif key >= len(self.cluster_levels):  # nothing linked: every span is its own cluster
            result = [[k] for k in range(len(self.pool))]
        else:
            result = dfs_clusters(len(self.pool), self.neighbours, t_cluster)
        return _remember(self._clusters, key, result) if cache else result

    # -- steps 3 and 4: support and boundary -------------------------------------------------------
    def structure(self, t_cluster: float, cache: bool = False) -> list[tuple[tuple[int, ...], tuple]]:
        """Per cluster: the distinct models in the iteration order of the published set (built in visit
        order), and the distinct boundaries in first-seen order, each with its models in visit order.

        Support and boundary votes are sums over exactly these sequences, so they come out bit for bit
        as the published sums while the per-trial work is only additions.
        """
        key = _level_key(self.cluster_levels, t_cluster, zero_links_all=True)
        if cache and key in self._structures:
            return self._structures[key]
        pool = self.pool
        result = []
        for members in self.clusters(t_cluster, cache):
            if len(members) == 1:
                start, end, model = pool[members[0]]
                result.append(((model,), ((start, end, (model,)),)))
                continue
            models, groups = cluster_groups(pool, members)
            result.append((models, tuple((start, end, voters) for start, end, voters, _ in groups)))
        return _remember(self._structures, key, result) if cache else result

    def votes(self, thresholds: Thresholds, cache: bool = False) -> tuple[list[tuple[int, int, float]], list[float]]:
        """(start, end, support) of every cluster sorted by (start, end), and the sorted support levels.

        Support = summed weight of the cluster's distinct models; boundary = the exact (start, end)
        with the largest summed weight; ties: the shorter, then the first seen.
        """
        key = (_level_key(self.pair_levels, thresholds.t_pair),
               _level_key(self.cluster_levels, thresholds.t_cluster, zero_links_all=True))
        if cache and key in self._votes:
            return self._votes[key]
        weights = self.weights(thresholds.t_pair, cache)
        result = self.votes_of(self.structure(thresholds.t_cluster, cache), weights)
        result.sort()
        value = (result, sorted({support for _, _, support in result}))
        return _remember(self._votes, key, value) if cache else value

    @staticmethod
    def votes_of(structure: list[tuple[tuple[int, ...], tuple]], weights: list[float]) -> list[tuple[int, int, float]]:
        """(start, end, support) per cluster, in cluster order (see :meth:`structure`)."""
        sums: dict[tuple[int, ...], float] = {}
        scores: dict[tuple[int, ...], float] = {}
        result = []
        for models, groups in structure:
            support = sums.get(models)
            if support is None:
                support = sums[models] = sum(weights[m] for m in models)
            if len(groups) == 1:
                start, end, _ = groups[0]
            else:
                best_rank = None
                for group_start, group_end, voters in groups:
                    score = scores.get(voters)
                    if score is None:
                        score = 0.0
                        for m in voters:
                            score += weights[m]
                        scores[voters] = score
                    rank = (score, group_start - group_end)
                    if best_rank is None or rank > best_rank:
                        best_rank, start, end = rank, group_start, group_end
            result.append((start, end, support))
        return result

    def kept_bounds(self, thresholds: Thresholds, cache: bool = False, t_support: float | None = None) -> list[Bounds]:
        """Boundaries of the clusters with support >= t_support, deduplicated, sorted by (start, end)."""
        return [(s.start, s.end) for s in self.kept_spans(thresholds, cache, t_support)]

    def kept_spans(self, thresholds: Thresholds, cache: bool = False, t_support: float | None = None) -> list[Span]:
        """The category's merged spans (support >= t_support, deduplicated), sorted by (start, end)."""
        if t_support is None:
            t_support = thresholds.t_support
        votes, support_levels = self.votes(thresholds, cache)
        category = self.category
        if not cache:
            chosen = [(s, e) for s, e, support in votes if support >= t_support]
            return [Span(s, e, category) for s, e in deduplicate_category(chosen, thresholds.t_dedup)]
        wkey = _level_key(self.pair_levels, thresholds.t_pair)
        ckey = _level_key(self.cluster_levels, thresholds.t_cluster, zero_links_all=True)
        chosen_key = (wkey, ckey, _level_key(support_levels, t_support))
        entry = self._chosen.get(chosen_key)
        if entry is None:
            chosen = [(s, e) for s, e, support in votes if support >= t_support]
            entry = _remember(self._chosen, chosen_key, [chosen, None])
        # the last dedup result is reused while t_dedup stays inside the interval it is valid for
        t_dedup = thresholds.t_dedup
        last = entry[1]
        if last is not None and last[1] < t_dedup <= last[2]:
            return last[0]
        kept, low, high = deduplicate_with_bounds(entry[0], t_dedup)
        entry[1] = ([Span(s, e, category) for s, e in kept], low, high)
        return entry[1][0]

    def explain(self, thresholds: Thresholds, t_support: float) -> dict[str, Any]:
        """Weights, clusters (members as [start, end, model] in visit order), support, boundary, kept
        flag, and the spans left after deduplication."""
        weights = self.weights(thresholds.t_pair)
        clusters = []
        structure = self.structure(thresholds.t_cluster)
        for members, (models, groups) in zip(self.clusters(thresholds.t_cluster), structure):
            start, end, support = self.votes_of([(models, groups)], weights)[0]
            clusters.append({
                "members": [list(self.pool[k]) for k in members],
                "support": support,
                "boundary": [start, end],
                "kept": support >= t_support,
            })
        return {"weights": weights, "support_threshold": t_support, "clusters": clusters,
                "after_dedup": [list(b) for b in self.kept_bounds(thresholds, t_support=t_support)]}


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

    def merge(self, thresholds: Thresholds = Thresholds(), cache: bool = False, explain: list | None = None) -> list[Span]:
        """The merged spans of the note, sorted by (start, end, category)."""
        out = []
        for category, pool in self.pools.items():
            t_support = thresholds.support_threshold(category)
            out.extend(pool.kept_spans(thresholds, cache, t_support))
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


def merge_prepared(prepared: dict[str, PreparedNote], thresholds: Thresholds = Thresholds(), cache: bool = False) -> Predictions:
    """Merge prepared notes (the tuner's inner loop)."""
    return {note_id: note.merge(thresholds, cache) for note_id, note in prepared.items()}


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


# ----------------------------------------------------------------------------------------------------
# Input files and command line
# ----------------------------------------------------------------------------------------------------
CSV_COLUMNS = ("file_id", "predicted", "raw_text")


def read_inference_csv(path: str | os.PathLike[str]) -> Predictions:
    """Predictions from an inference CSV (file_id, predicted = tagged model output, raw_text).

    The tagged output is turned into offsets by ``utils.pred_to_offset.outputs_to_predictions``.
    """
    from utils.gt_to_tag import read_csv_strings
    from utils.pred_to_offset import outputs_to_predictions

    frame = read_csv_strings(path, CSV_COLUMNS)
    duplicated = frame["file_id"][frame["file_id"].duplicated()]
    if len(duplicated):
        line = int(duplicated.index[0]) + 2
        raise InputError(path, f"line {line}", f"duplicate file_id {duplicated.iloc[0]!r}: each note may appear once")
    rows = list(zip(frame["file_id"], frame["raw_text"], frame["predicted"]))
    predictions, _reports = outputs_to_predictions(rows)
    return predictions


def read_model_predictions(path: str | os.PathLike[str]) -> Predictions:
    """One model's predictions: an inference CSV (by its .csv suffix) or prediction JSON."""
    if str(path).lower().endswith(".csv"):
        return read_inference_csv(path)
    return read_predictions(path)


def write_explain(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def unit_interval(text: str) -> float:
    """argparse type: a float in [0, 1] (the range the thresholds are defined and tuned on)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def add_threshold_arguments(parser: Any) -> None:
    """--t_cluster/--t_pair/--t_support/--t_dedup; unset flags stay None (published defaults apply later)."""
    helps = {
        "t_cluster": "IoU that links two spans of a category into one cluster",
        "t_pair": "IoU a span pair needs to count in the model-agreement matching",
        "t_support": "summed model weight a cluster needs to be kept",
        "t_dedup": "IoU at which a kept span duplicates another of its category",
    }
    defaults = Thresholds()
    for name in THRESHOLD_NAMES:
        parser.add_argument(f"--{name}", type=unit_interval, default=None,
                            help=f"{helps[name]} (default: {getattr(defaults, name)}, the published value)")


def resolve_thresholds(args: Any, thresholds_json: str | None = None) -> Thresholds:
    """Flags given on the command line win over a thresholds JSON, which wins over the published defaults."""
    base = thresholds_from_json(thresholds_json) if thresholds_json else Thresholds()
    chosen = {name: getattr(args, name) for name in THRESHOLD_NAMES if getattr(args, name) is not None}
    by_category = None if "t_support" in chosen else base.t_support_by_category
    return Thresholds(**{**{n: getattr(base, n) for n in THRESHOLD_NAMES}, **chosen}, t_support_by_category=by_category)


def build_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ensemble.mbr",
        description="Merge several models' span predictions with Span-Cluster Consensus (LAMAR).",
    )
    parser.add_argument("--predictions", nargs="+", required=True, metavar="FILE",
                        help="one file per model: prediction JSON, or an inference CSV (file_id, predicted, raw_text)")
    parser.add_argument("--output", required=True, help="merged prediction JSON")
    parser.add_argument("--thresholds_json", metavar="FILE",
                        help="read the thresholds from a JSON object (e.g. the tuner's best.json); flags given win")
    parser.add_argument("--explain", metavar="FILE.jsonl",
                        help="write per note and category: model weights, clusters, support, boundary")
    add_threshold_arguments(parser)
    return parser


def thresholds_from_json(path: str | os.PathLike[str]) -> Thresholds:
    """Thresholds from a JSON object with the four names (and optionally ``t_support_by_category``,
    an object "1".."9" -> value) at top level or under "thresholds" (the tuner's best.json)."""
    from utils.fileio import read_json

    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("thresholds"), dict):
        data = data["thresholds"]
    if not isinstance(data, dict):
        raise InputError(path, "top level", "expected an object with t_cluster, t_pair, t_support, t_dedup")

    def number(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise InputError(path, where, f"expected a number in [0, 1], got {value!r}")
        return float(value)

    values: dict[str, Any] = {name: number(data.get(name), f"field '{name}'") for name in THRESHOLD_NAMES}
    by_category = data.get("t_support_by_category")
    if by_category is not None:
        if not isinstance(by_category, dict) or sorted(by_category) != sorted(str(c) for c in CATEGORY_IDS):
            raise InputError(path, "field 't_support_by_category'", "expected an object with keys \"1\" .. \"9\"")
        values["t_support_by_category"] = tuple(
            number(by_category[str(c)], f"field 't_support_by_category.{c}'") for c in CATEGORY_IDS
        )
    return Thresholds(**values)


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        thresholds = resolve_thresholds(args, args.thresholds_json)
        models = [read_model_predictions(path) for path in args.predictions]
    except InputError as err:
        return report_input_error(err)
    explain: list | None = [] if args.explain else None
    merged = merge_predictions(models, thresholds, explain, progress=True)
    write_predictions(args.output, merged)
    if explain is not None:
        write_explain(args.explain, explain)
    n_spans = sum(len(spans) for spans in merged.values())
    print(f"merged {len(models)} model(s): {len(merged)} notes, {n_spans} spans -> {args.output} "
          f"({', '.join(f'{k}={v}' for k, v in thresholds.as_dict().items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
