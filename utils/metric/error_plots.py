"""PNG plots of an error analysis (:mod:`utils.metric.errors`): the category-confusion matrix and the histogram of
boundary offsets. Counts only, no note text. Drawn on a bare matplotlib ``Figure`` (no pyplot state, no display)
and written atomically."""

from __future__ import annotations

import os

import numpy as np

from utils.categories import CATEGORY_IDS, ID_TO_TAG
from utils.fileio import atomic_open
from utils.metric.errors import ErrorSummary

OFFSET_LIMIT = 30  # offsets beyond +-30 characters are gathered in the outermost bars


def _save(figure, path: str | os.PathLike[str]) -> None:
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")


def plot_confusion(summary: ErrorSummary, path: str | os.PathLike[str], title: str) -> None:
    """Rows: gold category (and 'none' = spurious predicted keys); columns: what the system gave (and 'none' =
    missed). Colour: share of the row; text: the count."""
    from matplotlib.figure import Figure

    labels = [*(ID_TO_TAG[c] for c in CATEGORY_IDS), "none"]
    order = [*CATEGORY_IDS, 0]  # categories first, 'none' last
    matrix = np.array(summary.confusion)[np.ix_(order, order)]
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(8.5, 7.5))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(order)):
        for j in range(len(order)):
            if matrix[i, j]:
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if shares[i, j] > 0.6 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("category the system gave (none: missed)")
    axes.set_ylabel("gold category (none: spurious predicted spans)")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the row")
    _save(figure, path)


def plot_boundary_offsets(summary: ErrorSummary, path: str | os.PathLike[str], title: str) -> None:
    """Two histograms of boundary errors: predicted minus gold start, predicted minus gold end (characters)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.8))
    bins = np.arange(-OFFSET_LIMIT - 1.5, OFFSET_LIMIT + 2.5)
    for k, (name, values) in enumerate((("start", summary.start_offsets), ("end", summary.end_offsets))):
        axes = figure.add_subplot(1, 2, k + 1)
        clipped = np.clip(np.array(values, dtype=float), -OFFSET_LIMIT - 1, OFFSET_LIMIT + 1)
        axes.hist(clipped, bins=bins, color="#4c72b0" if name == "start" else "#dd8452")
        axes.axvline(0, color="black", linewidth=0.8)
        axes.set_xlim(bins[0], bins[-1])
        axes.set_xlabel(f"predicted - gold {name} (characters; outer bars: beyond +-{OFFSET_LIMIT})")
        axes.set_ylabel("boundary errors")
        axes.set_title(f"{name}: {len(values)} boundary errors")
    figure.suptitle(title)
    _save(figure, path)


__all__ = ["OFFSET_LIMIT", "plot_boundary_offsets", "plot_confusion"]
