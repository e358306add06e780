"""Categories, prompt, corpus and prediction I/O: the single sources of truth."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from utils import categories as cats
from utils.meddec.corpus import (
    MedDecPaths, load_notes, parse_note_id, read_gold_dir, read_gold_file, read_raw_text,
    read_split, read_stats,
)
from utils.fileio import InputError, atomic_open, write_text_atomic
from utils.meddec.predictions import Span, parse_predictions, read_predictions, write_predictions
from utils.prompt import PROMPT_TEMPLATE, build_messages, build_prompt
from utils.metric.punkt import PunktMissingError, require_punkt, train_punkt_model, use_nltk_data_dir

# sha256 of the instruction block of ../shared/SPEC.md section 3 (ends right after "{raw_text}").
PROMPT_SHA256 = "f0bcaf9b1df3092c8a9ec9e7beddd1f5c5a221470ba245c5b372e77f3749d40c"


def test_category_table_matches_spec():
    assert [(c.id, c.tag) for c in cats.CATEGORIES] == [
        (1, "contact_related"), (2, "gather_info"), (3, "define_problem"), (4, "treatment_goal"),
        (5, "drug_decision"), (6, "therapeutic_procedure"), (7, "evaluate_result"), (8, "defer_decision"),
        (9, "advice_and_precaution"),
    ]
    assert cats.gold_name(3) == "Category 3: Defining problem"
    assert sorted(cats.INNER_ORDER) == list(range(1, 10))


@pytest.mark.parametrize(
    "raw, expected",
    [("Category 3: Defining problem", 3), ("Category 10: Legal", 0), ("Category 11: Other", 0), ("TBD", 0),
     ("Category9: Advice", 9), (" Category 3", 0), ("category 3", 0)],
)
def test_gold_category_parsing_follows_the_official_regex(raw, expected):
    assert cats.parse_gold_category(raw) == expected


def test_prompt_is_byte_identical_to_the_published_instruction():
    assert hashlib.sha256(PROMPT_TEMPLATE.encode("utf-8")).hexdigest() == PROMPT_SHA256
    assert PROMPT_TEMPLATE.count("{raw_text}") == 1
    note = "Pt. {raw_text} with {braces}\r\n"
    prompt = build_prompt(note)
    assert prompt.endswith("### INPUT TEXT ###\n" + note)
    assert build_messages("x", "y")[1] == {"role": "assistant", "content": "y"}


@pytest.mark.parametrize(
    "note_id, key, annotator",
    [("78_100536_1787", (78, 100536, 1787), None), ("78_100536_1787-anna", (78, 100536, 1787), "anna"),
     ("/x/78_100536_1787_.json", (78, 100536, 1787), None)],
)
def test_note_ids_parse_with_their_quirks(note_id, key, annotator):
    parsed = parse_note_id(note_id)
    assert parsed.key == key and parsed.annotator == annotator


def test_parse_note_id_rejects_other_names():
    assert parse_note_id("notes") is None and parse_note_id("1_2") is None


def _write(path, text, newline=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline=newline) as handle:
        handle.write(text)


def test_corpus_reader_keeps_exact_text_and_strips_id_underscore(tmp_path):
    root = MedDecPaths(tmp_path)
    text = "Line one.\r\nDr. Ünal  said \"no\".\n"
    _write(root.raw_text_dir / "1_2_3-ann.txt", text)
    gold = {"discharge_summary_id": "1_2_3-ann_", "annotations": [
        {"annotation_id": "T1", "start_offset": 0, "end_offset": 4, "category": "Category 5: Drug related", "decision": "Line"},
        {"annotation_id": "T2", "start_offset": 11, "end_offset": 14, "category": "TBD", "decision": "Dr."}]}
    _write(root.gold_dir / "1_2_3-ann.json", json.dumps(gold))
    _write(root.split("val"), "1_2_3-ann\n\n")
    _write(root.stats_csv, "SUBJECT_ID,HADM_ID,ROW_ID,GENDER,ETHNICITY,LANGUAGE\n1,2,3,F,AA,ENGL\nx,2,3,M,W,ENGL\n")
    ids = read_split(root.split("val"))
    notes = load_notes(root.gold_dir, root.raw_text_dir, ids)
    note = notes["1_2_3-ann"]
    assert note.text == text and "\r\n" in note.text
    assert [a.category for a in note.annotations] == [5, 0]
    assert [a.category for a in note.in_scope] == [5]
    assert read_stats(root.stats_csv)[(1, 2, 3)].ethnicity == "AA"
    assert len(read_stats(root.stats_csv)) == 1


def test_gold_errors_name_file_record_and_field(tmp_path):
    path = tmp_path / "1_2_3.json"
    _write(path, json.dumps({"discharge_summary_id": "1_2_3", "annotations": [
        {"start_offset": 0, "end_offset": 4, "category": "Category 1"},
        {"start_offset": "5", "end_offset": 9, "category": "Category 1"}]}))
    with pytest.raises(InputError) as err:
        read_gold_file(path)
    assert str(err.value) == f"{path}: annotations[1]: field 'start_offset': expected an integer, got '5'"
    _write(path, "{\n  \"annotations\": [,]\n}")
    with pytest.raises(InputError, match=r"line 2 column \d+: invalid JSON"):
        read_gold_file(path)


def test_missing_inputs_fail_with_one_line(tmp_path):
    with pytest.raises(InputError, match="raw text of note 9_9_9 not found"):
        read_raw_text(tmp_path, "9_9_9")
    with pytest.raises(InputError, match="gold directory not found"):
        read_gold_dir(tmp_path / "nope")
    _write(tmp_path / "stats.csv", "A,B\n1,2\n")
    with pytest.raises(InputError, match=r"line 1: missing column\(s\) SUBJECT_ID, HADM_ID, ROW_ID"):
        read_stats(tmp_path / "stats.csv")


def test_predictions_round_trip_keeps_order(tmp_path):
    preds = {"b_1_2": [Span(9, 12, 3), Span(0, 4, 5)], "a_1_2": []}
    path = tmp_path / "p.json"
    write_predictions(path, preds)
    assert read_predictions(path) == preds
    assert list(read_predictions(path)) == ["b_1_2", "a_1_2"]


@pytest.mark.parametrize(
    "data, message",
    [({"file_name": "x"}, "top level: expected a list"),
     ([{"predictions": []}], "record 0: field 'file_name': expected a note id string, got None"),
     ([{"file_name": "x", "predictions": [{"start_offset": 1, "end_offset": 2.5, "category": 3}]}],
      "record 0 (x) predictions[0]: field 'end_offset': expected an integer, got 2.5"),
     ([{"file_name": "x", "predictions": [{"start_offset": 1, "end_offset": 2}]}],
      "record 0 (x) predictions[0]: missing field 'category'"),
     ([{"file_name": "x"}, {"file_name": "x"}], "record 1 (x): duplicate file_name")],
)
def test_prediction_validation_messages(data, message):
    with pytest.raises(InputError) as err:
        parse_predictions(data, "p.json")
    assert str(err.value).startswith(f"p.json: {message}")


def test_flag_errors_name_the_command_line_then_the_flag():
    assert str(InputError.flag("--window", "expected at least 8 tokens, got 4")) == \
        "<command line>: --window: expected at least 8 tokens, got 4"
    with_value = InputError.flag("--backend", "vLLM is not installed", value="vllm")
    assert str(with_value) == "<command line>: --backend: got 'vllm': vLLM is not installed"
    assert (with_value.path, with_value.where) == ("<command line>", "--backend")
    assert str(InputError.flag("", "give gold_dir or gold_file")) == "<command line>: give gold_dir or gold_file"


def test_atomic_open_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_missing_punkt_names_the_install_command(tmp_path):
    with pytest.raises(PunktMissingError, match=r"python -m nltk\.downloader punkt_tab"):
        require_punkt("klingon")


def test_trained_punkt_model_splits_sentences(tmp_path):
    from nltk.tokenize import sent_tokenize

    texts = ["Pt. was seen by Dr. Lee today. She was well. The pt. left. Dr. Lee agreed."] * 5
    train_punkt_model(texts, tmp_path / "nltk", language="testlang")
    use_nltk_data_dir(tmp_path / "nltk")
    require_punkt("testlang")
    assert sent_tokenize("Seen by Dr. Lee today. All good.", language="testlang") == [
        "Seen by Dr. Lee today.", "All good."]


def test_punkt_cli_installs_a_model_and_rejects_an_empty_folder(tmp_path, capsys):
    from utils.metric.punkt import main as punkt_main

    notes = tmp_path / "raw_text"
    notes.mkdir()
    with pytest.raises(SystemExit) as err:
        punkt_main(["--raw_text_dir", str(notes), "--nltk_data_dir", str(tmp_path / "nd")])
    assert err.value.code == 2 and "expected a folder of .txt notes" in capsys.readouterr().err
    (notes / "1_2_3.txt").write_text("Dr. Lee saw the pt. today. He left. Dr. Lee agreed.\n" * 4)
    assert punkt_main(["--raw_text_dir", str(notes), "--nltk_data_dir", str(tmp_path / "nd"), "--language", "clitest"]) == 0
    assert (tmp_path / "nd/tokenizers/punkt_tab/clitest/abbrev_types.txt").read_text().split() == ["dr", "pt"]
