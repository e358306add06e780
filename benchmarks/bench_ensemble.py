"""Benchmark: one tuning trial (merge + official score) of ours vs the all-pairs reference, a full TPE
study, and the cross-validated vs in-sample gap, on a synthetic validation set.

Setup: a synthetic MedDec corpus with ``--n_notes`` validation notes (53 as the real one) and three
"models" = the gold spans perturbed differently per model (dropped spans, shifted boundaries, wrong
categories, false positives).

- ours: predictions prepared and laid out in arrays once (``ensemble.batch``), each trial merged on arrays
  and scored by a span-table scorer built once (what ``ensemble.optimize`` runs);
- per-note: the per-note merge (``ensemble.consensus.merge_prepared``) scored by a Scorer built once;
- reference: the all-pairs merge (ensemble/reference.py) plus official-style scoring, i.e. a Scorer
  built from scratch per trial (re-reading and re-tokenising every note as the published objective
  did), or the official script itself with ``--official path/to/evaluate.py``.

    python benchmarks/bench_ensemble.py                      # all parts, 5,000-trial study included
    python benchmarks/bench_ensemble.py --study_trials 500   # shorter study (the report says so)
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from dataset.synthetic import generate_corpus
from ensemble import reference, tuning
from ensemble.batch import BatchMerger
from ensemble.consensus import Thresholds, merge_prepared, prepare_predictions
from utils.meddec.corpus import load_notes, read_split
from utils.meddec.predictions import Predictions, Span, write_predictions
from utils.metric import Scorer
from utils.metric.rules import DEFAULT_SCORER, SCORER_HELP, SCORERS

# (drop rate, boundary shift rate, max shift in characters, wrong-category rate, false positives per gold span)
MODEL_NOISE = ((0.15, 0.25, 6, 0.05, 0.10), (0.20, 0.35, 10, 0.08, 0.15), (0.25, 0.20, 4, 0.10, 0.20))


def perturbed_predictions(notes: dict, seed: int, noise: tuple) -> Predictions:
    """One synthetic model: gold spans with this model's own kind of mistakes."""
    drop, shift_rate, max_shift, wrong_category, false_positives = noise
    rng = random.Random(seed)
    out: Predictions = {}
    for note_id, note in notes.items():
        spans = []
        for a in note.in_scope:
            if rng.random() < drop:
                continue
            start, end = a.start, a.end
            if rng.random() < shift_rate:
                start = max(0, start + rng.randint(-max_shift, max_shift))
            if rng.random() < shift_rate:
                end = min(len(note.text), end + rng.randint(-max_shift, max_shift))
            if end <= start:
                start, end = a.start, a.end
            category = rng.randint(1, 9) if rng.random() < wrong_category else a.category
            spans.append(Span(start, end, category))
        for _ in range(int(len(note.in_scope) * false_positives)):
            start = rng.randrange(0, max(1, len(note.text) - 40))
            spans.append(Span(start, start + rng.randint(5, 40), rng.choice([3, 3, 5, 7, 6, 1])))
        spans.sort()
        out[note_id] = spans
    return out


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls (and the last result)."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def official_script_score(script: str, predictions: Predictions, paths: Any, workdir: str) -> float:
    """Final score from the official evaluate.py (run as a separate process, as the published tuner's
    scoring functions did it in-process: re-reading and re-tokenising everything)."""
    pred_path, out_path = os.path.join(workdir, "pred.json"), os.path.join(workdir, "scores.json")
    write_predictions(pred_path, predictions)
    subprocess.run([sys.executable, script, "--gold_dir", str(paths.gold_dir), "--predictions", pred_path,
                    "--raw_text_dir", str(paths.raw_text_dir), "--split_file", str(paths.split("val")),
                    "--stats_csv", str(paths.stats_csv), "--output", out_path],
                   check=True, capture_output=True, text=True)
    with open(out_path, encoding="utf-8") as handle:
        return json.load(handle)["shared_task"]["final_score"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_notes", type=int, default=53)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing_trials", type=int, default=30, help="random-threshold trials timed for ours")
    parser.add_argument("--reference_trials", type=int, default=3, help="trials timed for the reference")
    parser.add_argument("--study_trials", type=int, default=5000, help="trials of the full TPE study (0: skip)")
    parser.add_argument("--cv", type=int, default=5, help="folds for the CV-vs-in-sample gap (0: skip)")
    parser.add_argument("--cv_trials", type=int, default=300, help="TPE trials per CV fold")
    parser.add_argument("--official", help="path of the official evaluate.py to time instead of a fresh Scorer")
    parser.add_argument("--scorer", choices=SCORERS, default=DEFAULT_SCORER, help=SCORER_HELP)
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    from utils.fileio import report_input_error
    from utils.metric.punkt import PunktMissingError, require_punkt

    try:
        require_punkt()
    except PunktMissingError as err:  # offline: NLTK_DATA=tests/fixtures/nltk_data holds a stand-in model
        return report_input_error(err)

    results: dict[str, Any] = {"n_notes": args.n_notes, "models": len(MODEL_NOISE), "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="bench_ensemble_") as workdir:
        info = generate_corpus(Path(workdir) / "MedDec", seed=args.seed, n_train=0, n_val=args.n_notes, n_test=0,
                               n_unlabeled=0)
        paths = info.paths
        ids = read_split(paths.split("val"))
        notes = load_notes(paths.gold_dir, paths.raw_text_dir, ids)
        models = [perturbed_predictions(notes, args.seed * 100 + i, noise) for i, noise in enumerate(MODEL_NOISE)]
        results["scorer"] = args.scorer
        results["spans_per_note_per_model"] = round(sum(len(s) for m in models for s in m.values()) / len(models) / len(ids), 1)

        def fresh_scorer() -> Scorer:
            return Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir,
                                     split_file=paths.split("val"), stats_csv=paths.stats_csv, rule=args.scorer)

        # -- ours ------------------------------------------------------------------------------------
        started = time.perf_counter()
        scorer = fresh_scorer()
        results["scorer_build_s"] = time.perf_counter() - started
        started = time.perf_counter()
        prepared = prepare_predictions(models, ids)
        results["prepare_s"] = time.perf_counter() - started
        started = time.perf_counter()
        merger = BatchMerger(prepared)
        table = merger.table_scorer(scorer)
        results["layout_s"] = time.perf_counter() - started
        rng = random.Random(args.seed)
        samples = [Thresholds(*(rng.random() for _ in range(4))) for _ in range(args.timing_trials)]
        merge_times, score_times = [], []
        for thresholds in samples:
            t0 = time.perf_counter()
            rows = merger.kept_rows(thresholds)
            t1 = time.perf_counter()
            table.final_score(rows)
            t2 = time.perf_counter()
            merge_times.append(t1 - t0)
            score_times.append(t2 - t1)
        ours_trial = statistics.median(m + s for m, s in zip(merge_times, score_times))
        results.update(merge_median_s=statistics.median(merge_times), score_median_s=statistics.median(score_times),
                       ours_trial_s=ours_trial)

        # -- per-note path (cached merge + Scorer), and a check that both give the same numbers ----------
        merge_prepared(prepared, Thresholds(), cache=True)
        per_note_times = []
        for thresholds in samples:
            t0 = time.perf_counter()
            value = scorer.final_score(merge_prepared(prepared, thresholds, cache=True))
            per_note_times.append(time.perf_counter() - t0)
            assert value == table.final_score(merger.kept_rows(thresholds)), "array trial differs from the per-note path"
        results["per_note_trial_s"] = statistics.median(per_note_times)

        # -- reference -------------------------------------------------------------------------------
        ref_samples = samples[: args.reference_trials]
        ref_merge, ref_score = [], []
        for thresholds in ref_samples:
            t0 = time.perf_counter()
            merged_ref = reference.merge_predictions(models, thresholds)
            t1 = time.perf_counter()
            if args.official:
                official_script_score(args.official, merged_ref, paths, workdir)
            else:
                fresh_scorer().final_score(merged_ref)
            t2 = time.perf_counter()
            ref_merge.append(t1 - t0)
            ref_score.append(t2 - t1)
            assert merged_ref == merge_prepared(prepared, thresholds), "fast merge differs from the reference"
        reference_trial = statistics.median(m + s for m, s in zip(ref_merge, ref_score))
        results.update(reference_merge_median_s=statistics.median(ref_merge),
                       reference_score_median_s=statistics.median(ref_score), reference_trial_s=reference_trial,
                       reference_scoring="official script" if args.official else "Scorer built per trial",
                       speedup=reference_trial / ours_trial)

        print(f"synthetic set: {len(ids)} notes x {len(models)} models, "
              f"{results['spans_per_note_per_model']} spans per note per model")
        print(f"one-off: scorer build {results['scorer_build_s']:.2f} s, prepare {results['prepare_s']:.2f} s, "
              f"array layout {results['layout_s']:.2f} s")
        print(f"ours      one trial (median of {len(samples)} random thresholds): {ours_trial * 1000:7.1f} ms "
              f"(merge {results['merge_median_s'] * 1000:.1f} ms + score {results['score_median_s'] * 1000:.1f} ms)")
        print(f"per-note  one trial (cached merge_prepared + Scorer.final_score): "
              f"{results['per_note_trial_s'] * 1000:7.1f} ms (same numbers, checked)")
        print(f"reference one trial (median of {len(ref_samples)}): {reference_trial * 1000:7.1f} ms "
              f"(all-pairs merge {results['reference_merge_median_s'] * 1000:.1f} ms + "
              f"{results['reference_scoring']} {results['reference_score_median_s'] * 1000:.1f} ms)")
        print(f"speed-up: {results['speedup']:.1f}x")

        # -- full study --------------------------------------------------------------------------------
        evaluate = tuning.make_objective(prepared, scorer)
        if args.study_trials:
            storage = f"sqlite:///{Path(workdir) / 'study.db'}"
            objective_s = [0.0]

            def timed_evaluate(thresholds: Thresholds) -> float:
                started = time.perf_counter()
                value = evaluate(thresholds)
                objective_s[0] += time.perf_counter() - started
                return value

            run = tuning.tune(timed_evaluate, args.study_trials, storage, "bench", seed=args.seed, progress=True)
            results.update(study_objective_s=objective_s[0], study_optuna_and_storage_s=run.seconds - objective_s[0])
            results.update(study_trials=args.study_trials, study_s=run.seconds,
                           study_ms_per_trial=run.seconds / args.study_trials * 1000,
                           study_best=run.study.best_value, study_default=run.study.trials[0].value,
                           study_best_thresholds=run.best_thresholds.as_dict())
            print(f"TPE study, {args.study_trials} trials with SQLite storage: {run.seconds:.1f} s "
                  f"({results['study_ms_per_trial']:.1f} ms/trial: merge+score {objective_s[0]:.1f} s, "
                  f"Optuna sampling+storage {results['study_optuna_and_storage_s']:.1f} s); "
                  f"defaults {results['study_default']:.4f} -> best {results['study_best']:.4f}")

        # -- CV gap ---------------------------------------------------------------------------------------
        if args.cv:
            make_scorer = tuning.scorer_factory(str(paths.gold_dir), str(paths.raw_text_dir), str(paths.stats_csv), workdir)
            started = time.perf_counter()
            in_sample = tuning.tune(evaluate, args.cv_trials, seed=args.seed, progress=False).study.best_value
            cv = tuning.cross_validate(prepared, make_scorer, args.cv, args.cv_trials, args.seed, progress=False)
            results["cv"] = {key: cv[key] for key in ("k", "n_trials_per_fold", "mean_train_score", "mean_held_out_score",
                                                      "mean_held_out_default_score")}
            results["cv"].update(in_sample_same_trials=in_sample, gap=in_sample - cv["mean_held_out_score"],
                                 seconds=time.perf_counter() - started)
            print(f"{args.cv}-fold CV ({args.cv_trials} trials each): held-out tuned {cv['mean_held_out_score']:.4f}, "
                  f"held-out defaults {cv['mean_held_out_default_score']:.4f}, in-sample tuned {in_sample:.4f} "
                  f"(gap {in_sample - cv['mean_held_out_score']:+.4f}), mean train-fold best {cv['mean_train_score']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
