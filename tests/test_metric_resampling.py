"""Bootstrap intervals (utils/metric/resampling.py), per-category note counts (breakdown.py), the paired comparison
(comparison.py) and their command lines (evaluate/evaluate.py --bootstrap, evaluate/compare.py).

The vectorised statistics are checked against the official aggregation of the same resamples
(``aggregate(scores.select(rows))``): span numbers bit for bit, token means to float rounding (their summation
order differs, which does not matter for a percentile interval)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from utils.meddec.corpus import Annotation, Demographics, read_gold_dir, read_split
from utils.meddec.predictions import Span, write_predictions
from utils.metric import Scorer, aggregate, load_official_texts
from utils.metric.breakdown import category_note_counts
from utils.metric.tokens import prf
from utils.metric.comparison import compare, compare_note_scores
from utils.metric.resampling import (
    HEADLINE, bootstrap, bootstrap_note_scores, draw_counts, note_columns, percentile_interval, resample_rows,
    statistics,
)
from utils.paths import REPO_ROOT, load_module_from_path

evaluate_cli = load_module_from_path("evaluate/evaluate.py", "lamar_evaluate_cli")
compare_cli = load_module_from_path("evaluate/compare.py", "lamar_compare_cli")
bench_scorer = load_module_from_path(REPO_ROOT / "benchmarks" / "bench_scorer.py", "lamar_bench_scorer")


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> dict:
    """53 synthetic val notes (short ones: tokenising is the slow part) and the benchmark's prediction sets."""
    from dataset.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("val")
    paths = generate_corpus(root / "MedDec", seed=1, n_train=0, n_val=53, n_test=0, n_unlabeled=0, mean_chars=1500,
                            mean_spans=25).paths
    ids = read_split(paths.split("val"))
    gold = read_gold_dir(paths.gold_dir, ids)
    sets = bench_scorer.prediction_sets(gold, load_official_texts(paths.raw_text_dir, ids))
    files = {}
    for name in ("shifted", "mixed", "swapped"):
        files[name] = root / f"{name}.json"
        write_predictions(files[name], sets[name])
    scorer = Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir, split_file=paths.split("val"),
                               stats_csv=paths.stats_csv)
    return {"root": root, "paths": paths, "sets": sets, "files": files, "scorer": scorer}


def _official_argv(val: dict, predictions: Path) -> list[str]:
    paths = val["paths"]
    return ["--gold_dir", str(paths.gold_dir), "--raw_text_dir", str(paths.raw_text_dir), "--predictions",
            str(predictions), "--split_file", str(paths.split("val")), "--stats_csv", str(paths.stats_csv)]


# -- per-category note counts ---------------------------------------------------------------------------------

def test_category_note_counts_sum_to_the_reports_per_category_table(val):
    scorer = val["scorer"]
    for name in ("shifted", "mixed"):
        predictions = val["sets"][name]
        report = scorer.score(predictions)
        scores = scorer.note_scores(predictions)
        totals = category_note_counts(scorer, predictions, scores.notes).totals()
        for cat, expected in report.per_category.items():
            got = {k: int(v[cat - 1]) for k, v in totals.items()}
            assert got == {"span_tp": expected.span.tp, "span_fp": expected.span.fp, "span_fn": expected.span.fn,
                           "token_tp": expected.token_tp, "token_fp": expected.token_fp,
                           "token_fn": expected.token_fn}, (name, cat)


# -- vectorised statistics == the official aggregation of each resample -----------------------------------------

def _assert_resample_equals_aggregate(stats: dict, b: int, head, group_order: tuple) -> None:
    assert (stats["span_precision"][b], stats["span_recall"][b], stats["span_f1"][b]) == (
        head.span.precision, head.span.recall, head.span.f1)  # integer sums: bit for bit
    for name, value in (("token_f1", head.token_f1), ("base", head.base), ("worst", head.worst),
                        ("final", head.final)):
        assert stats[name][b] == pytest.approx(value, abs=1e-12, rel=0), name
    groups = [(dim, g) for dim, by_group in head.subgroups.items() for g in by_group]
    present = {group for group, flag in zip(group_order, stats["group_present"][b]) if flag}
    assert present == set(groups)
    for k, group in enumerate(group_order):
        if group in present:
            official = head.subgroups[group[0]][group[1]]
            assert stats["group_span_f1"][b, k] == official.span_f1
            assert stats["group_base"][b, k] == pytest.approx(official.base_score, abs=1e-12, rel=0)


def test_vectorised_statistics_equal_aggregate_of_each_resample(val):
    scorer = val["scorer"]
    predictions = val["sets"]["mixed"]
    scores = scorer.note_scores(predictions)
    categories = category_note_counts(scorer, predictions, scores.notes)
    columns = note_columns(scores, categories)
    rows = resample_rows(len(scores), 300, seed=7)
    counts = draw_counts(rows, len(scores))
    assert counts.sum(axis=1).tolist() == [len(scores)] * 300 and counts[0].tolist() == np.bincount(
        rows[0], minlength=len(scores)).tolist()
    stats = statistics(columns, counts)
    for b in range(300):
        resample = scores.select(rows[b])
        _assert_resample_equals_aggregate(stats, b, aggregate(resample), columns.groups)
        totals = categories.select(rows[b]).totals()
        for j in range(9):
            for kind in ("span", "token"):
                counts_j = (int(totals[f"{kind}_{k}"][j]) for k in ("tp", "fp", "fn"))
                assert stats[f"category_{kind}_f1"][b, j] == prf(*counts_j)[2]  # integer sums: bit for bit


def test_exhaustive_resamples_of_a_hand_built_case_including_absent_groups():
    """Every one of the 3^3 resamples of three notes: groups missing from a resample are left out of worst."""
    text = "Start aspirin daily. Stop warfarin now. Follow up in clinic."
    gold = {"1_1_1": [Annotation(0, 19, 5), Annotation(21, 34, 5)], "2_2_2": [Annotation(40, 59, 1)],
            "3_3_3": [Annotation(0, 5, 5)]}
    stats_csv = {(1, 1, 1): Demographics("F", "W", "ENGL"), (2, 2, 2): Demographics("M", "ASIAN", "SPAN"),
                 (3, 3, 3): Demographics("M", "BLACK", "ENGL")}
    scorer = Scorer(gold, {k: text for k in gold}, stats_csv)
    scores = scorer.note_scores({"1_1_1": [Span(0, 19, 5), Span(21, 30, 5)], "2_2_2": [Span(40, 59, 2)],
                                 "3_3_3": [Span(0, 5, 5)]})
    columns = note_columns(scores)
    rows = np.array(list(itertools.product(range(3), repeat=3)))
    stats = statistics(columns, draw_counts(rows, 3))
    for b, r in enumerate(rows):
        _assert_resample_equals_aggregate(stats, b, aggregate(scores.select(r)), columns.groups)
    only_female = [b for b, r in enumerate(rows) if set(r) == {list(scores.notes.ids).index("1_1_1")}]
    assert len(only_female) == 1 and stats["worst"][only_female[0]] == stats["base"][only_female[0]]


# -- intervals ------------------------------------------------------------------------------------------------

def test_intervals_contain_the_official_estimate(val):
    scorer = val["scorer"]
    for name in ("shifted", "mixed", "swapped"):
        predictions = val["sets"][name]
        report = bootstrap(scorer, predictions, 2000, seed=0)
        official = scorer.score(predictions)
        assert report.headline["final"].estimate == official.final
        assert report.headline["span_f1"].estimate == official.span.f1
        intervals = [*report.headline.values(), *(i for v in report.per_category.values() for i in v.values()),
                     *(i for groups in report.subgroups.values() for v in groups.values() for i in v.values())]
        assert len(intervals) == 7 + 18 + 3 * sum(len(g) for g in official.subgroups.values())
        for interval in intervals:
            assert interval.low <= interval.estimate <= interval.high, (name, interval)
        assert report.per_category[3]["span_f1"].estimate == official.per_category[3].span.f1
        assert report.per_category[3]["token_f1"].estimate == official.per_category[3].token_f1


def test_intervals_narrow_as_notes_are_added(val):
    scorer = val["scorer"]
    predictions = val["sets"]["mixed"]
    scores = scorer.note_scores(predictions)
    categories = category_note_counts(scorer, predictions, scores.notes)
    order = np.argsort(np.array(scores.notes.ids))
    widths = []
    for n in (12, 25, 53):
        rows = order[:n]
        report = bootstrap_note_scores(scores.select(rows), 4000, seed=3, categories=categories.select(rows))
        widths.append({k: v.high - v.low for k, v in report.headline.items()})
    for name in ("span_f1", "token_f1", "base", "final"):
        assert widths[0][name] > widths[1][name] > widths[2][name] > 0, (name, widths)
    assert widths[2]["span_f1"] < 0.75 * widths[0]["span_f1"]


def test_seeded_reproducible_and_level_dependent(val):
    scorer, predictions = val["scorer"], val["sets"]["shifted"]
    first = bootstrap(scorer, predictions, 1500, seed=11).to_dict()
    assert bootstrap(scorer, predictions, 1500, seed=11).to_dict() == first
    other = bootstrap(scorer, predictions, 1500, seed=12).to_dict()
    assert other["headline"]["final"]["low"] != first["headline"]["final"]["low"]
    narrow = bootstrap(scorer, predictions, 1500, seed=11, confidence=0.5).to_dict()
    for name in ("span_f1", "token_f1", "final"):
        wide, small = first["headline"][name], narrow["headline"][name]
        assert wide["low"] < small["low"] <= small["high"] < wide["high"]


def test_percentile_interval_is_numpys_linear_quantile():
    values = np.arange(101, dtype=float)
    interval = percentile_interval(values, 50.0, 0.5)
    assert (interval.low, interval.high, interval.n_resamples) == (25.0, 75.0, 101)
    assert percentile_interval(values[::-1], 50.0, 0.5) == interval
    assert percentile_interval(np.array([0.0, 1.0]), 0.5, 0.5).low == 0.25  # interpolated between draws
    assert percentile_interval(np.array([]), 1.0, 0.95).n_resamples == 0


def test_ten_thousand_resamples_of_53_notes_well_under_a_minute(val):
    scorer, predictions = val["scorer"], val["sets"]["mixed"]
    start = time.perf_counter()
    report = bootstrap(scorer, predictions, 10_000, seed=0)
    assert time.perf_counter() - start < 60  # ~0.3 s measured here
    assert report.n_resamples == 10_000 and report.n_notes == 53


def test_resamples_do_not_depend_on_the_hash_seed(val):
    """The official note order follows set iteration (PYTHONHASHSEED); resamples are drawn on sorted ids."""
    code = ("import json, sys; from utils.metric.punkt import use_nltk_data_dir; use_nltk_data_dir(sys.argv[1]); "
            "from utils.metric import Scorer; from utils.meddec.predictions import read_predictions; "
            "from utils.metric.resampling import bootstrap; p = sys.argv[2]; "
            "s = Scorer.from_files(gold_dir=p + '/data', raw_text_dir=p + '/raw_text', "
            "split_file=p + '/splits/val.txt', "
            "stats_csv=p + '/stats.csv'); r = bootstrap(s, read_predictions(sys.argv[3]), 500, seed=5).to_dict(); "
            "print(json.dumps({k: [v['low'], v['high']] for k, v in r['headline'].items()}))")
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO_ROOT))
        result = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT / "tests/fixtures/nltk_data"),
                                 str(val["paths"].root), str(val["files"]["mixed"])], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        outs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    for name in ("span_precision", "span_recall", "span_f1"):
        assert outs[0][name] == outs[1][name]  # integer sums: identical
    for name in ("token_f1", "base", "worst", "final"):
        assert outs[0][name] == pytest.approx(outs[1][name], abs=1e-12)


# -- paired comparison ----------------------------------------------------------------------------------------

def test_a_set_compared_with_itself_differs_by_exactly_zero(val):
    scorer, predictions = val["scorer"], val["sets"]["mixed"]
    report = compare(scorer, {"A": predictions, "A again": dict(predictions)}, 2000, seed=0)
    (pair,) = report.pairs
    assert set(pair.differences) == {"final", "base", "worst", "span_f1", "token_f1"}
    for diff in pair.differences.values():
        assert (diff.estimate, diff.low, diff.high, diff.a_better, diff.ties) == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert pair.verdict() == "neither"
    assert pair.sentence() == ("final score: A - A again = 0.000, 95% CI [0.000, 0.000]: not distinguishable on these "
                               "notes (identical in every resample)")


def test_paired_differences_are_the_differences_of_the_same_resamples(val):
    scorer, sets = val["scorer"], val["sets"]
    scores = {name: scorer.note_scores(sets[name]) for name in ("shifted", "mixed", "swapped")}
    report = compare_note_scores(scores, 1000, seed=4)
    assert [(p.a, p.b) for p in report.pairs] == [("shifted", "mixed"), ("shifted", "swapped"), ("mixed", "swapped")]
    first = compare_note_scores(scores, 1000, seed=4, against_first=True)
    assert [(p.a, p.b) for p in first.pairs] == [("shifted", "mixed"), ("shifted", "swapped")]
    # the same resamples by hand: rows of the sorted note ids
    ids = sorted(scores["shifted"].notes.ids)
    rows = resample_rows(len(ids), 1000, seed=4)
    finals = {}
    for name, s in scores.items():
        where = {n: i for i, n in enumerate(s.notes.ids)}
        finals[name] = np.array([aggregate(s.select(np.array([where[ids[r]] for r in row]))).final
                                 for row in rows[:50]])
    delta = finals["shifted"] - finals["mixed"]
    pair = report.pairs[0]
    official = aggregate(scores["shifted"]).final - aggregate(scores["mixed"]).final
    assert pair.differences["final"].estimate == official
    assert report.systems["mixed"]["final"].estimate == aggregate(scores["mixed"]).final
    assert np.all(delta > 0) and pair.differences["final"].a_better == 1.0 and pair.verdict() == "a"
    assert pair.sentence().startswith(f"final score: shifted - mixed = {official:.3f}, 95% CI [")
    assert pair.sentence().endswith(": shifted is better on these notes")
    reverse = compare_note_scores({"mixed": scores["mixed"], "shifted": scores["shifted"]}, 1000, seed=4).pairs[0]
    assert reverse.verdict() == "b" and reverse.sentence().endswith(": shifted is better on these notes")
    assert reverse.differences["final"].low == pytest.approx(-pair.differences["final"].high, abs=1e-12)


def test_comparison_of_close_systems_is_not_distinguishable():
    """Two systems that each win on half of the notes: the interval of the difference straddles 0."""
    text = "Start aspirin daily. Stop warfarin now."
    gold = {f"{i}_{i}_{i}": [Annotation(0, 19, 5), Annotation(21, 34, 5)] for i in range(1, 21)}
    scorer = Scorer(gold, {k: text for k in gold})
    a = {k: ([Span(0, 19, 5)] if i % 2 else [Span(21, 34, 5)]) for i, k in enumerate(gold)}
    b = {k: ([Span(21, 34, 5)] if i % 3 == 0 else [Span(0, 19, 5)]) for i, k in enumerate(gold)}
    pair = compare(scorer, {"A": a, "B": b}, 3000, seed=0).pairs[0]
    diff = pair.differences["base"]
    assert pair.objective == "base" and "final" not in pair.differences  # no stats: the base score is compared
    assert diff.low < 0 < diff.high and 0 < diff.a_better < 1 and pair.verdict() == "neither"
    assert pair.sentence().endswith(": not distinguishable on these notes")


# -- command lines ---------------------------------------------------------------------------------------------

def test_evaluate_without_bootstrap_prints_and_writes_exactly_the_official_output(val, tmp_path, capsys):
    out = tmp_path / "plain.json"
    assert evaluate_cli.main([*_official_argv(val, val["files"]["mixed"]), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    report = val["scorer"].score(val["sets"]["mixed"])
    split = val["paths"].split("val")
    assert len(val["sets"]["mixed"]) == 52  # the benchmark's "mixed" set omits one note
    expected = (f"Filtered to 53 gold files and 52 prediction files based on {split}\n"
                f"{report.format_official()}\n{report.format_per_category()}\n{report.format_scorer()}\n\n"
                f"Results saved to: {out}\n")
    assert printed == expected
    expected_json = json.dumps(report.to_official_dict(), indent=2, ensure_ascii=False) + "\n"
    assert out.read_text(encoding="utf-8") == expected_json


def test_evaluate_bootstrap_adds_a_section_and_a_json_key_only(val, tmp_path, capsys):
    plain, boot = tmp_path / "plain.json", tmp_path / "boot.json"
    argv = _official_argv(val, val["files"]["mixed"])
    evaluate_cli.main([*argv, "--output", str(plain)])
    plain_out = capsys.readouterr().out
    assert evaluate_cli.main([*argv, "--output", str(boot), "--bootstrap", "1000", "--seed", "3",
                              "--confidence", "0.9"]) == 0
    boot_out = capsys.readouterr().out
    official_part = plain_out.split("\nResults saved to:")[0]
    assert boot_out.startswith(official_part + "\nBootstrap confidence intervals: 1,000 resamples of the 53 notes")
    assert "seed 3, 90% percentile intervals" in boot_out
    assert boot_out.endswith(f"\nResults saved to: {boot}\n")
    with_boot = json.loads(boot.read_text())
    section = with_boot.pop("bootstrap")
    assert with_boot == json.loads(plain.read_text())
    expected = bootstrap(val["scorer"], val["sets"]["mixed"], 1000, seed=3, confidence=0.9).to_dict()
    assert section == json.loads(json.dumps(expected))
    assert set(section["headline"]) == set(HEADLINE) and set(section["per_category"]) == {str(c) for c in range(1, 10)}
    assert section["subgroups"]["sex"]["Female"]["base_score"]["n_resamples"] > 0


def test_compare_cli_prints_sentences_and_writes_json(val, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    paths = val["paths"]
    argv = ["--predictions", str(val["files"]["shifted"]), str(val["files"]["mixed"]), str(val["files"]["shifted"]),
            "--names", "S", "M", "S2", "--gold_dir", str(paths.gold_dir), "--raw_text_dir", str(paths.raw_text_dir),
            "--split_file", str(paths.split("val")), "--stats_csv", str(paths.stats_csv), "--bootstrap", "500",
            "--against_first", "--output", str(out)]
    assert compare_cli.main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [(p["a"], p["b"], p["verdict"]) for p in data["pairs"]] == [("S", "M", "a"), ("S", "S2", "neither")]
    for pair in data["pairs"]:
        assert f"  => {pair['sentence']}\n" in printed
    assert data["pairs"][1]["differences"]["final"] == {"estimate": 0.0, "low": 0.0, "high": 0.0,
                                                        "share_a_better": 0.0, "share_ties": 1.0}
    assert data["n_resamples"] == 500 and data["n_notes"] == 53 and set(data["systems"]) == {"S", "M", "S2"}
