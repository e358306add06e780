"""evaluate/evaluate.py keeps the official numbers on inputs the official script accepts silently, and says what
it accepted: one counted warning line per kind (tests/fixtures/scorer/cases/all_traps holds one of each)."""

from __future__ import annotations

import json
import shutil

import pytest

from utils.paths import REPO_ROOT, load_module_from_path

evaluate = load_module_from_path("evaluate/evaluate.py", "lamar_evaluate_for_warnings")
CASE = REPO_ROOT / "tests" / "fixtures" / "scorer" / "cases" / "all_traps"


def _leaves(tree, prefix: str = "") -> dict[str, float]:
    """A nested JSON object as {"a/b/c": number} (pytest.approx compares flat mappings)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}/{key}").items()}
    return {prefix: tree}


def _argv(case, out):
    return ["--gold_dir", str(case / "data"), "--raw_text_dir", str(case / "raw_text"), "--predictions",
            str(case / "predictions.json"), "--split_file", str(case / "split.txt"), "--stats_csv",
            str(case / "stats.csv"), "--output", str(out)]


def test_accepted_traps_are_counted_and_the_numbers_stay_official(tmp_path, capsys):
    assert evaluate.main(_argv(CASE, tmp_path / "s.json")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [
        "warning: 1 predicted note(s) have no gold annotations (e.g. 107_2007_3007): their spans all count as false "
        "positives, as officially",
        "warning: 2 predicted span(s) have a category outside 1-9: ignored, as officially",
        "warning: 4 predicted span(s) are empty or reach outside their note's text: scored as given (Python "
        "slicing), as officially",
        "warning: 1 of 8 predicted note id(s) are not in the split file and are not scored, as officially: 1 outside "
        "the split (e.g. '999_9_9')",
        "warning: 2 note(s) of the split have no gold file (e.g. 107_2007_3007, not_a_note): not scored, as "
        "officially",
        "warning: 1 gold note(s) have no row in stats.csv (e.g. 106_2006_3006): in no subgroup, as officially",
    ]
    ours = json.loads((tmp_path / "s.json").read_text())
    expected = json.loads((CASE / "expected_published.json").read_text())  # recorded from the published script
    # The official token F1 sums in set-iteration order, so its last bit follows PYTHONHASHSEED (the recording used
    # 0): here to 1e-12; tests/test_scoring.py compares this case bit for bit under PYTHONHASHSEED=0.
    assert ours["token_f1"] == pytest.approx(expected["token_f1"], rel=1e-12, abs=1e-15)
    assert _leaves(ours["shared_task"]) == pytest.approx(_leaves(expected["shared_task"]), rel=1e-12, abs=1e-15)
    assert {k: ours["span_f1"][k] for k in ("precision", "recall", "f1")} == expected["span_f1"]


def test_a_renamed_stats_column_is_warned_about(tmp_path, capsys):
    case = tmp_path / "case"
    shutil.copytree(CASE, case)
    stats = (case / "stats.csv").read_text().replace("ETHNICITY", "RACE", 1)
    (case / "stats.csv").write_text(stats)
    assert evaluate.main(_argv(case, tmp_path / "s.json")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert (f"warning: {case / 'stats.csv'}: no column(s) ETHNICITY (renamed?): every note then falls in the fallback "
            "group of that dimension (sex: none, race: Other, language: Non-English), as officially") in warnings
