"""What the official script accepts without a word, counted so the user knows (``evaluate/evaluate.py``).

The numbers stay exactly the official ones: each check only explains them. One warning line per kind of problem,
with a count and an example.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from utils.categories import VALID_CATEGORY_IDS
from utils.metric.readers import prediction_rows


def _example(ids: Sequence[str]) -> str:
    return f" (e.g. {', '.join(sorted(ids)[:3])})" if ids else ""


def input_warnings(scorer: Any, predictions: Mapping[str, Sequence[Any]]) -> list[str]:
    """One line per kind of input the official score accepts silently: notes without gold, spans of no category,
    spans outside their note, split notes without gold, gold notes without demographics."""
    gold = set(scorer.gold_ids)
    scored = [note_id for note_id in predictions if scorer.in_split(note_id)]
    lines = []
    no_gold = [note_id for note_id in scored if note_id not in gold]
    if no_gold:
        lines.append(f"{len(no_gold)} predicted note(s) have no gold annotations{_example(no_gold)}: their spans all "
                     "count as false positives, as officially")
    bad_category = outside = 0
    for note_id in scored:
        length = len(scorer.text(note_id))
        for start, end, category in prediction_rows(predictions[note_id]):
            if category not in VALID_CATEGORY_IDS:
                bad_category += 1
            elif start < 0 or end > length or end <= start:
                outside += 1
    if bad_category:
        lines.append(f"{bad_category} predicted span(s) have a category outside 1-9: ignored, as officially")
    if outside:
        lines.append(f"{outside} predicted span(s) are empty or reach outside their note's text: scored as given "
                     "(Python slicing), as officially")
    if scorer.split_ids is not None:
        missing = sorted(scorer.split_ids - gold)
        if missing:
            lines.append(f"{len(missing)} note(s) of the split have no gold file{_example(missing)}: not scored, "
                         "as officially")
    if scorer.has_stats:
        grouped = {note_id for ids in scorer.subgroups.get("race", {}).values() for note_id in ids}
        ungrouped = sorted(gold - grouped)
        if ungrouped:
            lines.append(f"{len(ungrouped)} gold note(s) have no row in stats.csv{_example(ungrouped)}: in no "
                         "subgroup, as officially")
    return lines
