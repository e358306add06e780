"""Model output (tagged note text) -> character offsets in the real note, robust to what models emit.

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
   output character its note position (match, substitution, or none for inserted characters).
   Measured on a shared 2-core CPU: ~0.1-0.3 s per 24k-38k-character note, whole process < 50 MB. Texts sharing more than 254 distinct characters (edlib's alphabet limit) fall back to
   rapidfuzz's Levenshtein opcodes (global alignment).
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

CLI: ``python utils/pred_to_offset.py --input pred.csv --output pred.json [--raw_text_dir DIR]
[--report report.jsonl]``. The CSV has ``file_id``, ``predicted`` and ``raw_text`` columns
(``raw_text`` may be replaced by ``--raw_text_dir``, read exactly with ``utils.meddec.corpus.read_raw_text``).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, NamedTuple, Sequence

import edlib
import numpy as np
from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from utils.categories import TAG_TO_ID
from utils.fileio import InputError, atomic_open, report_input_error
from utils.meddec.predictions import Predictions, Span, write_predictions

# A tag-like token: optional "/", a name, then spaces/attributes; e.g. "< /drug_decision >", "<a class='x'>".
TAG_LIKE = re.compile(r"<\s*(/)?\s*([A-Za-z][A-Za-z0-9_\-]*)(?=[\s/>])[^<>]*>")
THINK_OPEN = re.compile(r"^\s*<think>", re.IGNORECASE)
THINK_CLOSE = "</think>"
ALIGNED_MATCH_SHARE = 0.5  # an "aligned" span needs at least this share of exactly matched characters
FUZZY_MIN_SCORE = 90.0
FUZZY_MIN_LENGTH = 5
LOCAL_MAX_EDIT_SHARE = 0.1  # a local re-placement may differ from the span text in at most 10 % (+2) chars
EDLIB_MAX_SYMBOLS = 256

UnclosedPolicy = Literal["drop", "close_at_end"]


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
    think: str = "none"  # "none" | "removed" | "unclosed" (whole output empty)
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


@dataclass
class _Alignment:
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


# ----------------------------------------------------------------------------------------- cleaning


def remove_think(output: str) -> tuple[str, str]:
    """The answer part of an output and what happened to a reasoning block ("none", "removed", "unclosed")."""
    if THINK_CLOSE in output:
        return output.rsplit(THINK_CLOSE, 1)[1], "removed"
    if THINK_OPEN.match(output):
        return "", "unclosed"
    return output, "none"


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


# ---------------------------------------------------------------------------------------- alignment


def _compact_bytes(query: str, target: str) -> tuple[bytes, bytes] | None:
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


def _alignment_from_cigar(length: int, cigar: str, target_start: int, distance: int) -> _Alignment:
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
    return _Alignment(note_pos, exact, distance)


def _alignment_from_opcodes(plain: str, note: str) -> _Alignment:
    """Fallback for texts edlib cannot take: global Levenshtein opcodes from rapidfuzz."""
    note_pos = np.full(len(plain), -1, dtype=np.int64)
    exact = np.zeros(len(plain), dtype=bool)
    for op in Levenshtein.opcodes(plain, note):
        if op.tag in ("equal", "replace"):
            n = min(op.src_end - op.src_start, op.dest_end - op.dest_start)
            note_pos[op.src_start : op.src_start + n] = np.arange(op.dest_start, op.dest_start + n)
            exact[op.src_start : op.src_start + n] = op.tag == "equal"
    return _Alignment(note_pos, exact, int(Levenshtein.distance(plain, note)))


def align_to_note(plain: str, note: str) -> _Alignment:
    """Map every character of the de-tagged output onto the note (edlib infix alignment with a path)."""
    if not plain or not note:
        return _Alignment(np.full(len(plain), -1, dtype=np.int64), np.zeros(len(plain), dtype=bool), max(len(plain), len(note)))
    compact = _compact_bytes(plain, note)
    if compact is None:
        return _alignment_from_opcodes(plain, note)
    result = edlib.align(compact[0], compact[1], mode="HW", task="path")
    return _alignment_from_cigar(len(plain), result["cigar"] or "", result["locations"][0][0] or 0, result["editDistance"])


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


def _aligned(span: _RawSpan, plain: str, note: str, alignment: _Alignment) -> tuple[int, int] | None:
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
    compact = _compact_bytes(text, note[lo:hi])
    if compact is None:
        return start, end
    current = Levenshtein.distance(text, note[start:end])
    found = edlib.align(compact[0], compact[1], mode="HW", task="locations", k=current - 1)
    cost = found["editDistance"]
    if cost < 0 or cost > LOCAL_MAX_EDIT_SHARE * len(text) + 2 or not found["locations"]:
        return start, end
    best = min(found["locations"], key=lambda loc: min(abs(lo + loc[0] - start), abs(lo + loc[1] + 1 - end)))
    return lo + best[0], lo + best[1] + 1


def _aligned_partial(span: _RawSpan, alignment: _Alignment) -> tuple[int, int] | None:
    inside = alignment.note_pos[span.start : span.end]
    anchored = np.flatnonzero(inside >= 0)
    if len(anchored) == 0 or not alignment.exact[span.start : span.end].any():
        return None
    return int(inside[anchored[0]]), int(inside[anchored[-1]]) + 1


def place_span(span: _RawSpan, plain: str, note: str, alignment: _Alignment, expected: np.ndarray | None) -> tuple[tuple[int, int] | None, str]:
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


def locate_spans(note_text: str, model_output: str, unclosed: UnclosedPolicy = "drop") -> LocateResult:
    """Find the note offsets of every tagged span in a model output. Never raises on any output text."""
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
) -> tuple[Predictions, list[dict[str, Any]]]:
    """Predictions for (file_id, note text, model output) rows, and one report dict per note (same order)."""
    from tqdm.auto import tqdm

    predictions: Predictions = {}
    reports: list[dict[str, Any]] = []
    for file_id, note_text, model_output in tqdm(rows, desc="locating spans", unit="note", disable=not progress):
        if file_id in predictions:
            raise ValueError(f"duplicate file_id {file_id!r}: each note may appear once")
        result = locate_spans(note_text, model_output, unclosed)
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


# ---------------------------------------------------------------------------------------------- CLI


def read_output_rows(
    path: str,
    raw_text_dir: str | None = None,
    id_column: str = "file_id",
    output_column: str = "predicted",
    text_column: str = "raw_text",
) -> list[tuple[str, str, str]]:
    """(file_id, exact note text, model output) rows of a prediction CSV; note text from the CSV or raw_text/."""
    from utils.meddec.corpus import read_raw_text
    from utils.gt_to_tag import read_csv_strings

    needed = [id_column, output_column] + ([] if raw_text_dir else [text_column])
    frame = read_csv_strings(path, needed)
    rows = []
    for index, record in enumerate(frame.to_dict("records")):
        file_id = record[id_column].strip()
        if not file_id:
            raise InputError(path, f"row {index + 1}", f"empty '{id_column}'")
        note = read_raw_text(raw_text_dir, file_id) if raw_text_dir else record[text_column]
        rows.append((file_id, note, record[output_column]))
    return rows


def write_reports(path: str, reports: Iterable[dict[str, Any]]) -> None:
    """JSON Lines, one note per line, written atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for report in reports:
            handle.write(json.dumps(report, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Turn tagged model outputs into prediction JSON (character offsets into the exact note text)."
    )
    parser.add_argument("--input", required=True, help="CSV with file_id, predicted (model output) and raw_text columns")
    parser.add_argument("--output", required=True, help="prediction JSON to write (the evaluator's format)")
    parser.add_argument("--raw_text_dir", default=None, help="MedDec raw_text/ folder: note texts come from here instead of the CSV")
    parser.add_argument("--report", default=None, help="optional JSON Lines report: per note, how spans were matched and what was dropped")
    parser.add_argument("--unclosed", choices=("drop", "close_at_end"), default="drop", help="what to do with tags left open (default: drop)")
    parser.add_argument("--id_column", default="file_id")
    parser.add_argument("--output_column", default="predicted", help="column holding the model output")
    parser.add_argument("--text_column", default="raw_text", help="column holding the note text (ignored with --raw_text_dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = read_output_rows(args.input, args.raw_text_dir, args.id_column, args.output_column, args.text_column)
        seen: set[str] = set()
        for index, (file_id, _, _) in enumerate(rows):
            if file_id in seen:
                raise InputError(args.input, f"row {index + 1}", f"duplicate {args.id_column} {file_id!r}: each note may appear once")
            seen.add(file_id)
    except InputError as err:
        return report_input_error(err)
    predictions, reports = outputs_to_predictions(rows, args.unclosed, progress=True)
    write_predictions(args.output, predictions)
    if args.report:
        write_reports(args.report, reports)
    print(summarize_reports(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
