"""Model output (tagged note text) -> character offsets in the real note: the two locators.

``locator="published"`` (the default, ``--locate published``) gives exactly the spans of the published
``utils/pred_to_offset.py`` (biodatlab/medexact-lamar): each span's text searched in the note, duplicates kept,
sorted by (start, end); see ``utils.tagging.locate_published``. ``locator="align"`` (``--locate align``, ours) is
the alignment described below.

A generative tagger is asked to copy the note and wrap decisions in tags, but real outputs differ from
the note: reasoning blocks, tags with spaces or attributes, unknown or unbalanced tags, typos, changed
whitespace, dropped or repeated lines, output cut short. Offsets are therefore found in three steps:

1. Clean the output. If it contains ``</think>``, only what follows the last one is kept; an output
   that starts with ``<think>`` and never closes it is empty. Tag-like tokens are read leniently
   (``< drug_decision >``, ``</ drug_decision>``, ``<Drug-Decision class="x">`` all count); the name is
   lower-cased and ``-`` read as ``_``. Unknown tags are removed (kept as text when that exact token
   occurs in the note). Each closing tag closes the most recent open tag of its category (LIFO, as in
   ``utils.tagging.convert``); a closing tag with nothing to close is dropped ("stray close").
2. Align the de-tagged output to the note with edlib (infix mode "HW": the output may start and end
   anywhere in the note, so an output that is cut short or skips the header costs nothing for the
   missing part, and its last characters are not smeared over the rest of the note), giving each
   output character its note position (``utils.tagging.align``).
3. Place each span. "aligned": both edge characters have a note position and at least half of its
   characters are exact matches, so the note offsets are read off the alignment; if the note span
   then has a different length than the output span (the aligner may put text missing from the
   output, e.g. a dropped line, just inside a span's edge at equal cost), the span text is aligned
   again in its neighbourhood and moved where it fits with fewer edits (<= 10 % + 2). Otherwise (the span
   sits in text the alignment could not anchor, e.g. a repeated line or a rewritten region):
   "search": the exact span text, the occurrence nearest to where the alignment expects it;
   "search_normalized": the same ignoring case and with any whitespace run matching any other;
   "aligned_partial": the span trimmed to its outermost characters that do have a note position;
   "fuzzy": the best rapidfuzz partial match (score >= 90) in a window around the expected place.
   If none applies the span is dropped ("not found").

Decisions:

* Tags left open at the end of the output are DROPPED by default ("unclosed tag"): an unclosed tag in
  a complete output is a forgotten close, and closing it at the end would make one span cover the rest
  of the note. ``unclosed="close_at_end"`` closes them at the end of the output instead (useful when
  outputs were cut by the token limit); such spans are counted in ``LocateResult.closed_at_end``.
* Empty and whitespace-only spans are dropped ("empty after cleaning").
* Exact duplicates (same offsets and category) keep the first ("duplicate").
* Spans come out in the order of their opening tags in the output. Offsets always satisfy
  ``0 <= start < end <= len(note)``.

The command-line front end is ``utils/pred_to_offset.py`` (the published path).

The published locator reports its own match kinds (``exact``, ``normalized``, ``case_insensitive``, ``prefix``,
``suffix``, ``fuzzy``) and failure reasons (``empty_span``, ``model_typo``, ``truncated``, ``not_in_text``), keeps
duplicates, does not remove ``<think>`` blocks, and its offsets may pass the note's end where lower-casing
lengthens a character (as published).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, NamedTuple, Sequence

import edlib
import numpy as np
from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from utils.categories import TAG_TO_ID
from utils.meddec.predictions import Predictions, Span
from utils.tagging.align import Alignment, align_to_note, compact_bytes
from utils.tagging.locate_published import place_published, scan_published, sort_published
from utils.tagging.tags import remove_think

# A tag-like token: optional "/", a name, then spaces/attributes; e.g. "< /drug_decision >", "<a class='x'>".
TAG_LIKE = re.compile(r"<\s*(/)?\s*([A-Za-z][A-Za-z0-9_\-]*)(?=[\s/>])[^<>]*>")
ALIGNED_MATCH_SHARE = 0.5  # an "aligned" span needs at least this share of exactly matched characters
FUZZY_MIN_SCORE = 90.0
FUZZY_MIN_LENGTH = 5
LOCAL_MAX_EDIT_SHARE = 0.1  # a local re-placement may differ from the span text in at most 10 % (+2) chars


UnclosedPolicy = Literal["drop", "close_at_end"]
Locator = Literal["published", "align"]
LOCATORS: tuple[str, ...] = ("published", "align")
DEFAULT_LOCATOR: Locator = "published"


class Dropped(NamedTuple):
    """A tag or span that produced no prediction: its tag name, why, its text and where it was in the output."""

    tag: str
    reason: str
    text: str
    output_offset: int


@dataclass
class LocateResult:
    """Spans found in one note, how each was placed (parallel to ``spans``), and what was dropped."""

    spans: list[Span] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    closed_at_end: int = 0
    think: str = "none"  # "none" | "removed" | "unclosed" (whole output empty) | "kept" (published: text stays)
    edit_distance: int = 0


class _RawSpan(NamedTuple):
    """A paired tag in de-tagged output coordinates."""

    order: int
    start: int
    end: int
    category: int
    tag: str
    output_offset: int


@dataclass
class _Scanned:
    plain: str
    spans: list[_RawSpan]
    dropped: list[Dropped]
    closed_at_end: int


# ----------------------------------------------------------------------------------------- cleaning


def normalize_tag_name(name: str) -> str:
    """``Drug-Decision`` -> ``drug_decision``."""
    return name.lower().replace("-", "_")


def scan_output(answer: str, note: str, unclosed: UnclosedPolicy = "drop") -> _Scanned:
    """Remove tags from the answer and pair them into spans in de-tagged coordinates."""
    pieces: list[str] = []
    plain_length = 0
    previous = 0
    stacks: dict[int, list[tuple[int, int, str, int]]] = defaultdict(list)  # category -> (order, start, tag, offset)
    spans: list[_RawSpan] = []
    dropped: list[Dropped] = []
    order = 0
    for match in TAG_LIKE.finditer(answer):
        token = match.group(0)
        name = normalize_tag_name(match.group(2))
        category = TAG_TO_ID.get(name)
        if category is None and token in note:
            continue  # literal note text such as "<name>": keep it as text
        chunk = answer[previous : match.start()]
        pieces.append(chunk)
        plain_length += len(chunk)
        previous = match.end()
        if category is None:
            dropped.append(Dropped(match.group(2), "unknown tag", token, match.start()))
        elif match.group(1):
            if stacks[category]:
                span_order, start, tag, offset = stacks[category].pop()
                spans.append(_RawSpan(span_order, start, plain_length, category, tag, offset))
            else:
                dropped.append(Dropped(name, "stray close", token, match.start()))
        elif token.rstrip(">").rstrip().endswith("/"):
            dropped.append(Dropped(name, "empty after cleaning", token, match.start()))  # self-closing <tag/>
        else:
            stacks[category].append((order, plain_length, name, match.start()))
            order += 1
    pieces.append(answer[previous:])
    plain = "".join(pieces)
    closed_at_end = 0
    for category, stack in stacks.items():
        for span_order, start, tag, offset in stack:
            if unclosed == "close_at_end":
                spans.append(_RawSpan(span_order, start, len(plain), category, tag, offset))
                closed_at_end += 1
            else:
                dropped.append(Dropped(tag, "unclosed tag", plain[start : start + 80], offset))
    spans.sort(key=lambda s: s.order)
    return _Scanned(plain, spans, dropped, closed_at_end)


# ------------------------------------------------------------------------------------------ placing


def _nearest(candidates: Iterable[tuple[int, int]], expected: float) -> tuple[int, int] | None:
    return min(candidates, key=lambda c: (abs(c[0] - expected), c[0]), default=None)


def _exact_occurrences(note: str, text: str) -> Iterable[tuple[int, int]]:
    pattern = re.compile("(?=" + re.escape(text) + ")")
    return ((m.start(), m.start() + len(text)) for m in pattern.finditer(note))


def _normalized_occurrences(note: str, text: str) -> Iterable[tuple[int, int]]:
    words = text.split()
    if not words:
        return ()
    pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
    return ((m.start(), m.end()) for m in pattern.finditer(note))


def _fuzzy_occurrence(note: str, text: str, expected: float) -> tuple[int, int] | None:
    needle = text.strip()
    if len(needle) < FUZZY_MIN_LENGTH:
        return None
    reach = 2 * len(needle) + 1000
    lo = max(0, int(expected) - reach)
    hi = min(len(note), int(expected) + len(needle) + reach)
    found = fuzz.partial_ratio_alignment(needle, note[lo:hi], score_cutoff=FUZZY_MIN_SCORE)
    if found is None or found.dest_end <= found.dest_start:
        return None
    return lo + found.dest_start, lo + found.dest_end


def _aligned(span: _RawSpan, plain: str, note: str, alignment: Alignment) -> tuple[int, int] | None:
    first, last = alignment.note_pos[span.start], alignment.note_pos[span.end - 1]
    if first < 0 or last < 0 or alignment.exact[span.start : span.end].mean() < ALIGNED_MATCH_SHARE:
        return None
    start, end = int(first), int(last) + 1
    if end - start != span.end - span.start:
        return _realign_locally(plain[span.start : span.end], note, start, end)
    return start, end


def _realign_locally(text: str, note: str, start: int, end: int) -> tuple[int, int]:
    """Re-place a span whose note length differs from its output length, if a clearly better place is near.

    When the output lacks note text (a dropped line) next to a span, a whole-note alignment may put the
    missing text inside the span's edge and match the edge characters to identical text beyond it, at
    the same total cost. Aligning the span's own text to the neighbourhood exposes this: a place where
    it fits with fewer edits (and few edits at all) wins; among equally good ones the nearest.
    """
    reach = 2 * len(text) + 200
    lo, hi = max(0, start - reach), min(len(note), end + reach)
    compact = compact_bytes(text, note[lo:hi])
    if compact is None:
        return start, end
    current = Levenshtein.distance(text, note[start:end])
    found = edlib.align(compact[0], compact[1], mode="HW", task="locations", k=current - 1)
    cost = found["editDistance"]
    if cost < 0 or cost > LOCAL_MAX_EDIT_SHARE * len(text) + 2 or not found["locations"]:
        return start, end
    best = min(found["locations"], key=lambda loc: min(abs(lo + loc[0] - start), abs(lo + loc[1] + 1 - end)))
    return lo + best[0], lo + best[1] + 1


def _aligned_partial(span: _RawSpan, alignment: Alignment) -> tuple[int, int] | None:
    inside = alignment.note_pos[span.start : span.end]
    anchored = np.flatnonzero(inside >= 0)
    if len(anchored) == 0 or not alignment.exact[span.start : span.end].any():
        return None
    return int(inside[anchored[0]]), int(inside[anchored[-1]]) + 1


def place_span(span: _RawSpan, plain: str, note: str, alignment: Alignment, expected: np.ndarray | None) -> tuple[tuple[int, int] | None, str]:
    """Note offsets of one span and how they were found (or None and the reason)."""
    text = plain[span.start : span.end]
    if not text.strip():
        return None, "empty after cleaning"
    found = _aligned(span, plain, note, alignment)
    if found is not None:
        return found, "aligned"
    where = float(expected[span.start]) if expected is not None and len(expected) else 0.0
    found = _nearest(_exact_occurrences(note, text), where)
    if found is not None:
        return found, "search"
    found = _nearest(_normalized_occurrences(note, text), where)
    if found is not None:
        return found, "search_normalized"
    found = _aligned_partial(span, alignment)
    if found is not None:
        return found, "aligned_partial"
    found = _fuzzy_occurrence(note, text, where)
    if found is not None:
        return found, "fuzzy"
    return None, "not found"


def locate_spans(note_text: str, model_output: str, unclosed: UnclosedPolicy = "drop",
                 locator: Locator = DEFAULT_LOCATOR) -> LocateResult:
    """Find the note offsets of every tagged span in a model output. Never raises on any output text."""
    if locator == "published":
        return locate_spans_published(note_text, model_output, unclosed)
    if locator != "align":
        raise ValueError(f"locator: expected one of {', '.join(LOCATORS)}, got {locator!r}")
    return locate_spans_aligned(note_text, model_output, unclosed)


def locate_spans_published(note_text: str, model_output: str, unclosed: UnclosedPolicy = "drop") -> LocateResult:
    """The published locator's spans (``utils.tagging.locate_published``): duplicates kept, sorted by (start, end)."""
    output = model_output or ""
    scan = scan_published(output, unclosed)
    result = LocateResult(dropped=[Dropped(*item) for item in scan.ignored], closed_at_end=scan.closed_at_end,
                          think="kept" if "<think>" in output else "none")
    spans: list[Span] = []
    matches: list[str] = []
    for raw, found, how in place_published(scan, note_text):
        if found is None:
            result.dropped.append(Dropped(raw.tag, how, scan.plain[raw.start : raw.end][:80], raw.output_offset))
        else:
            spans.append(Span(found[0], found[1], raw.category))
            matches.append(how)
    result.spans, result.matches = sort_published(spans, matches)
    return result


def locate_spans_aligned(note_text: str, model_output: str, unclosed: UnclosedPolicy = "drop") -> LocateResult:
    """The alignment locator (``--locate align``): see the module docstring."""
    answer, think = remove_think(model_output or "")
    scanned = scan_output(answer, note_text, unclosed)
    result = LocateResult(dropped=list(scanned.dropped), closed_at_end=scanned.closed_at_end, think=think)
    if not scanned.spans:
        return result
    alignment = align_to_note(scanned.plain, note_text)
    result.edit_distance = alignment.edit_distance
    expected = alignment.expected_positions(len(note_text))
    seen: set[Span] = set()
    for raw in scanned.spans:
        found, how = place_span(raw, scanned.plain, note_text, alignment, expected)
        snippet = scanned.plain[raw.start : raw.end][:80]
        if found is None:
            result.dropped.append(Dropped(raw.tag, how, snippet, raw.output_offset))
            continue
        start, end = max(0, min(found[0], len(note_text))), max(0, min(found[1], len(note_text)))
        span = Span(start, end, raw.category)
        if end <= start:
            result.dropped.append(Dropped(raw.tag, "empty after cleaning", snippet, raw.output_offset))
        elif span in seen:
            result.dropped.append(Dropped(raw.tag, "duplicate", snippet, raw.output_offset))
        else:
            seen.add(span)
            result.spans.append(span)
            result.matches.append(how)
    return result


# ------------------------------------------------------------------------------------------ batches


def note_report(file_id: str, result: LocateResult, note_text: str, model_output: str) -> dict[str, Any]:
    """One JSON-able line per note for ``--report``: counts by match kind and every dropped tag with its reason."""
    return {
        "file_id": file_id,
        "spans": len(result.spans),
        "matches": dict(Counter(result.matches)),
        "dropped": [d._asdict() for d in result.dropped],
        "closed_at_end": result.closed_at_end,
        "think": result.think,
        "edit_distance": result.edit_distance,
        "note_chars": len(note_text),
        "output_chars": len(model_output or ""),
    }


def outputs_to_predictions(
    rows: Iterable[tuple[str, str, str]],
    unclosed: UnclosedPolicy = "drop",
    progress: bool = False,
    locator: Locator = DEFAULT_LOCATOR,
) -> tuple[Predictions, list[dict[str, Any]]]:
    """Predictions for (file_id, note text, model output) rows, and one report dict per note (same order)."""
    from tqdm.auto import tqdm

    predictions: Predictions = {}
    reports: list[dict[str, Any]] = []
    for file_id, note_text, model_output in tqdm(rows, desc="locating spans", unit="note", disable=not progress):
        result = locate_spans(note_text, model_output, unclosed, locator)
        predictions[file_id] = result.spans
        reports.append(note_report(file_id, result, note_text, model_output))
    return predictions, reports


def summarize_reports(reports: Sequence[dict[str, Any]]) -> str:
    """One line: notes, spans, how they were matched, what was dropped and why."""
    matches: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for report in reports:
        matches.update(report["matches"])
        reasons.update(d["reason"] for d in report["dropped"])
    spans = sum(r["spans"] for r in reports)
    return (
        f"{len(reports)} notes, {spans} spans; matched: {dict(matches.most_common())}; "
        f"dropped: {dict(reasons.most_common()) or 'none'}"
    )
