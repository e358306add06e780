"""A span viewer: one self-contained HTML file with each note's text, the gold spans and every system's spans.

The page (``viewer_template.html`` beside this module: inline CSS and JavaScript only) draws each span as a bar
under the text, one lane per overlapping span (gold lanes nearest the text, then each system), coloured by
category and styled by error class (:mod:`utils.metric.errors`: gold classes against a chosen system). A note
list gives per-note span F1 and token F1 of each system (official per-note numbers, ``Scorer.note_scores``) and
sorts by any column; checkboxes filter categories, error classes and sources. The query string presets them:
``viewer.html?note=<id>&cat=2,5&cls=missed,spurious&src=gold,model1&ref=model1``.

THE FILE HOLDS NOTE TEXT (PHI). It is written only to the path the user gives, says so in a banner at the top,
and its Content-Security-Policy (``default-src 'none'``) forbids the browser any network request: no external
script, style, font or image, nothing sent anywhere.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from utils.categories import CATEGORIES
from utils.fileio import write_text_atomic
from utils.metric.errors import CLASSES, classify_predictions
from utils.metric.tokens import prf

TEMPLATE = Path(__file__).with_name("viewer_template.html")
#: One colour per category 1-9 (Tableau 10, colour-blind friendly enough to tell nine apart with the legend).
CATEGORY_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")


def _clip(start: int, end: int, length: int) -> tuple[int, int] | None:
    start, end = max(0, min(start, length)), max(0, min(end, length))
    return (start, end) if end > start else None


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def viewer_data(scorer: Any, systems: Mapping[str, Mapping[str, Sequence[Any]]],
                title: str = "LAMAR span viewer") -> dict[str, Any]:
    """What the page shows, as JSON-ready data (``scorer``: a :class:`utils.metric.Scorer`; ``systems``: name ->
    prediction set). Notes: every note any system is scored on, sorted by id."""
    names = list(systems)
    if not names:
        raise ValueError("the viewer needs at least one prediction set")
    scores = {name: scorer.note_scores(predictions) for name, predictions in systems.items()}
    classified = {name: {n.note_id: n for n in classify_predictions(scorer, predictions)}
                  for name, predictions in systems.items()}
    note_ids = sorted({note_id for s in scores.values() for note_id in s.notes.ids})
    rows = {name: {note_id: i for i, note_id in enumerate(s.notes.ids)} for name, s in scores.items()}
    notes = []
    for note_id in note_ids:
        text = scorer.text(note_id)
        per_system = [classified[name].get(note_id) for name in names]
        spans: list[dict[str, Any]] = []
        gold_lists = [[o for o in n.occurrences if o.side == "gold"] if n else None for n in per_system]
        reference = next(g for g in gold_lists if g is not None)
        for k, occ in enumerate(reference):  # the same gold occurrences, in the same order, for every system
            clipped = _clip(occ.start, occ.end, len(text))
            if clipped:
                classes = [g[k].error if g is not None else "missed" for g in gold_lists]
                spans.append({"src": "g", "s": clipped[0], "e": clipped[1], "c": occ.category, "k": classes})
        for j, note in enumerate(per_system):
            for occ in (o for o in (note.occurrences if note else ()) if o.side == "pred"):
                clipped = _clip(occ.start, occ.end, len(text))
                if clipped:
                    spans.append({"src": f"s{j}", "s": clipped[0], "e": clipped[1], "c": occ.category, "k": occ.error})
        note_scores = []
        for name in names:
            row = rows[name].get(note_id)
            if row is None:
                note_scores.append({"span_f1": None, "token_f1": None})
                continue
            s = scores[name]
            f1 = prf(int(s.tp[row]), int(s.fp[row]), int(s.fn[row]))[2]
            note_scores.append({"span_f1": f1, "token_f1": _number(s.token_f1[row])})
        empty = dict.fromkeys(CLASSES, 0)
        notes.append({"id": note_id, "text": text, "n_gold": len(scorer.gold_spans(note_id)),
                      "scores": note_scores, "counts": [n.counts() if n else empty for n in per_system],
                      "spans": spans})
    return {
        "title": title, "systems": names, "classes": list(CLASSES),
        "scorer": {"name": scorer.rule, "reference": scorer.reference},
        "categories": [{"id": c.id, "tag": c.tag, "name": c.name, "color": color}
                       for c, color in zip(CATEGORIES, CATEGORY_COLORS)],
        "notes": notes,
    }


def render_viewer(data: Mapping[str, Any]) -> str:
    """The HTML page for :func:`viewer_data`'s data. The JSON is embedded in a ``<script type=application/json>``
    block with ``<``, ``>`` and ``&`` escaped, so no note text can end the block or become markup."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    values = {"__TITLE__": html.escape(str(data["title"])), "__DATA__": payload}
    return re.sub("__TITLE__|__DATA__", lambda m: values[m.group(0)], TEMPLATE.read_text(encoding="utf-8"))


def write_viewer(path: str | os.PathLike[str], scorer: Any, systems: Mapping[str, Mapping[str, Sequence[Any]]],
                 title: str = "LAMAR span viewer") -> dict[str, Any]:
    """Write the viewer to ``path`` (atomically); returns its data. The file contains note text (PHI)."""
    data = viewer_data(scorer, systems, title)
    write_text_atomic(path, render_viewer(data))
    return data


__all__ = ["CATEGORY_COLORS", "TEMPLATE", "render_viewer", "viewer_data", "write_viewer"]
