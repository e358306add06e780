"""What GRPO changed where it counts: the published rewards of greedy outputs on notes GRPO never trained on.

The rewards GRPO logs per step are those of its own sampled rollouts on training notes, which can rise or
fall with the luck of the samples. The held-out figure compares two models on the same notes with the same
deterministic decoding: each model's greedy output (``scripts/inference.py``'s ``predicted`` column) is scored
with the reward functions GRPO optimised (``utils.rewards``), per note, and averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.fileio import InputError
from utils.metric.resampling import Interval, percentile_interval, resample_rows
from utils.rewards import reward_functions

PUBLISHED_REWARD_NAMES = ("fidelity", "token_f1", "exact_f1")


@dataclass(frozen=True)
class HeldOutReward:
    """Mean reward of one model's greedy outputs: per reward function, and the mean of those (each in [0, 1])."""

    n_notes: int
    per_reward: dict[str, float]
    mean: float
    per_note: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        return {"n_notes": self.n_notes, "mean": self.mean, "per_reward": self.per_reward, "per_note": self.per_note}


def read_outputs(paths: Sequence[Path]) -> dict[str, str]:
    """file_id -> greedy output, from inference prediction CSVs (``file_id``, ``predicted``)."""
    from utils.meddec.tables import read_csv_strings

    outputs: dict[str, str] = {}
    for path in paths:
        frame = read_csv_strings(path, ("file_id", "predicted"))
        outputs.update(zip(frame["file_id"], frame["predicted"]))
    return outputs


def heldout_reward(outputs: Mapping[str, str], notes: Mapping[str, str], gold: Mapping[str, str],
                   names: Sequence[str] = PUBLISHED_REWARD_NAMES) -> HeldOutReward:
    """Score ``outputs`` (file_id -> text) with the named rewards against each note's text and gold tagged text."""
    missing = sorted(set(notes) - set(outputs))
    if missing:
        raise InputError("predictions", f"note {missing[0]}",
                         f"an output for every held-out note ({len(missing)} missing)")
    ids = sorted(notes)
    completions = [outputs[i] for i in ids]
    columns = {"raw_text": [notes[i] for i in ids], "gold_span": [gold[i] for i in ids]}
    scores = {name: func(completions=completions, **columns) for name, func in zip(names, reward_functions(names))}
    per_note = {i: sum(scores[n][k] for n in names) / len(names) for k, i in enumerate(ids)}
    per_reward = {n: sum(values) / len(values) for n, values in scores.items()}
    return HeldOutReward(len(ids), per_reward, sum(per_note.values()) / len(ids), per_note)


def heldout_comparison(prediction_csvs: Mapping[str, Sequence[Path]], tagged_csvs: Sequence[Path],
                       names: Sequence[str] = PUBLISHED_REWARD_NAMES) -> dict[str, HeldOutReward]:
    """Each model's held-out reward (model name -> its prediction CSVs) on the notes of ``tagged_csvs``."""
    from utils.meddec.tables import read_tagged_table

    notes: dict[str, str] = {}
    gold: dict[str, str] = {}
    for path in tagged_csvs:
        frame = read_tagged_table(path)
        notes.update(zip(frame["file_id"], frame["raw_text"]))
        gold.update(zip(frame["file_id"], frame["gold_span"]))
    return {model: heldout_reward(read_outputs(paths), notes, gold, names) for model, paths in prediction_csvs.items()}


def paired_difference(before: HeldOutReward, after: HeldOutReward, n_resamples: int = 10_000, seed: int = 0,
                      confidence: float = 0.95) -> Interval:
    """``after``'s mean reward minus ``before``'s, with a paired percentile bootstrap interval over the notes.

    A GRPO step changes a few tag decisions per note, up or down; on a handful of notes the mean change can come
    out either way by chance. The interval says whether the notes can tell the two models apart at all.
    """
    import numpy as np

    if set(before.per_note) != set(after.per_note):
        raise ValueError("the two models were scored on different notes")
    ids = sorted(before.per_note)
    deltas = np.array([after.per_note[i] - before.per_note[i] for i in ids], dtype=np.float64)
    rows = resample_rows(len(ids), n_resamples, seed)  # the draws every bootstrap of the project makes
    return percentile_interval(deltas[rows].mean(axis=1), float(deltas.mean()), confidence)
