"""The published span locator, re-implemented (``--locate published``, the default).

biodatlab/medexact-lamar ``utils/pred_to_offset.py`` turns a tagged output into note offsets by searching each
span's text in the note; the spans it writes are what LAMAR's ensemble was tuned and scored on, so reproducing
the numbers needs the same spans, duplicates and order. This module computes them with our own code; the rules
(checked against the published script's output on recorded damaged outputs, tests/fixtures/locator/):

Reading the output

* A tag is exactly ``<name>`` or ``</name>`` with a name of ASCII letters and underscores (no spaces, no
  attributes, no digits). Every such token is removed from the text; only the nine category names, in lower case,
  make spans. Any other ``<`` is text. ``<think>`` blocks are not special: their tags are removed like any unknown
  tag, their text stays, and spans tagged inside them are located like the others.
* A closing tag closes the most recent open tag of the same name; one with nothing to close is ignored. Tags
  still open at the end are dropped (``unclosed="close_at_end"``, ours: closed at the end of the output).
* Each span keeps the de-tagged text between its tags and its relative position: its start / the length of the
  whole de-tagged output.

Placing a span's text in the note (the first rule that finds it)

1. empty or whitespace-only text: dropped;
2. ``exact``: every occurrence (overlapping ones too); the one whose start / len(note) is nearest the span's
   relative position, the first on ties;
3. ``normalized``: whitespace runs of the span collapsed to one space: its exact occurrences (the nearest), else
   the first occurrence in the note with its whitespace collapsed too, mapped back by walking the note (a
   whitespace run = one character, counted from the note's first character even when the note starts with
   whitespace, which the collapsed note drops: such notes land one character early, as published);
4. ``case_insensitive``: occurrences in the lower-cased note (the nearest). Offsets are those of the lower-cased
   note, which are not the note's where lower-casing changes a character's length (``İ``);
5. ``prefix`` (text longer than 20 characters): the first occurrence of its first 50 characters, then the same
   ignoring case; the span runs for the text's length from there, cut at the note's end;
6. ``suffix`` (text longer than 20 characters): the first occurrence of its last 50 characters, the span ending
   there and starting the text's length before (not before 0);
7. ``fuzzy``: windows of the text's length, 0.8 and 1.2 times it (int), at starts stepping by max(1, length // 10),
   scored with difflib's ``SequenceMatcher(None, text, window).ratio()`` (its default autojunk included); if
   the best reaches 0.765 every start within one step before it is tried with the three widths; the best
   window (first on ties) if it scores >= 0.85 (texts shorter than 5 characters are never fuzzy-matched).

A span none of these place is dropped, with the published reason: ``model_typo`` (some window scores >= 0.6),
``truncated`` (its first max(10, length // 3) characters occur in the note) or ``not_in_text``.

Every placed span is kept, duplicates included; a note's spans are sorted by (start, end), stably, from the
order in which their closing tags were read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Iterable, NamedTuple, Sequence

from rapidfuzz.distance import LCSseq

from utils.categories import TAG_TO_ID
from utils.meddec.predictions import Span

PUBLISHED_TAG = re.compile(r"<(/?)([a-zA-Z_]+)>")
WHITESPACE_OR_CHAR = re.compile(r"\s+|\S", re.DOTALL)  # re's \s is exactly str.isspace (checked over all code points)
PREFIX_MIN_CHARS = 20  # prefix/suffix rules need more characters than this
EDGE_CHARS = 50
FUZZY_THRESHOLD = 0.85
TYPO_THRESHOLD = 0.6
REFINE_SHARE = 0.9  # the refinement runs when the coarse best reaches this share of the threshold
FUZZY_MIN_CHARS = 5


class PublishedSpan(NamedTuple):
    """A closed tag pair: de-tagged offsets, category, tag name and where its opening tag was in the output."""

    start: int
    end: int
    category: int
    tag: str
    output_offset: int


@dataclass
class PublishedScan:
    """The de-tagged output, its spans in closing order, and the tags that made none (tag, reason, token, offset)."""

    plain: str
    spans: list[PublishedSpan]
    ignored: list[tuple[str, str, str, int]]
    closed_at_end: int


def scan_published(output: str, unclosed: str = "drop") -> PublishedScan:
    """Remove every ``<name>`` token and pair the category tags, as the published reader does."""
    pieces: list[str] = []
    length = 0
    previous = 0
    open_tags: dict[str, list[tuple[int, int]]] = {}  # tag -> [(de-tagged start, output offset)]
    spans: list[PublishedSpan] = []
    ignored: list[tuple[str, str, str, int]] = []
    for match in PUBLISHED_TAG.finditer(output):
        pieces.append(output[previous : match.start()])
        length += match.start() - previous
        previous = match.end()
        name = match.group(2)
        if name not in TAG_TO_ID:
            ignored.append((name, "unknown tag", match.group(0), match.start()))
        elif not match.group(1):
            open_tags.setdefault(name, []).append((length, match.start()))
        elif open_tags.get(name):
            start, offset = open_tags[name].pop()
            spans.append(PublishedSpan(start, length, TAG_TO_ID[name], name, offset))
        else:
            ignored.append((name, "stray close", match.group(0), match.start()))
    pieces.append(output[previous:])
    plain = "".join(pieces)
    left_open = sorted((offset, start, name) for name, stack in open_tags.items() for start, offset in stack)
    closed_at_end = 0
    for offset, start, name in left_open:
        if unclosed == "close_at_end":
            spans.append(PublishedSpan(start, len(plain), TAG_TO_ID[name], name, offset))
            closed_at_end += 1
        else:
            ignored.append((name, "unclosed tag", plain[start : start + 80], offset))
    return PublishedScan(plain, spans, ignored, closed_at_end)


# ------------------------------------------------------------------------------------------ searching


def occurrences(haystack: str, needle: str) -> list[int]:
    """Start of every occurrence of ``needle``, overlapping ones included."""
    found: list[int] = []
    at = haystack.find(needle)
    while at != -1:
        found.append(at)
        at = haystack.find(needle, at + 1)
    return found


def nearest(starts: Sequence[int], width: int, note_length: int, ratio: float) -> tuple[int, int] | None:
    """The occurrence whose relative start is nearest ``ratio`` (the first of equals), as (start, start + width)."""
    if not starts:
        return None
    scale = max(note_length, 1)
    best = min(starts, key=lambda start: abs(start / scale - ratio))
    return best, best + width


def collapsed_to_note_offset(note: str, index: int) -> int | None:
    """Note offset of the ``index``-th unit of the note (a whitespace run or one other character), counted from
    the note's first character; the note's length just past its last unit; None beyond."""
    starts = [m.start() for m in WHITESPACE_OR_CHAR.finditer(note)]
    if index < len(starts):
        return starts[index]
    return len(note) if index == len(starts) else None


def collapsed_end(note: str, start: int, collapsed: str) -> int:
    """Walk the note from ``start`` over ``collapsed``: a space meeting whitespace eats the whole run, any other
    pair one character each (characters are not compared); stops at the note's end."""
    at = start
    for char in collapsed:
        if at >= len(note):
            break
        if char == " " and note[at].isspace():
            while at < len(note) and note[at].isspace():
                at += 1
        else:
            at += 1
    return at


def _search_normalized(text: str, note: str, ratio: float) -> tuple[int, int] | None:
    collapsed = " ".join(text.split())
    if collapsed != text:
        found = nearest(occurrences(note, collapsed), len(collapsed), len(note), ratio)
        if found is not None:
            return found
    index = " ".join(note.split()).find(collapsed)
    if index == -1:
        return None
    start = collapsed_to_note_offset(note, index)
    return None if start is None else (start, collapsed_end(note, start, collapsed))


def _search_prefix(text: str, note: str) -> tuple[int, int] | None:
    head = text[:EDGE_CHARS]
    at = note.find(head)
    if at == -1:
        at = note.lower().find(head.lower())
    return None if at == -1 else (at, min(at + len(text), len(note)))


def _search_suffix(text: str, note: str) -> tuple[int, int] | None:
    tail = text[-EDGE_CHARS:]
    at = note.find(tail)
    return None if at == -1 else (max(at - (len(text) - len(tail)), 0), at + len(tail))


# --------------------------------------------------------------------------------------------- fuzzy


class FuzzyWindows:
    """The published sliding-window search of one span text in one note, scored with difflib.

    Exactly the published result: scanning the windows in order and keeping one only when it scores strictly
    more than the best so far picks the FIRST window (in scan order) with the highest score. Here every window
    gets an upper bound first: difflib's matching blocks form a common subsequence, so its ratio is at most
    2 * (longest common subsequence, rapidfuzz's ``LCSseq``) / (total length). Windows are scored in order of
    decreasing bound until no remaining bound can reach the best score, and ties go to the earlier window; the
    best window and its score are those of scoring every window (tests/test_locate_published.py checks this
    against the plain scan).
    """

    def __init__(self, text: str, note: str) -> None:
        self.text, self.note = text, note
        self.step = max(1, len(text) // 10)
        self.widths = (len(text), max(int(len(text) * 0.8), 1), min(int(len(text) * 1.2), len(note)))
        self.matcher = SequenceMatcher(None)
        self.matcher.set_seq1(text)
        self.scores: dict[tuple[int, int], float] = {}
        self.best = 0.0
        self.window: tuple[int, int] | None = None
        self._scan(lambda width: range(0, len(note) - width + 1, self.step))
        self.coarse_best, self.coarse_window = self.best, self.window
        self.refined = False

    def _score(self, window: tuple[int, int]) -> float:
        if window not in self.scores:
            self.matcher.set_seq2(self.note[window[0] : window[1]])
            self.scores[window] = self.matcher.ratio()
        return self.scores[window]

    def _scan(self, starts_for) -> None:  # noqa: ANN001 - width -> iterable of starts
        """Update (best, window) as scanning these windows in order, replacing on a strictly higher score, would."""
        windows = [(start, start + width) for width in self.widths if width <= len(self.note) for start in starts_for(width)]
        total = len(self.text)
        bounds = [2.0 * LCSseq.similarity(self.text, self.note[a:b]) / (total + b - a) for a, b in windows]
        found: int | None = None  # index of the best window among these, None while the incumbent stands
        for k in sorted(range(len(windows)), key=lambda k: -bounds[k]):
            if bounds[k] < self.best or (bounds[k] == self.best and found is None):
                break
            score = self._score(windows[k])
            if score > self.best or (score == self.best and found is not None and k < found):
                self.best, found = score, k
        if found is not None:
            self.window = windows[found]

    def refine(self) -> None:
        """Try every start within one step before the coarse best (once)."""
        if self.refined or self.coarse_window is None:
            return
        self.refined = True
        first = max(0, self.coarse_window[0] - self.step)
        last = min(len(self.note), self.coarse_window[0] + self.step)
        self._scan(lambda width: range(first, min(last, len(self.note) - width + 1)))

    def match(self, threshold: float) -> tuple[int, int] | None:
        """The published fuzzy result at ``threshold``: refined when the coarse best reaches 90 % of it."""
        if len(self.text) < FUZZY_MIN_CHARS or not self.note:
            return None
        if self.coarse_window is not None and self.coarse_best >= threshold * REFINE_SHARE:
            self.refine()
            return self.window if self.best >= threshold else None
        return self.coarse_window if self.coarse_best >= threshold and self.coarse_window else None


def failure_reason(text: str, note: str, fuzzy: FuzzyWindows | None) -> str:
    """The published reason a span was not placed (``fuzzy``: its window search, None where none can run)."""
    if fuzzy is not None and fuzzy.match(TYPO_THRESHOLD) is not None:
        return "model_typo"
    if len(text) > 10 and note.find(text[: max(10, len(text) // 3)]) != -1:
        return "truncated"
    return "not_in_text"


def find_published(text: str, note: str, ratio: float) -> tuple[tuple[int, int] | None, str]:
    """Note offsets of one span text and the rule that found them, or None and the published failure reason."""
    if not text.strip():
        return None, "empty_span"
    found = nearest(occurrences(note, text), len(text), len(note), ratio)
    if found is not None:
        return found, "exact"
    found = _search_normalized(text, note, ratio)
    if found is not None:
        return found, "normalized"
    lowered = text.lower()
    found = nearest(occurrences(note.lower(), lowered), len(lowered), len(note), ratio)
    if found is not None:
        return found, "case_insensitive"
    if len(text) > PREFIX_MIN_CHARS:
        found = _search_prefix(text, note)
        if found is not None:
            return found, "prefix"
        found = _search_suffix(text, note)
        if found is not None:
            return found, "suffix"
    fuzzy = FuzzyWindows(text, note) if len(text) >= FUZZY_MIN_CHARS and note else None
    if fuzzy is not None:
        found = fuzzy.match(FUZZY_THRESHOLD)
        if found is not None:
            return found, "fuzzy"
    return None, failure_reason(text, note, fuzzy)


def place_published(scan: PublishedScan, note: str) -> Iterable[tuple[PublishedSpan, tuple[int, int] | None, str]]:
    """Each scanned span (closing order) with its note offsets (or None) and the rule or failure reason."""
    scale = max(len(scan.plain), 1)
    for span in scan.spans:
        found, how = find_published(scan.plain[span.start : span.end], note, span.start / scale)
        yield span, found, how


def sort_published(spans: Sequence[Span], matches: Sequence[str]) -> tuple[list[Span], list[str]]:
    """Spans sorted by (start, end), stably (duplicates kept), with their match kinds alongside."""
    order = sorted(range(len(spans)), key=lambda k: (spans[k].start, spans[k].end))
    return [spans[k] for k in order], [matches[k] for k in order]
