"""The official score, re-implemented (utils/metric/, evaluate/evaluate.py), against golden numbers of both
official scripts (tests/fixtures/scorer/, recorded by tests/fixtures/record_official.py): the published
biodatlab/medexact-lamar evaluate/evaluate.py (the default scorer) and CLU-UML/MedDec evaluate.py at f4374cd
(``--scorer meddec``); the Scorer on small hand-computed notes, and the command line. The pieces are tested against straightforward
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
SYNTHETIC_PUBLISHED_FILE = FIXTURES / "scorer" / "synthetic_val_published.json"
CASE_NAMES = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
SCORERS = ("published", "meddec")
EXPECTED = {"meddec": ("expected.json", "expected_stdout.txt"),
            "published": ("expected_published.json", "expected_published_stdout.txt")}
RECORD_COMMAND = ("python tests/fixtures/record_official.py --official /path/to/meddec/evaluate.py "
                  "--published /path/to/medexact-lamar/evaluate/evaluate.py")


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


def _synthetic_results(scorer, sets: dict) -> dict:
    return {"reports": {name: scorer.score(p).to_official_dict() for name, p in sets.items()},
            "final_scores": {name: scorer.final_score(p) for name, p in sets.items()},
            "base_scores": {name: scorer.base_score(p) for name, p in sets.items()}}


def dump_our_results(out_path: str) -> None:
    """Run in a PYTHONHASHSEED=0 subprocess: our CLI on every case, our Scorer on the synthetic sets, per scorer."""
    from utils.metric import Scorer as _Scorer
    from utils.metric.punkt import use_nltk_data_dir

    use_nltk_data_dir(FIXTURES / "nltk_data")
    record = _record_module()
    results: dict = {"cases": {scorer: {} for scorer in SCORERS}, "synthetic": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for scorer in SCORERS:
            for name in CASE_NAMES:
                case_dir = CASES_DIR / name
                out_json = Path(tmp) / f"{name}.json"
                flags = [] if scorer == "published" else ["--scorer", scorer]  # published is the default
                code, stdout, stderr = run_cli([*record.case_arguments(case_dir), *flags, "--output", str(out_json)])
                results["cases"][scorer][name] = {
                    "code": code, "stderr": stderr, "stdout": record.normalise_stdout(stdout, case_dir, out_json),
                    "json": json.loads(out_json.read_text()) if code == 0 else None,
                }
        paths = record.bench_module().generate_synthetic_val(Path(tmp) / "corpus")
        results["sha256"] = record.inputs_sha256(paths.root)
        sets = record.synthetic_prediction_sets(paths)
        for scorer in SCORERS:
            ours = _Scorer.from_files(paths.gold_dir, paths.raw_text_dir, paths.split("val"), paths.stats_csv,
                                      rule=scorer)
            results["synthetic"][scorer] = _synthetic_results(ours, sets)
        for variant in record.PUBLISHED_VARIANTS:  # '.json' split lines, '-annotator' ids: published only
            gold_dir, raw_dir, split, stats, rename = record.variant_corpus(paths, variant, Path(tmp) / variant)
            ours = _Scorer.from_files(gold_dir, raw_dir, split, stats)
            renamed = {f"{name}@{variant}": {rename.get(k, k): v for k, v in sets[name].items()}
                       for name in ("gold", "mixed")}
            for key, value in _synthetic_results(ours, renamed).items():
                results["synthetic"]["published"][key].update(value)
    Path(out_path).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ours") / "results.json"
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(REPO_ROOT))
    code = (f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'tests')!r}); import test_scoring; "
            f"test_scoring.dump_our_results({str(out)!r})")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True, timeout=600)
    return json.loads(out.read_text())


def _official_keys_only(ours_json: dict) -> dict:
    view = {k: v for k, v in ours_json.items() if k not in ("per_category", "scorer")}
    view["span_f1"] = {k: ours_json["span_f1"][k] for k in ("precision", "recall", "f1")}
    return view


@pytest.mark.slow
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_cli_equals_official_on_hand_made_cases(ours, name, scorer):
    result = ours["cases"][scorer][name]
    assert result["code"] == 0, result["stderr"]
    json_name, stdout_name = EXPECTED[scorer]
    expected = json.loads((CASES_DIR / name / json_name).read_text())
    assert _official_keys_only(result["json"]) == expected  # exact floats, not approx
    assert result["json"]["scorer"]["name"] == scorer
    # The official printed report, line for line, then our per-category table and the scorer's name.
    expected_stdout = (CASES_DIR / name / stdout_name).read_text()
    official_part, saved_line = expected_stdout.rsplit("\n\n", 1)
    assert result["stdout"].startswith(official_part + "\n\nPer-category scores")
    assert f"\nScorer: {scorer} (" in result["stdout"]
    assert result["stdout"].endswith("\n\n" + saved_line)


@pytest.mark.slow
def test_all_traps_case_numbers_are_not_trivial(ours):
    expected = json.loads((CASES_DIR / "all_traps" / "expected.json").read_text())
    assert 0 < expected["span_f1"]["f1"] < 1 and 0 < expected["token_f1"] < 1
    assert expected["statistics"] == {"gold_files": 6, "prediction_files": 7, "files_with_text": 7}
    races = {"White", "African American", "Hispanic", "Asian", "Other"}
    assert set(expected["shared_task"]["subgroups"]["race"]) == races
    ours_json = ours["cases"]["meddec"]["all_traps"]["json"]
    assert ours_json["span_f1"]["tp"] + ours_json["span_f1"]["fp"] > 0


def _expected(name: str, scorer: str) -> dict:
    return json.loads((CASES_DIR / name / EXPECTED[scorer][0]).read_text())


def test_the_scorers_differ_where_the_scripts_do():
    """The recorded outputs themselves: overlaps change the token F1, ids and split lines change the notes."""
    assert _expected("all_traps", "published")["token_f1"] != _expected("all_traps", "meddec")["token_f1"]
    assert _expected("all_traps", "published")["span_f1"] == _expected("all_traps", "meddec")["span_f1"]
    published, meddec = _expected("published_inputs", "published"), _expected("published_inputs", "meddec")
    assert published["statistics"] == {"gold_files": 3, "prediction_files": 5, "files_with_text": 5}
    assert meddec["statistics"] == {"gold_files": 3, "prediction_files": 3, "files_with_text": 3}
    single = {scorer: _expected("single_gold_file", scorer) for scorer in SCORERS}
    assert single["published"]["token_f1"] > 0.45 > 0.17 > single["meddec"]["token_f1"]  # the id decides the pairing


def _check_synthetic(ours_synthetic: dict, recorded: dict) -> None:
    assert sorted(ours_synthetic["reports"]) == sorted(recorded["expected"])
    for name, expected in recorded["expected"].items():
        assert _official_keys_only(ours_synthetic["reports"][name]) == expected, name
        assert ours_synthetic["final_scores"][name] == expected["shared_task"]["final_score"], name
        assert ours_synthetic["base_scores"][name] == expected["shared_task"]["base_score"], name


@pytest.mark.slow
@pytest.mark.parametrize("scorer", SCORERS)
def test_synthetic_val_set_equals_official(ours, scorer):
    recorded = json.loads((SYNTHETIC_FILE if scorer == "meddec" else SYNTHETIC_PUBLISHED_FILE).read_text())
    assert ours["sha256"] == recorded["inputs_sha256"], (
        "dataset.synthetic now generates a different val set than the one the golden numbers were recorded on; "
        f"re-record them with: {RECORD_COMMAND}"
    )
    _check_synthetic(ours["synthetic"][scorer], recorded)
    assert recorded["expected"]["gold"]["shared_task"]["final_score"] == 1.0
    finals = {name: result["shared_task"]["final_score"] for name, result in recorded["expected"].items()}
    if scorer == "meddec":  # first-overlap labels: the order of predictions matters
        assert finals["mixed"] < finals["reordered"] < finals["gold"]
    else:  # ambiguous tokens do not depend on order; '.json' lines and suffixed ids are read as published
        assert finals["mixed"] < finals["reordered"] == finals["gold"] == finals["gold@json_split"] == 1.0
        assert finals["gold@annotator_ids"] == 1.0


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


def test_prediction_order_decides_token_labels_under_meddec_only(small_scorer):
    inner, outer = Span(0, 13, 3), Span(0, 19, 5)  # "Start aspirin" inside "Start aspirin daily"
    meddec = Scorer({k: [Annotation(*row) for row in small_scorer.gold_rows(k)] for k in small_scorer.note_ids},
                    {k: small_scorer.text(k) for k in small_scorer.note_ids}, rule="meddec")
    first = meddec.score({"1_1_1": [outer, inner]})
    second = meddec.score({"1_1_1": [inner, outer]})
    assert first.span == second.span  # span matching ignores order
    assert first.token_f1 > second.token_f1
    # published: "Start aspirin" is under two spans (ambiguous, -1), "daily" under one, whatever the order.
    published = [small_scorer.score({"1_1_1": spans}) for spans in ([outer, inner], [inner, outer])]
    assert published[0] == published[1] and published[0].token_f1 not in (first.token_f1, second.token_f1)
    gold_1 = small_scorer.gold_token_labels("1_1_1").tolist()
    assert gold_1 == [5, 5, 5, 0, 5, 5, 0, 0, 1, 1, 1, 1, 0]  # gold "daily" (category 0 twice) stays unambiguous
    # note 1: cat 5 tp 1 (daily), fp 0, fn 4 -> F1 1/3; cat 1 missed -> 0; note 2 (no predictions): 0
    assert published[0].token_f1 == (((2 * 1.0 * 0.2) / 1.2 + 0.0) / 2 + 0.0) / 2


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


@pytest.mark.parametrize("flags, name", [([], "published"), (["--scorer", "meddec"], "meddec")])
def test_cli_names_the_scorer_that_made_the_numbers(tmp_path, flags, name):
    args = _write_tiny_corpus(tmp_path)
    # an overlapping second span: the two rules now give different token F1
    (tmp_path / "p.json").write_text(json.dumps([{"file_name": "1_1_1", "predictions": [
        {"start_offset": 0, "end_offset": 19, "category": 5}, {"start_offset": 6, "end_offset": 34, "category": 3}]}]))
    code, out, err = run_cli([*args, *flags, "--output", str(tmp_path / "s.json")])
    assert code == 0, err
    result = json.loads((tmp_path / "s.json").read_text())
    reference = {"published": "github.com/biodatlab/medexact-lamar evaluate/evaluate.py (the published LAMAR scorer)",
                 "meddec": "github.com/CLU-UML/MedDec evaluate.py at commit f4374cd"}[name]
    assert result["scorer"] == {"name": name, "reference": reference}
    assert f"\nScorer: {name} ({reference})\n" in out
    # tokens: Start aspirin daily . Stop warfarin now . ...; gold: 5 on the first three. published: aspirin, daily
    # ambiguous -> cat 5 P 1 R 1/3 (F1 0.5), cat 3 F1 0; meddec: the first span wins -> cat 5 F1 1, cat 3 F1 0
    expected = {"published": (0.5 + 0.0) / 2, "meddec": (1.0 + 0.0) / 2}[name]
    assert result["token_f1"] == expected


def test_cli_refuses_an_unknown_scorer_in_one_line(tmp_path):
    code, _, err = run_cli([*_write_tiny_corpus(tmp_path), "--scorer", "official"])
    assert code == 2 and "--scorer" in err and "published" in err and "Traceback" not in err


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
