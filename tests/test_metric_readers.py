"""Reading inputs the official way (utils/metric/readers.py): note keys, universal newlines, subgroups."""

from __future__ import annotations

import json

from utils.meddec.corpus import Annotation, Demographics
from utils.metric.readers import (
    demographic_groups, gold_rows, official_gold_id, official_note_key, official_split_id, prediction_rows,
    read_gold_dir_official_order, read_official_gold_file, read_official_split, read_official_text, subgroup_members,
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


def test_each_scorer_reads_gold_ids_and_split_lines_its_own_way(tmp_path):
    # published: the first three '_' parts; f4374cd: trailing underscores stripped
    assert official_gold_id("1_2_3_v2", "published") == "1_2_3" and official_gold_id("1_2_3_v2", "meddec") == "1_2_3_v2"
    assert official_gold_id("1_2_", "published") == "1_2_" and official_gold_id("1_2_", "meddec") == "1_2"
    assert official_gold_id("1_2_3-ann__", "published") == official_gold_id("1_2_3-ann__", "meddec") == "1_2_3-ann"
    assert official_split_id(" 1_2_3.json \n", "published") == "1_2_3"
    assert official_split_id(" 1_2_3.json \n", "meddec") == "1_2_3.json"
    record = {"discharge_summary_id": "7_8_9_extra", "annotations": [
        {"start_offset": 0, "end_offset": 3, "category": "Category 3: Defining problem"}]}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.json").write_text(json.dumps(record))
    (tmp_path / "list.json").write_text(json.dumps([record]))
    assert list(read_official_gold_file(tmp_path / "data" / "a.json", "published")) == ["7_8_9"]
    assert list(read_official_gold_file(tmp_path / "data" / "a.json", "meddec")) == ["7_8_9_extra"]
    assert list(read_official_gold_file(tmp_path / "list.json", "published")) == ["7_8_9_extra"]  # lists: rstrip only
    assert list(read_gold_dir_official_order(tmp_path / "data")) == ["7_8_9"]  # the default is published
    (tmp_path / "split.txt").write_text("\ufeff7_8_9.json\n10_11_12\n", encoding="utf-8")
    assert read_official_split(tmp_path / "split.txt") == {"\ufeff7_8_9", "10_11_12"}  # the BOM stays, as officially
