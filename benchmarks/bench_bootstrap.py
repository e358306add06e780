"""Benchmark: bootstrap confidence intervals, vectorised (utils/metric/resampling.py) against naive resampling.

On the 53-note synthetic validation set of ``bench_scorer.py`` (val-sized notes: ~9,000 characters and ~160 gold
spans each) or a MedDec-layout folder, with the benchmark's "mixed" prediction set, one run prints:

- vectorised: ``bootstrap()`` with --resamples resamples (default 10,000; per-note results, per-category
  counts, every interval), median of --repeats runs, plus the end-to-end time of ``evaluate.py --bootstrap``'s
  work (load + tokenise + official report + bootstrap);
- naive, per resample with the per-note API: ``aggregate(scores.select(rows))`` on --naive resamples
  (default 300), extrapolated to --resamples; the vectorised statistics are checked equal on them;
- naive, re-scored from scratch: per resample a new ``Scorer`` over the drawn notes (duplicates renamed) and its
  report (tokenisation, refinement, scoring: what resampling with the official script alone costs), on
  --scratch resamples (default 3), extrapolated.

    NLTK_DATA=tests/fixtures/nltk_data python benchmarks/bench_bootstrap.py
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.smoke import parse_with_smoke
from utils.meddec.corpus import MedDecPaths, read_gold_dir, read_split, read_stats
from utils.paths import REPO_ROOT, load_module_from_path


def _rescore_from_scratch(gold: dict, texts: dict, stats: dict, predictions: dict, ids: Sequence[str],
                          rows: np.ndarray) -> float:
    """The final score of one resample computed by a fresh Scorer over the drawn notes (duplicates renamed
    ``<id>-dup<k>``: the official subgroup code reads the id up to '-', so each copy keeps its demographics)."""
    from utils.metric import Scorer

    names = [f"{ids[r]}-dup{k}" for k, r in enumerate(rows)]
    scorer = Scorer({n: gold[ids[r]] for n, r in zip(names, rows)}, {n: texts[ids[r]] for n, r in zip(names, rows)},
                    stats)
    return scorer.score({n: predictions.get(ids[r], []) for n, r in zip(names, rows)}).final


def run_benchmark(paths: MedDecPaths, n_resamples: int, n_naive: int, n_scratch: int, repeats: int) -> None:
    from utils.metric import Scorer, aggregate, load_official_texts
    from utils.metric.breakdown import category_note_counts
    from utils.metric.punkt import require_punkt
    from utils.metric.resampling import (
        bootstrap, draw_counts, note_columns, resample_rows, resampled_statistics, statistics as stats_of,
    )

    require_punkt()
    bench_scorer = load_module_from_path(REPO_ROOT / "benchmarks" / "bench_scorer.py", "lamar_bench_scorer")
    split = paths.split("val")
    ids = read_split(split)
    gold = read_gold_dir(paths.gold_dir, ids)
    texts = load_official_texts(paths.raw_text_dir, ids)
    predictions = bench_scorer.prediction_sets(gold, texts)["mixed"]
    n_chars = sum(len(t) for t in texts.values()) / len(ids)
    n_spans = sum(len(v) for v in gold.values()) / len(ids)
    print(f"{len(ids)} notes, {n_chars:.0f} characters and {n_spans:.0f} gold spans per note; prediction set 'mixed'")

    start = time.perf_counter()
    scorer = Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir, split_file=split,
                               stats_csv=paths.stats_csv)
    scorer.score(predictions)
    report = bootstrap(scorer, predictions, n_resamples, seed=0)
    end_to_end = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bootstrap(scorer, predictions, n_resamples, seed=0)
        times.append(time.perf_counter() - start)
    vectorised = statistics.median(times)
    final = report.headline["final"]
    print(f"final {final.estimate:.4f}, 95% interval [{final.low:.4f}, {final.high:.4f}]")

    scores = scorer.note_scores(predictions)
    columns = note_columns(scores, category_note_counts(scorer, predictions, scores.notes))
    start = time.perf_counter()
    resampled_statistics([columns], n_resamples, seed=0)
    matrix_only = time.perf_counter() - start
    rows = resample_rows(len(scores), n_naive, seed=1)
    vector_stats = stats_of(columns, draw_counts(rows, len(scores)))
    start = time.perf_counter()
    naive_final = [aggregate(scores.select(r)).final for r in rows]
    per_naive = (time.perf_counter() - start) / n_naive
    max_diff = float(np.max(np.abs(np.array(naive_final) - vector_stats["final"])))

    stats = read_stats(paths.stats_csv)
    scratch_rows = resample_rows(len(ids), n_scratch, seed=2)
    start = time.perf_counter()
    for r in scratch_rows:
        _rescore_from_scratch(gold, texts, stats, predictions, ids, r)
    per_scratch = (time.perf_counter() - start) / max(1, n_scratch)

    naive_total, scratch_total = per_naive * n_resamples, per_scratch * n_resamples
    print(f"\n{n_resamples:,} resamples of {len(scores)} notes:")
    print(f"  vectorised bootstrap (every interval, per category and subgroup): {vectorised:8.2f} s  "
          f"(median of {repeats}; min {min(times):.2f} s)")
    print(f"    of which drawing the resamples and the matrix products:           {matrix_only:8.2f} s")
    print(f"  end to end (load, tokenise, official report, bootstrap):          {end_to_end:8.2f} s")
    print(f"  naive aggregate(scores.select(rows)) per resample:                {naive_total:8.2f} s  "
          f"(estimated from {n_naive}: {per_naive * 1e3:.2f} ms each; final only)  x{naive_total / vectorised:.0f}")
    print(f"  naive re-score from scratch (new Scorer per resample):            {scratch_total:8.0f} s  "
          f"(estimated from {n_scratch}: {per_scratch:.2f} s each)  x{scratch_total / vectorised:,.0f}")
    print(f"vectorised vs aggregate() on the {n_naive} naive resamples: max |final difference| {max_diff:.1e} "
          f"(float summation order only)")


SMOKE_SIZES = {"resamples": 20, "naive": 5, "scratch": 1, "repeats": 1}  # --smoke


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root",
                        help="a MedDec-layout folder with splits/val.txt (default: the synthetic val set)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--naive", type=int, default=300, help="resamples timed with aggregate(select)")
    parser.add_argument("--scratch", type=int, default=3, help="resamples re-scored from scratch")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the vectorised bootstrap (median)")
    args = parse_with_smoke(parser, argv, SMOKE_SIZES)
    if args.data_root:
        run_benchmark(MedDecPaths(Path(args.data_root)), args.resamples, args.naive, args.scratch, args.repeats)
        return 0
    bench_scorer = load_module_from_path(REPO_ROOT / "benchmarks" / "bench_scorer.py", "lamar_bench_scorer")
    with tempfile.TemporaryDirectory() as tmp:
        paths = bench_scorer.generate_synthetic_val(Path(tmp) / "MedDec")
        run_benchmark(paths, args.resamples, args.naive, args.scratch, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
