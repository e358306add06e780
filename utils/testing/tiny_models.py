"""Tiny, offline stand-ins for the published models, so every training and inference path runs in tests.

The Hugging Face Hub is unreachable on CPU test machines and Qwen3.5-4B would be far too slow there, so
tests build a few-hundred-thousand-parameter ``Qwen3_5ForCausalLM`` (same architecture family, same chat
conventions, same inline tags as single tokens) and a tiny RoBERTa-style token classifier for the baseline.
Everything is saved with ``save_pretrained`` and reloads through the ``Auto*`` classes like a Hub model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from utils.categories import TAGS
from utils.prompt import PROMPT_TEMPLATE

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CHATML_SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END)
EMPTY_THINK_BLOCK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"


def tag_tokens() -> list[str]:
    """The eighteen inline tag strings (`<define_problem>`, `</define_problem>`, ...), one token each."""
    return [token for tag in TAGS for token in (f"<{tag}>", f"</{tag}>")]


# ChatML like Qwen3: thinking off renders an empty think block before the answer, in the generation prompt
# and in past assistant turns alike, so a training sequence is exactly "generation prompt + answer + <|im_end|>".
# The `{% generation %}` markers cover only what the model must learn to write (the answer and its end of
# turn), which is what TRL's assistant_only_loss / return_assistant_tokens_mask need.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- set content = message['content'] -%}"
    "{%- if '</think>' in content -%}"
    "{{- content.split('</think>')[0] + '</think>' -}}"
    "{%- set content = content.split('</think>')[-1] -%}"
    "{%- elif enable_thinking is not defined or enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- generation -%}"
    "{{- content + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is true -%}"
    "{{- '<think>\\n' -}}"
    "{%- else -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


# Qwen2-family pre-tokenisation: a run of newlines (with the spaces before it) is one piece whatever follows, so a
# chat prompt ending in "\n\n" stays a token-level prefix of prompt + answer (TRL checks this for answer-only loss).
QWEN_STYLE_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _train_byte_level_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str],
                          prompt_weight: int = 1) -> Tokenizer:
    """A byte-level BPE trained offline: every string is encodable, like the real Qwen tokenizer.

    The published instruction is part of the training text (``prompt_weight`` times), so it compresses well and
    tiny-model sequences stay short.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_STYLE_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts) + [PROMPT_TEMPLATE] * prompt_weight, trainer=trainer)
    return tokenizer


def build_tiny_tokenizer(
    texts: Iterable[str], out_dir: str | Path | None = None, vocab_size: int = 2048, tags_as_tokens: bool = True
) -> PreTrainedTokenizerFast:
    """ChatML byte-level BPE with the nine tags as single tokens, trained on ``texts`` (plus the prompt).

    Saved to ``out_dir`` when given. eos is ``<|im_end|>`` (the end of an assistant turn), pad is
    ``<|endoftext|>``; ``<think>``/``</think>`` and the tags are added (non-special) tokens so they survive
    ``skip_special_tokens`` decoding, as in Qwen's tokenizer. ``tags_as_tokens=False`` leaves the tags to
    the BPE, spelled over several tokens as the real Qwen tokenizer spells them.
    """
    backend = _train_byte_level_bpe(texts, vocab_size, CHATML_SPECIAL_TOKENS, prompt_weight=50)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=32768,
        padding_side="left",
    )
    tokenizer.add_tokens([THINK_OPEN, THINK_CLOSE, *(tag_tokens() if tags_as_tokens else ())], special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def tiny_qwen35_config(tokenizer: PreTrainedTokenizerFast, *, hidden_size: int = 64, num_layers: int = 2):
    """A Qwen3_5TextConfig a few hundred thousand parameters big, ending in a full-attention layer.

    The cache fails when every layer is linear attention, and the default linear head sizes (128 x 32
    heads) would dominate the size of a tiny model, so both are set explicitly.
    """
    from transformers import Qwen3_5TextConfig

    layer_types = ["linear_attention"] * (num_layers - 1) + ["full_attention"]
    heads = 2
    return Qwen3_5TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        head_dim=hidden_size // heads,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        layer_types=layer_types,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def build_tiny_qwen35(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised text-only Qwen3_5ForCausalLM and its tokenizer to ``out_dir``."""
    from transformers import Qwen3_5ForCausalLM

    _check_num_layers(num_layers)
    torch.manual_seed(seed)
    model = Qwen3_5ForCausalLM(tiny_qwen35_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers))
    return _save_with_tokenizer(model, tokenizer, out_dir)


def _check_num_layers(num_layers: int) -> None:
    if num_layers < 1:
        raise ValueError("num_layers must be at least 1 (one full-attention layer)")


def _save_with_tokenizer(model, tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """Save ``model`` (generation stopping at the tokenizer's end of turn) and ``tokenizer`` side by side."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out = Path(out_dir)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


VISION_TOKENS: tuple[str, ...] = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def tiny_qwen35_vl_config(tokenizer: PreTrainedTokenizerFast, *, hidden_size: int = 64, num_layers: int = 2):
    """A ``Qwen3_5Config`` (image-text-to-text, the published checkpoint's layout) with a one-block vision tower.

    The tokenizer must already hold the vision tokens (:func:`with_vision_tokens`): their ids go into the config.
    """
    from transformers import Qwen3_5Config

    text = tiny_qwen35_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    ids = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(f"the tokenizer lacks the vision tokens {', '.join(VISION_TOKENS)}")
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
                  patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64)
    return Qwen3_5Config(text_config=text.to_dict(), vision_config=vision, vision_start_token_id=ids[0],
                         vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
                         tie_word_embeddings=False)


def with_vision_tokens(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """A copy of ``tokenizer`` with Qwen's four vision special tokens added (as the real Qwen3.5 tokenizer has)."""
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    missing = [t for t in VISION_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer


def build_tiny_qwen35_vl(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ``Qwen3_5ForConditionalGeneration`` (the layout Unsloth and vLLM load for the
    published base: weights ``model.language_model.layers.*``) and its tokenizer (plus the vision tokens)."""
    from transformers import Qwen3_5ForConditionalGeneration

    _check_num_layers(num_layers)
    tokenizer = with_vision_tokens(tokenizer)
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(tiny_qwen35_vl_config(tokenizer, hidden_size=hidden_size,
                                                                  num_layers=num_layers))
    return _save_with_tokenizer(model, tokenizer, out_dir)


# --- the encoder baseline -------------------------------------------------------------------------------


def build_tiny_roberta_tokenizer(
    texts: Iterable[str] = (), out_dir: str | Path | None = None, vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """A RoBERTa-style byte-level BPE (<s> ... </s> around every sequence) with offset mappings."""
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = _train_byte_level_bpe(texts, vocab_size, specials)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")), trim_offsets=False
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_tiny_encoder(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    num_labels: int = 19,
    id2label: Mapping[int, str] | None = None,
    texts: Iterable[str] = (),
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny RobertaForTokenClassification (512-token windows) and its tokenizer to ``out_dir``.

    Without ``tokenizer`` a RoBERTa-style BPE is trained on ``texts`` (plus the prompt text). Labels default to
    :func:`baselines.bio_tagger.bio_labels` when ``num_labels`` is 19, else generic ``LABEL_i``.
    """
    from transformers import RobertaConfig, RobertaForTokenClassification

    from baselines.bio_tagger import bio_labels

    if tokenizer is None:
        tokenizer = build_tiny_roberta_tokenizer(texts)
    if id2label is None:
        names = bio_labels() if num_labels == len(bio_labels()) else [f"LABEL_{i}" for i in range(num_labels)]
        id2label = dict(enumerate(names))
    if len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} labels, expected num_labels={num_labels}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=512 + pad_id + 2,
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=num_labels,
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
    )
    torch.manual_seed(seed)
    model = RobertaForTokenClassification(config)
    out = Path(out_dir)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


# --- tiny training data ---------------------------------------------------------------------------------------


def write_tiny_tagged_csv(
    path: str | Path, n_notes: int = 2, *, seed: int = 0, mean_chars: int = 200, mean_spans: int = 3
) -> list[dict[str, str]]:
    """A gt_to_tag-style training CSV of a few short synthetic notes (file_id, raw_text, gold_span, gold_offsets)."""
    from dataset.synthetic import generate_notes
    from utils.meddec.tables import write_tagged_table
    from utils.tagging.splits import in_scope_spans
    from utils.tagging.convert import gold_row

    notes = generate_notes(n_notes, seed=seed, mean_chars=mean_chars, mean_spans=mean_spans)
    rows = [gold_row(note.note_id, note.text, in_scope_spans(note.annotations))[0] for note in notes]
    write_tagged_table(path, rows)
    return rows


def write_tagged_corpus(root: str | Path, splits: Sequence[str], **corpus_sizes: Any):
    """A synthetic MedDec corpus under ``root/MedDec`` and gt_to_tag's CSVs of ``splits`` under ``root/tagged``
    (the two steps a test of anything downstream of gt_to_tag starts from); returns the corpus."""
    from dataset.synthetic import generate_corpus
    from utils.tagging.splits import RawTexts, convert_splits

    corpus = generate_corpus(Path(root) / "MedDec", **corpus_sizes)
    paths = corpus.paths
    convert_splits(paths.gold_dir, RawTexts(raw_text_dir=paths.raw_text_dir),
                   {name: paths.split(name) for name in splits}, Path(root) / "tagged")
    return corpus


#: Short notes with the CSV traps inference must keep byte for byte: CRLF, a lone CR, quotes and commas, "NA".
SHORT_NOTES: list[tuple[str, str]] = [
    ("10_20_30", "Patient admitted with chest pain.\r\nContinue aspirin 81 mg daily."),
    ("10_20_31", "Follow up with cardiology in 2 weeks."),
    ("10_20_32", "NA"),
    ("10_20_33", 'Lone\rcarriage return, "quotes", commas'),
    ("10_20_34", "Hold metoprolol for hypotension."),
    ("10_20_35", "Start lisinopril 10 mg; recheck potassium."),
    ("10_20_36", "Discharged home in stable condition."),
]
