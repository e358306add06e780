"""TEST ORACLE (never imported by the project): the published LAMAR GRPO rewards, re-expressed for comparison.

Provenance: github.com/biodatlab/medexact-lamar, ``utils/rewards.py`` at commit
2c0d9c5f8b54dfd20e0bc0411c3bee7f02c519cc, the three rewards its ``scripts/train_grpo.py`` trains with
(``reward_fidelity``, ``reward_fast_token_f1``, ``reward_exact_match_f1``) and the helpers they call. The
published file also holds precision, F0.5 and BLEU variants that training never uses; they are left out.
This module was written from reading that file: the same behaviour, in our own code and words. It exists so
that tests can check ``utils/rewards.py`` against the published behaviour on thousands of generated inputs
(tests/test_rewards_oracle.py). Keep it deliberately literal: where the published code does something odd,
so does this module; do not "fix" anything here.

Observed behaviour, point by point (each one is exercised by the oracle tests):

Completion text
  1. A ``list`` completion (TRL's conversational format) gives the ``content`` of its LAST element, read with
     ``.get("content", "")``, but only if that element is a ``dict``; an empty list, or a last element that is
     not a ``dict``, gives "". Anything that is not a ``list`` (a plain string, but also a bare message dict,
     a tuple of messages, None, a number) is passed through ``str()``: a bare dict becomes its repr.
  2. Content that is not a string makes the published function raise (TypeError or AttributeError).
  3. If the text contains ``</think>``, the answer is what follows the LAST ``</think>``, stripped of leading
     and trailing whitespace (``str.strip``). Otherwise, if the stripped text starts with ``<think>`` (an
     unclosed think block) the answer is "". Otherwise the text is returned unchanged (not stripped).

Fidelity
  4. Only the nine exact tags ``<tag>`` / ``</tag>`` (case-sensitive, no spaces or attributes) are removed from
     the completion and from the note; then whitespace runs (``str.split()``: Unicode whitespace) become one
     space and the ends are trimmed.
  5. If the cleaned NOTE is empty the reward is 1.0, whatever the completion is.
  6. r = ``difflib.SequenceMatcher(None, completion, note).ratio()`` (completion first, autojunk on; the ratio
     is not symmetric, so the order matters). 1.0 if r >= 0.99, 0.0 if r < 0.90, else (r - 0.90) / 0.09
     with the literal 0.09 (not 0.99 - 0.90, which is 0.08999999999999997 in floating point).

Span strings
  7. The tagged text is scanned at every ``<``: the characters up to the next ``>`` are a tag if they are
     exactly one of the nine names, or ``/`` plus one of them (case-sensitive; ``<drug_decision >``,
     ``<Drug_decision>`` and ``<drug_decision x=1>`` are not tags). A ``<`` with no ``>`` after it is text.
  8. Each of the nine names has its own stack of open positions (just after the ``>``). A closing tag with an
     empty stack is ignored; opening tags never closed produce nothing. A close pops the MOST RECENT open of
     the same name, so same-name nesting pairs inner with inner; different names may cross freely.
  9. The text between the popped open position and the closing tag is cleaned:
       a. every ``</?[A-Za-z_]+>`` is removed: the nine tags, but also ``<b>``, ``</i>``, ``<Drug_decision>``,
          ``<foo_bar>`` (ASCII letters and underscore only: ``<h1>``, ``<a href="x">``, ``<foo-bar>``,
          ``< b>`` stay); the pieces around a removed tag are joined without a space;
       b. ``str.strip()``; an empty result is dropped;
       c. if the text starts with ``[**`` those three characters are kept; from what follows them, the
          leading run of characters outside ASCII ``[A-Za-z0-9*]`` is removed (so ``[** 12**]`` -> ``[**12**]``).
          Without that start, the leading run is removed from the whole string (``([**Name**])`` loses ``([``);
       d. then, if the text (now) ends with ``**]`` those three are kept and the trailing run of characters
          outside ASCII ``[A-Za-z0-9*]`` is removed before them; otherwise it is removed from the very end.
          So ``[**`` / ``**]`` are protected only at the very start / end of the whole string:
          ``([**Name**])`` -> ``**name**`` and ``Dr. [**Name**].`` -> ``dr. [**name**``;
       e. the edge test is ASCII only: ``café`` -> ``caf``, ``µg`` -> ``g``, ``5 °C`` -> ``5 °c``
          (interior characters are untouched);
       f. ``str.lower()`` (full Unicode lowering, applied after trimming).
     Non-empty results are collected as (tag, string) pairs in the order the spans CLOSE.

Token F1 and exact F1
 10. No pairs on either side: 1.0; pairs on one side only: 0.0.
 11. Token F1: per tag, the ``str.split()`` words of all its strings as a list (a multiset);
     true positives = size of the multiset intersection; P = tp / #pred words, R = tp / #gold words,
     F1 = 2*P*R / (P+R), 0.0 when P+R is 0; a tag on one side only scores 0.0.
 12. Exact F1: the (tag, string) pairs are first made a Python ``set`` (duplicates count once), then grouped
     into per-tag sets; tp = size of the set intersection; same F1 formula.
 13. The reward is the plain mean over the tags present on either side, summed with ``sum()`` in the
     iteration order of ``set(pred_groups) | set(gold_groups)``, where the groups are ``defaultdict``s filled
     in pair order (token F1: closing order; exact F1: the iteration order of the set of pairs). That order
     depends on string hashing (PYTHONHASHSEED), so the last bit of a mean over three or more tags can differ
     between processes; within one process, building the same containers the same way gives the same bits.
 14. Every value is a Python ``float`` (never an int such as 1 or 0).

TRL interface
 15. Signatures ``(completions, raw_text, **kwargs)`` and ``(completions, gold, **kwargs)``: the gold tagged
     text comes from a dataset column named ``gold`` (the published train_grpo.py builds it from
     ``str(row['gold_span'])``), the note from ``raw_text``. Completions and column are paired with ``zip``:
     a shorter column silently shortens the result.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter, defaultdict
from typing import Any, Iterable

PUBLISHED_REPO = "biodatlab/medexact-lamar"
PUBLISHED_PATH = "utils/rewards.py"
PUBLISHED_COMMIT = "2c0d9c5f8b54dfd20e0bc0411c3bee7f02c519cc"

# The nine tag names, listed here on purpose rather than imported: the oracle must not share code with the
# module it checks.
NINE_TAG_NAMES = frozenset({
    "contact_related", "gather_info", "define_problem", "treatment_goal", "drug_decision",
    "therapeutic_procedure", "evaluate_result", "defer_decision", "advice_and_precaution",
})

_NINE_TAGS_ANYWHERE = re.compile("</?(?:" + "|".join(sorted(NINE_TAG_NAMES)) + ")>")
_WORDLIKE_TAG = re.compile(r"</?[A-Za-z_]+>")
_JUNK_AT_START = re.compile(r"^[^A-Za-z0-9*]+")
_JUNK_AT_END = re.compile(r"[^A-Za-z0-9*]+$")


# --- points 1-3 --------------------------------------------------------------------------------------------------


def answer_text(completion: Any) -> str:
    if isinstance(completion, list):
        last = completion[-1] if completion else None
        raw = last.get("content", "") if isinstance(last, dict) else ""
    else:
        raw = str(completion)
    if "</think>" in raw:  # raises TypeError for None / numbers, like the published code
        return raw.split("</think>")[-1].strip()
    if raw.strip().startswith("<think>"):  # AttributeError for lists / dicts
        return ""
    return raw


# --- points 4-6 --------------------------------------------------------------------------------------------------


def _without_nine_tags_collapsed(text: str) -> str:
    return " ".join(_NINE_TAGS_ANYWHERE.sub("", text).split())


def fidelity_one(completion: Any, note: str) -> float:
    answer = _without_nine_tags_collapsed(answer_text(completion))
    reference = _without_nine_tags_collapsed(note)
    if not reference:
        return 1.0
    r = difflib.SequenceMatcher(None, answer, reference).ratio()
    if r >= 0.99:
        return 1.0
    if r < 0.90:
        return 0.0
    return (r - 0.90) / 0.09


# --- points 7-9 --------------------------------------------------------------------------------------------------


def clean_inner_text(inner: str) -> str:
    s = _WORDLIKE_TAG.sub("", inner).strip()
    if not s:
        return ""
    opener = "[**" if s.startswith("[**") else ""
    s = opener + _JUNK_AT_START.sub("", s[len(opener):])
    closer = "**]" if s.endswith("**]") else ""
    body = s[: len(s) - len(closer)]
    return (_JUNK_AT_END.sub("", body) + closer).lower()


def closed_span_pairs(tagged: str) -> list[tuple[str, str]]:
    open_after: defaultdict[str, list[int]] = defaultdict(list)
    pairs: list[tuple[str, str]] = []
    lt = tagged.find("<")
    while lt != -1:
        gt = tagged.find(">", lt)
        if gt == -1:  # no '>' after this '<', hence none after any later '<': nothing more can be a tag
            break
        body = tagged[lt + 1 : gt]
        closing = body.startswith("/")
        name = body[1:] if closing else body
        if name not in NINE_TAG_NAMES:
            lt = tagged.find("<", lt + 1)
            continue
        if not closing:
            open_after[name].append(gt + 1)
        elif open_after[name]:
            cleaned = clean_inner_text(tagged[open_after[name].pop() : lt])
            if cleaned:
                pairs.append((name, cleaned))
        lt = tagged.find("<", gt + 1)
    return pairs


# --- points 10-14 ------------------------------------------------------------------------------------------------


def _f1(n_pred: int, n_gold: int, tp: int) -> float:
    if not n_pred or not n_gold:
        return 0.0
    p = tp / n_pred
    r = tp / n_gold
    return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


def _mean_over_categories(pred_groups: dict, gold_groups: dict, overlap) -> float:
    per_category = []
    for category in set(pred_groups) | set(gold_groups):
        p = pred_groups.get(category, ())
        g = gold_groups.get(category, ())
        if not p and not g:
            per_category.append(1.0)
        else:
            per_category.append(_f1(len(p), len(g), overlap(p, g) if p and g else 0))
    return sum(per_category) / len(per_category)


def token_f1_one(completion: Any, gold_tagged: str) -> float:
    pred = closed_span_pairs(answer_text(completion))
    gold = closed_span_pairs(gold_tagged)
    if not pred and not gold:
        return 1.0
    if not pred or not gold:
        return 0.0
    pred_words: defaultdict[str, list[str]] = defaultdict(list)
    gold_words: defaultdict[str, list[str]] = defaultdict(list)
    for tag, s in pred:
        pred_words[tag].extend(s.split())
    for tag, s in gold:
        gold_words[tag].extend(s.split())
    return _mean_over_categories(pred_words, gold_words, lambda p, g: sum((Counter(p) & Counter(g)).values()))


def exact_f1_one(completion: Any, gold_tagged: str) -> float:
    pred = set(closed_span_pairs(answer_text(completion)))
    gold = set(closed_span_pairs(gold_tagged))
    if not pred and not gold:
        return 1.0
    if not pred or not gold:
        return 0.0
    pred_strings: defaultdict[str, set[str]] = defaultdict(set)
    gold_strings: defaultdict[str, set[str]] = defaultdict(set)
    for tag, s in pred:
        pred_strings[tag].add(s)
    for tag, s in gold:
        gold_strings[tag].add(s)
    return _mean_over_categories(pred_strings, gold_strings, lambda p, g: len(p & g))


# --- point 15: the published call signatures -------------------------------------------------------------------


def reward_fidelity(completions: Iterable[Any], raw_text: Iterable[str], **kwargs: Any) -> list[float]:
    return [fidelity_one(c, note) for c, note in zip(completions, raw_text)]


def reward_fast_token_f1(completions: Iterable[Any], gold: Iterable[str], **kwargs: Any) -> list[float]:
    return [token_f1_one(c, g) for c, g in zip(completions, gold)]


def reward_exact_match_f1(completions: Iterable[Any], gold: Iterable[str], **kwargs: Any) -> list[float]:
    return [exact_f1_one(c, g) for c, g in zip(completions, gold)]
