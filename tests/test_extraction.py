"""The unlabeled pool: discharge "Report" notes of NOTEEVENTS that are in no split, streamed in chunks."""

from __future__ import annotations

import csv
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from dataset.synthetic import generate_corpus
from utils.pseudolabels import extraction
from utils.pseudolabels.extraction import extract_unlabeled, read_exclusions
from utils.meddec.corpus import parse_note_id
from utils.fileio import InputError
from utils.paths import REPO_ROOT


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(
        tmp_path_factory.mktemp("corpus") / "MedDec", seed=3, n_train=5, n_val=3, n_test=3, n_unlabeled=40,
        mean_chars=500, mean_spans=4,
    )


def _splits(corpus) -> list[Path]:
    return [corpus.paths.split(name) for name in ("train", "val", "test")]


def _read_output(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _noteevents(corpus) -> pd.DataFrame:
    return pd.read_csv(corpus.paths.noteevents_csv, dtype=str, keep_default_na=False)


def test_pool_is_exactly_the_unlabeled_reports_in_file_order(corpus, tmp_path):
    out = tmp_path / "pool.csv"
    chunk_lengths: list[int] = []
    original = extraction.iter_noteevents

    def recording(*args, **kwargs):
        for chunk in original(*args, **kwargs):
            chunk_lengths.append(len(chunk))
            yield chunk

    extraction.iter_noteevents = recording
    try:
        counts = extract_unlabeled(corpus.paths.noteevents_csv, out, _splits(corpus), chunksize=7, progress=False)
    finally:
        extraction.iter_noteevents = original
    assert len(chunk_lengths) > 1 and max(chunk_lengths) <= 7  # streamed, never the whole file

    events = _noteevents(corpus)
    reports = events[(events.CATEGORY == "Discharge summary") & (events.DESCRIPTION == "Report")]
    expected = reports[reports.ROW_ID.astype(int).isin(corpus.unlabeled_row_ids)]
    pool = _read_output(out)
    assert list(pool.columns) == ["file_id", "raw_text"]
    assert pool.file_id.tolist() == (expected.SUBJECT_ID + "_" + expected.HADM_ID + "_" + expected.ROW_ID).tolist()
    assert pool.raw_text.tolist() == expected.TEXT.tolist()  # text byte-identical, CRLF notes included
    assert counts.rows_read == corpus.n_noteevents_rows
    assert counts.discharge == len(reports)
    assert counts.excluded_by_id == len(corpus.all_ids)
    assert counts.excluded_by_patient == 0
    assert counts.kept == len(corpus.unlabeled_row_ids) == len(pool)


def test_exclude_patients_and_any_description(corpus, tmp_path):
    out = tmp_path / "pool.csv"
    counts = extract_unlabeled(
        corpus.paths.noteevents_csv, out, _splits(corpus), description="any", exclude_patients=True,
        chunksize=10, progress=False,
    )
    subjects = {parse_note_id(i).subject_id for i in corpus.all_ids}
    rows = {parse_note_id(i).row_id for i in corpus.all_ids}
    events = _noteevents(corpus)
    discharge = events[events.CATEGORY == "Discharge summary"]
    not_by_id = discharge[~discharge.ROW_ID.astype(int).isin(rows)]
    by_patient = not_by_id.SUBJECT_ID.astype(int).isin(subjects)
    assert by_patient.sum() > 0  # the synthetic corpus has addenda of MedDec patients
    assert counts.discharge == len(discharge)
    assert counts.excluded_by_patient == by_patient.sum()
    assert counts.kept == len(not_by_id) - by_patient.sum()
    pool = _read_output(out)
    assert not {int(i.split("_")[0]) for i in pool.file_id} & subjects


def test_annotator_suffixes_are_stripped_for_matching(tmp_path):
    split = tmp_path / "s.txt"
    split.write_text("1_2_3-anna\n4_5_6_\n", encoding="utf-8")
    exclusions = read_exclusions([split])
    assert exclusions.row_ids == {3, 6} and exclusions.subject_ids == {1, 4}
    split.write_text("1_2_3\nnot-an-id\n", encoding="utf-8")
    with pytest.raises(InputError, match="id 'not-an-id'.*SUBJECTID_HADMID_ROWID"):
        read_exclusions([split])


def test_memory_is_bounded_by_the_chunk_not_the_file(tmp_path):
    # ~3 MB of notes; with 50-row chunks the traced peak stays far below the file size.
    text = ("Discharge instructions: continue aspirin daily. " * 40).strip()
    path = tmp_path / "NOTEEVENTS.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ROW_ID", "SUBJECT_ID", "HADM_ID", "CATEGORY", "DESCRIPTION", "TEXT"])
        for row in range(1500):
            writer.writerow([row, 1000 + row, 5000 + row, "Discharge summary", "Report", f"{row} {text}"])
    size = path.stat().st_size
    split = tmp_path / "split.txt"
    split.write_text("1_1_1\n", encoding="utf-8")
    tracemalloc.start()
    try:
        counts = extract_unlabeled(path, tmp_path / "pool.csv", [split], chunksize=50, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts.kept == 1499 and size > 2_500_000
    assert peak < size / 4, (peak, size)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "pseudolabels/extract_unlabel.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120,
    )


def test_cli_reports_counts_and_rejects_a_bad_file_in_one_line(corpus, tmp_path):
    out = tmp_path / "pool.csv"
    done = _cli("--noteevents", str(corpus.paths.noteevents_csv), "--splits", *map(str, _splits(corpus)),
                "--output", str(out), "--chunksize", "16")
    assert done.returncode == 0, done.stderr
    assert f"kept: {len(corpus.unlabeled_row_ids)}" in done.stdout
    bad = tmp_path / "NOTEEVENTS.csv"
    bad.write_text("ROW_ID,SUBJECT_ID,TEXT\n1,2,x\n", encoding="utf-8")
    failed = _cli("--noteevents", str(bad), "--splits", *map(str, _splits(corpus)), "--output", str(tmp_path / "o.csv"))
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: line 1: missing column(s) HADM_ID, CATEGORY, DESCRIPTION"
    )
    assert not (tmp_path / "o.csv").exists()


def test_exact_id_exclusion_leaks_suffixed_split_notes_and_warns(corpus, tmp_path, capsys):
    """The published comparison (whole id string) misses ids with an annotator suffix: those notes enter the pool."""
    suffixed = [i for i in corpus.all_ids if parse_note_id(i).annotator]
    assert suffixed  # the synthetic corpus always has one
    by_row = extract_unlabeled(corpus.paths.noteevents_csv, tmp_path / "row.csv", _splits(corpus), progress=False)
    assert "warning" not in capsys.readouterr().err and by_row.leaked == 0
    exact = extract_unlabeled(corpus.paths.noteevents_csv, tmp_path / "exact.csv", _splits(corpus), progress=False,
                              exclude_by_exact_id=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --exclude_by_exact_id: ")
    assert (exact.leaked, exact.kept, exact.excluded_by_id) == (
        len(suffixed), by_row.kept + len(suffixed), by_row.excluded_by_id - len(suffixed))
    leaked = set(_read_output(tmp_path / "exact.csv").file_id) - set(_read_output(tmp_path / "row.csv").file_id)
    assert leaked == {i.split("-")[0] for i in suffixed}  # SUBJECT_HADM_ROW of exactly the suffixed notes
    assert f"MedDec notes leaked into the pool: {len(suffixed)}" in exact.summary()


def test_exact_id_exclusion_cuts_a_json_extension_as_published(tmp_path):
    split = tmp_path / "s.txt"
    split.write_text("1_2_3.json\n4_5_6-anna.json\n", encoding="utf-8")
    assert read_exclusions([split]).note_ids == {"1_2_3", "4_5_6-anna"}
