"""Character alignment of a de-tagged model output to the note it should copy (edlib, rapidfuzz fallback).

Infix mode ("HW"): the output may start and end anywhere in the note, so an output that is cut short or skips the
header costs nothing for the missing part. Every output character gets its note position (match, substitution,
or -1 for inserted characters). Measured on a shared 2-core CPU: ~0.1-0.3 s per 24k-38k-character note, whole
process < 50 MB. Texts sharing more than 254 distinct characters (edlib's alphabet limit) fall back to rapidfuzz's
Levenshtein opcodes (global alignment).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import edlib
import numpy as np
from rapidfuzz.distance import Levenshtein

EDLIB_MAX_SYMBOLS = 256
#: Largest output x note size aligned whole (~2-3 s on a shared CPU core): alignment time grows with the product, so a
#: 1 MB note took 209 s and a 20 MB one hours. Real discharge summaries (< 60k characters) stay far below it; above
#: it, spans are placed by search alone (exact, normalised, then fuzzy near their proportional position).
MAX_ALIGNED_CELLS = 10_000_000_000


@dataclass
class Alignment:
    """Per de-tagged output character: its note position (-1 when inserted) and whether it matches exactly."""

    note_pos: np.ndarray
    exact: np.ndarray
    edit_distance: int

    def expected_positions(self, note_length: int) -> np.ndarray:
        """Where each output character should be in the note, interpolated between anchored characters."""
        n = len(self.note_pos)
        anchored = np.flatnonzero(self.note_pos >= 0)
        if len(anchored) == 0:
            return np.arange(n, dtype=np.float64) * (note_length / max(n, 1))
        return np.interp(np.arange(n), anchored, self.note_pos[anchored].astype(np.float64))



def compact_bytes(query: str, target: str) -> tuple[bytes, bytes] | None:
    """Both texts over one small alphabet edlib accepts (<= 256 symbols), alignment costs unchanged.

    Characters found in only one of the texts can never match, so each side's private characters share
    one symbol. None if the texts share too many distinct characters.
    """
    shared = sorted(set(query) & set(target))
    if len(shared) + 2 > EDLIB_MAX_SYMBOLS:
        return None
    symbol = {ord(c): i for i, c in enumerate(shared)}
    query_only, target_only = len(shared), len(shared) + 1
    q = query.translate(defaultdict(lambda: query_only, symbol))
    t = target.translate(defaultdict(lambda: target_only, symbol))
    return q.encode("latin-1"), t.encode("latin-1")


def _alignment_from_cigar(length: int, cigar: str, target_start: int, distance: int) -> Alignment:
    note_pos = np.full(length, -1, dtype=np.int64)
    exact = np.zeros(length, dtype=bool)
    qi, ti = 0, target_start
    for count, op in re.findall(r"(\d+)([=XID])", cigar):
        n = int(count)
        if op in "=X":
            note_pos[qi : qi + n] = np.arange(ti, ti + n)
            exact[qi : qi + n] = op == "="
            qi += n
            ti += n
        elif op == "I":
            qi += n
        else:
            ti += n
    return Alignment(note_pos, exact, distance)


def _alignment_from_opcodes(plain: str, note: str) -> Alignment:
    """Fallback for texts edlib cannot take: global Levenshtein opcodes from rapidfuzz."""
    note_pos = np.full(len(plain), -1, dtype=np.int64)
    exact = np.zeros(len(plain), dtype=bool)
    for op in Levenshtein.opcodes(plain, note):
        if op.tag in ("equal", "replace"):
            n = min(op.src_end - op.src_start, op.dest_end - op.dest_start)
            note_pos[op.src_start : op.src_start + n] = np.arange(op.dest_start, op.dest_start + n)
            exact[op.src_start : op.src_start + n] = op.tag == "equal"
    return Alignment(note_pos, exact, int(Levenshtein.distance(plain, note)))


def align_to_note(plain: str, note: str) -> Alignment:
    """Map every character of the de-tagged output onto the note (edlib infix alignment with a path)."""
    if not plain or not note or len(plain) * len(note) > MAX_ALIGNED_CELLS:
        return Alignment(np.full(len(plain), -1, dtype=np.int64), np.zeros(len(plain), dtype=bool), max(len(plain), len(note)))
    compact = compact_bytes(plain, note)
    if compact is None:
        return _alignment_from_opcodes(plain, note)
    result = edlib.align(compact[0], compact[1], mode="HW", task="path")
    return _alignment_from_cigar(len(plain), result["cigar"] or "", result["locations"][0][0] or 0, result["editDistance"])
