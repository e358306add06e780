"""The synthetic MedDec corpus: exact layout, determinism, and the edge cases of the real data it must show."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from dataset.generate import main as generate_main
from dataset.synthetic import (
    ETHNICITIES,
    MARKER_FILE,
    SyntheticCorpusInfo,
    category_histogram,
    generate_corpus,
    generate_notes,
    parse_marked,
    summarize_notes,
)
from utils.categories import gold_name
from utils.meddec.corpus import (
    DISCHARGE_CATEGORY,
    MedDecPaths,
    Note,
    iter_noteevents,
    load_notes,
    parse_note_id,
    read_gold_dir,
    read_raw_text,
    read_split,
    read_stats,
)
from utils.fileio import InputError
from utils.paths import REPO_ROOT

TINY = dict(n_train=6, n_val=53, n_test=3, n_unlabeled=5, mean_chars=1500, mean_spans=30)
FREQUENCY_ORDER = (3, 5, 7, 6, 1, 9, 2, 4, 8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SyntheticCorpusInfo:
    return generate_corpus(tmp_path_factory.mktemp("synthetic") / "MedDec", seed=0, **TINY)


@pytest.fixture(scope="module")
def notes(corpus) -> dict[str, Note]:
    paths = corpus.paths
    return load_notes(paths.gold_dir, paths.raw_text_dir, corpus.all_ids)


@pytest.fixture(scope="module")
def default_val_notes() -> list[Note]:
    return generate_notes(53, seed=0)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------- layout


def test_layout_is_readable_with_utils_corpus(corpus, notes):
    paths = corpus.paths
    assert sorted(p.name for p in corpus.root.iterdir()) == sorted(
        [MARKER_FILE, "NOTEEVENTS.csv", "data", "raw_text", "splits", "stats.csv"])
    assert len(read_split(paths.split("train"))) == 6
    assert sorted(read_split(paths.split("val"))) == sorted(corpus.val_ids) and len(corpus.val_ids) == 53
    assert sorted(read_split(paths.split("test"))) == sorted(corpus.test_ids)
    gold = read_gold_dir(paths.gold_dir)
    assert sorted(gold) == sorted(corpus.all_ids)
    assert len(set(corpus.all_ids)) == 62
    stats = read_stats(paths.stats_csv)
    assert sorted(stats) == sorted(parse_note_id(i).key for i in corpus.all_ids)
    assert sum(len(n.annotations) for n in notes.values()) == corpus.n_annotations
    assert sum(len(n.text) for n in notes.values()) == corpus.n_chars
    assert corpus.category_counts == dict(category_histogram(notes.values()))


def test_offsets_are_valid_and_decisions_are_the_exact_text(corpus, notes):
    for note_id, note in notes.items():
        assert note.text == read_raw_text(corpus.paths.raw_text_dir, note_id)
        ids = [a.annotation_id for a in note.annotations]
        assert ids == [f"T{k}" for k in range(1, len(ids) + 1)]
        for a in note.annotations:
            assert 0 <= a.start < a.end <= len(note.text)
            assert a.decision == note.text[a.start:a.end]


def test_gold_json_matches_meddec_format(corpus):
    record = json.loads(next(corpus.paths.gold_dir.glob("*.json")).read_text(encoding="utf-8"))
    assert set(record) == {"discharge_summary_id", "annotations"}
    assert set(record["annotations"][0]) == {"annotation_id", "start_offset", "end_offset", "category", "decision"}
    allowed = {gold_name(c) for c in (*range(1, 12),)} | {"TBD"}
    for path in corpus.paths.gold_dir.glob("*.json"):
        for a in json.loads(path.read_text(encoding="utf-8"))["annotations"]:
            assert a["category"] in allowed


def test_gold_categories_use_official_strings(notes):
    raw = {a.category_raw for n in notes.values() for a in n.annotations}
    assert "Category 3: Defining problem" in raw
    assert {"TBD", "Category 10: Legal and insurance related", "Category 11: Other"} <= raw
    for n in notes.values():
        for a in n.annotations:
            assert (a.category == 0) == (a.category_raw in {"TBD", gold_name(10), gold_name(11)})


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    small = dict(n_train=3, n_val=3, n_test=2, n_unlabeled=4, mean_chars=1200, mean_spans=20)
    a = generate_corpus(tmp_path / "a", seed=7, **small)
    b = generate_corpus(tmp_path / "b", seed=7, **small)
    c = generate_corpus(tmp_path / "c", seed=8, **small)
    files = _tree(a.root)
    assert files == _tree(b.root) and len(files) == 2 * 8 + 6
    match, mismatch, errors = filecmp.cmpfiles(a.root, b.root, files, shallow=False)
    assert mismatch == [] and errors == []
    assert a.all_ids == b.all_ids and a.all_ids != c.all_ids
    assert (a.root / "NOTEEVENTS.csv").read_bytes() != (c.root / "NOTEEVENTS.csv").read_bytes()


def test_generate_notes_is_deterministic():
    first = generate_notes(4, seed=3, mean_chars=1500, mean_spans=30)
    again = generate_notes(4, seed=3, mean_chars=1500, mean_spans=30)
    other = generate_notes(4, seed=4, mean_chars=1500, mean_spans=30)
    assert first == again
    assert [n.text for n in first] != [n.text for n in other]
    assert all(isinstance(n, Note) for n in first)


# ------------------------------------------------------------------------------------------- edge cases


def _pairs(note: Note):
    anns = note.in_scope
    for i, a in enumerate(anns):
        for b in anns[i + 1:]:
            yield a, b


def test_text_edge_cases_are_present(notes):
    texts = [n.text for n in notes.values()]
    assert any("\r\n" in t for t in texts)
    assert any("\r\n" not in t and "\n" in t for t in texts)
    crlf = next(t for t in texts if "\r\n" in t)
    assert crlf.count("\n") == crlf.count("\r\n")  # a CRLF note is CRLF throughout
    joined = "".join(texts)
    for needle in ("°", "µ", "é", "–", "“", "”", "’", '"', "[**", "**]", "Dr.", "p.o.", "b.i.d.", "q.d.", "  ",
                   "\n1. ", "\n- ", "Admission Date:", "Discharge Date:", "Service:", "History of Present Illness:",
                   "Brief Hospital Course:", "Discharge Medications:", "Discharge Instructions:",
                   "Followup Instructions:", "[**Last Name (NamePattern1) **]"):
        assert needle in joined, needle


def test_span_edge_cases_are_present(notes):
    anns = [(n, a) for n in notes.values() for a in n.annotations]
    crossing = [(a, b) for n in notes.values() for a, b in _pairs(n)
                if a.start < b.start < a.end < b.end or b.start < a.start < b.end < a.end]
    nested = [(a, b) for n in notes.values() for a, b in _pairs(n)
              if (a.start, a.end) != (b.start, b.end) and a.start <= b.start and b.end <= a.end]
    same_offsets_two_categories = [(a, b) for n in notes.values() for a, b in _pairs(n)
                                   if (a.start, a.end) == (b.start, b.end) and a.category != b.category]
    exact_duplicates = [(a, b) for n in notes.values() for a, b in _pairs(n)
                        if (a.start, a.end, a.category) == (b.start, b.end, b.category)]
    assert crossing and nested and same_offsets_two_categories and exact_duplicates
    inside_word = [a for n, a in anns if n.text[a.start].isalnum() and a.start > 0 and n.text[a.start - 1].isalnum()
                   or n.text[a.end - 1].isalnum() and a.end < len(n.text) and n.text[a.end].isalnum()]
    assert inside_word
    assert any(a.decision[0] in " \n" or a.decision[-1] in " \n" for _, a in anns)  # edge whitespace
    assert any(a.decision[-1] in ".,;:)" or a.decision[0] in "(\"“" for _, a in anns)  # edge punctuation
    assert any("\n" in a.decision for _, a in anns)  # over a line break
    assert any("\r\n" in a.decision for _, a in anns)  # ... also in a CRLF note
    assert any(a.decision.startswith("[**") for _, a in anns) and any(a.decision.endswith("**]") for _, a in anns)
    assert any('"' in a.decision for _, a in anns)
    assert any(a.category == 0 for _, a in anns)


def test_annotation_order_is_not_always_by_offset(notes):
    # The official token F1 takes the first overlapping annotation in list order: the order must vary.
    assert any(a.start > b.start for n in notes.values() for a, b in zip(n.annotations, n.annotations[1:]))


def test_headers_are_never_annotated(notes):
    for n in notes.values():
        for a in n.annotations:
            for header in ("Admission Date:", "Discharge Date:", "Brief Hospital Course:", "Discharge Medications:"):
                assert header not in a.decision


def test_ids_with_trailing_underscore_and_annotator_suffix(corpus):
    gold_files = corpus.paths.gold_dir.glob("*.json")
    inside = [json.loads(p.read_text(encoding="utf-8"))["discharge_summary_id"] for p in gold_files]
    underscored = [i for i in inside if i.endswith("_")]
    assert underscored and all((corpus.paths.gold_dir / f"{i.rstrip('_')}.json").is_file() for i in underscored)
    suffixed = [i for i in corpus.all_ids if parse_note_id(i).annotator]
    assert suffixed
    split_ids = {i for s in ("train", "val", "test") for i in read_split(corpus.paths.split(s))}
    for note_id in suffixed:
        assert "-" in note_id and note_id in split_ids
        assert (corpus.paths.raw_text_dir / f"{note_id}.txt").is_file()
        assert (corpus.paths.gold_dir / f"{note_id}.json").is_file()


def test_every_subgroup_is_present_in_val(corpus):
    stats = read_stats(corpus.paths.stats_csv)
    val = [stats[parse_note_id(i).key] for i in corpus.val_ids]
    assert {d.ethnicity for d in val} == set(ETHNICITIES)
    assert {d.language for d in val} == {"ENGL", "Non-ENGL"}
    assert {d.gender for d in val} == {"M", "F"}


def test_category_frequencies_follow_the_real_order(default_val_notes):
    counts = Counter(a.category for n in default_val_notes for a in n.annotations if a.category)
    ordered = [counts[c] for c in FREQUENCY_ORDER]
    assert ordered == sorted(ordered, reverse=True) and len(set(ordered)) == 9, counts
    assert 0 < counts[8] < 0.02 * sum(counts.values())  # 8 is very rare


def test_default_sizes_look_like_the_real_validation_set(default_val_notes):
    s = summarize_notes(default_val_notes)
    assert 7500 <= s["chars_median"] <= 10500
    assert 16000 <= s["chars_max"] <= 27000
    assert 130 <= s["spans_median"] <= 180
    assert 1 <= s["crlf_notes"] <= 15


def test_spans_fit_their_category(default_val_notes):
    # Each category's spans come from its own phrases, so a model can learn the mapping.
    texts = {c: " ".join(a.decision.lower() for n in default_val_notes for a in n.annotations if a.category == c)
             for c in range(1, 10)}
    assert "follow up" in texts[1] and "consulted" in texts[2] and "tablet" in texts[5]
    assert "underwent" in texts[6] and "showed" in texts[7] and "deferred" in texts[8]


def test_parse_marked_keeps_crossing_spans():
    text, spans = parse_marked("<c3>The exam suggested <c7>atelectasis</c3> - density unclear</c7>.")
    assert text == "The exam suggested atelectasis - density unclear."
    assert spans == [(0, 30, "3"), (19, 48, "7")]
    assert parse_marked("<c5>a <c5>b</c5> c</c5>")[1] == [(0, 5, "5"), (2, 3, "5")]
    with pytest.raises(ValueError):
        parse_marked("<c5>never closed")


# ---------------------------------------------------------------------------------------------- NOTEEVENTS


def test_noteevents_has_split_notes_extras_and_other_categories(corpus, notes):
    frame = pd.concat(list(iter_noteevents(corpus.paths.noteevents_csv, chunksize=7)), ignore_index=True)
    assert len(frame) == corpus.n_noteevents_rows
    assert frame["ROW_ID"].is_unique
    split_rows = {parse_note_id(i).row_id: i for i in corpus.all_ids}
    discharge = frame[frame["CATEGORY"] == DISCHARGE_CATEGORY]
    texts = dict(zip(discharge["ROW_ID"].astype(int), discharge["TEXT"]))
    for row_id, note_id in split_rows.items():
        assert texts[row_id] == notes[note_id].text  # multi-line (and CRLF) TEXT survives the CSV exactly
    reports = discharge[discharge["DESCRIPTION"] == "Report"]
    extras = set(reports["ROW_ID"].astype(int)) - set(split_rows)
    assert extras == set(corpus.unlabeled_row_ids) and len(extras) == 5
    assert (discharge["DESCRIPTION"] == "Addendum").any()
    assert set(frame["CATEGORY"]) - {DISCHARGE_CATEGORY} >= {"Radiology", "Nursing"}
    assert frame["HADM_ID"].isna().any()  # outpatient rows without an admission


# ------------------------------------------------------------------------------------------ overwriting


def test_overwrites_an_earlier_corpus_and_refuses_a_foreign_folder(tmp_path):
    small = dict(n_train=2, n_val=2, n_test=1, n_unlabeled=1, mean_chars=1000, mean_spans=10)
    target = tmp_path / "corpus"
    first = generate_corpus(target, seed=1, **small)
    second = generate_corpus(target, seed=2, **small)
    assert sorted(p.stem for p in (target / "data").glob("*.json")) == sorted(second.all_ids) != sorted(first.all_ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no temporary folders left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_corpus(empty, seed=1, **small)
    assert (empty / "stats.csv").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a synthetic corpus"):
        generate_corpus(foreign, seed=1, **small)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="n_val"):
        generate_corpus(tmp_path / "bad", n_val=-1)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_writes_corpus_and_prints_summary(tmp_path, capsys):
    rc = generate_main(["--out_dir", str(tmp_path / "cli"), "--seed", "0", "--n_train", "2", "--n_val", "2",
                        "--n_test", "1", "--n_unlabeled", "2", "--mean_chars", "1200", "--mean_spans", "20"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "notes: train 2, val 2, test 1" in out and "Category 3: Defining problem" in out and "TBD" in out
    assert len(read_split(MedDecPaths(tmp_path / "cli").split("val"))) == 2


def test_cli_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("")
    assert generate_main(["--out_dir", str(foreign)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(foreign) in err and "not a synthetic corpus" in err


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    flags = ("--out_dir", "--seed", "--n_train", "--n_val", "--n_test", "--n_unlabeled", "--mean_chars", "--mean_spans")
    for flag in flags:
        assert flag in out


@pytest.mark.slow
def test_default_corpus_runs_as_a_file_in_seconds(tmp_path):
    start = time.perf_counter()
    command = [sys.executable, str(REPO_ROOT / "dataset" / "generate.py"), "--out_dir", str(tmp_path / "d")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "notes: train 350, val 53, test 53" in result.stdout
    assert len(list((tmp_path / "d" / "data").glob("*.json"))) == 456
    assert elapsed < 60
