"""The array merge (ensemble/batch.py) and the span-table scorer equal the per-note merge and the Scorer."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.bench_ensemble import MODEL_NOISE, perturbed_predictions
from dataset.synthetic import generate_corpus
from ensemble import batch, tuning
from ensemble.batch import BatchMerger, BatchTooLarge, best_in_segments, ragged_arange
from ensemble.consensus import Thresholds, merge_prepared, prepare_predictions
from utils.meddec.corpus import load_notes, read_split
from utils.meddec.predictions import Span
from utils.metric import Scorer

EDGE_THRESHOLDS = [Thresholds(), Thresholds(0.0, 0.0, 0.0, 0.0), Thresholds(1.0, 1.0, 1.0, 1.0),
                   Thresholds(0.0, 0.5, 0.2, 0.0), Thresholds(1.0, 0.0, 0.5, 0.3), Thresholds(0.3, 1 / 3, 1 / 3, 0.5)]


# -- helpers ------------------------------------------------------------------------------------------------


def test_ragged_arange():
    assert ragged_arange(np.array([5, 0, 9]), np.array([2, 0, 3])).tolist() == [5, 6, 9, 10, 11]
    assert ragged_arange(np.array([3]), np.array([0])).tolist() == []


def test_best_in_segments_prefers_score_then_shorter_then_first():
    score = np.array([0.5, 0.7, 0.7, 0.7, 0.2, 0.2, 1.0])
    length = np.array([1, 5, 3, 3, 4, 4, 9])
    # segments: [0.5 0.7 0.7 0.7] -> the shorter of the 0.7s, first of the ties (index 2);
    # [0.2 0.2] -> equal in everything, the first (4); [1.0] -> 6
    assert best_in_segments(score, length, np.array([4, 2, 1])).tolist() == [2, 4, 6]


# -- equality with the per-note merge on random inputs ---------------------------------------------------

span_strategy = st.tuples(st.integers(0, 40), st.integers(1, 14), st.sampled_from([1, 3, 3, 3, 5])).map(
    lambda t: (t[0], t[0] + t[1], t[2]))
threshold = st.one_of(st.sampled_from([0.0, 1.0, 0.1, 0.34, 0.5, 0.8, 1 / 3, 0.25]), st.floats(0.0, 1.0))
thresholds_strategy = st.builds(Thresholds, threshold, threshold, threshold, threshold)


@st.composite
def notes_strategy(draw):
    """A few notes with the same number of models; spans crowd a short range so runs of overlaps are common."""
    n_models = draw(st.integers(1, 4))
    notes = {}
    for index in range(draw(st.integers(1, 4))):
        models = [draw(st.lists(span_strategy, max_size=12)) for _ in range(n_models)]
        if n_models > 1 and models[0] and draw(st.booleans()):  # identical spans across models
            models[1] = models[1] + models[0][: draw(st.integers(1, len(models[0])))]
        notes[f"note{index}"] = models
    return notes


def as_model_predictions(notes):
    n_models = len(next(iter(notes.values())))
    return [{note_id: [Span(*s) for s in models[m]] for note_id, models in notes.items()} for m in range(n_models)]


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes_strategy(), st.lists(thresholds_strategy, min_size=1, max_size=5))
def test_batch_merge_equals_the_per_note_merge(notes, many_thresholds):
    prepared = prepare_predictions(as_model_predictions(notes))
    merger = BatchMerger(prepared)
    for thresholds in many_thresholds + EDGE_THRESHOLDS:
        assert merger.merge(thresholds) == merge_prepared(prepared, thresholds)
        weights = merger.weights(thresholds.t_pair)
        for p, (_, pool) in enumerate(merger.pools):
            assert weights[p].tolist() == pool.weights(thresholds.t_pair)


def test_long_runs_of_overlapping_kept_spans_are_deduplicated_in_order():
    # one model, t_cluster 1: every span is its own cluster and kept; the dedup sees runs of 1, 2 and 4
    spans = [(0, 10, 3), (30, 40, 3), (32, 41, 3), (60, 70, 3), (61, 72, 3), (62, 69, 3), (65, 80, 3), (90, 95, 3)]
    prepared = prepare_predictions([{"n": [Span(*s) for s in spans]}])
    merger = BatchMerger(prepared)
    for t_dedup in (0.0, 0.3, 0.6, 0.9, 1.0):
        thresholds = Thresholds(t_cluster=1.0, t_support=0.5, t_dedup=t_dedup)
        assert merger.merge(thresholds) == merge_prepared(prepared, thresholds)
    # t_dedup 0.6: (32,41) duplicates (30,40) (IoU 8/11) but is shorter: dropped; (61,72) duplicates
    # (60,70) (9/12) and is longer: replaces it; (62,69) duplicates (61,72) (7/11), shorter: dropped;
    # (65,80) vs (61,72) is 7/19: a new span
    assert merger.merge(Thresholds(t_cluster=1.0, t_support=0.5, t_dedup=0.6))["n"] == [
        Span(0, 10, 3), Span(30, 40, 3), Span(61, 72, 3), Span(65, 80, 3), Span(90, 95, 3)]


def test_offsets_too_large_for_one_axis_still_merge_exactly():
    # ends near 2**52: pool offsets do not fit one int64 axis, so each pool is one dedup run
    big = 2**52
    models = [{"n": [Span(big, big + 10, 3), Span(big + 5, big + 12, 3), Span(big + 6, big + 30, 3), Span(0, 4, 5)]},
              {"n": [Span(big + 1, big + 10, 3), Span(2, 4, 5)]}]
    prepared = prepare_predictions(models)
    merger = BatchMerger(prepared)
    for thresholds in EDGE_THRESHOLDS + [Thresholds(t_cluster=1.0, t_support=0.1, t_dedup=0.2)]:
        assert merger.merge(thresholds) == merge_prepared(prepared, thresholds)
    with pytest.raises(BatchTooLarge, match="offsets"):
        BatchMerger(prepare_predictions([{"n": [Span(2**53, 2**53 + 1, 3)]}]))


def test_layout_limit_and_model_counts():
    prepared = prepare_predictions([{"n": [Span(0, 5, 3), Span(2, 6, 3)]}] * 2)
    with pytest.raises(BatchTooLarge, match="cluster records"):
        BatchMerger(prepared, max_records=3)
    mixed = {**prepare_predictions([{"a": [Span(0, 5, 3)]}]), **prepare_predictions([{"b": []}] * 2)}
    with pytest.raises(ValueError, match="same number of models"):
        BatchMerger(mixed)
    assert BatchMerger({}).merge() == {}
    assert BatchMerger(prepare_predictions([{"a": []}, {"a": []}])).merge() == {"a": []}


# -- equality with the Scorer on a synthetic validation set --------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """12 synthetic notes and three differently noisy models (as in the benchmark), plus a note outside gold."""
    root = tmp_path_factory.mktemp("batch_corpus")
    info = generate_corpus(root, seed=3, n_train=0, n_val=12, n_test=0, n_unlabeled=0)
    paths = info.paths
    ids = read_split(paths.split("val"))
    notes = load_notes(paths.gold_dir, paths.raw_text_dir, ids)
    models = [perturbed_predictions(notes, 10 + i, noise) for i, noise in enumerate(MODEL_NOISE)]
    return {"paths": paths, "ids": ids, "models": models}


def random_thresholds(n, seed):
    rng = random.Random(seed)
    return [Thresholds(*(rng.random() for _ in range(4))) for _ in range(n)] + EDGE_THRESHOLDS


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["published", "meddec"])
@pytest.mark.parametrize("with_stats", [True, False])
def test_span_table_scores_equal_the_scorer(synthetic, with_stats, rule):
    paths = synthetic["paths"]
    scorer = Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir, split_file=paths.split("val"),
                               stats_csv=paths.stats_csv if with_stats else None, rule=rule)
    prepared = prepare_predictions(synthetic["models"], synthetic["ids"])
    merger = BatchMerger(prepared)
    table = merger.table_scorer(scorer)
    for thresholds in random_thresholds(25, seed=1):
        rows = merger.kept_rows(thresholds)
        merged = merge_prepared(prepared, thresholds)
        assert merger.predictions(rows) == merged
        assert table.final_score(rows) == scorer.final_score(merged)  # exact, not approximately
    by_category = Thresholds(t_support_by_category=tuple(0.1 * c for c in range(1, 10)))
    assert table.final_score(merger.kept_rows(by_category)) == scorer.final_score(merge_prepared(prepared, by_category))


def test_span_table_follows_the_split_and_notes_outside_gold(synthetic):
    # the scorer's split leaves out two gold notes, whose predictions must be ignored; an extra note
    # without gold is scored with empty gold, as the official script does
    paths = synthetic["paths"]
    ids = synthetic["ids"]
    scorer = Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir, stats_csv=paths.stats_csv)
    scorer.split_ids = set(ids[2:])
    extra = {"extra_note": [Span(0, 30, 3), Span(10, 25, 5)]}
    scorer._texts["extra_note"] = "Started metoprolol for rate control and stopped aspirin today."
    models = [{**m, **extra} for m in synthetic["models"]]
    scorer.split_ids.add("extra_note")
    prepared = prepare_predictions(models)
    merger = BatchMerger(prepared)
    table = merger.table_scorer(scorer)
    assert table.n_prediction_files == len(ids) - 2 + 1
    for thresholds in random_thresholds(5, seed=2):
        rows = merger.kept_rows(thresholds)
        assert table.final_score(rows) == scorer.final_score(merge_prepared(prepared, thresholds))


def test_objective_uses_arrays_and_falls_back_to_the_per_note_merge(synthetic, monkeypatch):
    paths = synthetic["paths"]
    scorer = Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir, split_file=paths.split("val"),
                               stats_csv=paths.stats_csv)
    prepared = prepare_predictions(synthetic["models"], synthetic["ids"])
    fast = tuning.make_objective(prepared, scorer)
    monkeypatch.setattr(batch, "MAX_CLUSTER_RECORDS", 10)
    with pytest.warns(UserWarning, match="per-note merge"):
        slow = tuning.make_objective(prepared, scorer)
    for thresholds in random_thresholds(3, seed=4):
        assert fast(thresholds) == slow(thresholds) == scorer.final_score(merge_prepared(prepared, thresholds))
