"""The encoder baseline: B/I/O labels (first annotation wins), window decoding, and a short real training run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from baselines.bio_tagger import (
    bio_labels,
    RandomCropDataset,
    decode_spans,
    encode_note,
    predict_note,
    published_span_f1,
    train_and_predict,
    special_wrapping,
    token_labels,
    token_snapped_gold,
)
from utils.categories import ID_TO_TAG
from utils.configs.baseline import BaselineArguments, BaselineTrainingArguments
from utils.meddec.corpus import read_raw_text
from utils.meddec.predictions import Span, read_predictions
from utils.testing.tiny_models import build_tiny_encoder, write_tagged_corpus

# Tokens as character ranges: "aa bb cc dd ee" -> five two-letter tokens.
OFFSETS = [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14)]


def test_labels_follow_bio_and_the_first_overlapping_annotation_wins():
    labels = bio_labels()
    spans = [(3, 11, 5), (0, 8, 3), (12, 14, 9), (13, 14, 1)]  # drug over bb..dd; problem aa..cc listed later
    names = [labels[i] for i in token_labels(OFFSETS, spans)]
    assert names == ["B-define_problem", "B-drug_decision", "I-drug_decision", "I-drug_decision", "B-advice_and_precaution"]
    assert token_labels(OFFSETS, [(0, 14, 0)]) == [0] * 5  # out-of-scope categories are ignored
    assert token_labels([(0, 0), (0, 2)], [(0, 2, 3)]) == [0, label("B", 3)]  # empty tokens stay O


def label(prefix: str, category: int) -> int:
    return bio_labels().index(f"{prefix}-{ID_TO_TAG[category]}")


def test_decoding_rebuilds_spans_and_tolerates_stray_inside_labels():
    spans = [(0, 5, 3), (6, 11, 3), (12, 14, 2)]  # two adjacent spans of one category stay apart (B starts anew)
    assert decode_spans(OFFSETS, token_labels(OFFSETS, spans)) == [Span(*s) for s in spans]
    stray = [label("I", 5), label("I", 5), label("I", 7), 0, label("I", 7)]
    assert decode_spans(OFFSETS, stray) == [Span(0, 5, 5), Span(6, 8, 7), Span(12, 14, 7)]


def test_later_wins_labels_follow_the_published_baseline():
    names = lambda spans: [bio_labels()[i] for i in token_labels(OFFSETS, spans, "later_wins")]  # noqa: E731
    # problem aa..cc, then drug bb..dd (in (start, end) order): the later span relabels bb and cc
    assert names([(3, 11, 5), (0, 8, 3)]) == ["B-define_problem", "B-drug_decision", "I-drug_decision",
                                             "I-drug_decision", "O"]
    assert token_labels(OFFSETS, [(0, 8, 3), (3, 11, 5)], "first_wins") == [
        label("B", 3), label("I", 3), label("I", 3), label("B", 5), 0]
    # a later span over an earlier span's B- token is skipped (same start here)
    assert names([(0, 5, 3), (0, 14, 5)]) == ["B-define_problem", "I-define_problem", "O", "O", "O"]
    # nested: the inner span cuts the outer one
    assert names([(0, 14, 5), (3, 5, 3)]) == ["B-drug_decision", "B-define_problem", "I-drug_decision",
                                             "I-drug_decision", "I-drug_decision"]
    # the end maps to the token holding the end character, which is left out (cc is not labelled)
    assert names([(3, 7, 7)]) == ["O", "B-evaluate_result", "O", "O", "O"]
    # an edge between tokens looks up to 9 characters ahead; a start that finds no token ends the note's labels
    gap = [(0, 2), (14, 16), (17, 19)]
    assert token_labels(gap, [(5, 16, 3), (14, 19, 5)], "later_wins") == [0, label("B", 3), 0]
    assert token_labels(gap, [(2, 16, 3), (17, 19, 5)], "later_wins") == [0, 0, 0]
    assert token_labels(gap, [(2, 16, 3), (17, 19, 5)], "first_wins") == [0, label("B", 3), label("B", 5)]


def test_an_orphan_inside_label_is_ignored_as_published_or_starts_a_span():
    nested = [label("B", 5), label("B", 3), label("I", 5), label("I", 5), label("I", 5)]
    assert decode_spans(OFFSETS, nested, "ignore") == [Span(0, 2, 5), Span(3, 5, 3)]
    assert decode_spans(OFFSETS, nested, "new_span") == [Span(0, 2, 5), Span(3, 5, 3), Span(6, 14, 5)]
    after_o = [0, label("I", 7), label("I", 7), 0, label("I", 7)]  # after O an I- label starts a span either way
    assert decode_spans(OFFSETS, after_o, "ignore") == decode_spans(OFFSETS, after_o, "new_span") == [
        Span(3, 8, 7), Span(12, 14, 7)]


def test_the_published_validation_metric_compares_token_snapped_spans():
    gold = token_snapped_gold(OFFSETS, [(1, 7, 3), (3, 11, 5), (0, 5, 0)])  # out-of-scope category left out
    assert gold == {(3, 0, 5), (5, 3, 11)}
    assert published_span_f1({"n": gold}, {"n": {(3, 0, 5), (5, 3, 8)}}) == pytest.approx(50.0)
    assert published_span_f1({"n": set()}, {"n": set()}) == 0.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    corpus = write_tagged_corpus(root, ("train", "val"), seed=21, n_train=4, n_val=3, n_test=0, n_unlabeled=0,
                                 mean_chars=600, mean_spans=6)
    paths = corpus.paths
    texts = [(paths.raw_text_dir / f"{i}.txt").read_text(encoding="utf-8") for i in corpus.all_ids]
    model_dir = build_tiny_encoder(root / "encoder", texts=texts, hidden_size=16, seed=0)
    return corpus, root, model_dir


class LookupModel(torch.nn.Module):
    """Predicts a fixed label per token id: lets us check that windows cover every token once, in order."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": torch.nn.functional.one_hot(self.table[input_ids], 19).float()})


def test_consecutive_windows_cover_the_note(setup):
    from transformers import AutoTokenizer

    corpus, _, model_dir = setup
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = (corpus.paths.raw_text_dir / f"{corpus.train_ids[0]}.txt").read_text(encoding="utf-8")
    rng = random.Random(0)
    table = torch.tensor([rng.randrange(19) for _ in range(len(tokenizer))])
    note = encode_note(tokenizer, "n", text)
    assert len(note.input_ids) > 3 * 10  # several windows of 10 tokens
    expected = decode_spans(note.offsets, table[note.input_ids].tolist())
    assert predict_note(LookupModel(table), tokenizer, text, window=10, batch_size=3) == expected  # raw (published)
    assert predict_note(LookupModel(table), tokenizer, text, window=10, batch_size=3, layout="wrapped") == expected


def test_random_crops_are_windows_of_the_note(setup):
    from transformers import AutoTokenizer

    corpus, _, model_dir = setup
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefix, suffix = special_wrapping(tokenizer)
    assert (prefix, suffix) == ([tokenizer.bos_token_id], [tokenizer.eos_token_id])
    text = (corpus.paths.raw_text_dir / f"{corpus.train_ids[0]}.txt").read_text(encoding="utf-8")
    note = encode_note(tokenizer, "n", text, [(0, 40, 3)])
    data = RandomCropDataset([note], tokenizer, window=16, seed=1, layout="wrapped")
    starts = set()
    for _ in range(20):
        item = data[0]
        body = item["input_ids"][1:-1]
        assert len(item["input_ids"]) == 16 and item["labels"][0] == item["labels"][-1] == -100
        start = next(s for s in range(len(note.input_ids)) if note.input_ids[s : s + 14] == body)
        assert item["labels"][1:-1] == note.labels[start : start + 14]
        starts.add(start)
    assert len(starts) > 1


def test_published_windows_are_raw_slices_with_the_special_tokens_labelled_o(setup):
    """Published: the note tokenised once with <s> ... </s> (labelled O, trained); a crop is a plain slice of it, so
    the first crop holds <s>, the last </s>, and no label is ignored (the loss's mean runs over every position)."""
    from transformers import AutoTokenizer

    from utils.configs.baseline import BaselineArguments as Args

    corpus, _, model_dir = setup
    assert Args().window_layout == "raw"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = (corpus.paths.raw_text_dir / f"{corpus.train_ids[0]}.txt").read_text(encoding="utf-8")
    plain = encode_note(tokenizer, "n", text, [(0, 40, 3)])
    note = encode_note(tokenizer, "n", text, [(0, 40, 3)], special_tokens=True)
    assert note.input_ids == [tokenizer.bos_token_id, *plain.input_ids, tokenizer.eos_token_id]
    assert note.labels == [0, *plain.labels, 0]  # the special tokens are O
    data = RandomCropDataset([note], tokenizer, window=16, seed=1)
    crops = [data[0] for _ in range(200)]
    for item in crops:
        assert len(item["input_ids"]) == 16 and -100 not in item["labels"] and set(item["attention_mask"]) == {1}
        start = next(s for s in range(len(note.input_ids)) if note.input_ids[s : s + 16] == item["input_ids"])
        assert item["labels"] == note.labels[start : start + 16]
    assert len({tuple(c["input_ids"]) for c in crops}) > 1
    two = RandomCropDataset([note], tokenizer, window=len(note.input_ids) - 1, seed=1)  # two possible crops
    ends = {(item["input_ids"][0], item["input_ids"][-1]) for item in (two[0] for _ in range(60))}
    assert ends == {(tokenizer.bos_token_id, note.input_ids[-2]), (note.input_ids[1], tokenizer.eos_token_id)}
    short = encode_note(tokenizer, "s", "Start aspirin.", special_tokens=True)
    padded = RandomCropDataset([short], tokenizer, window=16, seed=0)[0]  # published padding='max_length'
    assert padded["input_ids"] == short.input_ids + [tokenizer.pad_token_id] * (16 - len(short.input_ids))
    assert padded["labels"] == [0] * 16 and padded["attention_mask"] == [1] * 16


@pytest.mark.slow
def test_a_few_training_steps_write_valid_scored_predictions(setup, capsys):
    corpus, root, model_dir = setup
    args = BaselineArguments(
        model=str(model_dir), train_csv=str(root / "tagged" / "train.csv"), predict_csv=[str(root / "tagged" / "val.csv")],
        window=64, gold_dir=str(corpus.paths.gold_dir), raw_text_dir=str(corpus.paths.raw_text_dir),
        split_file=str(corpus.paths.split("val")), eval_csv="",
    )
    training = BaselineTrainingArguments(output_dir=str(root / "out"), max_steps=4, per_device_train_batch_size=2,
                                         learning_rate=1e-3, logging_steps=1, use_cpu=True, disable_tqdm=True)
    written = train_and_predict(args, training, progress=False)
    out = written[str(root / "tagged" / "val.csv")]
    predictions = read_predictions(out)
    assert list(predictions) == corpus.val_ids and out.name == "val_predictions.json"
    for note_id, spans in predictions.items():
        length = len(read_raw_text(corpus.paths.raw_text_dir, note_id))
        assert all(0 <= s.start < s.end <= length and 1 <= s.category <= 9 for s in spans)
    printed = capsys.readouterr().out
    assert "span F1" in printed and "(published scorer)" in printed  # the score names its scorer (the default)
    from safetensors.torch import load_file

    start, trained = load_file(model_dir / "model.safetensors"), load_file(root / "out" / "model.safetensors")
    assert not torch.equal(start["classifier.weight"], trained["classifier.weight"])  # it trained and was saved


@pytest.mark.slow
def test_the_best_validation_checkpoint_is_kept_and_loaded(setup, tmp_path, monkeypatch):
    """Published: the validation span F1 is scored every N steps and the best weights are the ones saved."""
    from safetensors.torch import load_file

    from baselines import bio_tagger

    scores_to_give = iter([10.0, 30.0, 20.0])  # a tiny model scores 0: script the metric, keep the machinery real
    real_f1 = bio_tagger.published_span_f1
    monkeypatch.setattr(bio_tagger, "published_span_f1", lambda gold, found: real_f1(gold, found) + next(scores_to_give))
    corpus, root, model_dir = setup
    args = BaselineArguments(model=str(model_dir), train_csv=str(root / "tagged" / "train.csv"),
                             eval_csv=str(root / "tagged" / "train.csv"), window=64)
    training = BaselineTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, eval_steps=2,
                                         per_device_train_batch_size=2, learning_rate=5e-3, use_cpu=True,
                                         disable_tqdm=True, report_to="none")
    assert train_and_predict(args, training, progress=False) == {}
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state["best_global_step"], state["best_metric"]) == (4, 30.0)
    best = load_file(tmp_path / "out" / "checkpoint-4" / "model.safetensors")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    first = load_file(tmp_path / "out" / "checkpoint-2" / "model.safetensors")
    assert all(torch.equal(best[k], saved[k]) for k in best)  # the best checkpoint is what was saved at the end
    assert not all(torch.equal(first[k], saved[k]) for k in first)  # and training did move the weights


def test_without_a_validation_csv_nothing_is_selected(setup, tmp_path):
    from baselines.bio_tagger import without_selection

    training = BaselineTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True)
    assert (training.eval_strategy, training.save_strategy, training.load_best_model_at_end) == ("steps", "best", True)
    without_selection(training)
    assert (training.eval_strategy, training.save_strategy, training.load_best_model_at_end) == ("no", "no", False)
