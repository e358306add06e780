"""Entropy threshold: exploration scores notes officially, selection keeps the low-entropy quantile and mixes."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from scipy.stats import spearmanr

from pseudolabels import dynamic_threshold
from utils.pseudolabels import threshold
from utils.configs.pipeline import ExploreArguments, SelectArguments
from utils.pseudolabels.threshold import (
    entropy_threshold,
    explore,
    keep_mask,
    select,
)
from utils.fileio import InputError
from utils.meddec.tables import inference_output_frame, read_tagged_table, write_csv
from utils.tagging.locate import locate_spans
from utils.tagging.tags import strip_tags
from utils.testing.tiny_models import write_tagged_corpus


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    root = tmp_path_factory.mktemp("thr")
    corpus = write_tagged_corpus(root, ("train", "val"), seed=11, n_train=3, n_val=6, n_test=0, n_unlabeled=0,
                                 mean_chars=700, mean_spans=8)
    return corpus, root / "tagged"


def _write_predictions(path, frame: pd.DataFrame, predicted, entropy) -> None:
    """An inference output table as scripts/inference.py writes it (spans located in the note, once)."""
    records = [{"predicted": output, "entropy": e, "num_tokens": 5, "truncated": i % 2 == 1,
                "spans": locate_spans(text, output).spans}
               for i, (text, output, e) in enumerate(zip(frame["raw_text"], predicted, entropy))]
    write_csv(path, inference_output_frame(frame[["file_id", "raw_text"]], records))


def test_quantile_threshold_is_inclusive_and_skips_missing_entropy():
    entropies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, math.nan]
    assert entropy_threshold(entropies, 0.2) == pytest.approx(0.28)
    assert keep_mask(entropies, 0.2).tolist() == [True, True] + [False] * 9
    assert keep_mask(entropies, 0.0).sum() == 1 and keep_mask(entropies, 1.0).sum() == 10
    with pytest.raises(InputError, match="between 0 and 1"):
        entropy_threshold(entropies, 10)


def test_explore_scores_each_note_and_correlates_with_entropy(tagged, tmp_path):
    corpus, folder = tagged
    val = read_tagged_table(folder / "val.csv")
    # The three lowest-entropy outputs hold the gold tags, the others lost every tag.
    predicted = [gold if i < 3 else strip_tags(gold) for i, gold in enumerate(val["gold_span"])]
    entropy = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    _write_predictions(tmp_path / "val_pred.csv", val, predicted, entropy)
    _write_predictions(tmp_path / "pool_pred.csv", val, predicted, [0.5, 0.1, None, 0.3, 0.2, 0.4])
    args = ExploreArguments(
        val_predictions=str(tmp_path / "val_pred.csv"), gold_dir=str(corpus.paths.gold_dir),
        raw_text_dir=str(corpus.paths.raw_text_dir), pool_predictions=str(tmp_path / "pool_pred.csv"), bins=2,
        quantiles=[0.2, 1.0], report=str(tmp_path / "r.json"), plot=str(tmp_path / "p.png"),
    )
    result = explore(args)
    scores = [n["base"] for n in result["per_note"]]
    # Gold spans in writing order can score just under 1: the official token F1 depends on span order.
    assert min(scores[:3]) > 0.9 > max(scores[3:])
    assert result["spearman_rho"] == pytest.approx(spearmanr(entropy, scores)[0]) and result["spearman_rho"] < -0.5
    assert [b["notes"] for b in result["bins"]] == [3, 3]
    assert result["bins"][0]["base"] > 0.9 > result["bins"][1]["base"]
    assert result["bins"][1]["span_f1"] == 0.0  # no spans predicted at all
    assert result["pool"] == [
        {"quantile": 0.2, "threshold": pytest.approx(0.18), "kept": 1, "pool": 6},
        {"quantile": 1.0, "threshold": 0.5, "kept": 5, "pool": 6},
    ]
    # The published explorer's table: validation notes at or below each quantile, their mean per-note F1s.
    q20, q100 = result["val_quantiles"]
    assert (q20["quantile"], q20["threshold"], q20["kept"], q20["kept_frac"]) == (0.2, pytest.approx(0.2), 2, 2 / 6)
    assert q20["base"] == pytest.approx((q20["mean_span_f1"] + q20["mean_token_f1"]) / 2) and q20["base"] > 0.9
    notes = result["per_note"]
    assert q100["kept"] == 6 and q100["mean_span_f1"] == pytest.approx(sum(n["span_f1"] for n in notes) / 6)
    assert q20["mean_token_f1"] == pytest.approx((notes[0]["token_f1"] + notes[1]["token_f1"]) / 2)
    assert q100["base"] < q20["base"]
    assert json.loads((tmp_path / "r.json").read_text())["val_notes"] == 6
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_select_keeps_the_quantile_converts_and_mixes(tagged, tmp_path):
    corpus, folder = tagged
    val = read_tagged_table(folder / "val.csv")  # stands in for pool notes tagged by Model 1
    noisy = ["<think>\nok\n</think>\n\n" + val["gold_span"][0], val["gold_span"][1] + "<define_problem>dangling",
             val["gold_span"][2], strip_tags(val["gold_span"][3]), val["gold_span"][4], val["gold_span"][5]]
    _write_predictions(tmp_path / "pool_pred.csv", val, noisy, [0.1, 0.2, 0.9, 0.3, None, 0.8])
    args = SelectArguments(pool_predictions=str(tmp_path / "pool_pred.csv"), train_csv=str(folder / "train.csv"),
                           threshold=0.5, output=str(tmp_path / "mixed.csv"), pseudo_target="located")
    summary = select(args)
    assert summary.threshold == pytest.approx(0.3) and summary.selected == 3  # 0.1, 0.2, 0.3; None never
    mixed = read_tagged_table(tmp_path / "mixed.csv")
    train = read_tagged_table(folder / "train.csv")
    assert len(mixed) == len(train) + 3 == summary.written
    pd.testing.assert_frame_equal(mixed.iloc[: len(train)].reset_index(drop=True), train)
    pseudo = mixed.iloc[len(train) :].reset_index(drop=True)
    assert pseudo.file_id.tolist() == [val.file_id[0], val.file_id[1], val.file_id[3]]
    # The think block and the unclosed tag are gone: rows are the exact note with well-formed gold tags.
    for i, k in enumerate((0, 1)):
        assert pseudo.gold_span[i] == val.gold_span[k]
        assert sorted(json.loads(pseudo.gold_offsets[i])) == sorted(json.loads(val.gold_offsets[k]))  # writing order
        assert pseudo.raw_text[i] == val.raw_text[k]
    assert pseudo.gold_span[2] == val.raw_text[3] and pseudo.gold_offsets[2] == "[]"

    args.min_spans = 1
    summary = select(args)  # row 3 has no spans
    assert (summary.dropped_truncated, summary.dropped_few_spans, summary.written) == (0, 1, len(train) + 2)
    args.min_spans, args.drop_truncated = 0, True
    summary = select(args)  # rows 1 and 3 are marked truncated
    assert (summary.dropped_truncated, summary.dropped_few_spans, summary.written) == (2, 0, len(train) + 1)


def _pool_with_an_empty_output(tagged, tmp_path):
    """Four pool outputs: gold tags with think block, gold tags, a plain note, and an empty output (no tokens)."""
    _, folder = tagged
    val = read_tagged_table(folder / "val.csv").head(4)
    outputs = ["<think>\nok\n</think>\n\n" + val["gold_span"][0], val["gold_span"][1], val["raw_text"][2], ""]
    records = [{"predicted": o, "entropy": e, "num_tokens": n, "truncated": n == 0, "spans": locate_spans(t, o).spans}
               for t, o, e, n in zip(val["raw_text"], outputs, [0.2, 0.4, 0.6, None], [9, 9, 9, 0])]
    write_csv(tmp_path / "pool.csv", inference_output_frame(val[["file_id", "raw_text"]], records))
    return val, outputs


def test_published_pseudo_rows_train_on_the_string_nan_and_warn(tagged, tmp_path, capsys):
    import io

    # Provenance of the constant: the published mix left gold_span empty, train_dft.py read it with pandas' defaults
    # and formatted the answer with str().
    published_cell = pd.read_csv(io.StringIO('file_id,raw_text,gold_span\n1_2_3,a note,\n'))["gold_span"][0]
    assert str(published_cell) == threshold.PUBLISHED_PSEUDO_ANSWER == "nan"
    _, folder = tagged
    val, _ = _pool_with_an_empty_output(tagged, tmp_path)
    summary = select(SelectArguments(pool_predictions=str(tmp_path / "pool.csv"), train_csv=str(folder / "train.csv"),
                                     threshold=0.5, output=str(tmp_path / "mixed.csv")))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: 2 pseudo-label row(s) train on the answer 'nan'")
    train = read_tagged_table(folder / "train.csv")
    pseudo = read_tagged_table(tmp_path / "mixed.csv").iloc[len(train):]
    # entropies 0.2, 0.4, 0.6 and the empty output as 0.0: the median is 0.3 -> the empty output and 0.2
    assert summary.threshold == pytest.approx(0.3) and summary.empty_outputs_selected == 1
    assert pseudo.file_id.tolist() == [val.file_id[0], val.file_id[3]]
    assert pseudo.gold_span.tolist() == ["nan", "nan"] and pseudo.gold_offsets.tolist() == ["", ""]
    from utils.training.data import read_training_frame, sft_records

    records = sft_records(read_training_frame(tmp_path / "mixed.csv"))
    assert [r["completion"][0]["content"] for r in records[len(train):]] == ["nan", "nan"]  # what DFT trains on


def test_raw_and_located_pseudo_targets_and_undefined_empty_entropy(tagged, tmp_path, capsys):
    _, folder = tagged
    val, outputs = _pool_with_an_empty_output(tagged, tmp_path)
    train = read_tagged_table(folder / "train.csv")

    def run(**options):
        summary = select(SelectArguments(pool_predictions=str(tmp_path / "pool.csv"), train_csv=str(folder / "train.csv"),
                                         threshold=1.0, output=str(tmp_path / "mixed.csv"), **options))
        return summary, read_tagged_table(tmp_path / "mixed.csv").iloc[len(train):].reset_index(drop=True)

    summary, raw = run(pseudo_target="raw")
    assert (summary.selected, summary.dropped_empty, summary.written) == (4, 1, len(train) + 3)
    assert raw.gold_span.tolist() == outputs[:3]  # verbatim: think block included
    assert sorted(json.loads(raw.gold_offsets[1])) == sorted(json.loads(val.gold_offsets[1])) and raw.gold_offsets[2] == "[]"
    summary, located = run(pseudo_target="located")
    assert summary.written == len(train) + 4 and located.gold_span[0] == val.gold_span[0]
    assert located.gold_span[3] == val.raw_text[3] and located.gold_offsets[3] == "[]"  # empty output: untagged note
    summary, never = run(pseudo_target="located", empty_output_entropy="none")
    assert (summary.selected, summary.empty_outputs_selected) == (3, 0) and val.file_id[3] not in set(never.file_id)
    assert "warning" not in capsys.readouterr().err


def test_cli_subcommands_and_errors(tagged, tmp_path, capsys):
    _, folder = tagged
    assert dynamic_threshold.main(["frobnicate"]) == 2
    assert capsys.readouterr().err == ("error: <command line>: frobnicate: expected a command, one of explore, select "
                                       "(add --help after it)\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("file_id,raw_text,predicted,entropy,num_tokens,truncated,spans\na,b,c,high,1,False,[]\n", encoding="utf-8")
    code = dynamic_threshold.main(["select", "--pool_predictions", str(bad), "--train_csv", str(folder / "train.csv"),
                                   "--output", str(tmp_path / "o.csv")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: row 1: field 'entropy': expected a number, got 'high'"
    assert not (tmp_path / "o.csv").exists()
