"""Entropy threshold for pseudo-labels: explore it on validation, then select and mix (SPEC section 4).

Published: Model 1 tags the assigned pool candidates; outputs whose entropy (mean negative log-probability
of the generated tokens, ``scripts/inference.py``) is at or below the 10% quantile of the pool's
entropies join the training set.

``explore`` checks that low entropy means good output: on Model 1's validation inference CSV it scores
each note with the official scorer (per-note base score), reports the Spearman correlation between
entropy and per-note score, the scores of entropy-quantile bins, and how many pool rows each candidate
quantile would keep; ``--plot`` draws both.

``select`` keeps the pool rows with entropy <= the ``--threshold`` quantile (linear interpolation,
pandas' default; rows without an entropy never pass), turns each output into a training row and appends
them to the train CSV. The training row is rebuilt from the spans that ``utils.pred_to_offset`` locates
in the exact note text, through the same writer as the gold rows (``utils.gt_to_tag.gold_row``): its
``gold_span`` is the exact note with well-formed tags (think blocks, text drift and unpaired tags of
the raw output are gone) and its ``gold_offsets`` are those spans.

Usage::

    python -m pseudolabels.dynamic_threshold explore --val_predictions outputs/model1/val_predictions.csv \\
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text --pool_predictions work/pseudo_predictions.csv \\
        --report work/threshold_report.json --plot work/threshold.png
    python -m pseudolabels.dynamic_threshold select --pool_predictions work/pseudo_predictions.csv \\
        --train_csv data/tagged/train.csv --threshold 0.10 --output data/tagged/train_pseudo.csv
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import math
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utils.corpus import Annotation
from utils.fileio import InputError, write_json_atomic, report_input_error

PREDICTION_COLUMNS = ("file_id", "raw_text", "predicted", "entropy")
COMMANDS = ("explore", "select")


@dataclass
class ExploreArguments:
    """Flags of ``dynamic_threshold.py explore``."""

    val_predictions: str = field(default="outputs/model1/val_predictions.csv", metadata={"help": "Inference CSV on validation."})
    gold_dir: str = field(default="MedDec/data", metadata={"help": "MedDec data/ (gold of the validation notes)."})
    raw_text_dir: str = field(default="MedDec/raw_text", metadata={"help": "MedDec raw_text/ (texts as scored)."})
    pool_predictions: str | None = field(default=None, metadata={"help": "Inference CSV on the pool candidates."})
    bins: int = field(default=5, metadata={"help": "Entropy quantile bins of the validation notes."})
    quantiles: list[float] = field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.5, 1.0], metadata={"help": "Candidate thresholds (quantiles)."}
    )
    report: str = field(default="work/threshold_report.json", metadata={"help": "JSON report."})
    plot: str | None = field(default="work/threshold_explore.png", metadata={"help": "PNG plot ('' for none)."})


@dataclass
class SelectArguments:
    """Flags of ``dynamic_threshold.py select`` (defaults = the published run)."""

    pool_predictions: str = field(default="work/pseudo_predictions.csv", metadata={"help": "Inference CSV on the pool."})
    train_csv: str = field(default="data/tagged/train.csv", metadata={"help": "gt_to_tag train CSV to mix with."})
    threshold: float = field(default=0.10, metadata={"help": "Keep entropy <= this quantile of the pool (0.10 = 10%%)."})
    output: str = field(default="data/tagged/train_pseudo.csv", metadata={"help": "Mixed training CSV."})
    min_spans: int = field(default=0, metadata={"help": "Also drop selected rows with fewer located spans."})
    drop_truncated: bool = field(default=False, metadata={"help": "Also drop outputs that hit the token budget."})


# ------------------------------------------------------------------------------------------------ reading


def read_predictions_csv(path: str | Path) -> "pd.DataFrame":  # noqa: F821
    """An inference CSV: exact strings, plus a float ``entropy`` (NaN where missing)."""
    from utils.gt_to_tag import read_csv_strings

    frame = read_csv_strings(path, PREDICTION_COLUMNS)
    entropy = []
    for row, value in enumerate(frame["entropy"], start=1):
        try:
            entropy.append(float(value) if value.strip() else math.nan)
        except ValueError:
            raise InputError(path, f"row {row}", f"field 'entropy': expected a number, got {value!r}") from None
    frame["entropy"] = entropy
    return frame


def entropy_threshold(entropies: Sequence[float], quantile: float) -> float:
    """The ``quantile`` of the finite entropies (linear interpolation); NaN when there are none."""
    if not 0.0 <= quantile <= 1.0:
        raise InputError("--threshold", "", f"expected a quantile between 0 and 1, got {quantile}")
    values = np.asarray([e for e in entropies if np.isfinite(e)], dtype=float)
    return float(np.quantile(values, quantile)) if values.size else math.nan


def keep_mask(entropies: Sequence[float], quantile: float) -> np.ndarray:
    """Rows at or below the threshold; NaN entropies never pass."""
    values = np.asarray(entropies, dtype=float)
    threshold = entropy_threshold(values, quantile)
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values <= threshold)


# ------------------------------------------------------------------------------------------------ explore


def located_predictions(frame: "pd.DataFrame") -> dict[str, list]:  # noqa: F821
    from utils.pred_to_offset import outputs_to_predictions

    predictions, _ = outputs_to_predictions(zip(frame["file_id"], frame["raw_text"], frame["predicted"]))
    return predictions


def explore(args: ExploreArguments) -> dict[str, Any]:
    """Per-note scores vs entropy on validation, bin scores, Spearman rho, pool counts per quantile."""
    from scipy.stats import spearmanr

    from utils.metric import Scorer, load_official_texts, read_gold_dir_official_order
    from utils.metric.punkt import require_punkt

    require_punkt()  # the official token F1 needs NLTK's punkt_tab: say so before any work
    val = read_predictions_csv(args.val_predictions)
    gold = read_gold_dir_official_order(args.gold_dir)
    missing = [i for i in val["file_id"] if i not in gold]
    if missing:
        raise InputError(args.val_predictions, "", f"no gold for note(s) {', '.join(missing[:5])} in {args.gold_dir}")
    ids = val["file_id"].tolist()
    texts = load_official_texts(args.raw_text_dir, ids)
    predictions = located_predictions(val)
    per_note = [Scorer({i: gold[i]}, {i: texts[i]}).base_score({i: predictions[i]}) for i in ids]
    entropy = val["entropy"].to_numpy(dtype=float)
    finite = np.isfinite(entropy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: rho is undefined and reported as null
        rho, p_value = spearmanr(entropy[finite], np.asarray(per_note)[finite]) if finite.sum() > 2 else (math.nan, math.nan)

    bins = []
    if finite.any():
        edges = np.quantile(entropy[finite], np.linspace(0, 1, args.bins + 1))
        which = np.clip(np.searchsorted(edges, entropy, side="right") - 1, 0, args.bins - 1)
        for b in range(args.bins):
            members = [i for i, w, f in zip(ids, which, finite) if f and w == b]
            if not members:
                continue
            report = Scorer({i: gold[i] for i in members}, texts).score({i: predictions[i] for i in members})
            bins.append({"bin": b, "entropy_from": float(edges[b]), "entropy_to": float(edges[b + 1]),
                         "notes": len(members), "span_f1": report.span.f1, "token_f1": report.token_f1, "base": report.base})

    pool_counts = []
    pool_entropy = None
    if args.pool_predictions:
        pool_entropy = read_predictions_csv(args.pool_predictions)["entropy"].to_numpy(dtype=float)
        for q in args.quantiles:
            pool_counts.append({"quantile": q, "threshold": entropy_threshold(pool_entropy, q),
                                "kept": int(keep_mask(pool_entropy, q).sum()), "pool": int(pool_entropy.size)})
    result = {
        "val_notes": len(ids),
        "spearman_rho": None if math.isnan(rho) else float(rho),
        "spearman_p": None if math.isnan(p_value) else float(p_value),
        "per_note": [{"file_id": i, "entropy": None if not f else float(e), "base": s}
                     for i, e, f, s in zip(ids, entropy, finite, per_note)],
        "bins": bins,
        "pool": pool_counts,
    }
    write_json_atomic(args.report, result)
    if args.plot:
        draw_plot(args.plot, entropy, np.asarray(per_note), pool_entropy, pool_counts)
    return result


def draw_plot(path: str, entropy: np.ndarray, scores: np.ndarray, pool_entropy: np.ndarray | None, pool_counts: list[dict]) -> None:
    """Left: validation entropy vs per-note base score. Right: pool entropies with the candidate thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.fileio import atomic_open

    fig, axes = plt.subplots(1, 2 if pool_entropy is not None else 1, figsize=(11 if pool_entropy is not None else 5.5, 4))
    axes = np.atleast_1d(axes)
    axes[0].scatter(entropy, scores, s=14)
    axes[0].set(xlabel="entropy (mean -log p)", ylabel="per-note base score", title="validation")
    if pool_entropy is not None:
        finite = pool_entropy[np.isfinite(pool_entropy)]
        axes[1].hist(finite, bins=40)
        for row in pool_counts:
            if np.isfinite(row["threshold"]):
                axes[1].axvline(row["threshold"], color="red", linewidth=0.8)
                axes[1].text(row["threshold"], axes[1].get_ylim()[1] * 0.95, f"q{row['quantile']:g}", rotation=90, fontsize=7)
        axes[1].set(xlabel="entropy", ylabel="pool outputs", title="pool")
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- select


@dataclass
class SelectSummary:
    pool: int
    threshold: float
    selected: int
    dropped_truncated: int
    dropped_few_spans: int
    train: int
    written: int


def pseudo_label_rows(frame: "pd.DataFrame") -> tuple[list[dict[str, str]], list[int]]:  # noqa: F821
    """Training rows (file_id, raw_text, gold_span, gold_offsets) from model outputs, and span counts."""
    from utils.gt_to_tag import gold_row
    from utils.pred_to_offset import locate_spans

    rows, counts = [], []
    for file_id, text, output in zip(frame["file_id"], frame["raw_text"], frame["predicted"]):
        spans = locate_spans(text, output).spans
        row, _ = gold_row(file_id, text, [Annotation(s.start, s.end, s.category) for s in spans])
        rows.append(row)
        counts.append(len(spans))
    return rows, counts


def select(args: SelectArguments) -> SelectSummary:
    """Keep the low-entropy pool outputs, convert them and write train + pseudo-labels atomically."""
    from utils.gt_to_tag import COLUMNS, read_tagged_csv, write_tagged_csv

    pool = read_predictions_csv(args.pool_predictions)
    train = read_tagged_csv(args.train_csv)
    clash = sorted(set(train["file_id"]) & set(pool["file_id"]))
    if clash:
        raise InputError(args.pool_predictions, "", f"note(s) {', '.join(clash[:5])} are also in the train CSV")
    threshold = entropy_threshold(pool["entropy"], args.threshold)
    mask = keep_mask(pool["entropy"], args.threshold)
    dropped_truncated = 0
    if args.drop_truncated and "truncated" in pool.columns:
        truncated = pool["truncated"].str.strip().str.lower().isin(("true", "1")).to_numpy()
        dropped_truncated = int((mask & truncated).sum())
        mask &= ~truncated
    rows, span_counts = pseudo_label_rows(pool[mask])
    kept = [r for r, n in zip(rows, span_counts) if n >= args.min_spans]
    mixed = [{c: record[c] for c in COLUMNS} for record in train.to_dict("records")] + kept
    write_tagged_csv(args.output, mixed)
    return SelectSummary(len(pool), threshold, int(mask.sum()) + dropped_truncated, dropped_truncated,
                         len(rows) - len(kept), len(train), len(mixed))


# ---------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    from trl import TrlParser

    from utils.metric.punkt import PunktMissingError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        asked = argv[:1] in (["-h"], ["--help"])
        print(f"usage: dynamic_threshold.py {{{','.join(COMMANDS)}}} [flags]  (add --help after a command)",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    command, rest = argv[0], argv[1:]
    (args,) = TrlParser(ExploreArguments if command == "explore" else SelectArguments, prog=f"dynamic_threshold.py {command}").parse_args_and_config(rest)
    try:
        if command == "explore":
            result = explore(args)
            print(f"{result['val_notes']} validation notes; Spearman rho(entropy, per-note base) = {result['spearman_rho']}")
            for b in result["bins"]:
                print(f"  entropy {b['entropy_from']:.4f}-{b['entropy_to']:.4f}: {b['notes']} notes, base {b['base']:.4f}")
            for p in result["pool"]:
                print(f"  pool quantile {p['quantile']:g}: threshold {p['threshold']:.4f}, keeps {p['kept']}/{p['pool']}")
            print(f"wrote {args.report}" + (f" and {args.plot}" if args.plot else ""))
        else:
            summary = select(args)
            print(", ".join(f"{k}: {v}" for k, v in asdict(summary).items()))
            print(f"wrote {args.output}")
    except (InputError, PunktMissingError) as err:
        return report_input_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
