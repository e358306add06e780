"""A tuning study of the ensemble thresholds on validation predictions, then applied (what ``ensemble/optimize.py``
runs; SPEC section 5).

Writes ``best.json`` (best and default thresholds and scores) with optimisation-history and parameter-importance
PNGs beside it, and resumes a killed study from its storage. ``--cv K`` reports the K-fold cross-validated score
of tuned thresholds next to the in-sample one, ``--per-category`` tunes the support threshold per category. How a
trial is scored fast and exactly: ``ensemble.tuning``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from ensemble.consensus import Thresholds, merge_predictions, note_ids_of, prepare_predictions
from ensemble.merging import read_model_predictions
from ensemble.tuning import cross_validate, default_trial_value, make_objective, save_plots, scorer_factory, tune
from utils.configs.pipeline import OptimizeArguments
from utils.fileio import InputError, check_output_path, file_sha256, write_json_atomic
from utils.fingerprint import punkt_fingerprint
from utils.meddec.predictions import Predictions, write_predictions
from utils.metric.rules import DEFAULT_SCORER


def check_arguments(args: OptimizeArguments) -> None:
    """Outputs that cannot be written, refused before any input is read (flag values: :class:`OptimizeArguments`)."""
    for path in (args.output, args.apply_output, *plot_paths(args)):
        if path:
            check_output_path(path)


def plot_paths(args: OptimizeArguments) -> tuple[str | None, str | None]:
    if args.no_plots:
        return None, None
    stem = os.path.splitext(args.output)[0]
    return args.history_plot or f"{stem}_history.png", args.importance_plot or f"{stem}_importance.png"


def gold_from_csv(args: OptimizeArguments) -> bool:
    """Whether the gold comes from the tagged table (published) rather than the gold JSON files."""
    return bool(args.gold_csv) and args.gold_csv.lower() != "none"


def inputs_fingerprint(args: OptimizeArguments, note_ids: Sequence[str]) -> dict[str, Any]:
    """What determines a study's trials: every input's content (not its name) and the objective's settings."""
    texts = hashlib.sha256()
    if gold_from_csv(args):  # one file holds both the gold and the texts
        gold = texts_digest = file_sha256(args.gold_csv)
    else:
        gold_files = [Path(args.gold_dir) / name for name in sorted(os.listdir(args.gold_dir)) if name.endswith(".json")]
        for note_id in sorted(note_ids):
            texts.update(f"{note_id}\0{file_sha256(Path(args.raw_text_dir) / f'{note_id}.txt')}\0".encode())
        gold = hashlib.sha256("".join(f"{p.name}\0{file_sha256(p)}\0" for p in gold_files).encode()).hexdigest()
        texts_digest = texts.hexdigest()
    return {
        "predictions": [file_sha256(path) for path in args.predictions],
        "gold": gold,
        "texts": texts_digest,
        "notes": hashlib.sha256("\n".join(sorted(note_ids)).encode()).hexdigest(),
        "stats": file_sha256(args.stats_csv) if args.stats_csv else None,
    }


def load_inputs(args: OptimizeArguments) -> tuple[list[Predictions], Any, list[str]]:
    """Models' predictions, the scorer, and the note ids to tune on."""
    from utils.metric.punkt import require_punkt
    from utils.metric import Scorer

    require_punkt()  # the official token F1 needs NLTK's punkt_tab: say so before any work
    models = [read_model_predictions(path) for path in args.predictions]
    if gold_from_csv(args):
        scorer = csv_scorer_factory(args.gold_csv, args.split_file, args.stats_csv, args.scorer)(None)
    else:
        scorer = Scorer.from_files(gold_dir=args.gold_dir, raw_text_dir=args.raw_text_dir, split_file=args.split_file,
                                   stats_csv=args.stats_csv, rule=args.scorer)
    wanted = scorer.split_ids if scorer.split_ids is not None else set(scorer.gold_ids)
    ids = [i for i in note_ids_of(models) if i in wanted]
    if not ids:
        raise InputError(args.predictions[0], "", "no predicted note is in the gold/split set: check --split_file")
    if args.cv > len(ids):  # refused before any trial is run, not after tuning
        raise InputError.flag("--cv", f"K = {args.cv} folds need at least {args.cv} notes, got {len(ids)}")
    return models, scorer, ids


def csv_scorer_factory(gold_csv: str, split_file: str | None, stats_csv: str | None,
                       rule: str = DEFAULT_SCORER) -> Callable[[Sequence[str] | None], Any]:
    """make_scorer(note_ids or None for all): a Scorer (token rule ``rule``) over the tagged table's gold and texts
    (published optimize.py: every row's ``gold_offsets`` and ``raw_text``, the split file's ids with a ``.json``
    suffix stripped, whichever scorer)."""
    from utils.meddec.corpus import read_stats
    from utils.meddec.tables import tagged_gold
    from utils.metric import Scorer, read_official_split

    gold, texts = tagged_gold(gold_csv)
    split_ids = None
    if split_file:
        split_ids = {i.removesuffix(".json") for i in read_official_split(split_file)}
        gold = {k: v for k, v in gold.items() if k in split_ids}
    stats = read_stats(stats_csv) if stats_csv else None

    def make_scorer(note_ids: Sequence[str] | None) -> Any:
        wanted = gold if note_ids is None else {i: gold[i] for i in note_ids if i in gold}
        ids = split_ids if note_ids is None else set(note_ids)
        return Scorer(wanted, texts, stats, split_ids=ids, rule=rule)

    return make_scorer


def optimize(args: OptimizeArguments) -> dict[str, Any]:
    """Tune (and cross-validate, plot, apply) as the flags say; returns the report written to ``--output``."""
    check_arguments(args)
    storage = None if args.storage.lower() == "none" else args.storage
    progress = not args.quiet
    models, scorer, ids = load_inputs(args)
    apply_models = [read_model_predictions(path) for path in args.apply] if args.apply else None
    objective = "final" if args.stats_csv else "base"
    print(f"tuning on {len(ids)} notes x {len(models)} models; objective: official {objective} score "
          f"(scorer: {scorer.rule})")
    prepared = prepare_predictions(models, ids)
    evaluate = make_objective(prepared, scorer)
    fingerprint = {"objective": objective, "scorer": scorer.rule, **inputs_fingerprint(args, ids),
                   **punkt_fingerprint()}
    run = tune(evaluate, args.n_trials, storage, args.study_name, args.seed, args.per_category, progress, fingerprint)
    study, best = run.study, run.best_thresholds
    report: dict[str, Any] = {
        "thresholds": best.as_dict(),
        "best_value": study.best_value,
        "best_trial": study.best_trial.number,
        "objective": objective,
        "scorer": {"name": scorer.rule, "reference": scorer.reference},
        "default_thresholds": Thresholds().as_dict(),
        "default_value": default_trial_value(study, args.per_category),
        "per_category": args.per_category,
        "n_trials": len(study.trials),
        "n_trials_this_run": run.n_new,
        "seconds_this_run": round(run.seconds, 2),
        "n_notes": len(ids),
        "predictions": [str(p) for p in args.predictions],
        "gold": args.gold_csv if gold_from_csv(args) else args.gold_dir,
        "storage": storage,
        "study_name": args.study_name if storage else None,
        "seed": args.seed,
    }
    if report["default_value"] is None:
        report["default_value"] = evaluate(Thresholds())
    if args.cv:
        with tempfile.TemporaryDirectory(prefix="lamar_cv_") as workdir:
            make_scorer = (csv_scorer_factory(args.gold_csv, args.split_file, args.stats_csv, args.scorer)
                           if gold_from_csv(args)
                           else scorer_factory(args.gold_dir, args.raw_text_dir, args.stats_csv, workdir, args.scorer))
            report["cv"] = cross_validate(prepared, make_scorer, args.cv, args.cv_trials or args.n_trials, args.seed,
                                          args.per_category, progress)
        report["cv"]["in_sample_score"] = study.best_value
        report["cv"]["gap"] = study.best_value - report["cv"]["mean_held_out_score"]
    report["plots"] = save_plots(study, *plot_paths(args))
    write_json_atomic(args.output, report)
    print(format_report(report))
    if apply_models is not None:
        merged = merge_predictions(apply_models, best, progress=progress)
        write_predictions(args.apply_output, merged)
        print(f"applied to {len(merged)} notes -> {args.apply_output}")
    return report


def format_report(report: dict[str, Any]) -> str:
    """A short honest summary: best vs defaults in sample, and the cross-validated view when asked."""
    lines = [
        f"trials: {report['n_trials']} ({report['n_trials_this_run']} this run, {report['seconds_this_run']} s)",
        f"scorer: {report['scorer']['name']} ({report['scorer']['reference']})",
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
