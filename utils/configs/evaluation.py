"""Arguments of the evaluation tools beyond the official score: bootstrap intervals, paired comparison, error
analysis and the span viewer (``evaluate/{evaluate,compare,errors,viewer}.py``). Light: no deep-learning import.

The official flags of ``evaluate/evaluate.py`` stay in :class:`utils.configs.pipeline.EvaluateArguments`; the
bootstrap flags here are extra and change nothing when absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from utils.fileio import InputError
from utils.metric.rules import DEFAULT_SCORER, SCORER_HELP, SCORERS


def check_bootstrap_options(n_resamples: int, confidence: float, at_least: int = 0) -> None:
    """Resample counts and confidence levels that cannot give an interval, refused in one line."""
    if n_resamples < at_least:
        raise InputError.flag("--bootstrap", f"expected a number of resamples >= {at_least}, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise InputError.flag("--confidence", f"expected a level strictly between 0 and 1, got {confidence}")


@dataclass
class BootstrapArguments:
    """``evaluate/evaluate.py --bootstrap N``: percentile confidence intervals (off by default: official output)."""

    bootstrap: int = field(default=0, metadata={
        "help": "Resample the scored notes with replacement this many times (e.g. 10000) and report percentile "
                "confidence intervals after the official report and under 'bootstrap' in --output (0: off)."})
    seed: int = field(default=0, metadata={"help": "Seed of the resamples (the same seed gives the same intervals)."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals, in (0, 1)."})

    def __post_init__(self) -> None:
        check_bootstrap_options(self.bootstrap, self.confidence)


@dataclass
class SystemsArguments:
    """Several prediction sets scored on the same notes (the official input flags, with many predictions)."""

    predictions: list[str] = field(metadata={"help": "Prediction JSON files, one per system (compare.py: at least two)."})
    raw_text_dir: str = field(metadata={"help": "Directory containing raw text files (raw_text/)"})
    names: list[str] | None = field(default=None, metadata={
        "help": "A name per prediction file (default: the file names, with their folder when two are alike)."})
    gold_dir: str | None = field(default=None, metadata={"help": "Directory containing gold annotation files (data/)"})
    gold_file: str | None = field(default=None, metadata={"help": "Optional: specific gold file (overrides gold_dir)"})
    stats_csv: str | None = field(default=None, metadata={
        "help": "Optional: path to stats.csv (worst group and final score; without it the base score is compared)"})
    split_file: str | None = field(default=None, metadata={
        "help": "Optional: path to split file (e.g. splits/val.txt)"})
    scorer: str = field(default=DEFAULT_SCORER, metadata={"help": SCORER_HELP, "choices": list(SCORERS)})


@dataclass
class CompareArguments:
    """``evaluate/compare.py``: paired bootstrap comparison of two or more prediction sets."""

    bootstrap: int = field(default=10000, metadata={
        "help": "Paired resamples of the notes (the same for every system)."})
    seed: int = field(default=0, metadata={"help": "Seed of the resamples."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals, in (0, 1)."})
    against_first: bool = field(default=False, metadata={
        "help": "Compare the first system with each other one only (default: every pair)."})
    output: str | None = field(default=None, metadata={"help": "Optional: JSON file for the comparison."})

    def __post_init__(self) -> None:
        check_bootstrap_options(self.bootstrap, self.confidence, at_least=1)  # a comparison needs resamples


@dataclass
class ErrorArguments:
    """``evaluate/errors.py``: span error classes per category, a category-confusion matrix, boundary offsets."""

    output_dir: str = field(metadata={
        "help": "Folder for errors.json and, per system, <name>_confusion.png and <name>_boundary_offsets.png "
                "(counts only: no note text)."})


@dataclass
class ViewerArguments:
    """``evaluate/viewer.py``: one offline HTML file showing notes with gold and system spans."""

    output: str = field(metadata={
        "help": "The HTML file to write. It CONTAINS NOTE TEXT (PHI): write it only where such data may be kept; "
                "it loads nothing from the network and nothing is uploaded."})
    title: str = field(default="LAMAR span viewer", metadata={"help": "Title shown at the top of the page."})


__all__ = ["BootstrapArguments", "CompareArguments", "ErrorArguments", "SystemsArguments", "ViewerArguments"]
