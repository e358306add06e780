"""A copy-and-tag curriculum for tiny demo models.

A randomly initialised model of a few hundred thousand parameters cannot learn to rewrite whole notes in
the minutes a CPU demo has. Cutting each training note into short windows of whole lines (each with the
gold spans that lie inside it, re-tagged) gives it many short, easy examples of the same task first, so
its outputs parse as tagged text and the later steps have spans to work on. Only the demo uses this; the
published runs train on whole notes.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Mapping, Sequence

from utils.meddec.predictions import Span
from utils.tagging.convert import spans_to_tagged


def line_windows(text: str, max_chars: int) -> Iterator[tuple[int, int]]:
    """(start, end) windows of whole lines, each at most ``max_chars`` long unless one line is longer."""
    lines = text.splitlines(keepends=True)
    start = position = 0
    for line in lines:
        if position > start and position + len(line) - start > max_chars:
            yield start, position
            start = position
        position += len(line)
    if position > start:
        yield start, position


def spans_inside(spans: Iterable[Sequence[int]], start: int, end: int) -> list[Span]:
    """Spans that lie wholly in [start, end), shifted to the window's coordinates."""
    return [Span(s - start, e - start, c) for s, e, c in spans if start <= s and e <= end]


def window_rows(row: Mapping[str, str], max_chars: int) -> list[dict[str, str]]:
    """Training rows (gt_to_tag columns) for the windows of one note that hold at least one gold span."""
    text = row["raw_text"]
    spans = [tuple(span) for span in json.loads(row["gold_offsets"] or "[]")]
    rows = []
    for k, (start, end) in enumerate(line_windows(text, max_chars)):
        inside = spans_inside(spans, start, end)
        if not inside or not text[start:end].strip():
            continue
        window = text[start:end]
        rows.append({
            "file_id": f"{row['file_id']}#w{k}",
            "raw_text": window,
            "gold_span": spans_to_tagged(window, inside),
            "gold_offsets": json.dumps([list(span) for span in inside]),
        })
    return rows


def build_curriculum(rows: Sequence[Mapping[str, str]], max_chars: int = 300, include_full_notes: bool = True) -> list[dict[str, str]]:
    """Windows of every note first (short, easy), then the full notes themselves."""
    out: list[dict[str, str]] = []
    for row in rows:
        out.extend(window_rows(row, max_chars))
    if include_full_notes:
        out.extend(dict(row) for row in rows)
    return out


def write_curriculum_csv(train_csv: str | os.PathLike[str], out_csv: str | os.PathLike[str], max_chars: int = 300) -> int:
    """Read a gt_to_tag training CSV, write its curriculum CSV atomically; returns the number of rows."""
    from utils.meddec.tables import read_tagged_table, write_tagged_table

    frame = read_tagged_table(train_csv)
    rows = build_curriculum(frame.to_dict("records"), max_chars=max_chars)
    write_tagged_table(out_csv, rows)
    return len(rows)
