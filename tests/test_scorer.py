"""The official score, re-implemented (utils/metric/, evaluate/evaluate.py), against golden numbers of the
official MedDec evaluate.py (tests/fixtures/scorer/, recorded by tests/fixtures/record_official.py), the
Scorer on small hand-computed notes, and the command line. The pieces are tested against straightforward
re-statements of the official definitions in tests/test_metric_{readers,spans,tokens}.py, the per-note
API in tests/test_metric_notes.py.

Golden comparisons run our code in one subprocess under PYTHONHASHSEED=0, the seed the official numbers
were recorded with: the official token-F1 sums follow the iteration order of sets of note ids, which
depends on string hashing (see utils/metric/scorer.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from utils.meddec.corpus import Annotation, Demographics
from utils.metric import Scorer
from utils.paths import REPO_ROOT, load_module_from_path
from utils.meddec.predictions import Span

FIXTURES = REPO_ROOT / "tests" / "fixtures"
CASES_DIR = FIXTURES / "scorer" / "cases"
SYNTHETIC_FILE = FIXTURES / "scorer" / "synthetic_val.json"
CASE_NAMES = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
RECORD_COMMAND = "python tests/fixtures/record_official.py --official /path/to/official/evaluate.py"


def _cli():
    return load_module_from_path(REPO_ROOT / "evaluate" / "evaluate.py", "lamar_evaluate_cli")


def _record_module():
    return load_module_from_path(FIXTURES / "record_official.py", "lamar_record_official")


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _cli().main(args)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Golden numbers of the official script


def dump_our_results(out_path: str) -> None:
    """Run in a PYTHONHASHSEED=0 subprocess: our CLI on every case, our Scorer on the synthetic sets."""
    from utils.metric import Scorer as _Scorer
    from utils.metric.punkt import use_nltk_data_dir

    use_nltk_data_dir(FIXTURES / "nltk_data")
    record = _record_module()
    results: dict = {"cases": {}, "synthetic": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASE_NAMES:
            case_dir = CASES_DIR / name
            out_json = Path(tmp) / f"{name}.json"
            code, stdout, stderr = run_cli([*record.case_arguments(case_dir), "--output", str(out_json)])
            results["cases"][name] = {
                "code": code, "stderr": stderr, "stdout": record.normalise_stdout(stdout, case_dir, out_json),
                "json": json.loads(out_json.read_text()) if code == 0 else None,
            }
        paths = record.bench_module().generate_synthetic_val(Path(tmp) / "corpus")
        results["synthetic"]["sha256"] = record.inputs_sha256(paths.root)
        scorer = _Scorer.from_files(paths.gold_dir, paths.raw_text_dir, paths.split("val"), paths.stats_csv)
        sets = record.synthetic_prediction_sets(paths)
        results["synthetic"]["reports"] = {name: scorer.score(p).to_official_dict() for name, p in sets.items()}
        results["synthetic"]["final_scores"] = {name: scorer.final_score(p) for name, p in sets.items()}
        results["synthetic"]["base_scores"] = {name: scorer.base_score(p) for name, p in sets.items()}
    Path(out_path).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ours") / "results.json"
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(REPO_ROOT))
    code = (f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'tests')!r}); import test_scorer; "
            f"test_scorer.dump_our_results({str(out)!r})")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True, timeout=600)
    return json.loads(out.read_text())


def _official_keys_only(ours_json: dict) -> dict:
    view = {k: v for k, v in ours_json.items() if k != "per_category"}
    view["span_f1"] = {k: ours_json["span_f1"][k] for k in ("precision", "recall", "f1")}
    return view


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_cli_equals_official_on_hand_made_cases(ours, name):
    result = ours["cases"][name]
    assert result["code"] == 0, result["stderr"]
    expected = json.loads((CASES_DIR / name / "expected.json").read_text())
    assert _official_keys_only(result["json"]) == expected  # exact floats, not approx
    # The official printed report, line for line, then our per-category table.
    expected_stdout = (CASES_DIR / name / "expected_stdout.txt").read_text()
    official_part, saved_line = expected_stdout.rsplit("\n\n", 1)
    assert result["stdout"].startswith(official_part + "\n\nPer-category scores")
    assert result["stdout"].endswith("\n\n" + saved_line)


@pytest.mark.slow
def test_all_traps_case_numbers_are_not_trivial(ours):
    expected = json.loads((CASES_DIR / "all_traps" / "expected.json").read_text())
    assert 0 < expected["span_f1"]["f1"] < 1 and 0 < expected["token_f1"] < 1
    assert expected["statistics"] == {"gold_files": 6, "prediction_files": 7, "files_with_text": 7}
    races = {"White", "African American", "Hispanic", "Asian", "Other"}
    assert set(expected["shared_task"]["subgroups"]["race"]) == races
    ours_json = ours["cases"]["all_traps"]["json"]
    assert ours_json["span_f1"]["tp"] + ours_json["span_f1"]["fp"] > 0


@pytest.mark.slow
def test_synthetic_val_set_equals_official(ours):
    recorded = json.loads(SYNTHETIC_FILE.read_text())
    synthetic = ours["synthetic"]
    assert synthetic["sha256"] == recorded["inputs_sha256"], (
        "dataset.synthetic now generates a different val set than the one the golden numbers were recorded on; "
        f"re-record them with: {RECORD_COMMAND}"
    )
    assert sorted(synthetic["reports"]) == sorted(recorded["expected"])
    for name, expected in recorded["expected"].items():
        assert _official_keys_only(synthetic["reports"][name]) == expected, name
        assert synthetic["final_scores"][name] == expected["shared_task"]["final_score"], name
        assert synthetic["base_scores"][name] == expected["shared_task"]["base_score"], name
    assert recorded["expected"]["gold"]["shared_task"]["final_score"] == 1.0
    finals = {name: result["shared_task"]["final_score"] for name, result in recorded["expected"].items()}
    assert finals["mixed"] < finals["reordered"] < finals["gold"]


# ---------------------------------------------------------------------------------------------------------
# The library on small in-memory notes


TEXT_1 = "Start aspirin daily. Stop warfarin now. Follow up in clinic."
TEXT_2 = "CT head negative. Consult neurology."


def _ann(text: str, phrase: str, category: int) -> Annotation:
    start = text.index(phrase)
    return Annotation(start, start + len(phrase), category)


@pytest.fixture()
def small_scorer() -> Scorer:
    gold = {
        "1_1_1": [_ann(TEXT_1, "Start aspirin daily", 5), _ann(TEXT_1, "Stop warfarin", 5),
                  _ann(TEXT_1, "Follow up in clinic", 1), _ann(TEXT_1, "daily", 0)],
        "2_2_2": [_ann(TEXT_2, "CT head negative", 7), _ann(TEXT_2, "Consult neurology", 2)],
    }
    stats = {(1, 1, 1): Demographics("F", "W", "ENGL"), (2, 2, 2): Demographics("M", "ASIAN", "SPAN")}
    return Scorer(gold, {"1_1_1": TEXT_1, "2_2_2": TEXT_2}, stats)


def _as_predictions(scorer_gold: dict) -> dict:
    return {k: [Span(a.start, a.end, a.category) for a in v] for k, v in scorer_gold.items()}


def test_perfect_predictions_score_one(small_scorer):
    preds = {"1_1_1": [Span(0, 19, 5), Span(21, 34, 5), Span(40, 59, 1)], "2_2_2": [Span(0, 16, 7), Span(18, 35, 2)]}
    report = small_scorer.score(preds)
    assert (report.span.tp, report.span.fp, report.span.fn) == (5, 0, 0)
    assert report.token_f1 == 1.0 and report.base == 1.0 and report.worst == 1.0 and report.final == 1.0
    assert small_scorer.final_score(preds) == 1.0


def test_hand_computed_scores_and_per_category(small_scorer):
    # note 1: aspirin span right, warfarin span as category 3 (wrong), follow-up missing; note 2: exact.
    preds = {"1_1_1": [Span(0, 19, 5), Span(21, 34, 3)], "2_2_2": [Span(0, 16, 7), Span(18, 35, 2)]}
    report = small_scorer.score(preds)
    assert (report.span.tp, report.span.fp, report.span.fn) == (3, 1, 2)
    assert report.span.f1 == 2 * 0.75 * 0.6 / (0.75 + 0.6)
    # note 1 tokens: Start aspirin daily . Stop warfarin now . Follow up in clinic .
    # gold 5,5,5,0,5,5,0,0,1,1,1,1,0 / pred 5,5,5,0,3,3,0,0,0,0,0,0,0 -> F1: cat5 = 0.75**, cat1 = 0, cat3 = 0
    f1_5 = 2 * 1.0 * 0.6 / 1.6
    note_1 = (f1_5 + 0.0 + 0.0) / 3
    assert report.token_f1 == (note_1 + 1.0) / 2  # note 2 is exact (1.0); per note: tests/test_metric_notes.py
    assert report.per_category[5].span.tp == 1 and report.per_category[3].span.fp == 1
    assert report.per_category[1].span.fn == 1 and report.per_category[1].token_fn == 4
    assert report.per_category[5].token_tp == 3 and report.per_category[5].token_fn == 2
    assert report.subgroups["sex"]["Male"].span_f1 == 1.0
    assert report.subgroups["race"]["Asian"].n_files == 1 and "Hispanic" not in report.subgroups["race"]
    assert report.worst == min(s.base_score for g in report.subgroups.values() for s in g.values())
    assert small_scorer.final_score(preds) == report.final
    text = report.format()
    assert "Final score:       " in text and "5 Drug related" in text


def test_prediction_order_decides_token_labels(small_scorer):
    inner, outer = Span(0, 13, 3), Span(0, 19, 5)  # "Start aspirin" inside "Start aspirin daily"
    first = small_scorer.score({"1_1_1": [outer, inner]})
    second = small_scorer.score({"1_1_1": [inner, outer]})
    assert first.span == second.span  # span matching ignores order
    assert first.token_f1 > second.token_f1


def test_rescoring_uses_cache_and_gives_the_same_numbers(small_scorer, monkeypatch):
    import utils.metric.spans as spans

    preds = {"1_1_1": [Span(3, 10, 5), (21, 30, 5)], "2_2_2": [{"start_offset": 0, "end_offset": 7, "category": 7}]}
    first = small_scorer.score(preds)
    calls = []
    original = spans.refine_span
    monkeypatch.setattr(spans, "refine_span", lambda *args: calls.append(args) or original(*args))
    assert small_scorer.score(preds) == first
    assert small_scorer.final_score(preds) == first.final
    keys = small_scorer.span_keys("1_1_1", [(3, 10, 5), (21, 30, 5)])
    assert keys == [(5, "start aspirin"), (5, "stop warfarin")]
    assert calls == []  # every span seen before: no refinement ran again
    small_scorer.span_keys("1_1_1", [(0, 4, 5)])
    assert calls == [(TEXT_1, 0, 4)]  # a new span is refined (so the spy does watch the scorer)


def test_notes_outside_gold_need_text_and_count_as_false_positives(small_scorer):
    with pytest.raises(KeyError, match="no text for note '3_3_3'"):
        small_scorer.score({"3_3_3": [Span(0, 4, 1)]})
    scorer = Scorer({"1_1_1": []}, {"1_1_1": TEXT_1, "3_3_3": TEXT_2})
    report = scorer.score({"3_3_3": [Span(0, 7, 7)]})
    assert (report.span.tp, report.span.fp, report.span.fn) == (0, 1, 0)
    assert report.token_f1 == 0.5  # note 1: nothing on either side (1.0); note 3: only false positives (0.0)
    assert report.final is None and scorer.final_score({"3_3_3": [Span(0, 7, 7)]}) == report.base


# ---------------------------------------------------------------------------------------------------------
# The command line


def _write_tiny_corpus(root: Path) -> list[str]:
    (root / "data").mkdir(parents=True)
    (root / "raw_text").mkdir()
    (root / "raw_text" / "1_1_1.txt").write_text(TEXT_1)
    anns = [{"start_offset": 0, "end_offset": 19, "category": "Category 5: Drug related"}]
    (root / "data" / "1_1_1.json").write_text(json.dumps({"discharge_summary_id": "1_1_1_", "annotations": anns}))
    span = {"start_offset": 0, "end_offset": 19, "category": 5}
    (root / "p.json").write_text(json.dumps([{"file_name": "1_1_1", "predictions": [span]}]))
    return ["--gold_dir", str(root / "data"), "--raw_text_dir", str(root / "raw_text"),
            "--predictions", str(root / "p.json")]


def test_cli_scores_and_writes_json(tmp_path):
    args = _write_tiny_corpus(tmp_path)
    code, out, err = run_cli([*args, "--output", str(tmp_path / "s.json")])
    assert code == 0, err
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["span_f1"]["f1"] == 1.0 and result["token_f1"] == 1.0 and "shared_task" not in result
    assert result["per_category"]["5"]["span"]["tp"] == 1
    assert "Span F1:\n  1.0000" in out and f"Results saved to: {tmp_path / 's.json'}" in out


def test_cli_bad_predictions_is_one_line(tmp_path):
    args = _write_tiny_corpus(tmp_path)
    (tmp_path / "p.json").write_text(json.dumps([{"file_name": "1_1_1", "predictions": [{"start_offset": "a"}]}]))
    code, out, err = run_cli(args)
    assert code == 2 and out == ""
    assert err == (f"error: {tmp_path / 'p.json'}: record 0 (1_1_1) predictions[0]: "
                   "field 'start_offset': expected an integer, got 'a'\n")


def test_cli_missing_text_is_one_line(tmp_path):
    args = _write_tiny_corpus(tmp_path)
    (tmp_path / "raw_text" / "1_1_1.txt").unlink()
    code, _, err = run_cli(args)
    assert code == 2 and err.count("\n") == 1 and "1_1_1.txt: raw text of note 1_1_1 not found" in err


def test_cli_without_punkt_names_the_install_command(tmp_path, monkeypatch):
    import utils.metric.punkt

    args = _write_tiny_corpus(tmp_path)
    monkeypatch.setattr(utils.metric.punkt, "punkt_available", lambda language="english": False)
    code, _, err = run_cli(args)
    assert code == 2 and err.count("\n") == 1 and "python -m nltk.downloader punkt_tab" in err


def test_cli_help_lists_the_official_flags():
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()) as out:
        _cli().main(["--help"])
    assert exit_info.value.code == 0
    flags = ("--gold_dir", "--raw_text_dir", "--predictions", "--split_file", "--stats_csv", "--output", "--gold_file")
    for flag in flags:
        assert flag in out.getvalue()
