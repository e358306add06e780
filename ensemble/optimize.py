"""Tune the ensemble thresholds on validation predictions with Optuna TPE (SPEC section 5).

As published: the four thresholds in [0, 1], the published defaults enqueued as the first trial,
objective = official final score (the base score when no stats.csv is given), the study kept in
SQLite. Re-running with the same storage and study name continues up to ``--n_trials`` in total.

Speed: gold is loaded and tokenised once (``utils.metric.Scorer``), the predictions are prepared once
and laid out in arrays (``ensemble.batch``), so a trial is a few array operations over all notes.
Optuna's SQLite storage costs tens of milliseconds of CPU per trial through its ORM, so the sampler
works on an in-memory copy of the study and every finished trial is handed at once to a writer
process that adds it to SQLite (on another core): a killed run loses only the trials that were still
running or not yet handed over, and the SQLite file is an ordinary Optuna study (``optuna.load_study``).

Overfitting guard: ``--cv K`` tunes on K-1 folds of notes and scores the held-out fold, reported next
to the in-sample score; ``--per-category`` tunes one support threshold per category instead of one.

CLI::

    python -m ensemble.optimize --predictions val_m1.json val_m2.json val_m3.json \\
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text --split_file MedDec/splits/val.txt \\
        --stats_csv MedDec/stats.csv --n_trials 5000 --storage sqlite:///study.db --output best.json \\
        --apply test_m1.json test_m2.json test_m3.json --apply-output submission.json
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import os
import random
import sys
import tempfile
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, Callable, Sequence

from utils.categories import CATEGORY_IDS
from utils.fileio import InputError, write_json_atomic, report_input_error
from utils.predictions import Predictions, write_predictions

from ensemble.mbr import (
    THRESHOLD_NAMES, PreparedNote, Thresholds, merge_prepared, merge_predictions, note_ids_of,
    prepare_predictions, read_model_predictions,
)

DEFAULT_STORAGE = "sqlite:///mbr_optuna.db"  # published names
DEFAULT_STUDY_NAME = "mbr_tuning_study"
CONFIG_ATTR = "lamar_ensemble_config"

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
            return scorer.final_score(merge_prepared(prepared, thresholds, cache=True))

        return evaluate_per_note
    table = merger.table_scorer(scorer)

    def evaluate(thresholds: Thresholds) -> float:
        return table.final_score(merger.kept_rows(thresholds))

    return evaluate


# Workers are forked after this is set, so they inherit the prepared notes and the scorer.
_WORKER_STATE: dict[str, Any] = {}


def _evaluate_in_worker(params: dict[str, float]) -> float:
    return _WORKER_STATE["evaluate"](thresholds_from_params(params, _WORKER_STATE["per_category"]))


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


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def ensure_sqlite_folder(storage: str) -> None:
    """Create the folder of a ``sqlite:///path`` storage: SQLite cannot create it and fails obscurely."""
    prefix = "sqlite:///"
    if storage.startswith(prefix) and storage[len(prefix):] not in ("", ":memory:"):
        Path(storage[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)


def open_persistent_study(storage: str | None, study_name: str, config: dict[str, Any]) -> Any:
    """The persistent study (None for a purely in-memory run); refuses one tuned with other settings."""
    import optuna

    if storage is None:
        return None
    ensure_sqlite_folder(storage)
    persistent = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True)
    previous = persistent.user_attrs.get(CONFIG_ATTR)
    if previous is None:
        persistent.set_user_attr(CONFIG_ATTR, config)
    else:
        for key in ("per_category", "objective"):
            if previous.get(key) != config.get(key):
                raise InputError(storage, f"study '{study_name}'",
                                 f"was tuned with {key}={previous.get(key)!r}, this run asks for {config.get(key)!r}; "
                                 "use another --study_name")
    return persistent


class TrialWriter:
    """Writes finished trials to the persistent study from a separate process.

    Optuna's SQLite storage spends ~25-40 ms of CPU per written trial in its ORM, as much as a trial
    itself; a writer process moves that work to another core. Trials are queued the moment they
    finish; :meth:`close` waits until every queued trial is written. If the tuner is killed, the
    writer still drains what reached its queue, then exits.
    """

    def __init__(self, storage: str, study_name: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.queue = context.Queue()
        self.process = context.Process(target=_write_trials, args=(storage, study_name, self.queue, os.getpid()),
                                       name="optuna-trial-writer", daemon=False)
        self.process.start()

    def put(self, trial: Any) -> None:
        self.queue.put(trial)

    def close(self) -> None:
        """Flush: wait until every queued trial has been written."""
        self.queue.put(None)
        self.queue.close()
        self.queue.join_thread()
        self.process.join()
        if self.process.exitcode != 0:
            raise RuntimeError(f"the trial writer process failed (exit code {self.process.exitcode}); see its error above")


def _write_trials(storage: str, study_name: str, queue: Any, parent_pid: int) -> None:
    import queue as queue_module

    import optuna

    _quiet_optuna()
    persistent = optuna.load_study(study_name=study_name, storage=storage)
    while True:
        try:
            trial = queue.get(timeout=1.0)
        except queue_module.Empty:
            if os.getppid() != parent_pid:  # the tuner died: what it queued is written, stop
                return
            continue
        if trial is None:
            return
        persistent.add_trial(trial)


def tune(
    evaluate: Evaluate,
    n_trials: int,
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY_NAME,
    seed: int | None = 0,
    per_category: bool = False,
    n_jobs: int = 1,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    on_trial: Callable[[Any], None] | None = None,
) -> TuningRun:
    """Run TPE until the study holds ``n_trials`` finished trials (resuming what ``storage`` holds).

    ``on_trial(frozen_trial)`` is called after each finished trial has been queued for writing (tests
    use it to simulate a kill).
    """
    import optuna
    from tqdm.auto import tqdm

    _quiet_optuna()
    config = {"per_category": per_category, **(config or {})}
    persistent = open_persistent_study(storage, study_name, config)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    previous = [] if persistent is None else persistent.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if previous:
        study.add_trials(previous)
    else:
        study.enqueue_trial(default_params(per_category))
    n_new = max(0, n_trials - len(previous))
    distributions = search_space(per_category)
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
        if n_jobs <= 1:
            for _ in range(n_new):
                trial = study.ask(distributions)
                finished(trial, evaluate(thresholds_from_params(trial.params, per_category)))
        else:
            _run_parallel(study, evaluate, n_new, distributions, per_category, n_jobs, finished)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return TuningRun(study, len(previous), n_new, time.perf_counter() - started, per_category)


def _run_parallel(study: Any, evaluate: Evaluate, n_new: int, distributions: dict, per_category: bool, n_jobs: int,
                  finished: Callable[[Any, float], None]) -> None:
    """Ask/tell with up to ``n_jobs`` trials evaluated at once in forked worker processes."""
    import multiprocessing

    _WORKER_STATE.update(evaluate=evaluate, per_category=per_category)
    pending: dict[Any, Any] = {}
    asked = 0
    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        while asked < n_new or pending:
            while asked < n_new and len(pending) < n_jobs:
                trial = study.ask(distributions)
                pending[pool.submit(_evaluate_in_worker, dict(trial.params))] = trial
                asked += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finished(pending.pop(future), future.result())


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


def scorer_factory(gold_dir: str, raw_text_dir: str, stats_csv: str | None, workdir: str) -> Callable[[Sequence[str]], Any]:
    """make_scorer(note_ids): a Scorer over just those notes (through a split file, as a user would)."""
    from utils.metric import Scorer

    counter = [0]

    def make_scorer(note_ids: Sequence[str]) -> Any:
        counter[0] += 1
        split = Path(workdir) / f"fold_{counter[0]}.txt"
        split.write_text("".join(f"{i}\n" for i in note_ids), encoding="utf-8")
        return Scorer.from_files(gold_dir=gold_dir, raw_text_dir=raw_text_dir, split_file=str(split), stats_csv=stats_csv)

    return make_scorer


# ----------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def build_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m ensemble.optimize",
        description="Tune the Span-Cluster Consensus thresholds with Optuna TPE on validation predictions.",
    )
    p.add_argument("--predictions", nargs="+", required=True, metavar="FILE",
                   help="validation predictions, one file per model (JSON or inference CSV)")
    p.add_argument("--gold_dir", required=True, help="MedDec data/ folder")
    p.add_argument("--raw_text_dir", required=True, help="MedDec raw_text/ folder")
    p.add_argument("--split_file", help="note ids to tune on (e.g. splits/val.txt); default: all gold notes")
    p.add_argument("--stats_csv", help="stats.csv: objective = final score; without it the base score")
    p.add_argument("--n_trials", type=int, default=5000, help="total finished trials the study should hold (default: %(default)s)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="Optuna storage URL, resumable (default: %(default)s); 'none' for in memory only")
    p.add_argument("--study_name", default=DEFAULT_STUDY_NAME, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed (default: %(default)s)")
    p.add_argument("--n_jobs", type=int, default=1,
                   help="trials evaluated at once in worker processes (default: %(default)s; a trial on arrays takes "
                        "~10 ms, less than Optuna's own sampling, so workers only help with much larger note sets)")
    p.add_argument("--output", required=True, help="best thresholds and scores as JSON")
    p.add_argument("--history_plot", help="optimisation-history PNG (default: <output stem>_history.png)")
    p.add_argument("--importance_plot", help="parameter-importance PNG (default: <output stem>_importance.png)")
    p.add_argument("--no_plots", action="store_true", help="do not draw the PNG plots")
    p.add_argument("--cv", type=int, default=0, metavar="K", help="also report the K-fold cross-validated score")
    p.add_argument("--cv_trials", type=int, help="trials per CV fold (default: --n_trials)")
    p.add_argument("--per-category", "--per_category", dest="per_category", action="store_true",
                   help="tune one support threshold per category (9 parameters instead of t_support)")
    p.add_argument("--apply", nargs="+", metavar="FILE", help="other predictions (e.g. test) to merge with the best thresholds")
    p.add_argument("--apply-output", "--apply_output", dest="apply_output", help="merged JSON for --apply")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def check_arguments(args: Any, parser: Any) -> None:
    if args.n_trials < 1:
        parser.error("--n_trials must be at least 1")
    if args.n_jobs < 1:
        parser.error("--n_jobs must be at least 1")
    if args.cv == 1 or args.cv < 0:
        parser.error("--cv K needs K >= 2 (or 0 for none)")
    if args.cv_trials is not None and args.cv_trials < 1:
        parser.error("--cv_trials must be at least 1")
    if bool(args.apply) != bool(args.apply_output):
        parser.error("--apply and --apply-output go together")
    if args.apply and len(args.apply) != len(args.predictions):
        parser.error(f"--apply needs one file per model, in the same order: {len(args.predictions)} expected, got {len(args.apply)}")


def plot_paths(args: Any) -> tuple[str | None, str | None]:
    if args.no_plots:
        return None, None
    stem = os.path.splitext(args.output)[0]
    return args.history_plot or f"{stem}_history.png", args.importance_plot or f"{stem}_importance.png"


def load_inputs(args: Any) -> tuple[list[Predictions], Any, list[str]]:
    """Models' predictions, the scorer, and the note ids to tune on."""
    from utils.metric import Scorer, read_official_split

    models = [read_model_predictions(path) for path in args.predictions]
    scorer = Scorer.from_files(gold_dir=args.gold_dir, raw_text_dir=args.raw_text_dir, split_file=args.split_file,
                               stats_csv=args.stats_csv)
    wanted = set(read_official_split(args.split_file)) if args.split_file else set(scorer.gold_ids)
    ids = [i for i in note_ids_of(models) if i in wanted]
    if not ids:
        raise InputError(args.predictions[0], "", "no predicted note is in the gold/split set: check --split_file")
    return models, scorer, ids


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(args, parser)
    storage = None if args.storage.lower() == "none" else args.storage
    progress = not args.quiet
    try:
        models, scorer, ids = load_inputs(args)
        apply_models = [read_model_predictions(path) for path in args.apply] if args.apply else None
    except InputError as err:
        return report_input_error(err)
    objective = "final" if args.stats_csv else "base"
    print(f"tuning on {len(ids)} notes x {len(models)} models; objective: official {objective} score")
    prepared = prepare_predictions(models, ids)
    evaluate = make_objective(prepared, scorer)
    config = {"objective": objective, "predictions": [os.path.basename(p) for p in args.predictions]}
    try:
        run = tune(evaluate, args.n_trials, storage, args.study_name, args.seed, args.per_category, args.n_jobs,
                   progress, config)
    except InputError as err:
        return report_input_error(err)
    study = run.study
    best = run.best_thresholds
    report: dict[str, Any] = {
        "thresholds": best.as_dict(),
        "best_value": study.best_value,
        "best_trial": study.best_trial.number,
        "objective": objective,
        "default_thresholds": Thresholds().as_dict(),
        "default_value": default_trial_value(study, args.per_category),
        "per_category": args.per_category,
        "n_trials": len(study.trials),
        "n_trials_this_run": run.n_new,
        "seconds_this_run": round(run.seconds, 2),
        "n_notes": len(ids),
        "predictions": [str(p) for p in args.predictions],
        "storage": storage,
        "study_name": args.study_name if storage else None,
        "seed": args.seed,
    }
    if report["default_value"] is None:
        report["default_value"] = evaluate(Thresholds())
    if args.cv:
        with tempfile.TemporaryDirectory(prefix="lamar_cv_") as workdir:
            make_scorer = scorer_factory(args.gold_dir, args.raw_text_dir, args.stats_csv, workdir)
            report["cv"] = cross_validate(prepared, make_scorer, args.cv, args.cv_trials or args.n_trials, args.seed,
                                          args.per_category, progress)
        report["cv"]["in_sample_score"] = study.best_value
        report["cv"]["gap"] = study.best_value - report["cv"]["mean_held_out_score"]
    history_png, importance_png = plot_paths(args)
    report["plots"] = save_plots(study, history_png, importance_png)
    write_json_atomic(args.output, report)
    print(format_report(report))
    if apply_models is not None:
        merged = merge_predictions(apply_models, best, progress=progress)
        write_predictions(args.apply_output, merged)
        print(f"applied to {len(merged)} notes -> {args.apply_output}")
    return 0


def format_report(report: dict[str, Any]) -> str:
    """A short honest summary: best vs defaults in sample, and the cross-validated view when asked."""
    lines = [
        f"trials: {report['n_trials']} ({report['n_trials_this_run']} this run, {report['seconds_this_run']} s)",
        f"defaults {report['objective']} score: {report['default_value']:.6f}",
        f"best {report['objective']} score (in sample, trial {report['best_trial']}): {report['best_value']:.6f}",
        "best thresholds: " + ", ".join(
            f"{k}={v:.4f}" for k, v in report["thresholds"].items() if not isinstance(v, dict)),
    ]
    by_category = report["thresholds"].get("t_support_by_category")
    if by_category:
        lines.append("per-category support: " + ", ".join(f"{c}:{v:.3f}" for c, v in by_category.items()))
    cv = report.get("cv")
    if cv:
        lines.append(
            f"{cv['k']}-fold CV ({cv['n_trials_per_fold']} trials per fold): held-out tuned {cv['mean_held_out_score']:.6f}, "
            f"held-out defaults {cv['mean_held_out_default_score']:.6f}, in-sample tuned {cv['in_sample_score']:.6f} "
            f"(gap {cv['gap']:+.6f})")
    for name, where in report.get("plots", {}).items():
        lines.append(f"{name} plot: {where}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
