"""Span-Cluster Consensus over every prepared note at once, with array operations: the tuner's inner loop.

``ensemble.consensus`` merges one note at a time in Python. A tuning trial merges all validation notes under
new thresholds, thousands of times, so here everything that does not depend on the thresholds is laid
out once in flat arrays over all (note, category) pools:

- model agreement: the greedy matching under t_pair is a prefix of the full greedy run (it stops at the
  first candidate below t_pair), so each model pair's matched-IoU sum is one lookup into its prefix sums;
- clusters: a pool's clusters only change where t_cluster crosses one of its IoU values, so its cluster
  structure (distinct models per cluster, distinct boundaries with their voters in the published visit
  order) is built up front for every such interval;
- boundaries are always member spans, so every merged span is a row of one table of pooled input spans
  (which ``utils.metric.SpanTableScorer`` maps straight to its refined text and tokens).

A trial then picks each pool's structure with one search, sums weights column by column in the published
order (bit-identical to the Python sums), picks each cluster's boundary, keeps the clusters with enough
support and deduplicates; only runs of three or more overlapping kept spans go back to the Python dedup.
``ensemble.consensus.merge_prepared`` stays the reference it is tested against.
"""

from __future__ import annotations

from array import array
from typing import Mapping

import numpy as np

from ensemble.consensus import PreparedNote, Thresholds, cluster_groups, deduplicate_category
from utils.meddec.predictions import Predictions, Span
from utils.metric import Scorer, SpanTableScorer

# Cluster records (sum over pools of spans x (IoU levels + 2)) above which the layout is not built:
# a pool with thousands of overlapping spans would need memory quadratic in its size.
MAX_CLUSTER_RECORDS = 20_000_000
# Offsets from 2**53 on are not exact as float64, which the vectorised IoUs use.
MAX_OFFSET = 2**53


class BatchTooLarge(ValueError):
    """The prepared notes cannot be laid out: too many cluster records, or offsets beyond ``MAX_OFFSET``."""


def ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The ranges [starts[i], starts[i] + lengths[i]) concatenated."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, lengths)


def segment_counts_at_least(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, threshold: float) -> np.ndarray:
    """How many of values[starts[i]:ends[i]] are >= threshold, for every segment i."""
    running = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values >= threshold, out=running[1:])
    return running[ends] - running[starts]


def ordered_sums(weights: np.ndarray, owner: np.ndarray, offsets: np.ndarray, flat: np.ndarray,
                 items: np.ndarray) -> np.ndarray:
    """Per item: 0.0 + weights[owner, flat[offsets[item]]] + ... over its model list, added in list order.

    One column per pass, so every item's sum is accumulated in exactly the order the published Python
    loop adds, and comes out bit for bit the same.
    """
    first = offsets[items]
    lengths = offsets[items + 1] - first
    sums = np.zeros(len(items))
    active = np.arange(len(items))
    column = 0
    while len(active):
        sums[active] += weights[owner[active], flat[first[active] + column]]
        column += 1
        active = active[lengths[active] > column]
    return sums


def best_in_segments(score: np.ndarray, length: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per segment of consecutive entries: the index of the highest score; ties: the shorter, then the first."""
    starts = np.cumsum(counts) - counts
    segment = np.repeat(np.arange(len(counts)), counts)
    top = score == np.maximum.reduceat(score, starts)[segment]
    shortest = np.minimum.reduceat(np.where(top, length, np.iinfo(np.int64).max), starts)
    candidates = np.flatnonzero(top & (length == shortest[segment]))
    first = np.ones(len(candidates), dtype=bool)
    first[1:] = segment[candidates[1:]] != segment[candidates[:-1]]
    return candidates[first]


class BatchMerger:
    """All prepared notes in flat arrays; :meth:`kept_rows` merges them under any thresholds."""

    def __init__(self, prepared: Mapping[str, PreparedNote], max_records: int | None = None) -> None:
        self.note_ids = list(prepared)
        model_counts = {note.n_models for note in prepared.values()}
        if len(model_counts) > 1:
            raise ValueError(f"every note needs the same number of models, got {sorted(model_counts)}")
        self.n_models = model_counts.pop() if model_counts else 1
        self.pools = [(index, pool) for index, note in enumerate(prepared.values()) for pool in note.pools.values()]
        records = sum((len(pool.cluster_levels) + 2) * len(pool.pool) for _, pool in self.pools)
        max_records = MAX_CLUSTER_RECORDS if max_records is None else max_records
        if records > max_records:
            raise BatchTooLarge(f"{records} cluster records needed, more than the limit of {max_records}")
        if any(end >= MAX_OFFSET for _, pool in self.pools for _, end, _ in pool.pool):
            raise BatchTooLarge(f"span offsets of {MAX_OFFSET} or more cannot be laid out exactly")
        self._build_span_table()
        self._build_matching()
        self._build_structures()

    # -- layout ----------------------------------------------------------------------------------------
    def _build_span_table(self) -> None:
        """Every pooled span is a table row; a pool's rows are its pool order."""
        starts, ends, notes, pools, base = [], [], [], [], [0]
        for p, (note_index, pool) in enumerate(self.pools):
            starts.extend(s for s, _, _ in pool.pool)
            ends.extend(e for _, e, _ in pool.pool)
            notes.extend([note_index] * len(pool.pool))
            pools.extend([p] * len(pool.pool))
            base.append(len(starts))
        self.span_start = np.array(starts, dtype=np.int64)
        self.span_end = np.array(ends, dtype=np.int64)
        self.span_note = np.array(notes, dtype=np.int64)
        self.span_pool = np.array(pools, dtype=np.int64)
        self.pool_category = np.array([pool.category for _, pool in self.pools], dtype=np.int64)
        self.span_category = self.pool_category[self.span_pool] if len(pools) else np.zeros(0, dtype=np.int64)
        self.span_base = np.array(base, dtype=np.int64)

    def _build_matching(self) -> None:
        """Per pool and ordered model pair: the candidate IoUs (best first) and the greedy prefix sums."""
        m_count = self.n_models
        self.pairs = [(m, n) for m in range(m_count) for n in range(m_count) if n != m]
        ious: list[float] = []
        prefixes: list[float] = []
        seg_start, seg_end, prefix_start, size_a, size_b = [], [], [], [], []
        for _, pool in self.pools:
            for m, n in self.pairs:
                seg_start.append(len(ious))
                ious.extend(-value for value in pool.matching[m, n][0])
                seg_end.append(len(ious))
                prefix_start.append(len(prefixes))
                prefixes.extend(pool.matching[m, n][1])
                size_a.append(pool.sizes[m])
                size_b.append(pool.sizes[n])
        shape = (len(self.pools), len(self.pairs))
        self.candidate_iou = np.array(ious, dtype=np.float64)
        self.matched_prefix = np.array(prefixes, dtype=np.float64)
        self.segment_start = np.array(seg_start, dtype=np.int64).reshape(shape)
        self.segment_end = np.array(seg_end, dtype=np.int64).reshape(shape)
        self.prefix_start = np.array(prefix_start, dtype=np.int64).reshape(shape)
        self.size_a = np.array(size_a, dtype=np.int64).reshape(shape)
        self.size_b = np.array(size_b, dtype=np.int64).reshape(shape)

    def _build_structures(self) -> None:
        """Each pool's cluster structure for t_cluster <= 0, for each IoU level, and above every level.

        Structure ``structure_base[p] + key + 1`` belongs to the level key of ``ensemble.consensus`` (-1 for
        t <= 0, else the number of the pool's levels below t).
        """
        # compact int64 buffers rather than lists: a list of Python ints would take ~5 times the memory
        structure_base, structure_offsets = array("q"), array("q", [0])
        group_offsets, model_offsets, models_flat = array("q", [0]), array("q", [0]), array("q")
        group_row, group_length, voter_offsets, voters_flat = array("q"), array("q"), array("q", [0]), array("q")
        levels_flat: list[float] = []
        level_start, level_end = [], []
        for p, (_, pool) in enumerate(self.pools):
            structure_base.append(len(structure_offsets) - 1)
            level_start.append(len(levels_flat))
            levels_flat.extend(pool.cluster_levels)
            level_end.append(len(levels_flat))
            base = int(self.span_base[p])
            spans = pool.pool
            for t_cluster in (0.0, *pool.cluster_levels, float("inf")):
                for members in pool.clusters(t_cluster):
                    if len(members) == 1:
                        start, end, model = spans[members[0]]
                        models, groups = (model,), [(start, end, (model,), members[0])]
                    else:
                        models, groups = cluster_groups(spans, members)
                    models_flat.extend(models)
                    model_offsets.append(len(models_flat))
                    for start, end, voters, first in groups:
                        group_row.append(base + first)
                        group_length.append(end - start)
                        voters_flat.extend(voters)
                        voter_offsets.append(len(voters_flat))
                    group_offsets.append(len(group_row))
                structure_offsets.append(len(group_offsets) - 1)
        as_int = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731  (array("q") converts via its buffer)
        self.structure_base = as_int(structure_base)
        self.structure_offsets = as_int(structure_offsets)
        self.group_offsets, self.model_offsets, self.models_flat = as_int(group_offsets), as_int(model_offsets), as_int(models_flat)
        self.group_row, self.group_length = as_int(group_row), as_int(group_length)
        self.voter_offsets, self.voters_flat = as_int(voter_offsets), as_int(voters_flat)
        self.cluster_levels = np.array(levels_flat, dtype=np.float64)
        self.level_start, self.level_end = as_int(level_start), as_int(level_end)

    # -- one trial -------------------------------------------------------------------------------------
    def weights(self, t_pair: float) -> np.ndarray:
        """(pools, models) weights: mean agreement with the other models, normalised to sum 1 per pool."""
        m_count = self.n_models
        if m_count == 1:
            return np.ones((len(self.pools), 1))
        count = segment_counts_at_least(self.candidate_iou, self.segment_start, self.segment_end, t_pair)
        matched = self.matched_prefix[self.prefix_start + count]
        size_a, size_b = self.size_a, self.size_b
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = matched / size_a
            recall = matched / size_b
            similarity = 2 * precision * recall / (precision + recall)
        similarity = np.where(precision + recall == 0, 0.0, similarity)
        similarity = np.where((size_a == 0) | (size_b == 0), 0.0, similarity)
        similarity = np.where((size_a == 0) & (size_b == 0), 1.0, similarity)
        raw = np.empty((len(self.pools), m_count))
        for m in range(m_count):
            columns = [q for q, (a, _) in enumerate(self.pairs) if a == m]
            acc = similarity[:, columns[0]]
            for q in columns[1:]:
                acc = acc + similarity[:, q]
            raw[:, m] = acc / (m_count - 1)
        total = raw[:, 0]
        for m in range(1, m_count):
            total = total + raw[:, m]
        weights = np.full_like(raw, 1.0 / m_count)
        positive = total > 0
        weights[positive] = raw[positive] / total[positive, None]
        return weights

    def structures(self, t_cluster: float) -> np.ndarray:
        """Index of each pool's cluster structure under t_cluster."""
        if t_cluster <= 0:
            return self.structure_base.copy()
        at_least = segment_counts_at_least(self.cluster_levels, self.level_start, self.level_end, t_cluster)
        below = (self.level_end - self.level_start) - at_least  # the level key: how many levels lie below t
        return self.structure_base + below + 1

    def support_thresholds(self, thresholds: Thresholds) -> np.ndarray:
        """The support each pool's clusters need (per category when the thresholds say so)."""
        if thresholds.t_support_by_category is None:
            return np.full(len(self.pools), thresholds.t_support)
        return np.asarray(thresholds.t_support_by_category)[self.pool_category - 1]

    def kept_rows(self, thresholds: Thresholds = Thresholds()) -> np.ndarray:
        """Table rows of the merged spans (in no particular order)."""
        if not self.pools:
            return np.zeros(0, dtype=np.int64)
        weights = self.weights(thresholds.t_pair)
        structures = self.structures(thresholds.t_cluster)
        n_clusters = self.structure_offsets[structures + 1] - self.structure_offsets[structures]
        clusters = ragged_arange(self.structure_offsets[structures], n_clusters)
        cluster_pool = np.repeat(np.arange(len(self.pools)), n_clusters)
        support = ordered_sums(weights, cluster_pool, self.model_offsets, self.models_flat, clusters)
        n_groups = self.group_offsets[clusters + 1] - self.group_offsets[clusters]
        groups = ragged_arange(self.group_offsets[clusters], n_groups)
        if len(groups) > len(clusters):  # some cluster has several boundaries: vote
            score = ordered_sums(weights, np.repeat(cluster_pool, n_groups), self.voter_offsets, self.voters_flat, groups)
            groups = groups[best_in_segments(score, self.group_length[groups], n_groups)]
        kept = support >= self.support_thresholds(thresholds)[cluster_pool]
        return self.deduplicate(self.group_row[groups[kept]], thresholds.t_dedup)

    def deduplicate(self, rows: np.ndarray, t_dedup: float) -> np.ndarray:
        """The published dedup per pool, on runs of overlapping spans (a run never interacts with another)."""
        if len(rows) == 0:
            return rows
        rows = rows[np.lexsort((self.span_end[rows], self.span_start[rows], self.span_pool[rows]))]
        pool, start, end = self.span_pool[rows], self.span_start[rows], self.span_end[rows]
        new_run = np.ones(len(rows), dtype=bool)
        new_run[1:] = pool[1:] != pool[:-1]
        stride = int(end.max()) + 1
        if t_dedup > 0 and stride * (len(self.pools) + 1) < 2**62:  # else: one run per pool (still exact)
            # a run ends where a span starts at or after every earlier end of its pool
            reach = np.maximum.accumulate(end + pool * stride)
            new_run[1:] |= start[1:] + pool[1:] * stride >= reach[:-1]
        run_id = np.cumsum(new_run) - 1
        run_size = np.bincount(run_id)
        keep = run_size[run_id] == 1
        run_first = np.flatnonzero(new_run)
        python_runs = run_first[run_size >= (2 if t_dedup <= 0 else 3)]
        if t_dedup > 0:
            a = run_first[run_size == 2]
            b = a + 1
            inter = np.minimum(end[a], end[b]) - np.maximum(start[a], start[b])
            union = np.maximum(end[a], end[b]) - np.minimum(start[a], start[b])
            duplicate = inter / union >= t_dedup
            b_longer = end[b] - start[b] > end[a] - start[a]
            keep[a] = ~duplicate | ~b_longer
            keep[b] = ~duplicate | b_longer
        for first in python_runs.tolist():
            last = first + int(run_size[run_id[first]])
            bounds = list(zip(start[first:last].tolist(), end[first:last].tolist()))
            position = {bound: first + i for i, bound in enumerate(bounds)}
            keep[[position[bound] for bound in deduplicate_category(bounds, t_dedup)]] = True
        return rows[keep]

    # -- results ---------------------------------------------------------------------------------------
    def predictions(self, rows: np.ndarray) -> Predictions:
        """Table rows as predictions: every note, spans sorted by (start, end, category)."""
        out: Predictions = {note_id: [] for note_id in self.note_ids}
        for note, start, end, category in sorted(zip(self.span_note[rows].tolist(), self.span_start[rows].tolist(),
                                                     self.span_end[rows].tolist(), self.span_category[rows].tolist())):
            out[self.note_ids[note]].append(Span(start, end, category))
        return out

    def table_scorer(self, scorer: Scorer) -> SpanTableScorer:
        """A scorer of this merger's kept rows, equal to ``scorer.final_score`` on :meth:`predictions`."""
        return SpanTableScorer(scorer, self.note_ids, self.span_note, self.span_start, self.span_end, self.span_category)

    def merge(self, thresholds: Thresholds = Thresholds()) -> Predictions:
        """Same result as ``ensemble.consensus.merge_prepared`` on the same notes."""
        return self.predictions(self.kept_rows(thresholds))
