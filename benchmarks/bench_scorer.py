"""Benchmark: our scorer (utils/metric/) against the official MedDec evaluate.py on the same inputs.

Generates the 53-note synthetic validation set (or takes a MedDec-layout folder), builds several
prediction sets from its gold (exact, shifted boundaries, swapped categories, dropped/added spans,
reordered), and reports:
- with --official PATH (a local copy of the official evaluate.py, e.g. from
  ``git -C MedDec show f4374cd:evaluate.py > /tmp/official_evaluate.py``): both results, which must be
  equal, and the time ratio of a full report (official main() vs Scorer.from_files + score, in-process);
- the re-scoring time of a new prediction set against fixed gold (median over --repeats), cold
  (spans never seen: refinement included) and warm (refinements cached, as when tuning an ensemble).

    python benchmarks/bench_scorer.py --official /tmp/official_evaluate.py
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from utils.meddec.corpus import Annotation, MedDecPaths, read_gold_dir, read_split
from utils.metric.rules import DEFAULT_SCORER, SCORER_HELP, SCORER_REFERENCES, SCORERS
from utils.paths import load_module_from_path
from utils.meddec.predictions import Predictions, Span, write_predictions

#: The synthetic validation set of the benchmark and of the scorer's golden fixtures.
SYNTHETIC_VAL = dict(seed=0, n_train=0, n_val=53, n_test=0, n_unlabeled=0, mean_chars=9000, mean_spans=160)
PREDICTION_SEED = 2026


def generate_synthetic_val(out_dir: str | Path) -> MedDecPaths:
    """The 53-note synthetic val set (dataset.synthetic), written in the MedDec layout."""
    from dataset.synthetic import generate_corpus

    info = generate_corpus(out_dir, **SYNTHETIC_VAL)
    return info.paths


def _shift(rng: random.Random, spans: list[Span]) -> list[Span]:
    return [Span(s + rng.randint(-3, 3), e + rng.randint(-3, 3), c) if rng.random() < 0.5 else Span(s, e, c)
            for s, e, c in spans]


def _swap(rng: random.Random, spans: list[Span]) -> list[Span]:
    return [Span(s, e, rng.choice([x for x in range(1, 10) if x != c])) if rng.random() < 0.2 else Span(s, e, c)
            for s, e, c in spans]


def _drop_add(rng: random.Random, spans: list[Span], length: int) -> list[Span]:
    kept = [span for span in spans if rng.random() >= 0.25]
    for _ in range(max(1, len(spans) // 10)):
        start = rng.randrange(max(1, length))
        kept.insert(rng.randrange(len(kept) + 1), Span(start, start + rng.randint(1, 60), rng.randint(1, 9)))
    return kept


def _reorder(rng: random.Random, spans: list[Span]) -> list[Span]:
    spans = list(spans)
    rng.shuffle(spans)
    return spans


def prediction_sets(
    gold: Mapping[str, Sequence[Annotation]], texts: Mapping[str, str], seed: int = PREDICTION_SEED
) -> dict[str, Predictions]:
    """Named prediction sets derived from gold, deterministic in ``seed``.

    Gold spans keep their list order (out-of-scope ones become category 0, ignored as officially).
    ``mixed`` combines every perturbation, empties a few notes' lists and omits one note.
    """
    rng = random.Random(seed)
    exact = {note_id: [Span(a.start, a.end, a.category) for a in anns] for note_id, anns in gold.items()}
    sets: dict[str, Predictions] = {"gold": exact}
    transforms: dict[str, Callable[[str, list[Span]], list[Span]]] = {
        "shifted": lambda _, spans: _shift(rng, spans),
        "swapped": lambda _, spans: _swap(rng, spans),
        "dropped_added": lambda note_id, spans: _drop_add(rng, spans, len(texts[note_id])),
        "reordered": lambda _, spans: _reorder(rng, spans),
        "mixed": lambda note_id, spans: _reorder(
            rng, _swap(rng, _shift(rng, _drop_add(rng, spans, len(texts[note_id]))))
        ),
    }
    for name, transform in transforms.items():
        sets[name] = {note_id: transform(note_id, spans) for note_id, spans in exact.items()}
    mixed = sets["mixed"]
    ids = list(mixed)
    for note_id in ids[:3]:
        mixed[note_id] = []
    del mixed[ids[-1]]
    return sets


def _official_main(official, args: list[str]) -> dict:
    saved = sys.argv
    sys.argv = ["evaluate.py", *args]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return official.main()
    finally:
        sys.argv = saved


def _official_view(report_dict: dict) -> dict:
    """Our JSON restricted to the official keys."""
    view = {k: v for k, v in report_dict.items() if k not in ("per_category", "scorer")}
    view["span_f1"] = {k: report_dict["span_f1"][k] for k in ("precision", "recall", "f1")}
    return view


def run_benchmark(paths: MedDecPaths, official_path: str | None, repeats: int, work_dir: Path,
                  rule: str = DEFAULT_SCORER) -> int:
    from utils.metric import Scorer, load_official_texts
    from utils.metric.punkt import require_punkt

    require_punkt()
    split = paths.split("val")
    ids = read_split(split)
    gold = read_gold_dir(paths.gold_dir, ids)
    texts = load_official_texts(paths.raw_text_dir, ids)
    sets = prediction_sets(gold, texts)
    n_spans = sum(len(v) for v in gold.values())
    n_chars = sum(len(t) for t in texts.values())
    print(f"{len(ids)} notes, {n_chars / len(ids):.0f} chars and {n_spans / len(ids):.0f} gold spans per note; "
          f"{len(sets)} prediction sets; scorer: {rule} ({SCORER_REFERENCES[rule]})")
    official = load_module_from_path(official_path, "lamar_bench_official_evaluate") if official_path else None
    files = dict(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir, split_file=split, stats_csv=paths.stats_csv,
                 rule=rule)
    mismatches = 0
    ratios, official_times = [], []
    for name, predictions in sets.items():
        pred_path = work_dir / f"{name}.json"
        write_predictions(pred_path, predictions)
        start = time.perf_counter()
        scorer = Scorer.from_files(**files, extra_ids=list(predictions))
        ours = scorer.score(predictions)
        t_ours = time.perf_counter() - start
        line = f"{name:14s} ours: final={ours.final!r} base={ours.base!r} ({t_ours:.2f} s)"
        if official is not None:
            args = ["--gold_dir", str(paths.gold_dir), "--raw_text_dir", str(paths.raw_text_dir), "--predictions",
                    str(pred_path), "--split_file", str(split), "--stats_csv", str(paths.stats_csv)]
            start = time.perf_counter()
            theirs = _official_main(official, args)
            t_official = time.perf_counter() - start
            equal = _official_view(ours.to_official_dict()) == theirs
            mismatches += not equal
            ratios.append(t_official / t_ours)
            official_times.append(t_official)
            line += (f"\n{'':14s} official: final={theirs['shared_task']['final_score']!r} ({t_official:.2f} s)"
                     f"  {'EQUAL' if equal else 'DIFFERENT'}  speed-up x{t_official / t_ours:.0f}")
        print(line)
    if ratios:
        print("full report (load + tokenise + score) speed-up over the official script: "
              f"median x{statistics.median(ratios):.0f}")

    scorer = Scorer.from_files(**files)
    full = [sets[name] for name in sets]
    warm, cold, report = [], [], []
    for i in range(repeats):
        fresh = prediction_sets(gold, texts, seed=PREDICTION_SEED + 1 + i)["mixed"]  # spans never seen before
        start = time.perf_counter()
        scorer.final_score(fresh)
        cold.append(time.perf_counter() - start)
        predictions = full[i % len(full)]
        start = time.perf_counter()
        scorer.final_score(predictions)
        warm.append(time.perf_counter() - start)
        start = time.perf_counter()
        scorer.score(predictions)
        report.append(time.perf_counter() - start)
    ms = lambda values: f"median {statistics.median(values) * 1e3:.1f} ms (min {min(values) * 1e3:.1f})"  # noqa: E731
    print(f"re-scoring one prediction set against fixed gold, {repeats} repeats:")
    print(f"  final_score, spans seen before (cached refinements): {ms(warm)}")
    print(f"  final_score, new spans (refinement included):        {ms(cold)}")
    print(f"  score (full report, cached refinements):             {ms(report)}")
    if official_times:
        ratio = statistics.median(official_times) / statistics.median(report)
        print(f"full report from a built Scorer vs the official script: x{ratio:.0f} faster")
    if official is not None and mismatches:
        print(f"{mismatches} prediction set(s) scored DIFFERENTLY from the official script")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", help="path to a local copy of the --scorer's evaluate.py (compares and times it)")
    parser.add_argument("--scorer", choices=SCORERS, default=DEFAULT_SCORER, help=SCORER_HELP)
    parser.add_argument("--data_root",
                        help="a MedDec-layout folder with splits/val.txt (default: generate the synthetic val set)")
    parser.add_argument("--repeats", type=int, default=20, help="re-scoring repeats for the medians")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_scorer.") as tmp:
        work = Path(tmp)
        paths = MedDecPaths(Path(args.data_root)) if args.data_root else generate_synthetic_val(work / "corpus")
        return run_benchmark(paths, args.official, args.repeats, work, args.scorer)


if __name__ == "__main__":
    sys.exit(main())
