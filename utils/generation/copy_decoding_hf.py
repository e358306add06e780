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
        rows: list[int] = []
        columns: list[int] = []
        text_rows: list[int] = []
        text_columns: list[int] = []
        finished: list[int] = []
        for row, (constraint, tokens) in enumerate(zip(self.constraints, new)):
            for token in tokens:
                if constraint.finished:
                    break  # padding after the end of sequence
                constraint.advance(token)
            if constraint.finished:
                finished.append(row)
                continue
            allowed = constraint.allowed()
            rows.extend([row] * len(allowed))
            columns.extend(allowed)
            if constraint.guards.text_mass:
                text = constraint.text_tokens()
                text_rows.extend([row] * len(text))
                text_columns.extend(text)
        if columns and max(columns) >= scores.shape[-1]:
            raise ValueError(f"token id {max(columns)} is outside the model's {scores.shape[-1]} logits")
        mask = torch.full_like(scores, float("-inf"))
        device = scores.device
        mask[torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(columns, dtype=torch.long, device=device)] = 0.0
        if finished:
            mask[finished] = 0.0
        if not text_rows:
            return scores + mask
        # text_mass rows: the forbidden text's probability goes to the note's continuation (finished rows untouched)
        credit = sorted(set(text_rows))
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(columns, dtype=torch.long, device=device)] = True
        text = torch.zeros_like(keep)
        text[torch.tensor(text_rows, dtype=torch.long, device=device),
             torch.tensor(text_columns, dtype=torch.long, device=device)] = True
        out = scores + mask
        index = torch.tensor(credit, dtype=torch.long, device=device)
        out[index] = credit_text_mass(scores[index], keep[index], text[index])
        return out
