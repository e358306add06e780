"""The offline tiny models: they reload like Hub models, speak ChatML with thinking off, and keep tags whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from baselines.bio_tagger import bio_labels
from utils.categories import TAGS
from utils.prompt import build_messages
from utils.testing.tiny_models import (
    EMPTY_THINK_BLOCK,
    build_tiny_encoder,
    build_tiny_qwen35,
    build_tiny_tokenizer,
    tag_tokens,
)

TEXTS = [
    "Admission Date: [**2101-1-1**]\nThe patient was admitted with chest pain. Continue aspirin 81 mg daily.",
    "CT head showed no bleed. Follow up with cardiology in 2 weeks. Hold metoprolol for hypotension.",
] * 10


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_qwen")
    return build_tiny_qwen35(out, build_tiny_tokenizer(TEXTS), seed=1)


@pytest.fixture(scope="module")
def tokenizer(qwen_dir: Path):
    return AutoTokenizer.from_pretrained(qwen_dir)


def test_model_reloads_with_the_auto_classes_and_generates(qwen_dir: Path, tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(qwen_dir)
    assert type(model).__name__ == "Qwen3_5ForCausalLM"
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 5_000_000
    assert "full_attention" in model.config.layer_types
    inputs = tokenizer.apply_chat_template(
        build_messages("chest pain"), add_generation_prompt=True, enable_thinking=False,
        return_tensors="pt", return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)


def test_the_same_seed_builds_the_same_weights(tmp_path: Path) -> None:
    tok = build_tiny_tokenizer(TEXTS[:2], vocab_size=300)
    a = AutoModelForCausalLM.from_pretrained(build_tiny_qwen35(tmp_path / "a", tok, seed=3))
    b = AutoModelForCausalLM.from_pretrained(build_tiny_qwen35(tmp_path / "b", tok, seed=3))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_tags_think_and_chatml_markers_are_single_tokens(tokenizer) -> None:
    for token in [*tag_tokens(), "<think>", "</think>", "<|im_start|>", "<|im_end|>"]:
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1, token
    assert len(tag_tokens()) == 2 * len(TAGS) == 18
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    text = "<drug_decision>continue <treatment_goal>aspirin</treatment_goal></drug_decision>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_generation_prompt_with_thinking_off_ends_in_an_empty_think_block(tokenizer) -> None:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "note"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt == "<|im_start|>user\nnote<|im_end|>\n<|im_start|>assistant\n" + EMPTY_THINK_BLOCK
    thinking = tokenizer.apply_chat_template(
        [{"role": "user", "content": "note"}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert thinking.endswith("<|im_start|>assistant\n<think>\n")


def test_training_text_is_generation_prompt_plus_answer(tokenizer) -> None:
    answer = "<define_problem>chest pain</define_problem>"
    messages = [{"role": "user", "content": "note"}, {"role": "assistant", "content": answer}]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True,
                                           enable_thinking=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False)
    assert full == prompt + answer + "<|im_end|>\n"


def test_assistant_mask_covers_answer_and_end_of_turn_only(tokenizer) -> None:
    answer = "<define_problem>chest pain</define_problem>"
    messages = [{"role": "user", "content": "note"}, {"role": "assistant", "content": answer}]
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, enable_thinking=False
    )
    masked = [tid for tid, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    assert tokenizer.decode(masked) == answer + "<|im_end|>"
    assert masked[0] == tokenizer.convert_tokens_to_ids("<define_problem>")


def test_encoder_reloads_as_token_classifier_with_bio_labels(tmp_path: Path) -> None:
    path = build_tiny_encoder(tmp_path / "enc", texts=TEXTS)
    model = AutoModelForTokenClassification.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_labels == 19
    assert model.config.id2label[0] == "O" and model.config.id2label[1] == "B-contact_related"
    assert list(model.config.id2label.values()) == bio_labels()
    enc = tok("chest pain", return_offsets_mapping=True, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.cls_token_id and enc["input_ids"][0, -1].item() == tok.sep_token_id
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], 19)
    # 512-token windows plus the two special tokens fit the position table.
    ids = torch.full((1, 512), tok.unk_token_id)
    assert model(input_ids=ids).logits.shape == (1, 512, 19)


def test_encoder_rejects_a_label_map_of_the_wrong_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_labels=3"):
        build_tiny_encoder(tmp_path / "enc", texts=TEXTS, num_labels=3, id2label={0: "O", 1: "B"})
