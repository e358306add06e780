"""Copy-constrained decoding for ``transformers`` ``generate``: a LogitsProcessor over ``utils.generation.copy_decoding``.

One :class:`~utils.generation.copy_decoding.CopyConstraint` per batch row (rows in the order of the notes given).
Prompts are left padded, so every row's generated tokens start at the same column: the length of
``input_ids`` at the first call. Each call takes only the newest column(s), so a step costs O(1) per row
whatever the length generated so far. Tokens outside the allowed set get ``-inf``; a row that has
generated its end of sequence is finished and left untouched (``generate`` pads it from then on).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor

from utils.generation.copy_decoding import CopyConstraint, CopyGuards, CopyVocabulary, credit_text_mass


class CopyConstraintLogitsProcessor(LogitsProcessor):
    """Masks every row's logits to the tokens that keep its output a tagged copy of its note."""

    def __init__(self, vocabulary: CopyVocabulary, notes: Sequence[str], guards: CopyGuards = CopyGuards()) -> None:
        self.constraints: list[CopyConstraint] = [vocabulary.start(note, guards) for note in notes]
        self._seen: int | None = None  # columns of input_ids already taken (the padded prompt at first)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.constraints):
            raise ValueError(f"batch of {input_ids.shape[0]} rows, but {len(self.constraints)} notes were given")
        if self._seen is None:
            self._seen = input_ids.shape[1]
        new = input_ids[:, self._seen :].tolist()
        self._seen = input_ids.shape[1]
        allowed: list[list[int]] = []  # per row; empty for a finished row
        text: list[list[int]] = []  # per row, under text_mass: the allowed tokens that only write note text
        finished: list[int] = []
        for row, (constraint, tokens) in enumerate(zip(self.constraints, new)):
            for token in tokens:
                if constraint.finished:
                    break  # padding after the end of sequence
                constraint.advance(token)
            if constraint.finished:
                finished.append(row)
            allowed.append(constraint.allowed())  # [] once finished
            text.append(constraint.text_tokens() if constraint.guards.text_mass else [])
        top = max((max(ids) for ids in allowed if ids), default=-1)
        if top >= scores.shape[-1]:
            raise ValueError(f"token id {top} is outside the model's {scores.shape[-1]} logits")
        if any(c.guards.text_mass for c in self.constraints):
            # the forbidden text's probability goes to the note's continuation
            out = credit_text_mass(scores, allowed, text)
        else:
            device = scores.device
            rows = torch.tensor([r for r, ids in enumerate(allowed) for _ in ids], dtype=torch.long, device=device)
            columns = torch.tensor([t for ids in allowed for t in ids], dtype=torch.long, device=device)
            out = torch.full_like(scores, float("-inf"))
            out[rows, columns] = scores[rows, columns]
        if finished:
            out[finished] = scores[finished]  # left untouched: generate pads them from now on
        return out
