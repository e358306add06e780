"""Reading inputs the official way (utils/metric/readers.py): note keys, universal newlines, subgroups."""

from __future__ import annotations

from utils.meddec.corpus import Annotation, Demographics
from utils.metric.readers import (
    demographic_groups, gold_rows, official_note_key, prediction_rows, read_official_text, subgroup_members,
)
from utils.meddec.predictions import Span


def test_official_note_key_and_crlf_reading(tmp_path):
    assert official_note_key("78_100536_1787-anna") == (78, 100536, 1787)
    assert official_note_key("/x/78_100536_1787.json") == (78, 100536, 1787)
    assert official_note_key("78_100536") is None and official_note_key("a_1_2") is None
    path = tmp_path / "n.txt"
    path.write_bytes(b"a\r\nb\rc\n")
    assert read_official_text(path) == "a\nb\nc\n"


def test_demographics_are_normalised_into_the_official_groups():
    assert demographic_groups(Demographics("F", "WHITE - RUSSIAN", "ENGL")) == {
        "sex": "Female", "race": "White", "language": "English"}
    assert demographic_groups(Demographics("m", "BLACK/AFRICAN AMERICAN", "SPAN")) == {
        "sex": "Male", "race": "African American", "language": "Non-English"}
    assert demographic_groups(Demographics("", "HISPANIC OR LATINO", ""))["race"] == "Hispanic"
    assert demographic_groups(Demographics("X", "UNKNOWN/NOT SPECIFIED", None)) == {
        "sex": "Other", "race": "Other", "language": "Non-English"}


def test_subgroup_members_skip_empty_groups_and_notes_without_stats():
    stats = {(1, 1, 1): Demographics("F", "W", "ENGL"), (2, 2, 2): Demographics("M", "ASIAN", "SPAN"),
             (3, 3, 3): Demographics("F", "ASIAN", "ENGL")}
    members = subgroup_members(["1_1_1", "2_2_2-ann", "3_3_3", "4_4_4", "bad"], stats)
    assert list(members) == ["sex", "race", "language"]
    assert sorted(members["sex"]["Female"]) == ["1_1_1", "3_3_3"] and members["sex"]["Male"] == ["2_2_2-ann"]
    assert list(members["race"]) == ["White", "Asian"]  # official order, empty groups left out
    assert sorted(members["race"]["Asian"]) == ["2_2_2-ann", "3_3_3"]


def test_gold_and_prediction_rows_in_every_usual_shape():
    dicts = [{"start_offset": "3", "end_offset": 9, "category": "Category 5: Drug related"}, {"start_offset": 1}]
    assert gold_rows(dicts) == [(3, 9, 5), (1, 0, 0)]
    assert gold_rows([Annotation(2, 4, 7)]) == [(2, 4, 7)]
    spans = [Span(0, 5, 3)]
    assert prediction_rows(spans) is spans  # tuples are used as they are
    mixed = [{"start_offset": 1, "end_offset": "4", "category": 2}, [5, 6, "7"]]
    assert prediction_rows(mixed) == [(1, 4, 2), (5, 6, 7)]
