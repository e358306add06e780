"""The encoder baseline: B/I/O labels (first annotation wins), window decoding, and a short real training run."""

from __future__ import annotations

import random

import pytest
import torch

from baselines.bio_tagger import (
    bio_labels,
    RandomCropDataset,
    decode_spans,
    encode_note,
    predict_note,
    run,
    special_wrapping,
    token_labels,
)
from dataset.synthetic import generate_corpus
from utils.categories import ID_TO_TAG
from utils.configs.baseline import BaselineArguments, BaselineTrainingArguments
from utils.meddec.corpus import read_raw_text
from utils.tagging.splits import RawTexts, convert_splits
from utils.meddec.predictions import Span, read_predictions
from utils.testing.tiny_models import build_tiny_encoder

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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    corpus = generate_corpus(root / "MedDec", seed=21, n_train=4, n_val=3, n_test=0, n_unlabeled=0,
                             mean_chars=600, mean_spans=6)
    paths = corpus.paths
    convert_splits(paths.gold_dir, RawTexts(raw_text_dir=paths.raw_text_dir),
                   {"train": paths.split("train"), "val": paths.split("val")}, root / "tagged")
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
    assert predict_note(LookupModel(table), tokenizer, text, window=10, batch_size=3) == expected


def test_random_crops_are_windows_of_the_note(setup):
    from transformers import AutoTokenizer

    corpus, _, model_dir = setup
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefix, suffix = special_wrapping(tokenizer)
    assert (prefix, suffix) == ([tokenizer.bos_token_id], [tokenizer.eos_token_id])
    text = (corpus.paths.raw_text_dir / f"{corpus.train_ids[0]}.txt").read_text(encoding="utf-8")
    note = encode_note(tokenizer, "n", text, [(0, 40, 3)])
    data = RandomCropDataset([note], tokenizer, window=16, seed=1)
    starts = set()
    for _ in range(20):
        item = data[0]
        body = item["input_ids"][1:-1]
        assert len(item["input_ids"]) == 16 and item["labels"][0] == item["labels"][-1] == -100
        start = next(s for s in range(len(note.input_ids)) if note.input_ids[s : s + 14] == body)
        assert item["labels"][1:-1] == note.labels[start : start + 14]
        starts.add(start)
    assert len(starts) > 1


@pytest.mark.slow
def test_a_few_training_steps_write_valid_scored_predictions(setup, capsys):
    corpus, root, model_dir = setup
    args = BaselineArguments(
        model=str(model_dir), train_csv=str(root / "tagged" / "train.csv"), predict_csv=[str(root / "tagged" / "val.csv")],
        window=64, gold_dir=str(corpus.paths.gold_dir), raw_text_dir=str(corpus.paths.raw_text_dir),
        split_file=str(corpus.paths.split("val")),
    )
    training = BaselineTrainingArguments(output_dir=str(root / "out"), max_steps=4, per_device_train_batch_size=2,
                                         learning_rate=1e-3, logging_steps=1, use_cpu=True, save_strategy="no",
                                         disable_tqdm=True)
    written = run(args, training, progress=False)
    out = written[str(root / "tagged" / "val.csv")]
    predictions = read_predictions(out)
    assert list(predictions) == corpus.val_ids and out.name == "val_predictions.json"
    for note_id, spans in predictions.items():
        length = len(read_raw_text(corpus.paths.raw_text_dir, note_id))
        assert all(0 <= s.start < s.end <= length and 1 <= s.category <= 9 for s in spans)
    assert "span F1" in capsys.readouterr().out
    from safetensors.torch import load_file

    start, trained = load_file(model_dir / "model.safetensors"), load_file(root / "out" / "model.safetensors")
    assert not torch.equal(start["classifier.weight"], trained["classifier.weight"])  # it trained and was saved
