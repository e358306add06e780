"""Training examples from a tagged split table (``utils/gt_to_tag.py``): one conversation per note.

The user turn is the published instruction with the note (``utils.prompt``), the assistant turn the tagged note;
the chat template runs with thinking off (``utils.prompt.CHAT_TEMPLATE_KWARGS``).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from utils.meddec.tables import read_tagged_table
from utils.prompt import CHAT_TEMPLATE_KWARGS, build_messages


def read_training_frame(path: str | os.PathLike[str]):
    """A tagged split table with a note and a gold answer in every row (one-line InputError otherwise)."""
    return read_tagged_table(path, require_gold=True)


def sft_records(frame) -> list[dict[str, Any]]:
    """Prompt-completion conversations: TRL then trains on the completion (the tagged note) only."""
    records = []
    for file_id, raw_text, gold in zip(frame["file_id"], frame["raw_text"], frame["gold_span"]):
        prompt, completion = build_messages(raw_text, gold)
        records.append({
            "file_id": file_id,
            "prompt": [prompt],
            "completion": [completion],
            "chat_template_kwargs": dict(CHAT_TEMPLATE_KWARGS),
        })
    return records


# The published train_dft.py masked with Unsloth's train_on_responses_only(response_part=RESPONSE_MARKER): every token
# after the assistant header is trained, the empty think block the chat template writes there included.
RESPONSE_MARKER = "<|im_start|>assistant\n"
LOSS_MASKS = ("response", "answer")


def response_start(input_ids: Sequence[int], marker_ids: Sequence[int]) -> int:
    """Index of the first token after the last occurrence of ``marker_ids`` (the assistant header) in ``input_ids``."""
    width = len(marker_ids)
    for start in range(len(input_ids) - width, -1, -1):
        if list(input_ids[start : start + width]) == list(marker_ids):
            return start + width
    raise ValueError(f"the chat template wrote no {RESPONSE_MARKER!r} header: cannot mask the prompt")


def sft_response_records(frame, tokenizer) -> list[dict[str, Any]]:
    """Tokenized conversations whose loss mask starts right after the assistant header (published): the empty
    think block (``<think>\n\n</think>\n\n`` with thinking off) is trained with the answer. TRL then builds the
    labels from ``completion_mask`` as for its own prompt-completion rows (same tokens, see :func:`sft_records`)."""
    marker_ids = tokenizer.encode(RESPONSE_MARKER, add_special_tokens=False)
    records = []
    for file_id, raw_text, gold in zip(frame["file_id"], frame["raw_text"], frame["gold_span"]):
        ids = tokenizer.apply_chat_template(build_messages(raw_text, gold), tokenize=True, return_dict=True,
                                            **CHAT_TEMPLATE_KWARGS)["input_ids"]
        start = response_start(ids, marker_ids)
        records.append({"file_id": file_id, "input_ids": list(ids),
                        "completion_mask": [0] * start + [1] * (len(ids) - start)})
    return records


def grpo_records(frame, stray_quote: bool = False) -> list[dict[str, Any]]:
    """Prompt-only conversations; the note and its gold answer travel as columns for the reward functions
    (``stray_quote``: the published GRPO prompt, see ``utils.prompt``)."""
    return [
        {"file_id": file_id, "prompt": build_messages(raw_text, stray_quote=stray_quote), "raw_text": raw_text,
         "gold_span": gold,
         "gold_offsets": offsets}
        for file_id, raw_text, gold, offsets in zip(frame["file_id"], frame["raw_text"], frame["gold_span"],
                                                    frame["gold_offsets"])
    ]


def to_dataset(records: Sequence[dict[str, Any]]):
    """A ``datasets.Dataset`` from row dicts."""
    from datasets import Dataset

    return Dataset.from_list(list(records))


def count_prompt_tokens(tokenizer, prompts: Iterable[list[dict[str, Any]]],
                        chat_template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """Tokens of each chat prompt with the generation prompt (the length GRPO limits), rendered with
    ``chat_template_kwargs`` (default: thinking off)."""
    kwargs = CHAT_TEMPLATE_KWARGS if chat_template_kwargs is None else chat_template_kwargs
    lengths = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            **kwargs)["input_ids"]
        lengths.append(len(ids))
    return lengths


def answer_token_stats(model, tokenizer, raw_text: str, answer: str) -> tuple[float, float]:
    """Mean NLL and top-1 accuracy of the answer tokens (and end of turn) given the prompt, as SFT sees them.

    What DFT training should improve; the DFT loss value itself (-p log p) can rise while the model learns.
    """
    import torch

    prompt_messages, answer_message = build_messages(raw_text, answer)
    prompt_ids = tokenizer.apply_chat_template([prompt_messages], add_generation_prompt=True, tokenize=True,
                                               return_dict=True, **CHAT_TEMPLATE_KWARGS)["input_ids"]
    full_ids = tokenizer.apply_chat_template([prompt_messages, answer_message], tokenize=True, return_dict=True,
                                             **CHAT_TEMPLATE_KWARGS)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + answer")
    ids = torch.tensor([full_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1 : -1].float()
    targets = ids[0, len(prompt_ids) :]
    nll = torch.nn.functional.cross_entropy(logits, targets)
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return float(nll), float(accuracy)
