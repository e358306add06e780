"""Held-out reward of greedy outputs (utils.training.heldout): the published rewards, per note and averaged."""

from __future__ import annotations

import pandas as pd
import pytest

from utils.fileio import InputError
from utils.meddec.tables import write_tagged_table
from utils.training.heldout import HeldOutReward, heldout_comparison, heldout_reward, paired_difference

NOTE = "Started aspirin 81 mg daily.\nCT head negative."
GOLD = ("<drug_decision>Started aspirin 81 mg daily</drug_decision>.\n"
        "<evaluate_result>CT head negative</evaluate_result>.")
HALF = "<drug_decision>Started aspirin 81 mg daily</drug_decision>.\nCT head negative."


def test_copying_the_gold_scores_one_and_copying_the_bare_note_scores_fidelity_only():
    notes, gold = {"a": NOTE, "b": NOTE}, {"a": GOLD, "b": GOLD}
    result = heldout_reward({"a": GOLD, "b": NOTE}, notes, gold)
    assert result.per_note == {"a": 1.0, "b": pytest.approx(1 / 3)}
    assert result.per_reward == {"fidelity": 1.0, "token_f1": 0.5, "exact_f1": 0.5}
    assert result.mean == pytest.approx(2 / 3) and result.n_notes == 2


def test_one_of_two_categories_found_scores_half_on_each_f1():
    # per tag F1 averaged over the tags present in either side: drug_decision 1, evaluate_result 0
    result = heldout_reward({"a": HALF}, {"a": NOTE}, {"a": GOLD})
    assert result.per_reward == {"fidelity": 1.0, "token_f1": 0.5, "exact_f1": 0.5}
    assert result.mean == pytest.approx(2 / 3)


def test_a_note_without_output_is_refused():
    with pytest.raises(InputError, match="note b: an output for every held-out note"):
        heldout_reward({"a": GOLD}, {"a": NOTE, "b": NOTE}, {"a": GOLD, "b": GOLD})


def test_comparison_reads_inference_csvs_and_tagged_tables(tmp_path):
    write_tagged_table(tmp_path / "val.csv", [{"file_id": "a", "raw_text": NOTE, "gold_span": GOLD}])
    write_tagged_table(tmp_path / "test.csv", [{"file_id": "b", "raw_text": NOTE, "gold_span": GOLD}])
    for model, outputs in (("m1", [NOTE, HALF]), ("m2", [GOLD, GOLD])):
        pd.DataFrame({"file_id": ["a", "b"], "predicted": outputs}).to_csv(tmp_path / f"{model}.csv", index=False)
    results = heldout_comparison({m: [tmp_path / f"{m}.csv"] for m in ("m1", "m2")},
                                 [tmp_path / "val.csv", tmp_path / "test.csv"])
    assert results["m1"].per_note == {"a": pytest.approx(1 / 3), "b": pytest.approx(2 / 3)}
    assert results["m2"].mean == 1.0
    (tmp_path / "bad.csv").write_text("file_id,output\na,x\n")
    with pytest.raises(InputError, match="missing column"):
        heldout_comparison({"m": [tmp_path / "bad.csv"]}, [tmp_path / "val.csv"])


def scored(per_note: dict[str, float]) -> HeldOutReward:
    return HeldOutReward(len(per_note), {}, sum(per_note.values()) / len(per_note), per_note)


def test_paired_difference_is_the_mean_change_per_note_with_a_bootstrap_interval():
    before = scored({"a": 0.5, "b": 0.4, "c": 0.7})
    same_gain = paired_difference(before, scored({"a": 0.6, "b": 0.5, "c": 0.8}))
    assert (same_gain.estimate, same_gain.low, same_gain.high) == pytest.approx((0.1, 0.1, 0.1))
    # two notes, one up by 0.2 and one unchanged: resampled means are 0, 0.1 or 0.2, the extremes a quarter each
    mixed = paired_difference(scored({"a": 0.5, "b": 0.4}), scored({"a": 0.7, "b": 0.4}), n_resamples=4000)
    assert (mixed.estimate, mixed.low, mixed.high) == pytest.approx((0.1, 0.0, 0.2))
    assert mixed == paired_difference(scored({"a": 0.5, "b": 0.4}), scored({"a": 0.7, "b": 0.4}), n_resamples=4000)
    assert mixed.n_resamples == 4000


def test_paired_difference_needs_the_same_notes():
    with pytest.raises(ValueError, match="scored on different notes"):
        paired_difference(scored({"a": 0.5}), scored({"b": 0.5}))
