"""Model output -> note offsets (utils.pred_to_offset): every kind of damage real models produce."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pandas as pd
import pytest

from dataset.synthetic import generate_notes
from utils import pred_to_offset as p2o
from utils.tagging import align, locate
from utils.paths import REPO_ROOT, load_module_from_path
from utils.meddec.predictions import Span, read_predictions
from utils.tagging.convert import spans_to_tagged, tagged_to_spans

NOTE = (
    "Admission Date: [**2101-10-20**]\n"
    "He was started on aspirin 81 mg daily.\n"
    "Follow up with Dr. [**Last Name 123**] in 2 weeks.\n"
    "Continue aspirin. Continue aspirin.\n"
    "Please call if fever > 101.5.\n"
)
GOLD = [Span(51, 70, 5), Span(72, 110, 1), Span(159, 187, 9)]


def _text(span: Span) -> str:
    return NOTE[span.start : span.end]


def _locate(output: str, **kwargs) -> locate.LocateResult:
    result = locate.locate_spans(NOTE, output, locator="align", **kwargs)
    assert len(result.spans) == len(result.matches)
    assert all(0 <= s.start < s.end <= len(NOTE) for s in result.spans)
    return result


def test_fixture_spans_are_what_they_say():
    assert [_text(s) for s in GOLD] == ["aspirin 81 mg daily", "Follow up with Dr. [**Last Name 123**]", "Please call if fever > 101.5"]


def test_clean_output_is_aligned_exactly():
    result = _locate(spans_to_tagged(NOTE, GOLD))
    assert result.spans == GOLD and result.matches == ["aligned"] * 3
    assert result.dropped == [] and result.think == "none" and result.edit_distance == 0


def test_tag_variants_with_spaces_attributes_and_case():
    output = (
        "Admission Date: [**2101-10-20**]\nHe was started on < drug_decision >aspirin 81 mg daily</ drug_decision>.\n"
        '<Contact-Related class="x">Follow up with Dr. [**Last Name 123**]</contact_related > in 2 weeks.\n'
        "Continue aspirin. Continue aspirin.\n<ADVICE_AND_PRECAUTION>Please call if fever > 101.5</advice_and_precaution>.\n"
    )
    result = _locate(output)
    assert result.spans == GOLD and result.dropped == []


def test_think_block_is_removed_and_unclosed_think_at_start_means_empty():
    tagged = spans_to_tagged(NOTE, GOLD)
    result = _locate("<think>\nMaybe <drug_decision>x</drug_decision>?\n</think>\n\n" + tagged)
    assert result.spans == GOLD and result.think == "removed"
    result = _locate("  <think>I should tag <drug_decision>aspirin 81 mg daily</drug_decision>")
    assert result.spans == [] and result.think == "unclosed" and result.dropped == []


def test_unclosed_tag_is_dropped_or_closed_at_end_of_output():
    output = "He was started on <drug_decision>aspirin 81 mg daily.\n"
    result = _locate(output)
    assert result.spans == []
    assert result.dropped == [locate.Dropped("drug_decision", "unclosed tag", "aspirin 81 mg daily.\n", 18)]
    result = _locate(output, unclosed="close_at_end")
    assert result.spans == [Span(51, 72, 5)] and result.closed_at_end == 1 and result.dropped == []


def test_truncated_output_keeps_the_closed_spans():
    tagged = spans_to_tagged(NOTE, GOLD)
    cut = tagged[: tagged.index("Dr. [**")]  # inside the contact_related span
    result = _locate(cut)
    assert result.spans == [GOLD[0]] and result.matches == ["aligned"]
    assert [(d.tag, d.reason) for d in result.dropped] == [("contact_related", "unclosed tag")]


def test_stray_close_and_unknown_tags():
    output = spans_to_tagged(NOTE, GOLD).replace("He was", "</gather_info>He <medication>was</medication>")
    result = _locate(output)
    assert result.spans == GOLD
    assert [(d.tag, d.reason, d.text) for d in result.dropped] == [
        ("gather_info", "stray close", "</gather_info>"),
        ("medication", "unknown tag", "<medication>"),
        ("medication", "unknown tag", "</medication>"),
    ]


def test_tag_like_text_that_is_in_the_note_stays_text():
    note = "Dx: <unknown> mass, see <b>report</b>.\n"
    result = locate.locate_spans(note, "Dx: <define_problem><unknown> mass</define_problem>, see <b>report</b>.\n", locator="align")
    assert result.spans == [Span(4, 18, 3)] and result.matches == ["aligned"] and result.dropped == []


def test_empty_whitespace_only_self_closing_and_duplicate_spans():
    output = (
        "Admission Date: <gather_info></gather_info>[**2101-10-20**]<gather_info> </gather_info>\n<treatment_goal/>"
        "He was started on <drug_decision>aspirin 81 mg daily</drug_decision>.\n"
    )
    result = _locate(output + output)  # the whole text repeated: the second copy gives duplicates
    assert result.spans == [GOLD[0]]
    reasons = [d.reason for d in result.dropped]
    assert reasons == ["empty after cleaning"] * 3 + ["empty after cleaning"] * 3 + ["duplicate"]


def test_typos_and_whitespace_changes_do_not_move_offsets():
    output = spans_to_tagged(NOTE, GOLD)
    output = output.replace("Admission", "Admision").replace("81 mg", "81  mg").replace("weeks.\n", "weeks. \n")
    output = output.replace("Continue aspirin. Continue", "Continue asprin.\tContinue").replace("fever", "fevr")
    result = _locate(output)
    assert result.spans == GOLD and set(result.matches) == {"aligned"}


def test_dropped_and_repeated_lines():
    tagged = spans_to_tagged(NOTE, GOLD)
    lines = tagged.splitlines(keepends=True)
    dropped_line = "".join(lines[:2] + lines[3:])
    assert _locate(dropped_line).spans == [GOLD[0], GOLD[2]]
    repeated = "".join(lines[:3] + lines[2:3] + lines[3:])
    result = _locate(repeated)
    assert result.spans == GOLD and [d.reason for d in result.dropped] == ["duplicate"]


def test_phrase_that_occurs_many_times_takes_the_nearest_occurrence():
    second = NOTE.index("Continue aspirin.", NOTE.index("Continue aspirin.") + 1)
    output = NOTE.replace("Continue aspirin. Continue aspirin.", "Continue aspirin. <drug_decision>Continue aspirin</drug_decision>.")
    assert _locate(output).spans == [Span(second, second + 16, 5)]
    # In a rewritten region (no anchor) the exact text is searched near where the alignment expects it.
    note = "Continue aspirin.\n" + "x" * 300 + "\nContinue aspirin.\nPlease call if fever.\n" + "y" * 300 + "\nContinue aspirin.\n"
    near = note.index("Continue aspirin.", 20)
    output = note.replace("Please call if fever.", "QQQQ WWWW <drug_decision>Continue aspirin</drug_decision> KKKK")
    result = locate.locate_spans(note, output, locator="align")
    assert near == 319 and result.spans == [Span(near, near + 16, 5)]
    assert result.matches == ["search"]


def test_search_normalized_partial_and_fuzzy_fallbacks():
    # text appended after the note: no alignment anchor, so the search ladder decides
    result = _locate(NOTE + "\n<drug_decision>STARTED  ON\naspirin</drug_decision>\n")
    assert result.spans == [Span(40, 58, 5)] and result.matches == ["search_normalized"]
    result = _locate(NOTE + "\nSummary: <drug_decision>He was startd on asprin 81 mg daly</drug_decision>\n")
    assert result.matches == ["fuzzy"] and result.spans[0].start == NOTE.index("He was")
    assert _text(result.spans[0]).startswith("He was started on aspirin 81 mg")
    # an inserted first character inside the span: trimmed to the anchored characters
    result = _locate("He was started on <drug_decision>xaspirin 81 mg</drug_decision> daily.")
    assert result.spans == [Span(51, 64, 5)] and result.matches == ["aligned_partial"]
    result = _locate(NOTE + "\n<drug_decision>nothing like the note at all</drug_decision>")
    assert result.spans == [] and [d.reason for d in result.dropped] == ["not found"]


def test_output_that_skips_the_start_of_the_note():
    result = _locate("He was started on <drug_decision>aspirin 81 mg daily</drug_decision>.")
    assert result.spans == [GOLD[0]] and result.matches == ["aligned"]


def test_texts_beyond_edlibs_alphabet_fall_back_to_rapidfuzz():
    note = "".join(chr(0x4E00 + i) for i in range(300)) + " tail text"
    spans = [Span(10, 20, 3), Span(295, 305, 7)]
    output = spans_to_tagged(note, spans).replace(chr(0x4E00 + 50), "?")
    assert align.compact_bytes(locate.scan_output(output, note).plain, note) is None
    result = locate.locate_spans(note, output, locator="align")
    assert result.spans == spans and result.matches == ["aligned", "aligned"]


@pytest.mark.parametrize("locator", locate.LOCATORS)
def test_degenerate_inputs(locator):
    assert locate.locate_spans("", "<drug_decision>x</drug_decision>", locator=locator).spans == []
    assert locate.locate_spans("abc", "", locator=locator).spans == []
    assert locate.locate_spans("abc", None, locator=locator).spans == []  # an empty CSV cell read as NaN elsewhere
    assert locate.locate_spans("abc", "<drug_decision>abc</drug_decision>", locator=locator).spans == [Span(0, 3, 5)]
    with pytest.raises(ValueError, match="locator: expected one of published, align, got 'edlib'"):
        locate.locate_spans("abc", "", locator="edlib")


# ------------------------------------------------------------------------------- batches and CLI


def test_outputs_to_predictions_and_reports():
    rows = [("n1", NOTE, spans_to_tagged(NOTE, GOLD)), ("n2", "abc", "<x>abc")]
    predictions, reports = locate.outputs_to_predictions(rows, locator="align")
    assert predictions == {"n1": GOLD, "n2": []}
    assert reports[0]["matches"] == {"aligned": 3} and reports[0]["spans"] == 3
    assert reports[1]["dropped"] == [{"tag": "x", "reason": "unknown tag", "text": "<x>", "output_offset": 0}]
    assert "2 notes, 3 spans" in locate.summarize_reports(reports)


def _write_csv(path, frame):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False, quoting=1)


def test_cli_with_raw_text_column_and_report(tmp_path, capsys):
    note = NOTE.replace("\n", "\r\n")
    tagged = spans_to_tagged(note, [Span(53, 72, 5)])
    _write_csv(tmp_path / "pred.csv", pd.DataFrame({"file_id": ["1_2_3", "4_5_6"], "predicted": [tagged, ""], "raw_text": [note, "NA"]}))
    argv = ["--input", str(tmp_path / "pred.csv"), "--output", str(tmp_path / "out" / "pred.json"), "--report", str(tmp_path / "r.jsonl"),
            "--locate", "align"]
    assert p2o.main(argv) == 0
    assert read_predictions(tmp_path / "out" / "pred.json") == {"1_2_3": [Span(53, 72, 5)], "4_5_6": []}
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["file_id"] for r in lines] == ["1_2_3", "4_5_6"] and lines[0]["matches"] == {"aligned": 1}
    assert "2 notes, 1 spans" in capsys.readouterr().out


def test_cli_with_raw_text_dir(tmp_path):
    (tmp_path / "raw_text").mkdir()
    with open(tmp_path / "raw_text" / "1_2_3.txt", "w", encoding="utf-8", newline="") as handle:
        handle.write(NOTE.replace("\n", "\r\n"))
    note = NOTE.replace("\n", "\r\n")
    output = spans_to_tagged(NOTE, GOLD)  # the model wrote \n where the note has \r\n
    _write_csv(tmp_path / "pred.csv", pd.DataFrame({"file_id": ["1_2_3"], "predicted": [output]}))
    argv = ["--input", str(tmp_path / "pred.csv"), "--output", str(tmp_path / "pred.json"), "--raw_text_dir", str(tmp_path / "raw_text"),
            "--locate", "align"]
    assert p2o.main(argv) == 0
    spans = read_predictions(tmp_path / "pred.json")["1_2_3"]
    assert [note[s.start : s.end] for s in spans] == [_text(s) for s in GOLD]


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    _write_csv(tmp_path / "a.csv", pd.DataFrame({"file_id": ["x"], "output": ["y"]}))
    assert p2o.main(["--input", str(tmp_path / "a.csv"), "--output", str(tmp_path / "o.json")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'a.csv'}: line 1: missing column(s) raw_text, predicted; expected file_id, raw_text, predicted"
    )
    _write_csv(tmp_path / "b.csv", pd.DataFrame({"file_id": ["x", "x"], "predicted": ["", ""], "raw_text": ["", ""]}))
    assert p2o.main(["--input", str(tmp_path / "b.csv"), "--output", str(tmp_path / "o.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'b.csv'}: row 2: duplicate file_id 'x': each note may appear once"
    _write_csv(tmp_path / "c.csv", pd.DataFrame({"file_id": ["9_9_9"], "predicted": [""]}))
    assert p2o.main(["--input", str(tmp_path / "c.csv"), "--output", str(tmp_path / "o.json"), "--raw_text_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / '9_9_9.txt'}: raw text of note 9_9_9 not found"
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("command", [["utils/pred_to_offset.py"], ["-m", "utils.pred_to_offset"]])
def test_cli_runs_as_file_and_module(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--raw_text_dir" in result.stdout and "--report" in result.stdout


# ------------------------------------------------------------------------------ synthetic + fuzz


@pytest.fixture(scope="module")
def bench():
    return load_module_from_path("benchmarks/bench_pred_to_offset.py", "lamar_bench_pred_to_offset")


def test_gold_outputs_of_synthetic_notes_come_back_exactly():
    for note in generate_notes(5, seed=11):
        spans = [(a.start, a.end, a.category) for a in note.in_scope]
        _, reference = tagged_to_spans(spans_to_tagged(note.text, spans))
        result = locate.locate_spans(note.text, spans_to_tagged(note.text, spans), locator="align")
        assert result.spans == reference and set(result.matches) == {"aligned"}


def test_damaged_synthetic_outputs_recover_at_least_99_5_percent(bench):
    result = bench.recovery(6, seed=5, locator="align")
    assert result["recoverable_spans"] > 500
    assert result["exact_recovery"] >= 0.995, result


def test_damage_is_really_applied(bench):
    note = generate_notes(1, seed=2)[0]
    spans = [(a.start, a.end, a.category) for a in note.in_scope]
    damaged = bench.damage_tagged_output(note.text, spans, random.Random(0), bench.Mix(p_truncate=1.0, p_think=1.0))
    assert damaged.output != spans_to_tagged(note.text, spans)
    assert damaged.output.startswith("<think>") and len(damaged.recoverable) < len(damaged.reference)


@pytest.mark.slow
def test_fuzz_10000_garbage_outputs_never_crash(bench):
    result = bench.fuzz(10_000, seed=1, locator="align")
    assert result["crashes"] == 0, result["first_crashes"]


@pytest.mark.slow
def test_fuzz_2000_garbage_outputs_never_crash_the_published_locator(bench):
    result = bench.fuzz(2_000, seed=1, locator="published")
    assert result["crashes"] == 0, result["first_crashes"]
