"""GRPO reward functions of LAMAR Model 2 (each in [0, 1], one value per completion), as TRL reward functions.

The three published rewards (SPEC section 4):

- ``fidelity_reward``: the completion must copy the note. Remove the nine tags from both, collapse whitespace,
  r = difflib ratio; 1 if r >= 0.99, 0 if r < 0.90, linear in between.
- ``token_f1_reward``: per tag, the whitespace words of all its span strings as a multiset; F1 of the overlap
  with gold; mean over the tags present in either side.
- ``exact_f1_reward``: the same with the sets of whole span strings.
Both F1 rewards are 1.0 when neither side has a span and 0.0 when only one side has.

An optional fourth, ``official_score_reward``, places the completion's spans in the note
(``utils.pred_to_offset.locate_spans``) and scores them with the official metric (``utils.metric.Scorer``):
(span F1 + token F1) / 2 of that one note.

TRL calls each as ``func(prompts=..., completions=..., completion_ids=..., **dataset_columns)``: the gold tagged
text arrives in the ``gold_span`` column, the note in ``raw_text`` (see ``utils.training.grpo_records``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from utils.categories import TAGS

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
FIDELITY_FULL = 0.99
FIDELITY_ZERO = 0.90

_TAG_PATTERN = re.compile(r"<(/?)(" + "|".join(map(re.escape, TAGS)) + r")>")
_WHITESPACE = re.compile(r"\s+")


# --- completion text ---------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The answer of one completion: the last message's content, without a thinking block.

    Text after ``</think>`` is kept when there is one; a completion that opens ``<think>`` and never closes
    it has no answer ("").
    """
    if isinstance(completion, Mapping):
        content = completion.get("content", "")
    elif isinstance(completion, Sequence) and not isinstance(completion, str):
        content = completion[-1].get("content", "") if completion else ""
    else:
        content = completion
    text = content if isinstance(content, str) else ""
    if THINK_CLOSE in text:
        return text.split(THINK_CLOSE)[-1]
    if text.lstrip().startswith(THINK_OPEN):
        return ""
    return text


# --- fidelity ----------------------------------------------------------------------------------------------------


def strip_tags(text: str) -> str:
    """The text with the nine inline tags (opening and closing) removed; other angle brackets stay."""
    return _TAG_PATTERN.sub("", text)


def collapse_whitespace(text: str) -> str:
    """Every whitespace run as one space, no leading or trailing space."""
    return _WHITESPACE.sub(" ", text).strip()


def fidelity_ratio(output: str, note: str) -> float:
    """difflib similarity of the untagged, whitespace-collapsed output and note."""
    return difflib.SequenceMatcher(None, collapse_whitespace(strip_tags(output)),
                                   collapse_whitespace(strip_tags(note))).ratio()


def fidelity_score(output: str, note: str) -> float:
    """1 at ratio >= 0.99, 0 below 0.90, linear ramp (r - 0.90) / 0.09 in between."""
    ratio = fidelity_ratio(output, note)
    if ratio >= FIDELITY_FULL:
        return 1.0
    if ratio < FIDELITY_ZERO:
        return 0.0
    return (ratio - FIDELITY_ZERO) / (FIDELITY_FULL - FIDELITY_ZERO)


# --- span strings ------------------------------------------------------------------------------------------------


def _trim_edges(text: str) -> str:
    """Drop leading/trailing characters that are neither alphanumeric nor '*', keeping a '[**' start / '**]' end."""
    start, end = 0, len(text)
    while start < end and not text.startswith("[**", start) and not (text[start].isalnum() or text[start] == "*"):
        start += 1
    while end > start and not text.endswith("**]", start, end) and not (text[end - 1].isalnum() or text[end - 1] == "*"):
        end -= 1
    return text[start:end]


def normalize_span_string(inner: str) -> str:
    """A tagged span's text as compared: tags removed, stripped, edges trimmed, lowercased."""
    return _trim_edges(strip_tags(inner).strip()).lower()


def span_strings(tagged: str) -> dict[str, list[str]]:
    """Tag -> normalised strings of its closed spans, in closing order (a stack of open positions per tag).

    A closing tag without an open one and tags never closed produce nothing; empty strings are dropped.
    """
    open_positions: dict[str, list[int]] = {tag: [] for tag in TAGS}
    found: dict[str, list[str]] = {}
    for match in _TAG_PATTERN.finditer(tagged):
        closing, tag = match.group(1) == "/", match.group(2)
        if not closing:
            open_positions[tag].append(match.end())
        elif open_positions[tag]:
            text = normalize_span_string(tagged[open_positions[tag].pop() : match.start()])
            if text:
                found.setdefault(tag, []).append(text)
    return found


# --- F1 rewards ---------------------------------------------------------------------------------------------------


def f1_of_counts(predicted: Counter, gold: Counter) -> float:
    """F1 of two multisets (Counter intersection); 0 when they share nothing."""
    overlap = sum((predicted & gold).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(predicted.values())
    recall = overlap / sum(gold.values())
    return 2 * precision * recall / (precision + recall)


def _mean_over_tags(predicted: Mapping[str, Counter], gold: Mapping[str, Counter]) -> float:
    """Mean F1 over tags present on either side; 1.0 when neither has any, 0.0 when only one has."""
    tags = [tag for tag in TAGS if predicted.get(tag) or gold.get(tag)]
    if not tags:
        return 1.0
    if not any(predicted.get(tag) for tag in tags) or not any(gold.get(tag) for tag in tags):
        return 0.0
    return sum(f1_of_counts(predicted.get(tag, Counter()), gold.get(tag, Counter())) for tag in tags) / len(tags)


def token_f1(output: str, gold_tagged: str) -> float:
    """Per tag, F1 of the multisets of whitespace words of its span strings; mean over tags present."""
    def words(strings: dict[str, list[str]]) -> dict[str, Counter]:
        return {tag: Counter(word for s in items for word in s.split()) for tag, items in strings.items()}

    return _mean_over_tags(words(span_strings(output)), words(span_strings(gold_tagged)))


def exact_f1(output: str, gold_tagged: str) -> float:
    """Per tag, F1 of the sets of whole span strings; mean over tags present."""
    def sets(strings: dict[str, list[str]]) -> dict[str, Counter]:
        return {tag: Counter(set(items)) for tag, items in strings.items()}

    return _mean_over_tags(sets(span_strings(output)), sets(span_strings(gold_tagged)))


# --- TRL reward functions --------------------------------------------------------------------------------------


def _column(kwargs: Mapping[str, Any], name: str, n: int) -> list[Any]:
    values = kwargs.get(name)
    if values is None or len(values) != n:
        raise KeyError(f"reward needs the dataset column {name!r} with one value per completion "
                       f"(got {None if values is None else len(values)} for {n} completions)")
    return list(values)


def fidelity_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """TRL reward: how faithfully the untagged completion copies the note (``raw_text`` column)."""
    notes = _column(kwargs, "raw_text", len(completions))
    return [fidelity_score(completion_text(c), note) for c, note in zip(completions, notes)]


def token_f1_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """TRL reward: per-tag word-multiset F1 against the gold tagged text (``gold_span`` column)."""
    golds = _column(kwargs, "gold_span", len(completions))
    return [token_f1(completion_text(c), gold) for c, gold in zip(completions, golds)]


def exact_f1_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """TRL reward: per-tag whole-string F1 against the gold tagged text (``gold_span`` column)."""
    golds = _column(kwargs, "gold_span", len(completions))
    return [exact_f1(completion_text(c), gold) for c, gold in zip(completions, golds)]


class OfficialScoreReward:
    """Optional TRL reward: the official (span F1 + token F1) / 2 of one note's located spans.

    Needs the ``file_id``, ``raw_text`` and ``gold_offsets`` columns. A Scorer per note is built once and
    cached, since tokenising the gold note is the expensive part.
    """

    __name__ = "official_score_reward"

    def __init__(self) -> None:
        self._scorers: dict[str, Any] = {}

    def _scorer(self, file_id: str, text: str, gold_offsets: str):
        from utils.metric import Scorer
        from utils.predictions import Span

        key = f"{file_id}\x00{len(text)}\x00{gold_offsets}"
        if key not in self._scorers:
            gold = [Span(int(s), int(e), int(c)) for s, e, c in json.loads(gold_offsets or "[]")]
            self._scorers[key] = Scorer({file_id: gold}, {file_id: text})
        return self._scorers[key]

    def score_one(self, file_id: str, text: str, gold_offsets: str, output: str) -> float:
        from utils.pred_to_offset import locate_spans

        spans = locate_spans(text, output).spans
        return float(self._scorer(file_id, text, gold_offsets).base_score({file_id: spans}))

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        ids, notes, golds = (_column(kwargs, name, n) for name in ("file_id", "raw_text", "gold_offsets"))
        return [self.score_one(str(i), t, g, completion_text(c)) for c, i, t, g in zip(completions, ids, notes, golds)]


official_score_reward = OfficialScoreReward()

PUBLISHED_REWARDS = (fidelity_reward, token_f1_reward, exact_f1_reward)
REWARDS_BY_NAME = {
    "fidelity": fidelity_reward,
    "token_f1": token_f1_reward,
    "exact_f1": exact_f1_reward,
    "official": official_score_reward,
}


def reward_functions(names: Iterable[str]) -> list[Any]:
    """Reward callables by name (fidelity, token_f1, exact_f1, official), in the order given."""
    chosen = []
    for name in names:
        if name not in REWARDS_BY_NAME:
            raise ValueError(f"unknown reward {name!r}; expected one of {', '.join(REWARDS_BY_NAME)}")
        chosen.append(REWARDS_BY_NAME[name])
    return chosen
