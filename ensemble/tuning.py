"""Tuning the ensemble thresholds with Optuna TPE against the official score (SPEC section 5).

As published: the four thresholds in [0, 1], the published defaults enqueued as the first trial, objective =
official final score (the base score when no stats.csv is given), the study kept in SQLite. Re-running with the
same storage and study name continues up to ``n_trials`` in total.

Speed: gold is loaded and tokenised once (``utils.metric.Scorer``), the predictions are prepared once and laid out
in arrays (``ensemble.batch``), so a trial is a few array operations over all notes. Optuna's SQLite storage costs
tens of milliseconds of CPU per trial through its ORM, so the sampler works on an in-memory copy of the study and
every finished trial is handed at once to a writer process that adds it to SQLite on another core
(``ensemble.storage``). A killed run keeps the trials written so far; resuming replays the seeded sampler over them,
so the study ends exactly as an uninterrupted run's, and the SQLite file is an ordinary Optuna study
(``optuna.load_study``).
Evaluating trials in several worker processes was measured not to help (2,000 trials: 46.9 s with two workers,
45.2 s with one): Optuna's own sampling dominates.

Overfitting guard: :func:`cross_validate` tunes on K-1 folds of notes and scores the held-out fold;
``per_category`` tunes one support threshold per category instead of one. The command line is
``ensemble/optimize.py``.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, Callable, Sequence

from ensemble.consensus import THRESHOLD_NAMES, PreparedNote, Thresholds, merge_prepared
from ensemble.storage import StudyLock, TrialWriter, open_persistent_study, quiet_optuna
from utils.categories import CATEGORY_IDS
from utils.configs import OPTUNA_STUDY
from utils.fileio import InputError
from utils.metric.rules import DEFAULT_SCORER


Evaluate = Callable[[Thresholds], float]


# ----------------------------------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------------------------------
def support_param(category: int) -> str:
    return f"t_support_{category}"


def param_names(per_category: bool) -> list[str]:
    """The tuned parameters: the four thresholds, or with per_category t_support split into nine."""
    if not per_category:
        return list(THRESHOLD_NAMES)
    return [n for n in THRESHOLD_NAMES if n != "t_support"] + [support_param(c) for c in CATEGORY_IDS]


def search_space(per_category: bool) -> dict[str, Any]:
    """Every parameter uniform in [0, 1], as published."""
    import optuna

    return {name: optuna.distributions.FloatDistribution(0.0, 1.0) for name in param_names(per_category)}


def default_params(per_category: bool) -> dict[str, float]:
    """The published defaults as trial parameters (every category's support = the published t_support)."""
    defaults = Thresholds()
    params = {name: getattr(defaults, name) for name in THRESHOLD_NAMES}
    if per_category:
        params.pop("t_support")
        params.update({support_param(c): defaults.t_support for c in CATEGORY_IDS})
    return params


def thresholds_from_params(params: dict[str, float], per_category: bool) -> Thresholds:
    """Thresholds of a trial's parameters."""
    if not per_category:
        return Thresholds(**{name: params[name] for name in THRESHOLD_NAMES})
    by_category = tuple(params[support_param(c)] for c in CATEGORY_IDS)
    shared = {name: params[name] for name in THRESHOLD_NAMES if name != "t_support"}
    return Thresholds(**shared, t_support=Thresholds().t_support, t_support_by_category=by_category)


# ----------------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------------
def make_objective(prepared: dict[str, PreparedNote], scorer: Any) -> Evaluate:
    """Thresholds -> official final (or base) score of the merged predictions.

    A trial runs on arrays (``ensemble.batch.BatchMerger`` + ``utils.metric.SpanTableScorer``), which
    give bit for bit what ``merge_prepared`` + ``Scorer.final_score`` give; notes too large to lay out
    that way are tuned with those two instead (slower, same numbers).
    """
    from ensemble.batch import BatchMerger, BatchTooLarge

    try:
        merger = BatchMerger(prepared)
    except BatchTooLarge as err:
        warnings.warn(f"{err}; tuning with the per-note merge instead (same results, slower)", stacklevel=2)

        def evaluate_per_note(thresholds: Thresholds) -> float:
            return scorer.final_score(merge_prepared(prepared, thresholds))

        return evaluate_per_note
    table = merger.table_scorer(scorer)

    def evaluate(thresholds: Thresholds) -> float:
        return table.final_score(merger.kept_rows(thresholds))

    return evaluate


# ----------------------------------------------------------------------------------------------------
# Study: in-memory sampling, every finished trial persisted at once
# ----------------------------------------------------------------------------------------------------
@dataclass
class TuningRun:
    """The study (all trials, in memory) and how many of its trials this call ran."""

    study: Any
    n_previous: int
    n_new: int
    seconds: float
    per_category: bool

    @property
    def best_thresholds(self) -> Thresholds:
        return thresholds_from_params(self.study.best_trial.params, self.per_category)


def replay(study: Any, previous: Sequence[Any], distributions: dict[str, Any], storage: str, study_name: str) -> None:
    """Bring a freshly seeded sampler to the state an uninterrupted run had after ``previous``.

    The sampler is asked for each earlier trial again (same seed, same history, so the same parameters, and the
    same random numbers consumed) and told its stored value instead of re-evaluating it: the trials that follow are
    then exactly those an uninterrupted run would have made.
    """
    for stored in sorted(previous, key=lambda t: t.number):
        trial = study.ask(distributions)
        if trial.params != stored.params:
            raise InputError(storage, f"study '{study_name}' trial {stored.number}",
                             "cannot be replayed with this seed (made with another sampler or Optuna version?); "
                             "use another --study_name")
        study.tell(trial, stored.value)


def tune(
    evaluate: Evaluate,
    n_trials: int,
    storage: str | None = None,
    study_name: str = OPTUNA_STUDY,
    seed: int | None = 0,
    per_category: bool = False,
    progress: bool = True,
    fingerprint: dict[str, Any] | None = None,
    on_trial: Callable[[Any], None] | None = None,
) -> TuningRun:
    """Run TPE until the study holds ``n_trials`` finished trials, resuming what ``storage`` holds.

    With a seed, a resumed study ends exactly as an uninterrupted run would (:func:`replay`; bit for bit when both
    processes share ``PYTHONHASHSEED``, since the official token F1's last bit follows set-iteration order). ``fingerprint``
    names the inputs (see ``ensemble.storage``); ``on_trial(frozen_trial)`` is called after each finished trial has
    been queued for writing (tests use it to simulate a kill).
    """
    with StudyLock(storage):
        return _tune(evaluate, n_trials, storage, study_name, seed, per_category, progress, fingerprint, on_trial)


def _tune(evaluate: Evaluate, n_trials: int, storage: str | None, study_name: str, seed: int | None,
          per_category: bool, progress: bool, fingerprint: dict[str, Any] | None,
          on_trial: Callable[[Any], None] | None) -> TuningRun:
    import optuna
    from tqdm.auto import tqdm

    quiet_optuna()
    fingerprint = {"per_category": per_category, "seed": seed, **(fingerprint or {})}
    persistent = open_persistent_study(storage, study_name, fingerprint)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    previous = [] if persistent is None else persistent.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    distributions = search_space(per_category)
    if previous and seed is None:  # no seed: nothing to reproduce, continue from the trials as they are
        study.add_trials(previous)
    else:
        study.enqueue_trial(default_params(per_category))  # the published defaults are always trial 0
        replay(study, previous, distributions, storage, study_name)
    n_new = max(0, n_trials - len(previous))
    started = time.perf_counter()
    bar = tqdm(total=n_trials, initial=len(previous), desc="tuning thresholds", unit="trial", disable=not progress)
    best = [study.best_value if previous else None]

    writer = TrialWriter(storage, study_name) if persistent is not None and n_new else None

    def finished(trial: Any, value: float) -> None:
        frozen = study.tell(trial, value)
        if writer is not None:
            writer.put(frozen)
        bar.update(1)
        if best[0] is None or value > best[0]:
            best[0] = value
            bar.set_postfix(best=f"{value:.4f}")
            if progress:
                bar.write(f"trial {frozen.number}: new best {value:.6f} "
                          + " ".join(f"{k}={v:.4f}" for k, v in frozen.params.items()))
        if on_trial is not None:
            on_trial(frozen)

    try:
        for _ in range(n_new):
            trial = study.ask(distributions)
            finished(trial, evaluate(thresholds_from_params(trial.params, per_category)))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return TuningRun(study, len(previous), n_new, time.perf_counter() - started, per_category)


def default_trial_value(study: Any, per_category: bool) -> float | None:
    """Value of the first trial with the published defaults, if the study has one."""
    defaults = default_params(per_category)
    for trial in study.trials:
        if trial.value is not None and trial.params == defaults:
            return trial.value
    return None


# ----------------------------------------------------------------------------------------------------
# Cross-validation (overfitting guard)
# ----------------------------------------------------------------------------------------------------
def make_folds(note_ids: Sequence[str], k: int, seed: int | None) -> list[list[str]]:
    """K folds of notes: a seeded shuffle dealt round robin (sizes differ by at most one)."""
    if k < 2 or k > len(note_ids):
        raise ValueError(f"--cv needs 2 <= K <= number of notes ({len(note_ids)}), got {k}")
    ids = sorted(note_ids)
    random.Random(seed).shuffle(ids)
    return [sorted(ids[i::k]) for i in range(k)]


def cross_validate(
    prepared: dict[str, PreparedNote],
    make_scorer: Callable[[Sequence[str]], Any],
    k: int,
    n_trials: int,
    seed: int | None = 0,
    per_category: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tune on K-1 folds, score the held-out fold with those thresholds; also the defaults' held-out score."""
    folds = make_folds(list(prepared), k, seed)
    results = []
    for index, held_out in enumerate(folds):
        train = [i for i in prepared if i not in set(held_out)]
        train_eval = make_objective({i: prepared[i] for i in train}, make_scorer(train))
        run = tune(train_eval, n_trials, storage=None, seed=None if seed is None else seed + 1 + index,
                   per_category=per_category, progress=progress)
        test_scorer = make_scorer(held_out)
        test_notes = {i: prepared[i] for i in held_out}
        best = run.best_thresholds
        results.append({
            "fold": index,
            "n_train": len(train),
            "n_held_out": len(held_out),
            "train_score": run.study.best_value,
            "held_out_score": test_scorer.final_score(merge_prepared(test_notes, best)),
            "held_out_default_score": test_scorer.final_score(merge_prepared(test_notes, Thresholds())),
            "thresholds": best.as_dict(),
        })
    return {
        "k": k,
        "n_trials_per_fold": n_trials,
        "mean_train_score": mean(r["train_score"] for r in results),
        "mean_held_out_score": mean(r["held_out_score"] for r in results),
        "mean_held_out_default_score": mean(r["held_out_default_score"] for r in results),
        "folds": results,
    }


def scorer_factory(gold_dir: str, raw_text_dir: str, stats_csv: str | None, workdir: str,
                   rule: str = DEFAULT_SCORER) -> Callable[[Sequence[str]], Any]:
    """make_scorer(note_ids): a Scorer (token rule ``rule``) over just those notes (through a split file, as a user
    would)."""
    from utils.metric import Scorer

    counter = [0]

    def make_scorer(note_ids: Sequence[str]) -> Any:
        counter[0] += 1
        split = Path(workdir) / f"fold_{counter[0]}.txt"
        split.write_text("".join(f"{i}\n" for i in note_ids), encoding="utf-8")
        return Scorer.from_files(gold_dir=gold_dir, raw_text_dir=raw_text_dir, split_file=str(split), stats_csv=stats_csv,
                                 rule=rule)

    return make_scorer


def save_plots(study: Any, history_png: str | None, importance_png: str | None) -> dict[str, str]:
    """Optuna's optimisation-history and parameter-importance plots as PNG; a reason instead of a path
    when a plot cannot be drawn (importance needs >= 2 finished trials whose values differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    out: dict[str, str] = {}
    values = [t.value for t in study.trials if t.value is not None]
    jobs = [("history", history_png, optuna_plots.plot_optimization_history),
            ("importance", importance_png, optuna_plots.plot_param_importances)]
    for name, path, plot in jobs:
        if path is None:
            continue
        if name == "importance" and (len(values) < 2 or len(set(values)) < 2):
            out[name] = "skipped: needs at least 2 finished trials with different values"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (RuntimeError, ValueError, ZeroDivisionError) as err:
            out[name] = f"skipped: {err}"
            continue
        figure = axes.figure if hasattr(axes, "figure") else plt.gcf()
        figure.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp.png"
        figure.savefig(tmp, dpi=120)
        os.replace(tmp, path)
        plt.close(figure)
        out[name] = str(path)
    return out
