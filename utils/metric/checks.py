"""What the official script accepts without a word, counted so the user knows (``evaluate/evaluate.py``).

The numbers stay exactly the official ones: each check only explains them. One warning line per kind of problem,
with a count and an example.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Any, Mapping, Sequence

from utils.categories import VALID_CATEGORY_IDS
from utils.fileio import InputError
from utils.metric.readers import prediction_rows

BOM = "\ufeff"


def _shown(note_id: str) -> str:
    """An id as written in a message: as is when plain, its repr() when it has blanks or invisible characters."""
    plain = note_id.isprintable() and note_id == note_id.strip() and note_id.isascii()
    return note_id if plain else repr(note_id)


def _example(ids: Sequence[str]) -> str:
    return f" (e.g. {', '.join(_shown(i) for i in sorted(ids)[:3])})" if ids else ""


def _near_miss(note_id: str, known: set[str], bases: set[str]) -> str:
    """Why a predicted id probably failed to match a known one (the likeliest slip first)."""
    if note_id.strip() != note_id and note_id.strip() in known:
        return "surrounding whitespace"
    if note_id.endswith(".json") and note_id.removesuffix(".json") in known:
        return "a '.json' suffix"
    normalized = unicodedata.normalize("NFKC", note_id)
    if normalized != note_id and normalized.strip().removesuffix(".json") in known | bases:
        return "non-ASCII look-alike characters (e.g. fullwidth digits)"
    if note_id in bases:
        return "no '-annotator' suffix"
    return "outside the split"


def id_mismatch_warning(scorer: Any, predictions: Mapping[str, Sequence[Any]]) -> str | None:
    """One line on the predicted ids the split leaves out (officially dropped without a word): how many, why they
    probably missed (whitespace, '.json', look-alike digits, a missing '-annotator' suffix) and repr() examples."""
    if scorer.split_ids is None:
        return None
    known = set(scorer.split_ids)
    missed = [note_id for note_id in predictions if note_id not in known]
    if not missed:
        return None
    bases = {note_id.split("-", 1)[0] for note_id in known if "-" in note_id}
    reasons: dict[str, list[str]] = {}
    for note_id in missed:
        reasons.setdefault(_near_miss(note_id, known, bases), []).append(note_id)
    parts = ", ".join(f"{len(ids)} with {reason}" if reason != "outside the split" else f"{len(ids)} {reason}"
                      for reason, ids in reasons.items())
    examples = ", ".join(repr(i) for i in sorted(missed)[:3])
    return (f"{len(missed)} of {len(predictions)} predicted note id(s) are not in the split file and are not scored, "
            f"as officially: {parts} (e.g. {examples})")


def bom_warning(scorer: Any) -> str | None:
    """The split file began with a UTF-8 byte-order mark: officially its first id keeps it and matches no note."""
    if scorer.split_ids is None:
        return None
    marked = sorted(note_id for note_id in scorer.split_ids if note_id.startswith(BOM))
    if not marked:
        return None
    return (f"the split file starts with a UTF-8 byte-order mark: its first id is read as {marked[0]!r}, which "
            "matches no note, so that note is not scored, as officially (save the file without a BOM)")


def require_a_match(scorer: Any, predictions: Mapping[str, Sequence[Any]], source: str | os.PathLike[str]) -> None:
    """Refuse (InputError, exit 2) a prediction set none of whose ids is a gold note that is scored: officially it
    scores 0 without a word, and a comparison would rank it as if it had predicted nothing on purpose."""
    if not predictions:
        return
    gold = set(scorer.gold_ids)
    if any(note_id in gold and scorer.in_split(note_id) for note_id in predictions):
        return
    where = "the split file" if scorer.split_ids is not None else "the gold set"
    hint = id_mismatch_warning(scorer, predictions)
    detail = hint.split("as officially: ", 1)[1] if hint else f"e.g. {', '.join(repr(i) for i in sorted(predictions)[:3])}"
    raise InputError(source, "", f"none of the {len(predictions)} predicted note id(s) is a gold note of {where}, so "
                                 f"nothing would be scored ({detail}): check the 'file_name' values")


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
    mismatch = id_mismatch_warning(scorer, predictions)
    if mismatch:
        lines.append(mismatch)
    bom = bom_warning(scorer)
    if bom:
        lines.append(bom)
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
