"""The demo's copy-and-tag curriculum keeps gold spans exact inside each window."""

from __future__ import annotations

import json

from dataset.curriculum import build_curriculum, line_windows, spans_inside, write_curriculum_csv
from dataset.synthetic import generate_notes
from utils.meddec.tables import read_tagged_table, write_tagged_table
from utils.tagging.convert import gold_row, tagged_to_spans
from utils.tagging.splits import in_scope_spans


def test_line_windows_cover_the_text_in_whole_lines():
    text = "aa\r\nbbb\ncc\n\nd"
    windows = list(line_windows(text, max_chars=6))
    assert windows == [(0, 4), (4, 8), (8, 13)]
    assert "".join(text[s:e] for s, e in windows) == text
    assert list(line_windows("a very long single line", 5)) == [(0, 23)]


def test_spans_inside_shift_and_drop_straddling_spans():
    assert spans_inside([(2, 4, 3), (5, 9, 5), (9, 12, 1)], 2, 10) == [(0, 2, 3), (3, 7, 5)]


def test_curriculum_rows_round_trip_to_the_gold_spans(tmp_path):
    notes = generate_notes(3, seed=4, mean_chars=1500, mean_spans=20)
    rows = [gold_row(n.note_id, n.text, in_scope_spans(n.annotations))[0] for n in notes]
    curriculum = build_curriculum(rows, max_chars=200)
    windows = [r for r in curriculum if "#w" in r["file_id"]]
    assert len(windows) > 3 and curriculum[-3:] == rows
    for row in windows:
        plain, spans = tagged_to_spans(row["gold_span"])
        assert plain == row["raw_text"]
        assert sorted(map(tuple, spans)) == sorted(map(tuple, json.loads(row["gold_offsets"])))
    write_tagged_table(tmp_path / "train.csv", rows)
    assert write_curriculum_csv(tmp_path / "train.csv", tmp_path / "cur.csv", max_chars=200) == len(curriculum)
    assert read_tagged_table(tmp_path / "cur.csv")["file_id"].tolist() == [r["file_id"] for r in curriculum]
