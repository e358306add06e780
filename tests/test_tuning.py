"""Threshold tuning (ensemble.tuning, ensemble.study, ensemble.storage; the command ensemble/optimize.py): known optimum, resuming, CV, plots and the command line."""

from __future__ import annotations

import json
import re

import optuna
import pytest

from dataset.synthetic import generate_corpus
from ensemble import optimize, tuning
from ensemble.consensus import Thresholds, merge_predictions, prepare_predictions
from utils.meddec.corpus import load_notes, read_split
from utils.fileio import InputError
from utils.meddec.predictions import Span, read_predictions, write_predictions
from utils.metric import Scorer


class Killed(RuntimeError):
    pass


def non_overlapping(spans):
    """Gold spans with no two overlapping (greedy by start), so list order cannot change the token F1."""
    chosen = []
    for span in sorted(set(spans)):
        if not chosen or span.start >= chosen[-1].end:
            chosen.append(span)
    return chosen


def wrong_spans(text, gold_spans, n=3):
    """Words outside every gold span, tagged as category 3: pure false positives."""
    out = []
    for match in re.finditer(r"[A-Za-z]{4,}", text):
        if all(match.end() <= g.start or match.start() >= g.end for g in gold_spans):
            out.append(Span(match.start(), match.end(), 3))
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 small synthetic validation notes with a known optimum.

    Model 1 predicts non-overlapping gold spans; models 2 and 3 predict the same plus identical wrong
    spans. The wrong spans get support (F+1)/(2F+1) < 1 (F = agreement of model 1 with 2 and 3), the
    gold ones support 1, so the optimum keeps exactly model 1's spans: any t_support above the wrong
    spans' support. The published t_support 0.34 keeps the wrong spans too.
    """
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, seed=5, n_train=0, n_val=8, n_test=0, n_unlabeled=0, mean_chars=1200, mean_spans=6)
    ids = read_split(root / "splits" / "val.txt")
    notes = load_notes(root / "data", root / "raw_text", ids)
    truth = {k: non_overlapping([Span(a.start, a.end, a.category) for a in n.in_scope]) for k, n in notes.items()}
    noisy = {k: sorted(truth[k] + wrong_spans(n.text, n.annotations)) for k, n in notes.items()}
    models = [truth, noisy, noisy]
    paths = []
    for i, predictions in enumerate(models):
        path = root / f"val_m{i}.json"
        write_predictions(path, predictions)
        paths.append(str(path))
    scorer = Scorer.from_files(gold_dir=root / "data", raw_text_dir=root / "raw_text",
                               split_file=root / "splits" / "val.txt", stats_csv=root / "stats.csv")
    return {"root": root, "ids": ids, "truth": truth, "models": models, "paths": paths, "scorer": scorer,
            "evaluate": tuning.make_objective(prepare_predictions(models), scorer)}


def test_search_space_and_defaults():
    assert tuning.default_params(False) == {"t_cluster": 0.1, "t_pair": 0.1, "t_support": 0.34, "t_dedup": 0.8}
    per_category = tuning.default_params(True)
    assert len(per_category) == 12 and "t_support" not in per_category
    assert tuning.thresholds_from_params(per_category, True).t_support_by_category == (0.34,) * 9
    assert tuning.thresholds_from_params(tuning.default_params(False), False) == Thresholds()


def test_tuner_finds_the_known_optimum(corpus):
    evaluate = corpus["evaluate"]
    optimum = corpus["scorer"].final_score(corpus["truth"])
    assert merge_predictions(corpus["models"], Thresholds(t_support=0.95)) == corpus["truth"]
    assert evaluate(Thresholds(t_support=0.95)) == optimum
    assert evaluate(Thresholds()) < optimum  # the published defaults keep the wrong spans
    run = tuning.tune(evaluate, n_trials=40, seed=1, progress=False)
    assert run.study.trials[0].params == tuning.default_params(False)
    assert run.study.trials[0].value == evaluate(Thresholds())
    assert run.study.best_value == optimum
    assert merge_predictions(corpus["models"], run.best_thresholds) == corpus["truth"]


def test_published_sampler_is_unseeded_and_a_seed_repeats_a_run(corpus):
    """Published: TPESampler() with no seed, so two runs sample other thresholds after the enqueued defaults."""
    from utils.configs.pipeline import OptimizeArguments

    assert OptimizeArguments(predictions=["a.json"]).seed is None
    params = lambda run: [t.params for t in run.study.trials]  # noqa: E731
    unseeded = [tuning.tune(corpus["evaluate"], 4, seed=None, progress=False) for _ in range(2)]
    assert params(unseeded[0])[0] == params(unseeded[1])[0] == tuning.default_params(False)
    assert params(unseeded[0])[1:] != params(unseeded[1])[1:]
    seeded = [tuning.tune(corpus["evaluate"], 4, seed=0, progress=False) for _ in range(2)]
    assert params(seeded[0]) == params(seeded[1])


def test_resume_keeps_trials_and_best_value(corpus, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = tuning.tune(corpus["evaluate"], 5, storage, "s", seed=3, progress=False)
    before = [(t.params, t.value) for t in first.study.trials]
    second = tuning.tune(corpus["evaluate"], 8, storage, "s", seed=3, progress=False)
    assert (second.n_previous, second.n_new) == (5, 3)
    loaded = optuna.load_study(study_name="s", storage=storage)
    assert len(loaded.trials) == 8
    assert [(t.params, t.value) for t in loaded.trials[:5]] == before
    assert loaded.best_value >= first.study.best_value
    assert sum(t.params == tuning.default_params(False) for t in loaded.trials) >= 1
    assert loaded.trials[0].params == tuning.default_params(False)  # enqueued once, not again on resume
    third = tuning.tune(corpus["evaluate"], 8, storage, "s", seed=3, progress=False)  # complete: no new trials
    assert third.n_new == 0 and len(third.study.trials) == 8


def test_killed_run_loses_no_finished_trial(corpus, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def kill_after_three(trial):
        if trial.number == 2:
            raise Killed

    with pytest.raises(Killed):
        tuning.tune(corpus["evaluate"], 10, storage, "k", seed=0, progress=False, on_trial=kill_after_three)
    survivors = optuna.load_study(study_name="k", storage=storage).trials
    assert len(survivors) == 3 and survivors[0].params == tuning.default_params(False)
    resumed = tuning.tune(corpus["evaluate"], 6, storage, "k", seed=0, progress=False)
    assert (resumed.n_previous, resumed.n_new) == (3, 3)
    final = optuna.load_study(study_name="k", storage=storage).trials
    assert [(t.params, t.value) for t in final[:3]] == [(t.params, t.value) for t in survivors]
    assert len(final) == 6


def test_study_with_other_settings_is_refused(corpus, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tuning.tune(corpus["evaluate"], 2, storage, "c", progress=False)
    with pytest.raises(InputError, match="per_category"):
        tuning.tune(corpus["evaluate"], 3, storage, "c", per_category=True, progress=False)


def test_per_category_tuning_has_nine_support_thresholds(corpus):
    run = tuning.tune(corpus["evaluate"], 40, seed=1, per_category=True, progress=False)
    assert len(run.study.trials[0].params) == 12
    assert run.best_thresholds.t_support_by_category is not None
    assert run.study.best_value == corpus["evaluate"](run.best_thresholds)


def test_folds_cover_every_note_once():
    folds = tuning.make_folds([f"n{i}" for i in range(10)], 3, seed=0)
    assert sorted(sum(folds, [])) == sorted(f"n{i}" for i in range(10))
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    with pytest.raises(ValueError):
        tuning.make_folds(["a", "b"], 3, seed=0)


def test_cross_validation_scores_held_out_folds(corpus, tmp_path):
    root = corpus["root"]
    make_scorer = tuning.scorer_factory(str(root / "data"), str(root / "raw_text"), str(root / "stats.csv"), str(tmp_path))
    prepared = prepare_predictions(corpus["models"])
    cv = tuning.cross_validate(prepared, make_scorer, k=2, n_trials=6, seed=0, progress=False)
    assert cv["k"] == 2 and len(cv["folds"]) == 2
    for fold in cv["folds"]:
        assert fold["n_train"] + fold["n_held_out"] == len(corpus["ids"])
        assert 0.0 <= fold["held_out_score"] <= 1.0
    assert cv["mean_held_out_score"] == pytest.approx(sum(f["held_out_score"] for f in cv["folds"]) / 2)


def test_plots_and_importance_needing_variation(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(tuning.default_params(False))
    study.optimize(lambda t: sum(t.suggest_float(n, 0, 1) for n in tuning.param_names(False)), n_trials=1)
    one = tuning.save_plots(study, str(tmp_path / "h1.png"), str(tmp_path / "i1.png"))
    assert one["history"] == str(tmp_path / "h1.png") and (tmp_path / "h1.png").stat().st_size > 0
    assert one["importance"].startswith("skipped")
    study.optimize(lambda t: sum(t.suggest_float(n, 0, 1) for n in tuning.param_names(False)), n_trials=4)
    four = tuning.save_plots(study, str(tmp_path / "h.png"), str(tmp_path / "i.png"))
    assert four == {"history": str(tmp_path / "h.png"), "importance": str(tmp_path / "i.png")}
    assert (tmp_path / "i.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_tunes_resumes_and_applies(corpus, tmp_path, capsys):
    root = corpus["root"]
    common = ["--predictions", *corpus["paths"], "--gold_csv", "", "--gold_dir", str(root / "data"), "--raw_text_dir", str(root / "raw_text"),
              "--split_file", str(root / "splits" / "val.txt"), "--stats_csv", str(root / "stats.csv"),
              "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--study_name", "cli", "--quiet"]
    out = tmp_path / "best.json"
    assert optimize.main([*common, "--n_trials", "3", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_trials"] == 3 and report["objective"] == "final"
    assert report["default_value"] == corpus["evaluate"](Thresholds())
    assert (tmp_path / "best_history.png").exists()
    submission = tmp_path / "submission.json"
    assert optimize.main([*common, "--n_trials", "5", "--output", str(out), "--cv", "2", "--cv_trials", "3",
                          "--apply", *corpus["paths"], "--apply-output", str(submission)]) == 0
    report = json.loads(out.read_text())
    assert report["n_trials"] == 5 and report["n_trials_this_run"] == 2
    assert set(report["cv"]) >= {"mean_held_out_score", "in_sample_score", "gap", "mean_held_out_default_score"}
    best = Thresholds(**{k: v for k, v in report["thresholds"].items()})
    assert read_predictions(submission) == merge_predictions(corpus["models"], best)
    assert report["best_value"] == corpus["evaluate"](best)
    printed = capsys.readouterr().out
    assert "2-fold CV" in printed and "in-sample" in printed


def test_published_gold_is_the_tagged_tables_offsets_and_text(corpus, tmp_path):
    """Published optimize.py scored against val.csv's gold_offsets and raw_text (exact text, CRLF kept), not the gold
    JSON files read the official way (CRLF as LF); --gold_csv '' is the latter."""
    from utils.meddec.corpus import read_stats
    from utils.meddec.tables import tagged_gold
    from utils.metric import Scorer
    from utils.tagging.splits import RawTexts, convert_splits

    root = corpus["root"]
    convert_splits(root / "data", RawTexts(raw_text_dir=root / "raw_text"), {"val": root / "splits" / "val.txt"},
                   tmp_path / "tagged", keep_duplicates=True, sort_notes=True)
    val_csv = tmp_path / "tagged" / "val.csv"
    gold, texts = tagged_gold(val_csv)
    assert set(gold) == set(corpus["ids"]) and all(a["category"].startswith("Category ") for v in gold.values() for a in v)
    assert any("\r\n" in t for t in texts.values())  # the CRLF notes keep their exact text
    csv_scorer = Scorer(gold, texts, read_stats(root / "stats.csv"), split_ids=set(gold))
    args = ["--predictions", *corpus["paths"], "--split_file", str(root / "splits" / "val.txt"), "--stats_csv",
            str(root / "stats.csv"), "--storage", "none", "--n_trials", "1", "--seed", "0", "--quiet", "--no_plots"]
    assert optimize.main([*args, "--gold_csv", str(val_csv), "--output", str(tmp_path / "csv.json")]) == 0
    assert optimize.main([*args, "--gold_csv", "", "--gold_dir", str(root / "data"), "--raw_text_dir",
                          str(root / "raw_text"), "--output", str(tmp_path / "json.json")]) == 0
    published, files = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("csv", "json"))
    assert published["gold"] == str(val_csv) and files["gold"] == str(root / "data")
    defaults = merge_predictions(corpus["models"], Thresholds())
    assert published["default_value"] == csv_scorer.final_score(defaults)
    assert files["default_value"] == corpus["scorer"].final_score(defaults)
    assert published["default_value"] != files["default_value"]


def test_cli_bad_input_exits_2(corpus, tmp_path, capsys):
    root = corpus["root"]
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    code = optimize.main(["--predictions", str(bad), "--gold_csv", "", "--gold_dir", str(root / "data"), "--raw_text_dir", str(root / "raw_text"),
                          "--output", str(tmp_path / "b.json"), "--storage", "none", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json: line 1 column 3: invalid JSON" in err


def test_sqlite_storage_folder_is_created_only_inside_an_existing_folder(tmp_path):
    from ensemble.storage import ensure_sqlite_folder

    ensure_sqlite_folder(f"sqlite:///{tmp_path / 'new' / 'study.db'}")
    assert (tmp_path / "new").is_dir()
    with pytest.raises(InputError, match=r"<command line>: --storage: got .*: the folder .*/missing does not exist"):
        ensure_sqlite_folder(f"sqlite:///{tmp_path / 'missing' / 'deeper' / 'study.db'}")
    assert not (tmp_path / "missing").exists()
    ensure_sqlite_folder("sqlite:///:memory:")  # nothing to create, no error


# --- studies are keyed by their inputs, locked, and resume exactly -------------------------------------------------


def _cli(corpus, tmp_path, storage, *extra):
    root = corpus["root"]
    return ["--gold_csv", "", "--gold_dir", str(root / "data"), "--raw_text_dir", str(root / "raw_text"),
            "--split_file", str(root / "splits" / "val.txt"), "--stats_csv", str(root / "stats.csv"),
            "--storage", storage, "--study_name", "s", "--output", str(tmp_path / "best.json"), "--quiet",
            "--no_plots", *extra]


def test_a_study_refuses_other_predictions(corpus, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert optimize.main(["--predictions", *corpus["paths"], *_cli(corpus, tmp_path, storage, "--n_trials", "3")]) == 0
    other = [str(tmp_path / f"b{i}.json") for i in range(3)]
    for path, predictions in zip(other, reversed(corpus["models"])):  # set B: the same files in another order
        write_predictions(path, predictions)
    capsys.readouterr()
    assert optimize.main(["--predictions", *other, *_cli(corpus, tmp_path, storage, "--n_trials", "10")]) == 2
    assert capsys.readouterr().err == (f"error: {storage}: study 's': was tuned on other inputs or settings "
                                       "(predictions differ); use another --study_name or --storage\n")
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3  # nothing added
    assert optimize.main(["--predictions", *corpus["paths"], *_cli(corpus, tmp_path, storage, "--n_trials", "4",
                                                                     "--seed", "7")]) == 2
    assert "(seed differ)" in capsys.readouterr().err


def test_the_objective_is_the_chosen_scorer_and_a_study_keeps_its_scorer(corpus, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert optimize.main(["--predictions", *corpus["paths"], *_cli(corpus, tmp_path, storage, "--n_trials", "2")]) == 0
    report = json.loads((tmp_path / "best.json").read_text())
    assert report["scorer"]["name"] == "published"  # the default
    assert report["default_value"] == corpus["evaluate"](Thresholds())
    assert "scorer: published (github.com/biodatlab/medexact-lamar" in capsys.readouterr().out
    assert optimize.main(["--predictions", *corpus["paths"], *_cli(corpus, tmp_path, storage, "--n_trials", "3",
                                                                     "--scorer", "meddec")]) == 2
    assert "(scorer differ)" in capsys.readouterr().err
    assert optimize.main(["--predictions", *corpus["paths"], *_cli(corpus, tmp_path, "none", "--n_trials", "1",
                                                                     "--scorer", "meddec")]) == 0
    report = json.loads((tmp_path / "best.json").read_text())
    scorer = Scorer.from_files(gold_dir=corpus["root"] / "data", raw_text_dir=corpus["root"] / "raw_text",
                               split_file=corpus["root"] / "splits" / "val.txt",
                               stats_csv=corpus["root"] / "stats.csv", rule="meddec")
    assert report["scorer"]["name"] == "meddec"
    assert report["default_value"] == scorer.final_score(merge_predictions(corpus["models"], Thresholds()))


def test_a_second_tuner_on_one_study_stops_at_once(corpus, tmp_path):
    from ensemble.storage import StudyLock

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with StudyLock(storage):
        with pytest.raises(InputError, match=r"study.db.lock: another tuner is using this study right now"):
            tuning.tune(corpus["evaluate"], 3, storage, "s", progress=False)
    assert tuning.tune(corpus["evaluate"], 3, storage, "s", progress=False).n_new == 3  # free again


def test_bad_storage_and_too_many_folds_fail_before_any_trial(corpus, tmp_path, capsys):
    assert optimize.main(["--predictions", *corpus["paths"], *_cli(corpus, tmp_path, "bogus://x", "--n_trials", "3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: <command line>: --storage: got 'bogus://x': cannot open this Optuna storage")
    assert len(err.splitlines()) == 1
    storage = f"sqlite:///{tmp_path / 'cv.db'}"
    assert optimize.main(["--predictions", *corpus["paths"], *_cli(corpus, tmp_path, storage, "--cv", "10")]) == 2
    assert capsys.readouterr().err == "error: <command line>: --cv: K = 10 folds need at least 10 notes, got 8\n"
    assert not (tmp_path / "cv.db").exists()


@pytest.mark.slow
def test_a_killed_tuner_resumes_to_exactly_the_uninterrupted_study(corpus, tmp_path):
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    import psutil

    from utils.paths import REPO_ROOT

    # The official token F1 sums in set-iteration order, so its last bit follows PYTHONHASHSEED: the runs share one.
    env = dict(os.environ, NLTK_DATA=str(REPO_ROOT / "tests" / "fixtures" / "nltk_data"), PYTHONHASHSEED="0")

    def command(storage):
        return [sys.executable, "-m", "ensemble.optimize", "--predictions", *corpus["paths"],
                *_cli(corpus, tmp_path, storage, "--n_trials", "200", "--seed", "0")]

    whole = f"sqlite:///{tmp_path / 'whole.db'}"
    subprocess.run(command(whole), cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=1800)
    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    log = open(tmp_path / "tuner.log", "w")
    tuner = subprocess.Popen(command(killed), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def finished_trials() -> int:
        if not (tmp_path / "killed.db").exists():  # connecting would create it
            return 0
        try:
            with sqlite3.connect(tmp_path / "killed.db", timeout=1) as db:
                return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet, or busy for a moment
            return 0

    deadline = time.monotonic() + 900  # generous: the machine may be shared and slow
    written = 0
    while written < 15:
        if tuner.poll() is not None:
            pytest.fail(f"the tuner ended before 15 trials (exit {tuner.returncode}): "
                        f"{(tmp_path / 'tuner.log').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no 15 finished trials in 900 s: {(tmp_path / 'tuner.log').read_text()[-2000:]}")
        time.sleep(0.1)
        written = finished_trials()
    children = psutil.Process(tuner.pid).children(recursive=True)
    os.kill(tuner.pid, signal.SIGKILL)
    tuner.wait()
    log.close()
    assert 15 <= written < 200 and children  # killed mid-study, with its trial writer running
    time.sleep(1.0)
    assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []  # none outlives it
    survivors = len(optuna.load_study(study_name="s", storage=killed).trials)
    subprocess.run(command(killed), cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=1800)
    resumed = optuna.load_study(study_name="s", storage=killed).trials
    uninterrupted = optuna.load_study(study_name="s", storage=whole).trials
    assert survivors < 200 and len(resumed) == len(uninterrupted) == 200
    assert [(t.params, t.value) for t in resumed] == [(t.params, t.value) for t in uninterrupted]
