"""Span-Cluster Consensus (ensemble.consensus, ensemble/mbr.py) against hand-built cases and the all-pairs oracle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble import consensus, mbr, reference
from ensemble.consensus import PreparedNote, Thresholds, merge_note, merge_predictions
from utils.paths import REPO_ROOT
from utils.meddec.predictions import Span, read_predictions, write_predictions

ONLY_IDENTICAL = 1.0  # an IoU threshold of 1 links/matches identical spans only


def explain_of(model_spans, thresholds=Thresholds()):
    records: list = []
    merge_note(model_spans, thresholds, explain=records)
    return {r["category"]: r for r in records}


# -- published defaults and input handling -----------------------------------------------------------


def test_merging_no_models_or_no_spans_gives_no_spans():
    assert merge_note([]) == []
    assert merge_note([[], [], []]) == []
    assert merge_predictions([]) == {}
    assert merge_predictions([{"a": []}, {}]) == {"a": []}


def test_invalid_spans_are_dropped():
    valid = (0, 5, 3)
    invalid = [
        (1.0, 5, 3), (0, 5.0, 3), ("0", 5, 3), (None, 5, 3),  # non-int offsets
        (0, 5, 10), (0, 5, 0), (0, 5, 3.0), (0, 5, "3"),  # category outside 1-9 / not an int
        (-1, 5, 3), (5, 5, 3), (6, 5, 3),  # start < 0, end <= start
        None, "abc", (0, 5), (0, 5, 3, 1), {"start_offset": 0, "end_offset": 5},  # not a span at all
    ]
    assert merge_note([invalid + [valid]]) == [Span(0, 5, 3)]
    assert merge_note([[{"start_offset": 0, "end_offset": 5, "category": 3}, {"start_offset": 0, "end_offset": -1, "category": 3}]]) == [Span(0, 5, 3)]
    # a model whose spans are all invalid still counts as a model (an empty list), like the oracle
    assert explain_of([[valid], invalid])[3]["weights"] == [0.5, 0.5]


def test_output_sorted_by_start_end_category():
    spans = [(10, 20, 7), (0, 5, 9), (10, 20, 3), (0, 8, 1)]
    assert merge_note([spans]) == [Span(0, 5, 9), Span(0, 8, 1), Span(10, 20, 3), Span(10, 20, 7)]


def test_note_missing_in_one_model_counts_as_empty_list():
    merged = merge_predictions([{"n1": [Span(0, 5, 3)]}, {"n2": [Span(1, 4, 5)]}])
    assert list(merged) == ["n1", "n2"]
    # each note: the other model is empty, agreement 0 -> uniform weights 0.5 >= 0.34
    assert merged == {"n1": [Span(0, 5, 3)], "n2": [Span(1, 4, 5)]}
    assert merge_predictions([{"n1": [Span(0, 5, 3)]}] * 3 + [{}], Thresholds(t_support=0.9)) == {"n1": [Span(0, 5, 3)]}


# -- step 1: model weights ---------------------------------------------------------------------------


def test_single_model_weight_is_one():
    assert explain_of([[(0, 5, 3), (7, 9, 3)]])[3]["weights"] == [1.0]


def test_all_zero_agreement_gives_uniform_weights():
    record = explain_of([[(0, 5, 3)], [(10, 15, 3)], [(20, 25, 3)]])[3]
    assert record["weights"] == [1 / 3, 1 / 3, 1 / 3]
    assert [c["support"] for c in record["clusters"]] == [1 / 3] * 3
    assert merge_note([[(0, 5, 3)], [(10, 15, 3)], [(20, 25, 3)]]) == []  # 1/3 < 0.34


def test_weights_are_mean_agreement_normalised():
    # models 0 and 1 agree exactly, model 2 disagrees with both: raw 0.5, 0.5, 0
    record = explain_of([[(0, 5, 3)], [(0, 5, 3)], [(10, 15, 3)]])[3]
    assert record["weights"] == [0.5, 0.5, 0.0]
    assert merge_note([[(0, 5, 3)], [(0, 5, 3)], [(10, 15, 3)]]) == [Span(0, 5, 3)]


def test_matching_ties_follow_a_then_b_order():
    # a1 ties with b1 and b2 (IoU 1/3 each); taking b1 (B's order) leaves b2 for a2 (IoU 0.2).
    a = [Span(10, 20, 3), Span(22, 30, 3)]
    b = [Span(5, 15, 3), Span(15, 25, 3)]
    total = 1 / 3 + 0.2
    expected = 2 * (total / 2) * (total / 2) / (total / 2 + total / 2)
    assert reference.similarity(a, b, 0.1) == expected
    pool = consensus.CategoryPool([[(s.start, s.end) for s in a], [(s.start, s.end) for s in b]])
    assert pool.similarity(0, 1, 0.1) == expected
    assert pool.similarity(1, 0, 0.1) == expected
    # the 0.2 pair no longer counts when t_pair rises above it
    assert pool.similarity(0, 1, 0.25) == pytest.approx(1 / 6)


def test_t_pair_comparison_is_inclusive():
    # IoU of (0, 10) and (0, 8) is exactly 0.8
    record = explain_of([[(0, 10, 3)], [(0, 8, 3)]], Thresholds(t_pair=0.8))
    assert record[3]["weights"] == [0.5, 0.5]
    sims = explain_of([[(0, 10, 3)], [(0, 8, 3)], [(0, 10, 3)]], Thresholds(t_pair=0.8))[3]["weights"]
    sims_strict = explain_of([[(0, 10, 3)], [(0, 8, 3)], [(0, 10, 3)]], Thresholds(t_pair=0.81))[3]["weights"]
    assert sims != sims_strict and sims_strict == [0.5, 0.0, 0.5]


# -- steps 2-4: clusters, support, boundary ----------------------------------------------------------


def test_boundary_tie_prefers_the_shorter():
    assert merge_note([[(0, 10, 3)], [(0, 8, 3)]]) == [Span(0, 8, 3)]


def test_boundary_tie_then_first_seen_in_dfs_pop_order():
    # pool: X=(0,20) links Y=(0,10) and Z=(10,20); the DFS pops X, then Z (pushed last), then Y.
    # t_pair=1: no identical spans -> uniform weights, every boundary scores 1/3; Y and Z are the
    # shorter ones and Z is seen first although Y comes first in pool order.
    spans = [[(0, 20, 3)], [(0, 10, 3)], [(10, 20, 3)]]
    record = explain_of(spans, Thresholds(t_pair=ONLY_IDENTICAL))[3]
    assert [m[:2] for m in record["clusters"][0]["members"]] == [[0, 20], [10, 20], [0, 10]]
    assert merge_note(spans, Thresholds(t_pair=ONLY_IDENTICAL)) == [Span(10, 20, 3)]
    assert reference.merge_note(spans, Thresholds(t_pair=ONLY_IDENTICAL)) == [Span(10, 20, 3)]


def test_largest_summed_weight_wins_over_shorter():
    # two models say (0,10), one says (0,8): (0,10) has the larger summed weight
    assert merge_note([[(0, 10, 3)], [(0, 10, 3)], [(0, 8, 3)]]) == [Span(0, 10, 3)]


def test_support_counts_each_model_once_and_is_inclusive():
    # model 0 has two spans in the cluster: support is still its weight only once
    spans = [[(0, 10, 3), (1, 10, 3)], [(50, 60, 3)]]
    record = explain_of(spans)[3]
    assert record["weights"] == [0.5, 0.5]
    assert [c["support"] for c in record["clusters"]] == [0.5, 0.5]
    # equal votes for (0,10) and (1,10): the shorter wins
    assert merge_note(spans, Thresholds(t_support=0.5)) == [Span(1, 10, 3), Span(50, 60, 3)]
    assert merge_note(spans, Thresholds(t_support=0.51)) == []


def test_cluster_threshold_zero_links_non_overlapping_spans():
    spans = [[(0, 5, 3), (10, 20, 3), (30, 34, 3)]]
    record = explain_of(spans, Thresholds(t_cluster=0.0))[3]
    assert len(record["clusters"]) == 1
    assert [m[:2] for m in record["clusters"][0]["members"]] == [[0, 5], [30, 34], [10, 20]]  # 0, n-1, ..., 1
    assert merge_note(spans, Thresholds(t_cluster=0.0)) == [Span(30, 34, 3)]  # shortest, 1 model
    assert merge_note(spans, Thresholds(t_cluster=0.01)) == [Span(0, 5, 3), Span(10, 20, 3), Span(30, 34, 3)]


# -- dedup ---------------------------------------------------------------------------------------------


def test_dedup_longer_replaces_at_threshold_edge():
    spans = [[(0, 8, 3), (0, 10, 3)]]  # IoU exactly 0.8; t_cluster 0.9 keeps them in two clusters
    assert merge_note(spans, Thresholds(t_cluster=0.9, t_dedup=0.8)) == [Span(0, 10, 3)]
    assert merge_note(spans, Thresholds(t_cluster=0.9, t_dedup=0.81)) == [Span(0, 8, 3), Span(0, 10, 3)]


def test_dedup_shorter_is_dropped():
    spans = [[(0, 10, 3), (2, 10, 3)]]
    assert merge_note(spans, Thresholds(t_cluster=0.9)) == [Span(0, 10, 3)]


def test_dedup_compares_with_first_matching_kept_slot_only():
    # (0,10) kept; (1,10) dup of slot 0 (IoU .9) -> dropped; (5,30) no dup; (6,30) dup of (5,30) -> dropped
    spans = [[(0, 10, 3), (1, 10, 3), (5, 30, 3), (6, 30, 3)]]
    assert merge_note(spans, Thresholds(t_cluster=1.0)) == [Span(0, 10, 3), Span(5, 30, 3)]


def test_dedup_only_within_a_category():
    assert merge_note([[(0, 10, 3), (0, 10, 5)]]) == [Span(0, 10, 3), Span(0, 10, 5)]


def test_dedup_threshold_zero_keeps_the_first_longest_per_category():
    spans = [[(0, 5, 3), (40, 50, 3), (60, 70, 3), (80, 82, 3), (0, 3, 5)]]
    assert merge_note(spans, Thresholds(t_cluster=1.0, t_dedup=0.0)) == [Span(0, 3, 5), Span(40, 50, 3)]


def test_thresholds_of_one_link_only_identical_spans():
    spans = [[(0, 10, 3), (0, 9, 3)], [(0, 10, 3)]]
    merged = merge_note(spans, Thresholds(1.0, 1.0, 1.0, 1.0))
    assert merged == reference.merge_note(spans, Thresholds(1.0, 1.0, 1.0, 1.0))
    assert merged == [Span(0, 10, 3)]


# -- equality with the all-pairs oracle ----------------------------------------------------------------

coordinate = st.integers(0, 30)
span_strategy = st.tuples(coordinate, st.integers(1, 12), st.sampled_from([1, 2, 3, 3, 3])).map(
    lambda t: (t[0], t[0] + t[1], t[2])
)
threshold = st.one_of(st.sampled_from([0.0, 1.0, 0.1, 0.34, 0.5, 0.8, 1 / 3, 0.25]), st.floats(0.0, 1.0))
thresholds_strategy = st.builds(Thresholds, threshold, threshold, threshold, threshold)


@st.composite
def models_strategy(draw):
    n_models = draw(st.integers(1, 4))
    models = [draw(st.lists(span_strategy, max_size=10)) for _ in range(n_models)]
    if n_models > 1 and models[0] and draw(st.booleans()):  # many identical spans across models
        models[1] = models[1] + models[0][: draw(st.integers(1, len(models[0])))]
    if draw(st.booleans()):  # shuffled order within models: order decides visit order and ties
        models = [draw(st.permutations(m)) for m in models]
    return models


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models_strategy(), thresholds_strategy)
def test_fast_merge_equals_all_pairs_reference(models, thresholds):
    fast_explain: list = []
    ref_explain: list = []
    assert merge_note(models, thresholds, fast_explain) == reference.merge_note(models, thresholds, ref_explain)
    assert [(r["category"], r["weights"], r["clusters"]) for r in fast_explain] == [
        (r["category"], r["weights"], r["clusters"]) for r in ref_explain
    ]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models_strategy(), st.lists(thresholds_strategy, min_size=2, max_size=6))
def test_repeated_merges_of_a_prepared_note_equal_the_reference(models, many_thresholds):
    prepared = PreparedNote(models)
    for thresholds in many_thresholds + many_thresholds[::-1]:
        assert prepared.merge(thresholds) == reference.merge_note(models, thresholds)


junk_item = st.one_of(
    st.tuples(st.integers(-5, 60), st.integers(-5, 60), st.integers(-1, 12)),
    st.fixed_dictionaries({"start_offset": st.one_of(st.integers(-5, 60), st.floats(0, 60), st.booleans(), st.none()),
                           "end_offset": st.one_of(st.integers(-5, 60), st.text(max_size=2)),
                           "category": st.one_of(st.integers(-1, 12), st.just("3"), st.booleans())}),
    st.dictionaries(st.sampled_from(["start_offset", "end_offset", "category", "x"]), st.integers(0, 9), max_size=3),
    st.lists(st.integers(-2, 40), max_size=4),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(junk_item, max_size=12))
def test_input_validation_agrees_with_the_oracle_on_junk(items):
    # consensus and the oracle each validate spans their own way; they must keep exactly the same ones
    assert consensus.valid_spans(items) == reference.valid_spans(items)


def test_per_category_support_thresholds():
    spans = [[(0, 5, 3), (0, 5, 5)], [(20, 25, 3), (20, 25, 5)]]  # every cluster has support 0.5
    by_category = tuple(0.6 if c == 5 else 0.5 for c in range(1, 10))
    merged = merge_note(spans, Thresholds(t_support_by_category=by_category))
    assert merged == [Span(0, 5, 3), Span(20, 25, 3)]
    with pytest.raises(ValueError, match="9 values"):
        Thresholds(t_support_by_category=(0.5,))


# -- command line ----------------------------------------------------------------------------------------


def _three_models(tmp_path):
    models = [
        {"n1": [Span(0, 10, 3), Span(20, 30, 5)], "n2": [Span(5, 9, 7)]},
        {"n1": [Span(0, 10, 3), Span(21, 30, 5)], "n2": [Span(5, 9, 7)]},
        {"n1": [Span(1, 10, 3)], "n3": [Span(0, 4, 1)]},
    ]
    paths = []
    for i, predictions in enumerate(models):
        path = tmp_path / f"m{i}.json"
        write_predictions(path, predictions)
        paths.append(str(path))
    return models, paths


def test_cli_merges_json_files_and_explains(tmp_path, capsys):
    models, paths = _three_models(tmp_path)
    out, explain = tmp_path / "merged.json", tmp_path / "explain.jsonl"
    assert mbr.main(["--predictions", *paths, "--output", str(out), "--explain", str(explain)]) == 0
    assert read_predictions(out) == merge_predictions(models)
    records = [json.loads(line) for line in explain.read_text().splitlines()]
    assert {(r["note_id"], r["category"]) for r in records} == {("n1", 3), ("n1", 5), ("n2", 7), ("n3", 1)}
    n1_cat3 = next(r for r in records if r["note_id"] == "n1" and r["category"] == 3)
    assert set(n1_cat3) >= {"weights", "clusters", "after_dedup", "support_threshold"}
    assert n1_cat3["clusters"][0]["members"] == [[0, 10, 0], [1, 10, 2], [0, 10, 1]]
    assert n1_cat3["clusters"][0]["boundary"] == [0, 10]


def test_cli_thresholds_from_flags_and_json(tmp_path):
    models, paths = _three_models(tmp_path)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"thresholds": {"t_cluster": 0.1, "t_pair": 0.1, "t_support": 0.9, "t_dedup": 0.8}}))
    out = tmp_path / "merged.json"
    assert mbr.main(["--predictions", *paths, "--output", str(out), "--thresholds_json", str(best)]) == 0
    assert read_predictions(out) == merge_predictions(models, Thresholds(t_support=0.9))
    assert mbr.main(["--predictions", *paths, "--output", str(out), "--thresholds_json", str(best), "--t_support", "0.2"]) == 0
    assert read_predictions(out) == merge_predictions(models, Thresholds(t_support=0.2))


def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    _, paths = _three_models(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"file_name": "n1", "predictions": [{"start_offset": "0", "end_offset": 5, "category": 3}]}]')
    assert mbr.main(["--predictions", paths[0], str(bad), "--output", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "bad.json" in err and "start_offset" in err and "expected an integer" in err
    assert not (tmp_path / "o.json").exists()
    assert mbr.main(["--predictions", paths[0], "--output", "x.json", "--t_pair", "1.5"]) == 2
    assert capsys.readouterr().err == "error: <command line>: --t_pair: expected a number in [0, 1], got 1.5\n"


def test_cli_refuses_an_inference_csv_with_a_hint(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text("file_id,predicted,raw_text\n1_2_3,x,x\n", encoding="utf-8")
    assert mbr.main(["--predictions", str(path), "--output", str(tmp_path / "merged.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {path}: expected prediction JSON, not a CSV (scripts/inference.py writes the spans of "
                   "its outputs to <output>.json beside each output CSV)")
    assert not (tmp_path / "merged.json").exists()


@pytest.mark.parametrize("how", [["-m", "ensemble.mbr"], ["ensemble/mbr.py"]])
def test_runs_as_module_and_as_file(how):
    result = subprocess.run([sys.executable, *how, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--t_support" in result.stdout and "0.34" in result.stdout
    assert "RuntimeWarning" not in result.stderr


def test_cli_counts_the_spans_it_does_not_use_and_checks_note_ends(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "1_2_3.txt").write_text("Start aspirin now. Stop it later.", encoding="utf-8")
    good = [Span(0, 13, 5), Span(19, 26, 5)]
    write_predictions(tmp_path / "a.json", {"1_2_3": good})
    write_predictions(tmp_path / "b.json", {"1_2_3": [*good, Span(0, 5, 12), Span(-3, 5, 3), Span(20, 1_000_000, 7)]})
    argv = ["--predictions", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--output", str(tmp_path / "m.json")]
    assert mbr.main([*argv, "--raw_text_dir", str(tmp_path / "raw")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: {tmp_path / 'b.json'}: 3 span(s) not used (category outside 1-9: 1, "
                        "start < 0 or end <= start: 1, ends past the note: 1)"]
    assert read_predictions(tmp_path / "m.json") == {"1_2_3": good}
    assert mbr.main(argv) == 0  # without the notes the long span cannot be caught: it is merged, and said so
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings[-1] == ("warning: no --raw_text_dir: spans ending past their note's end cannot be detected and "
                            "are merged as given")
    assert Span(20, 1_000_000, 7) in read_predictions(tmp_path / "m.json")["1_2_3"]  # uniform weights keep it
