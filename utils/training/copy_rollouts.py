"""GRPO rollouts sampled under the copy constraint (``--rollout_copy_constraint``; not published).

The published GRPO samples its completions freely; inference can decode under the copy constraint
(``utils.generation.copy_decoding``), where the model only decides where tags go and the text is the note's.
Sampling the rollouts under the same constraint makes the group's completions differ only in those decisions,
so the rewards' advantages fall on the tag tokens the constrained decoder will choose between, instead of on
text a small model drifts into at temperature 1 (where the fidelity reward is 0 for every rollout and tells
the group nothing). The policy gradient is still taken on the model's own (unconstrained) log-probabilities
of the sampled tokens, as TRL computes them; only the sampling changes.

Runs on transformers generation only (``--use_vllm_mode false``, as the published run generated); the note
of each completion comes from the dataset's ``raw_text`` column, the same one the fidelity reward reads.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from utils.generation.copy_decoding import CopyGuards, CopyVocabulary

#: The guards the demo's and the README's copy-decoded inference use (text mass, unclosed spans dropped, no tag
#: inside a word), so that rollouts are drawn from the decoder the model is evaluated with.
ROLLOUT_GUARDS = CopyGuards(word_boundaries=True, text_mass=True, allow_unclosed=True)


def cut_at_eos(completions: torch.Tensor, eos_ids: Sequence[int]) -> list[list[int]]:
    """Each row up to and including its first end-of-sequence token (the rest is generate's padding)."""
    rows: list[list[int]] = []
    eos = set(eos_ids)
    for row in completions.tolist():
        end = next((i for i, token in enumerate(row) if token in eos), len(row) - 1)
        rows.append(row[: end + 1])
    return rows


def sample_copy_constrained(model: Any, prompt_ids: Sequence[Sequence[int]], notes: Sequence[str],
                            vocabulary: CopyVocabulary, generation_config: Any, pad_id: int,
                            guards: CopyGuards = ROLLOUT_GUARDS) -> list[list[int]]:
    """Sample one completion per prompt with ``generate``, each masked to a tagged copy of its note."""
    from transformers import LogitsProcessorList
    from trl.trainer.utils import pad

    from utils.generation.copy_decoding_hf import CopyConstraintLogitsProcessor

    if len(notes) != len(prompt_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(notes)} notes: one note per rollout is needed")
    prompts = [torch.tensor(list(ids), dtype=torch.long) for ids in prompt_ids]
    # left-padded as TRL's own generation path pads, so every completion starts at one column
    input_ids = pad(prompts, padding_value=pad_id, padding_side="left")
    attention_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left")
    device = next(model.parameters()).device
    processor = CopyConstraintLogitsProcessor(vocabulary, notes, guards)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             generation_config=generation_config, logits_processor=LogitsProcessorList([processor]))
    return cut_at_eos(out[:, input_ids.shape[1]:].cpu(), vocabulary.eos_ids)
