"""Several named prediction sets scored against one gold set: names, reading, one scorer for all of them.

Shared by the multi-system tools (``evaluate/compare.py``, ``evaluate/errors.py``, ``evaluate/viewer.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from utils.fileio import InputError


def system_names(paths: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """One name per prediction file: ``names`` if given (one each, distinct), else the file stems, with their
    folder where two stems are alike (``model1/test_predictions``), else the whole path."""
    if names:
        if len(names) != len(paths):
            raise InputError.flag("--names", f"expected {len(paths)} names (one per --predictions file), "
                                  f"got {len(names)}")
        if len(set(names)) != len(names):
            raise InputError.flag("--names", "expected distinct names")
        return list(names)
    for candidates in ([Path(p).stem for p in paths], [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths],
                       [str(p) for p in paths]):
        if len(set(candidates)) == len(candidates):
            return candidates
    raise InputError.flag("--predictions", "the same file is given twice: give --names to tell them apart")


def read_systems(paths: Sequence[str], names: Sequence[str] | None = None,
                 at_least: int = 1) -> dict[str, dict[str, list[Any]]]:
    """Named prediction sets read with :func:`utils.meddec.predictions.read_predictions` (one-line errors)."""
    from utils.meddec.predictions import read_predictions

    if len(paths) < at_least:
        raise InputError.flag("--predictions",
                              f"expected at least {at_least} prediction files, got {len(paths)}")
    labels = system_names(paths, names)
    return {label: read_predictions(path) for label, path in zip(labels, paths)}


def scorer_for_systems(args: Any, systems: dict[str, dict[str, list[Any]]]) -> Any:
    """One :class:`utils.metric.Scorer` for every system (``args``: :class:`utils.configs.evaluation.SystemsArguments`),
    loaded as the official script loads its inputs; texts of notes any system predicted are read too. Inputs the
    official score accepts silently are warned about per system (:mod:`utils.metric.checks`)."""
    from utils.metric import Scorer

    if not args.gold_file and not args.gold_dir:
        raise InputError.flag("--gold_dir", "give --gold_dir (or --gold_file)")
    from utils.fileio import warn
    from utils.metric.checks import input_warnings, require_a_match

    extra = list(dict.fromkeys(name for predictions in systems.values() for name in predictions))
    scorer = Scorer.from_files(gold_dir=args.gold_dir, raw_text_dir=args.raw_text_dir, split_file=args.split_file,
                               stats_csv=args.stats_csv, gold_file=args.gold_file, extra_ids=extra, rule=args.scorer)
    for (name, predictions), path in zip(systems.items(), args.predictions):
        require_a_match(scorer, predictions, path)  # a set that predicts none of the notes is never ranked
    for name, predictions in systems.items():  # what the official score accepts silently, as evaluate.py says it
        for line in input_warnings(scorer, predictions):
            warn(f"{name}: {line}")
    return scorer


__all__ = ["read_systems", "scorer_for_systems", "system_names"]
