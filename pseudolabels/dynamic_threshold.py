"""Entropy threshold for pseudo-labels: explore it on validation, then select and mix (SPEC section 4).

Published: Model 1 tags the assigned pool candidates; outputs whose entropy (mean negative log-probability
of the generated tokens, ``scripts/inference.py``) is at or below the 10% quantile of the pool's
entropies join the training set.

``explore`` checks that low entropy means good output: on Model 1's validation inference CSV it scores
each note with the official scorer (per-note base score), reports the Spearman correlation between
entropy and per-note score, the scores of entropy-quantile bins, for each candidate quantile (published:
0.10 0.15 0.20 0.25 0.30 0.5 0.75) the validation notes at or below it with their mean per-note span and token
F1 (the published explorer's table), and how many pool rows each candidate quantile would keep; ``--plot``
draws both.

``select`` keeps the pool rows with entropy <= the ``--threshold`` quantile (linear interpolation,
pandas' default; rows without an entropy never pass), turns each output into a training row and appends
them to the train CSV. What the row trains on (``--pseudo_target``):

- ``nan`` (default, the published run): the published mix appended the inference rows as they were, so a
  pseudo row had no ``gold_span``; the published ``train_dft.py`` reads the CSV with pandas and formats the
  answer with ``str()``, so every pseudo row trained Model 3 to answer the string ``nan``. The row is written
  with exactly that answer (and empty ``gold_offsets``), with a one-line warning.
- ``raw``: Model 1's output verbatim (what the mix presumably meant); ``gold_offsets`` are its located spans.
  Empty outputs are left out (there is nothing to train on).
- ``located``: the row is rebuilt from the spans inference located in the exact note text (the ``spans``
  column), through the same writer as the gold rows (``utils.tagging.convert.gold_row``): its ``gold_span``
  is the exact note with well-formed tags (think blocks, text drift and unpaired tags of the raw output are
  gone) and its ``gold_offsets`` are those spans.

An output without generated tokens has no entropy of its own. The published inference gave it 0.0, so it is
always selected and pulls the quantile down (``--empty_output_entropy zero``, default); ``none`` leaves it
undefined, never selected. (vLLM refuses prompts longer than its context, so in the published run such
outputs could hardly occur; ``scripts/inference.py`` writes them for prompts that fill the context.)

Usage::

    python -m pseudolabels.dynamic_threshold explore --val_predictions outputs/model1/val_predictions.csv \\
        --gold_dir MedDec/data --raw_text_dir MedDec/raw_text --pool_predictions work/pseudo_candidates_model1.csv \\
        --report work/threshold_report.json --plot work/threshold.png
    python -m pseudolabels.dynamic_threshold select --pool_predictions work/pseudo_candidates_model1.csv \\
        --train_csv data/tagged/train.csv --threshold 0.10 --output data/tagged/train_mixed.csv
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import math
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import ExploreArguments, SelectArguments
from utils.fileio import InputError, check_output_path, report_input_error, warn, write_json_atomic
from utils.meddec.tables import TAGGED_COLUMNS, read_inference_table, read_tagged_table, write_tagged_table
from utils.tagging.convert import gold_row

COMMANDS = {"explore": ExploreArguments, "select": SelectArguments}


# ---------------------------------------------------------------------------------------------- threshold


def check_quantile(quantile: float, flag: str) -> None:
    """A threshold is a quantile of the pool's entropies: a number from 0 to 1."""
    if not 0.0 <= quantile <= 1.0:
        raise InputError(flag, "", f"expected a quantile between 0 and 1, got {quantile}")


def entropy_threshold(entropies: Sequence[float], quantile: float) -> float:
    """The ``quantile`` of the finite entropies (linear interpolation); NaN when there are none."""
    check_quantile(quantile, "--threshold")
    values = np.asarray([e for e in entropies if np.isfinite(e)], dtype=float)
    return float(np.quantile(values, quantile)) if values.size else math.nan


def keep_mask(entropies: Sequence[float], quantile: float) -> np.ndarray:
    """Rows at or below the threshold; NaN entropies never pass."""
    values = np.asarray(entropies, dtype=float)
    threshold = entropy_threshold(values, quantile)
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values <= threshold)


# ------------------------------------------------------------------------------------------------ explore


def explore(args: ExploreArguments) -> dict[str, Any]:
    """Per-note scores vs entropy on validation, bin scores, Spearman rho, pool counts per quantile."""
    from scipy.stats import spearmanr

    from utils.metric.punkt import require_punkt
    from utils.metric import Scorer, load_official_texts, read_gold_dir_official_order

    for path in (args.report, args.plot):
        if path:
            check_output_path(path)
    if args.bins < 1:
        raise InputError("--bins", "", f"expected at least 1 entropy bin, got {args.bins}")
    for quantile in args.quantiles:
        check_quantile(quantile, "--quantiles")
    require_punkt()  # the official token F1 needs NLTK's punkt_tab: say so before any work
    val = read_inference_table(args.val_predictions)
    gold = read_gold_dir_official_order(args.gold_dir)
    missing = [i for i in val["file_id"] if i not in gold]
    if missing:
        raise InputError(args.val_predictions, "", f"no gold for note(s) {', '.join(missing[:5])} in {args.gold_dir}")
    ids = val["file_id"].tolist()
    texts = load_official_texts(args.raw_text_dir, ids)
    predictions = dict(zip(val["file_id"], val["spans"]))
    reports = [Scorer({i: gold[i]}, {i: texts[i]}).score({i: predictions[i]}) for i in ids]
    per_note = [r.base for r in reports]
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

    val_quantiles = quantile_table(entropy, [r.span.f1 for r in reports], [r.token_f1 for r in reports], args.quantiles)
    pool_counts = []
    pool_entropy = None
    if args.pool_predictions:
        pool_entropy = read_inference_table(args.pool_predictions)["entropy"].to_numpy(dtype=float)
        for q in args.quantiles:
            pool_counts.append({"quantile": q, "threshold": entropy_threshold(pool_entropy, q),
                                "kept": int(keep_mask(pool_entropy, q).sum()), "pool": int(pool_entropy.size)})
    result = {
        "val_notes": len(ids),
        "spearman_rho": None if math.isnan(rho) else float(rho),
        "spearman_p": None if math.isnan(p_value) else float(p_value),
        "per_note": [{"file_id": i, "entropy": None if not f else float(e), "base": r.base, "span_f1": r.span.f1,
                      "token_f1": r.token_f1} for i, e, f, r in zip(ids, entropy, finite, reports)],
        "bins": bins,
        "val_quantiles": val_quantiles,
        "pool": pool_counts,
    }
    write_json_atomic(args.report, result)
    if args.plot:
        draw_plot(args.plot, entropy, np.asarray(per_note), pool_entropy, pool_counts)
    return result


def quantile_table(entropy: np.ndarray, span_f1: Sequence[float], token_f1: Sequence[float],
                   quantiles: Sequence[float]) -> list[dict[str, Any]]:
    """Per candidate quantile of the validation entropies (the published explorer's table): the notes at or below
    it and their mean per-note span and token F1, base = the mean of the two."""
    rows = []
    for q in quantiles:
        threshold = entropy_threshold(entropy, q)
        kept = keep_mask(entropy, q)
        if not kept.any():  # no finite entropy at all
            rows.append({"quantile": q, "threshold": None, "kept": 0, "kept_frac": 0.0, "mean_span_f1": None,
                         "mean_token_f1": None, "base": None})
            continue
        span, token = float(np.mean(np.asarray(span_f1)[kept])), float(np.mean(np.asarray(token_f1)[kept]))
        rows.append({"quantile": q, "threshold": threshold, "kept": int(kept.sum()), "kept_frac": float(kept.mean()),
                     "mean_span_f1": span, "mean_token_f1": token, "base": (span + token) / 2})
    return rows


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


PUBLISHED_PSEUDO_ANSWER = "nan"  # str(float("nan")): what the published train_dft.py made of an empty gold_span


@dataclass
class SelectSummary:
    pool: int
    threshold: float
    selected: int
    dropped_truncated: int
    dropped_few_spans: int
    train: int
    written: int
    empty_outputs_selected: int = 0
    dropped_empty: int = 0


def pseudo_label_rows(frame: "pd.DataFrame", target: str = "located") -> list[dict[str, str]]:  # noqa: F821
    """Training rows (file_id, raw_text, gold_span, gold_offsets) of the selected outputs (``target``: see the
    module docstring)."""
    rows = []
    for file_id, text, spans, output in zip(frame["file_id"], frame["raw_text"], frame["spans"], frame["predicted"]):
        if target == "nan":
            rows.append({"file_id": file_id, "raw_text": text, "gold_span": PUBLISHED_PSEUDO_ANSWER, "gold_offsets": ""})
        elif target == "raw":
            rows.append({"file_id": file_id, "raw_text": text, "gold_span": output,
                         "gold_offsets": gold_row(file_id, text, spans)[0]["gold_offsets"]})
        else:
            rows.append(gold_row(file_id, text, spans)[0])
    return rows


def selection_entropies(pool: "pd.DataFrame", path: str, empty_output_entropy: str) -> np.ndarray:  # noqa: F821
    """The entropies the quantile is taken over: with ``zero``, an output without tokens counts as 0.0 (published)."""
    entropy = pool["entropy"].to_numpy(dtype=float).copy()
    if empty_output_entropy == "zero":
        for row, value in enumerate(pool["num_tokens"], start=1):
            try:
                tokens = int(value)
            except (TypeError, ValueError):
                raise InputError(path, f"row {row}", f"field 'num_tokens': expected a whole number, got {value!r}") from None
            if tokens == 0 and not np.isfinite(entropy[row - 1]):
                entropy[row - 1] = 0.0
    return entropy


def select(args: SelectArguments) -> SelectSummary:
    """Keep the low-entropy pool outputs, convert them and write train + pseudo-labels atomically."""
    check_output_path(args.output)
    check_quantile(args.threshold, "--threshold")
    if args.min_spans < 0:
        raise InputError("--min_spans", "", f"expected 0 or more, got {args.min_spans}")
    pool = read_inference_table(args.pool_predictions)
    train = read_tagged_table(args.train_csv)
    clash = sorted(set(train["file_id"]) & set(pool["file_id"]))
    if clash:
        raise InputError(args.pool_predictions, "", f"note(s) {', '.join(clash[:5])} are also in the train CSV")
    entropy = selection_entropies(pool, args.pool_predictions, args.empty_output_entropy)
    threshold = entropy_threshold(entropy, args.threshold)
    mask = keep_mask(entropy, args.threshold)
    empty_selected = int((mask & ~np.isfinite(pool["entropy"].to_numpy(dtype=float))).sum())
    dropped_truncated = 0
    if args.drop_truncated:
        truncated = pool["truncated"].to_numpy(dtype=bool)
        dropped_truncated = int((mask & truncated).sum())
        mask &= ~truncated
    selected = pool[mask]
    enough = selected[[len(spans) >= args.min_spans for spans in selected["spans"]]]
    usable = enough[[bool(output) for output in enough["predicted"]]] if args.pseudo_target == "raw" else enough
    if args.pseudo_target == "nan" and len(usable):
        warn(f"{len(usable)} pseudo-label row(s) train on the answer '{PUBLISHED_PSEUDO_ANSWER}', as in the published "
             f"run (its mix left gold_span empty); --pseudo_target located trains on the located spans")
    mixed = [{c: record[c] for c in TAGGED_COLUMNS} for record in train.to_dict("records")]
    mixed += pseudo_label_rows(usable, args.pseudo_target)
    write_tagged_table(args.output, mixed)
    return SelectSummary(len(pool), threshold, int(mask.sum()) + dropped_truncated, dropped_truncated,
                         len(selected) - len(enough), len(train), len(mixed), empty_selected, len(enough) - len(usable))


# ---------------------------------------------------------------------------------------------------- CLI


def run_command(command: str, args: Any) -> None:
    """Run ``explore`` or ``select`` and print what it found or wrote."""
    if command == "explore":
        result = explore(args)
        print(f"{result['val_notes']} validation notes; Spearman rho(entropy, per-note base) = {result['spearman_rho']}")
        for b in result["bins"]:
            print(f"  entropy {b['entropy_from']:.4f}-{b['entropy_to']:.4f}: {b['notes']} notes, base {b['base']:.4f}")
        for q in result["val_quantiles"]:
            if q["kept"]:
                print(f"  val quantile {q['quantile']:g}: threshold {q['threshold']:.4f}, keeps {q['kept']} notes, mean span "
                      f"F1 {q['mean_span_f1']:.4f}, token F1 {q['mean_token_f1']:.4f}, base {q['base']:.4f}")
        for p in result["pool"]:
            print(f"  pool quantile {p['quantile']:g}: threshold {p['threshold']:.4f}, keeps {p['kept']}/{p['pool']}")
        print(f"wrote {args.report}" + (f" and {args.plot}" if args.plot else ""))
    else:
        summary = select(args)
        print(", ".join(f"{k}: {v}" for k, v in asdict(summary).items()))
        print(f"wrote {args.output}")


def main(argv: Sequence[str] | None = None) -> int:
    from utils.metric.punkt import PunktMissingError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: dynamic_threshold.py {{{','.join(COMMANDS)}}} [flags]  (add --help after a command)")
        return 0
    if not argv or argv[0] not in COMMANDS:
        return report_input_error(InputError("<command line>", argv[0] if argv else "",
                                             f"expected a command, one of {', '.join(COMMANDS)} (add --help after it)"))
    command, rest = argv[0], argv[1:]

    def body() -> None:
        (args,) = parse_args(COMMANDS[command], argv=rest, prog=f"dynamic_threshold.py {command}")
        run_command(command, args)

    return run_cli(body, extra_errors=(PunktMissingError,))


if __name__ == "__main__":
    sys.exit(main())
