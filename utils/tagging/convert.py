"""Gold offsets <-> tagged text, the generative taggers' training target (SPEC section 3).

A note is written back with inline tags ``<tag>...</tag>`` (tags from ``utils.categories``). Writing
follows the published rules exactly:

* spans are opened in the order (start ascending, end descending, category outer-first), where for
  identical offsets the more frequent category is the more INNER tag (``INNER_ORDER`` 3,5,7,1,6,9,2,4,8:
  category 3 is innermost, 8 outermost);
* at one character position all closing tags come before all opening tags;
* closing tags at one position are last-opened-first-closed (LIFO).

Reading (``tagged_to_spans``) strips the nine tags and pairs each closing tag with the most recent
still-open tag OF THE SAME CATEGORY. Spans of different categories may nest or cross freely and come
back exactly. Spans are returned in the order of their opening tags, which is the writing order above.

Known, unavoidable loss: two spans of the SAME category that cross (``s1 < s2 < e1 < e2``) produce
the same text as the nested pair ``(s1, e2), (s2, e1)``: ``<a>x <a>y</a> z</a>``. Reading always
chooses nesting, so such a pair comes back as the nested pair: per category the multisets of start and
end offsets are preserved, the pairing is not (``utils.testing.references.same_category_crossings`` finds these pairs). On the
synthetic corpus (``dataset.synthetic.generate_notes(350, seed=0)``) 42 such pairs occur among 55,376
in-scope spans (0.08 %, 40 of 350 notes); how often MedDec gold has them is unknown here.

Decisions (documented because downstream code depends on them):

* Exact duplicates (same start, end and category) collapse to one span by default here: a doubled tag
  would teach the model to stutter, and neither official metric can tell one copy from two (span F1 uses a
  set; token F1 takes the first overlapping span). Round trips therefore compare sets of spans. The
  published ``gt_to_tag.py`` kept them (``<a><a>x</a></a>``, each copy in ``gold_offsets``):
  ``keep_duplicates=True`` writes that, and ``utils/gt_to_tag.py`` does so unless ``--dedupe_spans``.
* Spans of a category outside 1-9, with ``start >= end``, non-integer offsets or offsets outside the
  text are dropped; ``clean_spans`` says why for each.
* Only the nine exact tag strings are tags. A note that itself contains such a string (never seen in
  MedDec) cannot round-trip.
"""

from __future__ import annotations

import numbers
from collections import Counter, defaultdict
from typing import Iterable, NamedTuple, Sequence

from utils.categories import ID_TO_TAG, INNER_RANK, TAG_TO_ID, VALID_CATEGORY_IDS
from utils.meddec.predictions import Span
from utils.meddec.tables import spans_json
from utils.tagging.tags import TAG_PATTERN


class DroppedSpan(NamedTuple):
    """An input span that was not written, and why."""

    span: tuple
    reason: str


class TagError(ValueError):
    """Tagged text that is not well formed (a stray closing tag or an unclosed tag)."""


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy ints too


def drop_reason(span: Sequence[object], text_length: int) -> str | None:
    """Why a (start, end, category) span cannot be written into a text of ``text_length`` chars; None if it can."""
    if len(span) != 3:
        return "expected (start, end, category)"
    start, end, category = span
    if not (_is_int(start) and _is_int(end)):
        return "offsets are not integers"
    if category not in VALID_CATEGORY_IDS or not _is_int(category):
        return "category out of scope (not 1-9)"
    if start >= end:
        return "empty span (start >= end)"
    if start < 0 or end > text_length:
        return "offsets outside the text"
    return None


def clean_spans(text_length: int, spans: Iterable[Sequence[object]],
                keep_duplicates: bool = False) -> tuple[list[Span], list[DroppedSpan]]:
    """Valid spans in input order (exact duplicates dropped unless ``keep_duplicates``), and the dropped ones with a
    reason each."""
    kept: list[Span] = []
    dropped: list[DroppedSpan] = []
    seen: set[Span] = set()
    for raw in spans:
        raw = tuple(raw)
        reason = drop_reason(raw, text_length)
        if reason is None:
            span = Span(int(raw[0]), int(raw[1]), int(raw[2]))
            if span in seen and not keep_duplicates:
                reason = "duplicate of an earlier span"
            else:
                seen.add(span)
                kept.append(span)
                continue
        dropped.append(DroppedSpan(raw, reason))
    return kept, dropped


def writing_order_key(span: Span) -> tuple[int, int, int]:
    """Opening order: start ascending, end descending, then outer (less frequent) category first."""
    return (span.start, -span.end, -INNER_RANK[span.category])


def spans_to_tagged(text: str, spans: Iterable[tuple[int, int, int]], keep_duplicates: bool = False) -> str:
    """The note with inline tags for ``spans`` (invalid spans, and duplicates unless ``keep_duplicates``, are
    dropped, see clean_spans); a kept duplicate is a doubled tag, closed last-opened-first."""
    kept, _ = clean_spans(len(text), spans, keep_duplicates)
    ordered = sorted(kept, key=writing_order_key)
    opens: dict[int, list[str]] = defaultdict(list)
    closes: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for rank, span in enumerate(ordered):
        tag = ID_TO_TAG[span.category]
        opens[span.start].append(f"<{tag}>")
        closes[span.end].append((rank, f"</{tag}>"))
    pieces: list[str] = []
    previous = 0
    for position in sorted(opens.keys() | closes.keys()):
        pieces.append(text[previous:position])
        pieces.extend(tag for _, tag in sorted(closes.get(position, ()), reverse=True))  # LIFO
        pieces.extend(opens.get(position, ()))
        previous = position
    pieces.append(text[previous:])
    return "".join(pieces)


def tagged_to_spans(tagged: str) -> tuple[str, list[Span]]:
    """Exact inverse of ``spans_to_tagged``: (plain text, spans in opening-tag order).

    Raises TagError on a closing tag without an open one of its category, or on a tag left open.
    Empty pairs (``<a></a>``) hold no text and are skipped.
    """
    pieces: list[str] = []
    plain_length = 0
    previous = 0
    open_stacks: dict[int, list[int]] = defaultdict(list)  # category -> indices into `found`
    found: list[list[int]] = []  # [start, end, category] in opening order; end -1 while open
    for match in TAG_PATTERN.finditer(tagged):
        chunk = tagged[previous : match.start()]
        pieces.append(chunk)
        plain_length += len(chunk)
        previous = match.end()
        category = TAG_TO_ID[match.group(2)]
        if not match.group(1):
            open_stacks[category].append(len(found))
            found.append([plain_length, -1, category])
        elif open_stacks[category]:
            found[open_stacks[category].pop()][1] = plain_length
        else:
            raise TagError(f"stray closing tag {match.group(0)} at character {match.start()} of the tagged text")
    pieces.append(tagged[previous:])
    for category, stack in open_stacks.items():
        if stack:
            raise TagError(f"unclosed tag <{ID_TO_TAG[category]}> opened at plain-text offset {found[stack[0]][0]}")
    spans = [Span(start, end, category) for start, end, category in found if end > start]
    return "".join(pieces), spans


def gold_row(file_id: str, text: str, spans: Iterable[Sequence[int]] | None,
             keep_duplicates: bool = False) -> tuple[dict[str, str], Counter[str]]:
    """One tagged-split row for a note (``utils.meddec.tables``), and why spans were left out (reason -> count).

    ``spans`` are (start, end, category) triples in gold order; None means the note has no gold (test): both
    gold columns are then empty strings. ``keep_duplicates``: exact duplicates stay, as doubled tags and repeated
    offsets (the published gt_to_tag.py).
    """
    if spans is None:
        return {"file_id": file_id, "raw_text": text, "gold_span": "", "gold_offsets": ""}, Counter()
    kept, dropped = clean_spans(len(text), spans, keep_duplicates)
    row = {"file_id": file_id, "raw_text": text, "gold_span": spans_to_tagged(text, kept, keep_duplicates),
           "gold_offsets": spans_json(kept)}
    return row, Counter(d.reason for d in dropped)
