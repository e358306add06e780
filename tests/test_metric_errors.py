"""Error classes (utils/metric/errors.py), their plots and evaluate/errors.py: a hand-built note with exact expected
counts, consistency with the official per-category counts, and the files the command writes."""

from __future__ import annotations

import json

import pytest

from utils.meddec.corpus import Annotation, Demographics
from utils.meddec.predictions import Span, write_predictions
from utils.metric import Scorer
from utils.metric.errors import classify_note, classify_predictions, summarize
from utils.paths import load_module_from_path

errors_cli = load_module_from_path("evaluate/errors.py", "lamar_errors_cli")

TEXT = "Start aspirin daily. Stop warfarin now. Follow up in clinic. CT head negative. Consult neurology today. " \
       "Hold aspirin."


def at(phrase: str, category: int, occurrence: int = 0) -> Span:
    start = -1
    for _ in range(occurrence + 1):
        start = TEXT.index(phrase, start + 1)
    return Span(start, start + len(phrase), category)


GOLD = [at("Start aspirin daily", 5), at("Stop warfarin", 5), at("Follow up in clinic", 1), at("CT head negative", 7),
        at("Consult neurology", 2), at("daily", 0)]  # category 0: out of scope, never classified
PRED = [
    at("Start aspirin daily", 5),  # exact
    at("Start aspirin daily.", 5),  # the same key again after refinement: collapses, as officially
    at("Stop warfarin now", 5),  # boundary (gold "Stop warfarin": end + 4)
    at("Follow up in clinic", 9),  # category error (gold category 1)
    at("neurology today", 2),  # boundary (gold "Consult neurology": start + 8, end + 6)
    at("aspirin", 5),  # overlaps gold "Start aspirin daily" (same category): boundary ...
    at("aspirin", 5, occurrence=1),  # ... and its second occurrence overlaps nothing: the key stays a boundary error
    at("now", 3),  # overlaps no gold span: spurious
    at("CT head", 0),  # category 0: ignored (so gold "CT head negative" is missed)
    Span(60, 61, 4),  # a lone space: refines to nothing, ignored
]


def test_hand_built_note_has_exactly_the_expected_classes():
    note = classify_note("1_1_1", TEXT, [tuple(s) for s in GOLD], [tuple(s) for s in PRED])
    gold = {key: (r.error, r.other_category, r.offsets) for key, r in note.gold_keys.items()}
    assert gold == {(5, "start aspirin daily"): ("exact", None, None), (5, "stop warfarin"): ("boundary", None, (0, 4)),
                    (1, "follow up in clinic"): ("category", 9, None), (7, "ct head negative"): ("missed", None, None),
                    (2, "consult neurology"): ("boundary", None, (8, 6))}
    pred = {key: (r.error, r.other_category, r.offsets) for key, r in note.pred_keys.items()}
    assert pred == {(5, "start aspirin daily"): ("exact", None, None),
                    (5, "stop warfarin now"): ("boundary", None, (0, 4)),
                    (9, "follow up in clinic"): ("category", 1, None),
                    (2, "neurology today"): ("boundary", None, (8, 6)),
                    (5, "aspirin"): ("boundary", None, (6, -6)), (3, "now"): ("spurious", None, None)}
    assert note.counts() == {"exact": 1, "boundary": 2, "category": 1, "missed": 1, "spurious": 1}
    assert len([o for o in note.occurrences if o.side == "pred"]) == 8  # 10 rows, 2 ignored; duplicates kept
    aspirins = [o for o in note.occurrences if o.text == "aspirin"]
    assert [(TEXT[o.start:o.end], o.error) for o in aspirins] == [("aspirin", "boundary")] * 2

    summary = summarize([note])
    assert summary.gold[5] == {"exact": 1, "boundary": 1, "category": 0, "missed": 0}
    assert summary.gold[1] == {"exact": 0, "boundary": 0, "category": 1, "missed": 0}
    assert summary.gold[7]["missed"] == 1 and summary.gold[2]["boundary"] == 1
    assert summary.pred[5] == {"exact": 1, "boundary": 2, "category": 0, "spurious": 0}
    assert summary.pred[9]["category"] == summary.pred[3]["spurious"] == summary.pred[2]["boundary"] == 1
    assert summary.totals() == {"gold": {"exact": 1, "boundary": 2, "category": 1, "missed": 1},
                                "pred": {"exact": 1, "boundary": 3, "category": 1, "spurious": 1}}
    expected = [[0] * 10 for _ in range(10)]
    expected[5][5], expected[1][9], expected[7][0], expected[2][2], expected[0][3] = 2, 1, 1, 1, 1
    assert summary.confusion == expected
    assert (summary.start_offsets, summary.end_offsets) == ([0, 8], [4, 6])


def test_category_errors_take_the_largest_overlap_then_the_lowest_category():
    text = "alpha beta gamma delta"
    note = classify_note("n", text, [(0, 16, 1)], [(0, 5, 4), (6, 16, 3), (0, 5, 2)])
    assert note.gold_keys[(1, "alpha beta gamma")].other_category == 3  # "beta gamma" overlaps 10 characters
    tie = classify_note("n", text, [(0, 10, 1)], [(0, 5, 4), (6, 10, 3), (0, 5, 2)])
    assert tie.gold_keys[(1, "alpha beta")].other_category == 2  # overlaps of 5, 4, 5: lowest category of the 5s


@pytest.fixture()
def scorer() -> Scorer:
    other = "Consult neurology. Hold aspirin."
    gold = {"1_1_1": [Annotation(*s) for s in GOLD], "2_2_2": [Annotation(0, 17, 2)]}
    stats = {(1, 1, 1): Demographics("F", "W", "ENGL"), (2, 2, 2): Demographics("M", "W", "ENGL")}
    return Scorer(gold, {"1_1_1": TEXT, "2_2_2": other, "3_3_3": other}, stats)


PREDICTIONS = {"1_1_1": PRED, "2_2_2": [Span(8, 17, 2), Span(19, 31, 5)], "3_3_3": [Span(0, 7, 7)]}


def test_counts_agree_with_the_official_per_category_numbers(scorer):
    report = scorer.score(PREDICTIONS)
    summary = summarize(classify_predictions(scorer, PREDICTIONS))
    for cat, official in report.per_category.items():
        gold, pred = summary.gold[cat], summary.pred[cat]
        assert gold["exact"] == pred["exact"] == official.span.tp, cat
        assert sum(gold.values()) == official.span.tp + official.span.fn, cat
        assert sum(pred.values()) == official.span.tp + official.span.fp, cat
    assert summary.per_note["3_3_3"] == {"exact": 0, "boundary": 0, "category": 0, "missed": 0, "spurious": 1}
    assert summary.per_note["2_2_2"] == {"exact": 0, "boundary": 1, "category": 0, "missed": 0, "spurious": 1}


def test_errors_cli_writes_counts_and_plots_without_note_text(scorer, tmp_path, capsys):
    raw = tmp_path / "raw_text"
    gold_dir = tmp_path / "data"
    raw.mkdir()
    gold_dir.mkdir()
    for note_id in ("1_1_1", "2_2_2", "3_3_3"):
        (raw / f"{note_id}.txt").write_text(scorer.text(note_id), encoding="utf-8")
    gold = [{"discharge_summary_id": "1_1_1", "annotations": [
        {"start_offset": s.start, "end_offset": s.end, "category": f"Category {s.category}: x" if s.category else "TBD"}
        for s in GOLD]}]
    (gold_dir / "gold.json").write_text(json.dumps(gold), encoding="utf-8")
    write_predictions(tmp_path / "sys a.json", {"1_1_1": PRED})
    write_predictions(tmp_path / "b.json", {"1_1_1": PRED[:3]})
    out = tmp_path / "errors"
    argv = ["--predictions", str(tmp_path / "sys a.json"), str(tmp_path / "b.json"), "--gold_dir", str(gold_dir),
            "--raw_text_dir", str(raw), "--output_dir", str(out)]
    assert errors_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "sys a: gold keys exact 1, boundary 2, category 1, missed 1; predicted keys exact 1, boundary 3, " \
           "category 1, spurious 1" in printed
    data = json.loads((out / "errors.json").read_text())
    assert list(data["systems"]) == ["sys a", "b"] and set(data["definitions"]) >= {"exact", "boundary", "category"}
    a = data["systems"]["sys a"]
    assert a["totals"]["gold"] == {"exact": 1, "boundary": 2, "category": 1, "missed": 1}
    assert a["boundary_offsets"]["start"] == {"0": 1, "8": 1} and a["confusion"]["matrix"][1][9] == 1
    assert a["per_category"]["5"]["pred"]["boundary"] == 2
    assert data["systems"]["b"]["totals"]["gold"] == {"exact": 1, "boundary": 1, "category": 0, "missed": 3}
    text = (out / "errors.json").read_text().lower()
    assert "aspirin" not in text and "warfarin" not in text  # counts only: no note text
    for name in ("sys_a_confusion.png", "sys_a_boundary_offsets.png", "b_confusion.png", "b_boundary_offsets.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
