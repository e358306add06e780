"""The README's main command, scripts/demo.sh, runs the whole pipeline at reduced size and resumes; a second run
under another instruction-set setting (a CPU without AVX-512, emulated) prints the same table to the last digit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.configs.pipeline import DemoArguments
from utils.demo import MODELS, PROFILES, UNCONSTRAINED, build_steps, format_table
from utils.numerics import emulated_environment
from utils.paths import REPO_ROOT
from utils.meddec.predictions import read_predictions
from utils.meddec.tables import read_tagged_table
from utils.training.heldout import HeldOutReward, paired_difference

pytestmark = pytest.mark.slow


def start_demo_sh(work: Path, setting: str = "native") -> subprocess.Popen:
    """demo.sh's ci profile as a machine of instruction-set ``setting`` (utils.numerics.ISA_SETTINGS) runs it."""
    # PYTHON: demo.sh installs the requirements into the interpreter running these tests, never another one
    env = {**emulated_environment(os.environ, setting), "PYTHON": sys.executable}
    return subprocess.Popen(["bash", "scripts/demo.sh", "--work_dir", str(work), "--profile", "ci"], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    try:
        out, err = process.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return out


def run_demo_sh(work: Path) -> str:
    return finish(start_demo_sh(work))


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """The ci demo under the machine's own kernels and under an emulated CPU without AVX-512, side by side (each
    process uses one thread, so the two share a 2-core machine without slowing each other much)."""
    works = {setting: tmp_path_factory.mktemp(f"demo_{setting}") for setting in ("native", "avx2")}
    processes = {setting: start_demo_sh(work, setting) for setting, work in works.items()}
    return {setting: (works[setting], finish(process)) for setting, process in processes.items()}


@pytest.fixture(scope="module")
def demo_run(demo_runs) -> tuple[Path, str]:
    return demo_runs["native"]


def test_another_instruction_set_prints_the_same_table_and_stage_figures(demo_runs):
    (work, out), (work_avx2, out_avx2) = demo_runs["native"], demo_runs["avx2"]
    native, avx2 = (json.loads((w / "results.json").read_text()) for w in (work, work_avx2))
    assert avx2["results"] == native["results"] and avx2["stages"] == native["stages"]
    assert format_table(native["results"]) in out and format_table(native["results"]) in out_avx2
    for model in (*MODELS, UNCONSTRAINED):  # every model's test outputs, character for character
        outputs = [(w / "inference" / model / "test_predictions.csv").read_text() for w in (work, work_avx2)]
        assert outputs[0] == outputs[1], model
    for name in ("heldout_rewards.json", "heldout_extra.json"):
        held = [json.loads((w / "eval" / name).read_text()) for w in (work, work_avx2)]
        assert held[0] == held[1], name


def test_what_must_hold_on_any_machine(demo_run):
    work, out = demo_run
    results = json.loads((work / "results.json").read_text())
    rows = {r["system"]: r for r in results["results"]}
    # the copy constraint is what makes a tiny model's output usable
    for key in ("span_f1", "final"):
        assert rows["model1"][key] > rows[UNCONSTRAINED][key], key
    # GRPO helps where it was not trained: greedy outputs on the held-out val + test notes
    stages = results["stages"]
    assert stages["heldout_notes"] == PROFILES["ci"].n_val + PROFILES["ci"].n_test
    assert stages["heldout_reward"]["model2"] > stages["heldout_reward"]["model1"]
    held = json.loads((work / "eval" / "heldout_rewards.json").read_text())
    assert round(held["model2"]["mean"], 4) == stages["heldout_reward"]["model2"]
    assert f"Model 1 {stages['heldout_reward']['model1']:.4f}, Model 2 {stages['heldout_reward']['model2']:.4f}" in out
    # each held-out figure comes with the paired interval of Model 2 - Model 1, recomputed here from the per-note rewards
    for prefix, name in (("heldout", "heldout_rewards.json"), ("extra_heldout", "heldout_extra.json")):
        held = json.loads((work / "eval" / name).read_text())
        scored = {m: HeldOutReward(held[m]["n_notes"], held[m]["per_reward"], held[m]["mean"], held[m]["per_note"])
                  for m in ("model1", "model2")}
        assert held["difference"] == paired_difference(scored["model1"], scored["model2"]).to_dict()
        difference = stages[f"{prefix}_difference"]
        assert difference["low"] <= difference["estimate"] <= difference["high"]
        assert f"{difference['estimate']:+.4f}, 95 % paired bootstrap interval over the" in out
    assert stages["extra_heldout_notes"] == PROFILES["ci"].extra_heldout
    extra_notes = read_tagged_table(work / "heldout" / "tagged" / "test.csv")
    assert len(extra_notes) == PROFILES["ci"].extra_heldout
    demo_notes = {*read_tagged_table(work / "data" / "tagged" / "train.csv")["raw_text"],
                  *read_tagged_table(work / "data" / "tagged" / "val.csv")["raw_text"],
                  *read_tagged_table(work / "data" / "tagged" / "test.csv")["raw_text"]}
    assert not demo_notes & set(extra_notes["raw_text"])  # notes no model trained or was tuned on
    # the tuner explores: its trials do not all score the same
    assert stages["tuning_distinct_values"] > 1 and stages["tuning_min"] < stages["tuning_max"]


def test_every_step_ran_and_wrote_its_outputs(demo_run):
    work, out = demo_run
    steps = build_steps(DemoArguments(work_dir=str(work), profile="ci"), PROFILES["ci"], work)
    for step in steps:
        assert f"[done] {step.name}" in out
        assert step.done(), step.name
    commands = (work / "commands.sh").read_text()
    for script in ("dataset.generate", "utils/gt_to_tag.py", "scripts/train_dft.py", "pseudolabels.extract_unlabel",
                   "pseudolabels.embedding", "pseudolabels.retrieve", "scripts/inference.py",
                   "pseudolabels.dynamic_threshold select", "scripts/train_grpo.py", "ensemble.optimize",
                   "evaluate/evaluate.py"):
        assert script in commands, script


def test_final_table_matches_the_official_cli_and_states_the_caveat(demo_run):
    work, out = demo_run
    results = json.loads((work / "results.json").read_text())
    rows = results["results"]
    assert [r["system"] for r in rows] == [*MODELS, "ensemble", UNCONSTRAINED]
    assert [r["decoding"] for r in rows] == ["copy"] * 4 + ["unconstrained"]
    for row in rows:
        for key in ("span_f1", "token_f1", "worst_group", "final"):
            assert 0.0 <= row[key] <= 1.0
        assert row["final"] == pytest.approx((row["span_f1"] + row["token_f1"]) / 4 + row["worst_group"] / 2)
    assert format_table(rows) in out
    assert "MEANINGLESS" in out
    official = json.loads((work / "eval" / "ensemble_test.json").read_text())
    ensemble = rows[len(MODELS)]
    # Another process: the official token F1 sums in set-iteration order, so its last bit follows PYTHONHASHSEED.
    assert official["shared_task"]["final_score"] == pytest.approx(ensemble["final"], rel=1e-12)
    assert official["span_f1"]["f1"] == ensemble["span_f1"]
    submission = read_predictions(work / "ensemble" / "test_submission.json")
    test_ids = (work / "MedDec" / "splits" / "test.txt").read_text().split()
    assert set(submission) <= set(test_ids)
    best = json.loads((work / "ensemble" / "best.json").read_text())
    assert set(best["thresholds"]) >= {"t_cluster", "t_pair", "t_support", "t_dedup"}
    assert (work / "ensemble" / "history.png").stat().st_size > 0


def test_stage_checks_are_reported_and_the_grpo_rewards_plotted(demo_run):
    work, out = demo_run
    stages = json.loads((work / "results.json").read_text())["stages"]
    mixed = (work / "data" / "tagged" / "train_mixed.csv")
    train = read_tagged_table(work / "data" / "tagged" / "train.csv")
    mixed_rows = read_tagged_table(mixed)
    assert len(mixed_rows) == len(train) + stages["pseudo_labels_selected"]
    pseudo = mixed_rows[~mixed_rows["file_id"].isin(set(train["file_id"]))]
    assert len(pseudo) == stages["pseudo_labels_selected"]
    # --pseudo_target located: each selected note trains on its located spans, never on the published 'nan'.
    assert not (pseudo["gold_span"].str.strip() == "nan").any()
    assert stages["test_notes"] == PROFILES["ci"].n_test
    assert 0 <= stages["model2_test_outputs_differing_from_model1"] <= stages["test_notes"]
    assert len(stages["grpo_rewards"]) == PROFILES["ci"].grpo_steps
    assert stages["tuning_trials"] == PROFILES["ci"].n_trials
    assert stages["tuning_min"] <= stages["tuning_max"]
    assert (work / "grpo_rewards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results_md = (work / "results.md").read_text()
    assert "grpo_rewards.png" in results_md and f"{stages['pseudo_labels_selected']} selected pseudo-labelled" in out
    commands = (work / "commands.sh").read_text()
    assert "--copy_constraint true --copy_text_mass true --copy_allow_unclosed true --copy_word_boundaries true" in commands


def test_rerun_skips_every_finished_step(demo_run):
    work, _ = demo_run
    before = (work / "results.json").read_text()
    out = run_demo_sh(work)
    n_steps = len(build_steps(DemoArguments(work_dir=str(work), profile="ci"), PROFILES["ci"], work))
    assert "[run ]" not in out and out.count("[skip]") == n_steps
    assert json.loads((work / "results.json").read_text())["results"] == json.loads(before)["results"]


def test_demo_compares_the_ensemble_with_each_model_and_writes_errors_and_viewer(demo_run):
    work, out = demo_run
    comparison = json.loads((work / "eval" / "compare_test.json").read_text())
    assert [(p["a"], p["b"]) for p in comparison["pairs"]] == [("ensemble", m) for m in MODELS]
    assert comparison["n_resamples"] == 10_000 and comparison["n_notes"] == PROFILES["ci"].n_test
    results_md = (work / "results.md").read_text()
    for pair in comparison["pairs"]:
        assert pair["sentence"].startswith("final score: ensemble - model") and pair["sentence"] in results_md
        assert f"- {pair['sentence']}" in out
    errors = json.loads((work / "eval" / "errors" / "errors.json").read_text())
    assert list(errors["systems"]) == ["ensemble", *MODELS]
    assert (work / "eval" / "errors" / "ensemble_confusion.png").stat().st_size > 0
    viewer = (work / "eval" / "viewer_test.html").read_text(encoding="utf-8")
    assert "CONTAINS PATIENT NOTE TEXT (PHI)" in viewer and "default-src 'none'" in viewer


def test_unknown_profile_fails_with_one_line(tmp_path, capsys):
    from scripts.demo import main

    assert main(["--work_dir", str(tmp_path), "--profile", "huge"]) == 2
    assert capsys.readouterr().err == ("error: <command line>: argument --profile: invalid choice: 'huge' "
                                       "(choose from 'full', 'ci')\n")


def readme_demo_table() -> list[list[str]]:
    """The rows of the README's demo table (the one under format_table's header)."""
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    header = format_table([]).splitlines()[0]
    start = lines.index(header) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_readme_demo_table_has_the_demos_rows_and_consistent_scores():
    rows = readme_demo_table()
    expected = [(m, "copy") for m in (*MODELS, "ensemble")] + [(UNCONSTRAINED, "unconstrained")]
    assert [(r[0], r[1]) for r in rows] == expected
    for row in rows:
        spans, span_f1, token_f1, worst, final = int(row[2]), *map(float, row[3:])
        assert spans >= 0 and all(len(cell.split(".")[1]) == 4 for cell in row[3:])
        assert final == pytest.approx((span_f1 + token_f1) / 4 + worst / 2, abs=1e-4)
