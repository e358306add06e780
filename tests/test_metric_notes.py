"""The scorer's per-note API (utils/metric/notes.py, Scorer.note_scores/aggregate and the read-only
accessors) and the span-table scorer built on it: per-note numbers by hand, aggregation equal to the
full report, resampling as a bootstrap does it, and the lazy package import."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import utils.metric
from utils.meddec.corpus import Annotation, Demographics
from utils.metric import NoteScores, Scorer, SpanTableScorer, aggregate
from utils.paths import REPO_ROOT
from utils.meddec.predictions import Span

TEXT_1 = "Start aspirin daily. Stop warfarin now. Follow up in clinic."
TEXT_2 = "CT head negative. Consult neurology."
F1_CAT5_NOTE_1 = 2 * 1.0 * 0.6 / 1.6  # 3 of 5 gold category-5 tokens found, no false positive
TOKEN_F1_NOTE_1 = (F1_CAT5_NOTE_1 + 0.0 + 0.0) / 3  # labels 5, 1 (missed) and 3 (wrong)
PREDICTIONS = {"1_1_1": [Span(0, 19, 5), Span(21, 34, 3)], "2_2_2": [Span(0, 16, 7), Span(18, 35, 2)]}


def _ann(text: str, phrase: str, category: int) -> Annotation:
    start = text.index(phrase)
    return Annotation(start, start + len(phrase), category)


GOLD = {
    "1_1_1": [_ann(TEXT_1, "Start aspirin daily", 5), _ann(TEXT_1, "Stop warfarin", 5),
              _ann(TEXT_1, "Follow up in clinic", 1), _ann(TEXT_1, "daily", 0)],
    "2_2_2": [_ann(TEXT_2, "CT head negative", 7), _ann(TEXT_2, "Consult neurology", 2)],
}
STATS = {(1, 1, 1): Demographics("F", "W", "ENGL"), (2, 2, 2): Demographics("M", "ASIAN", "SPAN")}


@pytest.fixture()
def scorer() -> Scorer:
    return Scorer(GOLD, {"1_1_1": TEXT_1, "2_2_2": TEXT_2, "3_3_3": "   "}, STATS)


def test_note_scores_by_hand(scorer):
    scores = scorer.note_scores(PREDICTIONS)
    ids = scores.notes.ids
    assert ids == tuple(set(GOLD.keys()) | set(PREDICTIONS.keys()))  # the official set's iteration order
    by_note = {name: (int(scores.tp[i]), int(scores.fp[i]), int(scores.fn[i]), float(scores.token_f1[i]))
               for i, name in enumerate(ids)}
    assert by_note == {"1_1_1": (1, 1, 2, TOKEN_F1_NOTE_1), "2_2_2": (2, 0, 0, 1.0)}
    assert scores.notes.scored.tolist() == [True, True] and scores.notes.n_prediction_files == 2
    assert scores.notes.groups == (("sex", "Female"), ("sex", "Male"), ("race", "White"), ("race", "Asian"),
                                   ("language", "English"), ("language", "Non-English"))
    female = ids.index("1_1_1")
    assert [rows.tolist() for rows in scores.notes.group_rows] == [[female], [1 - female]] * 3
    assert scores.notes.membership().tolist() == [[i == female for i in range(2)], [i != female for i in range(2)]] * 3
    with pytest.raises(ValueError):
        scores.tp[0] = 5  # results are read-only


def test_aggregate_gives_the_reports_numbers(scorer):
    head = scorer.aggregate(scorer.note_scores(PREDICTIONS))
    report = scorer.score(PREDICTIONS)
    assert (head.span, head.token_f1, head.base, head.worst, head.final, head.subgroups) == (
        report.span, report.token_f1, report.base, report.worst, report.final, report.subgroups)
    assert head.token_f1 == (TOKEN_F1_NOTE_1 + 1.0) / 2
    assert head.objective == report.final == scorer.final_score(PREDICTIONS)
    assert head.subgroups["sex"]["Female"].n_spans == 3 and head.subgroups["race"]["Asian"].span_f1 == 1.0
    no_stats = Scorer(GOLD, {"1_1_1": TEXT_1, "2_2_2": TEXT_2})
    head = no_stats.aggregate(no_stats.note_scores(PREDICTIONS))
    assert head.worst is head.final is head.subgroups is None and head.objective == head.base == report.base


def test_a_note_without_tokens_counts_for_spans_only(scorer):
    scores = scorer.note_scores({**PREDICTIONS, "3_3_3": [Span(0, 2, 4)]})
    row = scores.notes.ids.index("3_3_3")
    assert not scores.notes.scored[row] and np.isnan(scores.token_f1[row])
    assert (scores.tp[row], scores.fp[row], scores.fn[row]) == (0, 0, 0)  # whitespace refines to nothing
    assert scores.notes.n_prediction_files == 3 and len(scores) == 3
    assert aggregate(scores).token_f1 == (TOKEN_F1_NOTE_1 + 1.0) / 2  # the mean skips it
    assert scorer.score({**PREDICTIONS, "3_3_3": []}).files_with_text == 3


def test_select_resamples_notes_as_a_bootstrap_does(scorer):
    scores = scorer.note_scores(PREDICTIONS)
    one, two = scores.notes.ids.index("1_1_1"), scores.notes.ids.index("2_2_2")
    same = aggregate(scores.select(np.arange(2)))
    assert same.span == aggregate(scores).span and same.final == aggregate(scores).final
    resample = scores.select(np.array([one, one, two]))
    assert resample.notes.ids == ("1_1_1", "1_1_1", "2_2_2")
    head = aggregate(resample)
    assert (head.span.tp, head.span.fp, head.span.fn) == (4, 2, 4)
    assert head.token_f1 == (TOKEN_F1_NOTE_1 + TOKEN_F1_NOTE_1 + 1.0) / 3
    female = head.subgroups["sex"]["Female"]
    assert (female.n_files, female.n_spans, female.token_f1) == (2, 6, (TOKEN_F1_NOTE_1 + TOKEN_F1_NOTE_1) / 2)
    assert resample.notes.membership()[0].tolist() == [True, True, False]
    without_male = aggregate(scores.select(np.array([one])))
    assert "Male" not in without_male.subgroups["sex"] and without_male.worst == without_male.base


def test_note_scores_validate_their_shape(scorer):
    notes = scorer.notes(PREDICTIONS)
    with pytest.raises(ValueError, match=r"NoteScores.fp: expected shape \(2,\), got \(3,\)"):
        NoteScores(notes, np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2))


def test_read_only_accessors(scorer):
    assert scorer.gold_spans("1_1_1") == {(5, "start aspirin daily"), (5, "stop warfarin"), (1, "follow up in clinic")}
    assert scorer.gold_spans("3_3_3") == frozenset()
    rows = [(0, 5, 5), (0, 5, 0), (19, 21, 5), (0, 5, 10)]  # counts; category 0; punctuation only; category 10
    assert scorer.span_keys("1_1_1", rows) == [(5, "start"), None, None, None]
    starts, ends = scorer.tokens("2_2_2")
    assert [TEXT_2[s:e] for s, e in zip(starts, ends)] == ["CT", "head", "negative", ".", "Consult", "neurology", "."]
    with pytest.raises(ValueError):
        starts[0] = 1
    assert scorer.gold_token_labels("2_2_2").tolist() == [7, 7, 7, 0, 2, 2, 0]
    assert scorer.gold_label_order("2_2_2") == [7, 0, 2] and scorer.gold_label_order("3_3_3") == [0]
    assert scorer.gold_token_labels("3_3_3").tolist() == [] and not scorer.is_scored("3_3_3")
    assert scorer.in_split("anything")
    assert sorted(scorer.subgroups["race"]) == ["Asian", "White"]
    split = Scorer(GOLD, {"1_1_1": TEXT_1, "2_2_2": TEXT_2}, split_ids=["1_1_1"])
    assert split.in_split("1_1_1") and not split.in_split("2_2_2")
    assert split.notes(["2_2_2", "9_9_9"]).predicted.tolist() == [False, False]  # outside the split: ignored


def test_span_table_per_note_results_equal_the_scorers(scorer):
    table_rows = [("1_1_1", 0, 19, 5), ("1_1_1", 21, 34, 3), ("1_1_1", 0, 13, 3), ("1_1_1", 40, 59, 1),
                  ("2_2_2", 0, 16, 7), ("2_2_2", 18, 35, 2), ("2_2_2", 17, 18, 2), ("3_3_3", 0, 3, 4)]
    note_ids = ["1_1_1", "2_2_2", "3_3_3"]
    note, start, end, category = (np.array(column) for column in zip(*table_rows))
    table = SpanTableScorer(scorer, note_ids, np.array([note_ids.index(n) for n in note]), start, end, category)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = np.flatnonzero(rng.random(len(table_rows)) < 0.5)
        predictions = {name: [] for name in note_ids}
        for r in sorted(rows, key=lambda r: table_rows[r]):
            predictions[table_rows[r][0]].append(Span(*table_rows[r][1:]))
        ours, theirs = table.note_scores(rows), scorer.note_scores(predictions)
        assert ours.notes.ids == theirs.notes.ids
        for name in ("tp", "fp", "fn", "token_f1"):
            assert np.array_equal(getattr(ours, name), getattr(theirs, name), equal_nan=True), name
        assert table.final_score(rows) == scorer.final_score(predictions)


def test_package_exports_load_lazily_and_all_resolve():
    for name in utils.metric.__all__:
        assert getattr(utils.metric, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        utils.metric.nope  # noqa: B018
    code = "import sys, utils.metric, utils.metric.punkt; print('numpy' in sys.modules, 'tqdm' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.split() == ["False", "False"]
