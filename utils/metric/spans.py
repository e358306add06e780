"""Official span refinement: what a span's text is when spans are matched (SPEC section 2).

A span is widened to whole words when an edge falls inside an alphanumeric run, then tokenised alone with
NLTK's ``TreebankWordTokenizer`` span tokenizer, and leading/trailing tokens without content are dropped.
Spans are then matched as (note, category, lowercased refined text), so position is ignored and
duplicates collapse. Treebank is the slow part; :func:`_predictable_content` answers without it for the
six spans in seven whose outcome is certain (tested equal on random text in tests/test_metric_spans.py).
"""

from __future__ import annotations

_TREEBANK = None


def _treebank():
    from nltk.tokenize import TreebankWordTokenizer

    global _TREEBANK
    if _TREEBANK is None:
        _TREEBANK = TreebankWordTokenizer()
    return _TREEBANK


def _is_content(word: str) -> bool:
    """A token that carries text: any alphanumeric character, or part of a MIMIC ``[** **]`` placeholder."""
    return "**" in word or any(ch.isalnum() for ch in word)


def _no_quote_rewriting(piece: str) -> bool:
    """Treebank only rewrites quotes; without them every token is a verbatim substring, found in order."""
    return '"' not in piece and "''" not in piece and "`" not in piece


def _predictable_content(piece: str) -> tuple[int, int] | None:
    """Where Treebank's content tokens start and end in ``piece``, when that is certain without tokenising.

    Without quotes every token is a verbatim substring found in order, tokens never span whitespace, and
    a token holding an alphanumeric character is content. So with an alphanumeric first non-space
    character, content starts there; it ends at the last non-space character when that is alphanumeric,
    or one before when that is a single '.', ',', ';' or ':' after an alphanumeric (Treebank always
    splits such a final mark off). Anything else (about one span in seven) goes through Treebank.
    """
    if not _no_quote_rewriting(piece):
        return None
    core = piece.strip()
    first = len(piece) - len(piece.lstrip())
    if not core[0].isalnum():
        return None
    end = first + len(core)
    if core[-1].isalnum():
        return first, end
    if core[-1] in ".,;:" and len(core) >= 2 and core[-2].isalnum():
        return first, end - 1
    return None


def refine_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Official span refinement; (new_start, new_end) or None when nothing of the span is left.

    1. widen each edge that cuts an alphanumeric run to the whole run;
    2. tokenise the span alone with Treebank's span tokenizer and drop leading/trailing tokens without
       content, keeping a '[' before a '**' token and a ']' after one.
    Offsets are used as Python uses them: a negative start slices from the end, and the returned
    offsets are ``start`` plus token offsets (so they may be negative, as officially).
    """
    if not text:
        return None
    n = len(text)
    while 0 < start < n and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    while 0 < end < n and text[end - 1].isalnum() and text[end].isalnum():
        end += 1
    piece = text[start:end]
    if not piece.strip():
        return None
    shortcut = _predictable_content(piece)
    if shortcut is not None:
        return start + shortcut[0], start + shortcut[1]
    offsets = list(_treebank().span_tokenize(piece))
    words = [piece[a:b] for a, b in offsets]
    first = 0
    while first < len(words) and not _is_content(words[first]):
        if words[first] == "[" and first + 1 < len(words) and "**" in words[first + 1]:
            break
        first += 1
    last = len(words)  # exclusive
    while last > first and not _is_content(words[last - 1]):
        if words[last - 1] == "]" and last - 2 >= 0 and "**" in words[last - 2]:
            break
        last -= 1
    if first >= last:
        return None
    return start + offsets[first][0], start + offsets[last - 1][1]


def refined_text(text: str, start: int, end: int) -> str | None:
    """The lowercased refined text that identifies a span, None when the span refines to nothing."""
    refined = refine_span(text, start, end)
    if refined is None:
        return None
    return text[refined[0]:refined[1]].lower()


__all__ = ["refine_span", "refined_text"]
