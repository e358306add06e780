"""GRPO reward functions of LAMAR Model 2 (each in [0, 1], one value per completion), as TRL reward functions.

The three published rewards (SPEC section 4), identical in value and type to those of the published code
(biodatlab/medexact-lamar ``utils/rewards.py`` at 2c0d9c5; checked against a transcription of it,
tests/oracles/published_rewards.py, on thousands of generated completions in tests/test_rewards_oracle.py):

- ``fidelity_reward``: the completion must copy the note. Remove the nine tags from both, collapse whitespace,
  r = difflib ratio; 1 if r >= 0.99, 0 if r < 0.90, (r - 0.90) / 0.09 in between; 1 when the note is empty.
- ``token_f1_reward``: per tag, the whitespace words of all its span strings as a multiset; F1 of the overlap
  with gold; mean over the tags present in either side.
- ``exact_f1_reward``: the same with the sets of whole span strings.
Both F1 rewards are 1.0 when neither side has a span and 0.0 when only one has.

The published behaviour is kept even where it looks accidental (ASCII-only edge trimming, ``[**``/``**]`` kept
only at the very ends of a span, any ``<word>`` tag removed inside spans, a bare message dict read through
``str()``): the rewards define what GRPO optimised, so a reproduction must compute the same numbers. Each
function's docstring says which published rule it implements.

An optional fourth, ``official_score_reward`` (ours, not published), places the completion's spans in the note
(``utils.tagging.locate.locate_spans``) and scores them with the official metric (``utils.metric.Scorer``):
(span F1 + token F1) / 2 of that one note.

TRL calls each as ``func(prompts=..., completions=..., completion_ids=..., **dataset_columns)``: the gold tagged
text arrives in the ``gold_span`` column (the published script names that column ``gold``), the note in
``raw_text`` (see ``utils.training.data.grpo_records``). The published path ``utils/rewards.py`` re-exports
this module.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from utils.metric.rules import DEFAULT_SCORER, check_scorer
from utils.tagging.tags import TAG_PATTERN, remove_think, strip_tags

FIDELITY_FULL = 0.99
FIDELITY_ZERO = 0.90
# The published ramp divides by the literal 0.09; FIDELITY_FULL - FIDELITY_ZERO is 0.08999999999999997.
FIDELITY_RAMP_WIDTH = 0.09
PLACEHOLDER_OPEN = "[**"
PLACEHOLDER_CLOSE = "**]"

# Inside a span, any tag made of ASCII letters and underscores goes: the nine, but also <b>, </i>, <foo_bar>.
_WORD_TAG = re.compile(r"</?[A-Za-z_]+>")
# Span edges are trimmed down to an ASCII letter, digit or '*' (not str.isalnum: 'é', 'µ', '²' are trimmed).
_LEADING_NON_WORD = re.compile(r"\A[^A-Za-z0-9*]+")
_TRAILING_NON_WORD = re.compile(r"[^A-Za-z0-9*]+\Z")


# --- completion text ---------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The answer of one completion, as the published rewards read it.

    A list (TRL's conversational format) gives the ``content`` of its last element if that is a dict, else "";
    anything else goes through ``str()`` (a plain string unchanged; a bare message dict becomes its repr, as
    published). With a ``</think>``, the answer is the stripped text after the last one; a text that starts
    with ``<think>`` and never closes it has no answer (""); otherwise the text is returned as is.
    """
    if isinstance(completion, list):
        last = completion[-1] if completion else None
        text = last.get("content", "") if isinstance(last, dict) else ""
    else:
        text = str(completion)
    if not isinstance(text, str):
        raise TypeError(f"a completion message's content must be a string, got {type(text).__name__}")
    answer, think = remove_think(text)
    return answer.strip() if think == "removed" else answer


# --- fidelity ----------------------------------------------------------------------------------------------------


def collapse_whitespace(text: str) -> str:
    """Every whitespace run (``str.split``: Unicode whitespace) as one space, no leading or trailing space."""
    return " ".join(text.split())


def untagged_text(text: str) -> str:
    """What fidelity compares: the text without the nine exact tags, whitespace collapsed."""
    return collapse_whitespace(strip_tags(text))


def fidelity_ratio(output: str, note: str) -> float:
    """difflib similarity of the untagged output and note (output first: the ratio is not symmetric)."""
    return difflib.SequenceMatcher(None, untagged_text(output), untagged_text(note)).ratio()


def fidelity_score(output: str, note: str) -> float:
    """1 at ratio >= 0.99, 0 below 0.90, (r - 0.90) / 0.09 in between; 1.0 for an empty note, as published."""
    if not untagged_text(note):
        return 1.0
    ratio = fidelity_ratio(output, note)
    if ratio >= FIDELITY_FULL:
        return 1.0
    if ratio < FIDELITY_ZERO:
        return 0.0
    return (ratio - FIDELITY_ZERO) / FIDELITY_RAMP_WIDTH


# --- span strings ------------------------------------------------------------------------------------------------


def _trim_leading(text: str) -> str:
    """Drop the leading run of characters other than ASCII letters, digits and '*', keeping a '[**' start."""
    kept = PLACEHOLDER_OPEN if text.startswith(PLACEHOLDER_OPEN) else ""
    return kept + _LEADING_NON_WORD.sub("", text[len(kept):])


def _trim_trailing(text: str) -> str:
    """Drop the trailing run of characters other than ASCII letters, digits and '*', keeping a '**]' end."""
    kept = PLACEHOLDER_CLOSE if text.endswith(PLACEHOLDER_CLOSE) else ""
    return _TRAILING_NON_WORD.sub("", text[: len(text) - len(kept)]) + kept


def normalize_span_string(inner: str) -> str:
    """A tagged span's text as the published F1 rewards compare it.

    Every ``</?[A-Za-z_]+>`` tag removed (not only the nine), stripped, the leading then the trailing edge
    trimmed (a ``[**`` / ``**]`` survives only at the very start / end of the whole string, and the start is
    trimmed before the end is tested), lowercased.
    """
    text = _WORD_TAG.sub("", inner).strip()
    return _trim_trailing(_trim_leading(text)).lower() if text else ""


def tagged_span_strings(tagged: str) -> list[tuple[str, str]]:
    """(tag, normalised string) of every closed span, in closing order; empty strings dropped.

    Each of the nine tags has its own stack of open positions: a closing tag pairs with the latest open one of
    its name; a closing tag with nothing open and tags never closed produce nothing. Only the exact
    case-sensitive tags count (``<drug_decision >`` or ``<Drug_decision>`` are text here).
    """
    open_positions: defaultdict[str, list[int]] = defaultdict(list)
    found: list[tuple[str, str]] = []
    for match in TAG_PATTERN.finditer(tagged):
        closing, tag = match.group(1) == "/", match.group(2)
        if not closing:
            open_positions[tag].append(match.end())
        elif open_positions[tag]:
            text = normalize_span_string(tagged[open_positions[tag].pop() : match.start()])
            if text:
                found.append((tag, text))
    return found


# --- F1 rewards ---------------------------------------------------------------------------------------------------


def f1_from_sizes(n_predicted: int, n_gold: int, overlap: int) -> float:
    """F1 = 2PR / (P + R) with P = overlap / n_predicted, R = overlap / n_gold; 0.0 if either side is empty."""
    if not n_predicted or not n_gold:
        return 0.0
    precision = overlap / n_predicted
    recall = overlap / n_gold
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _mean_over_tags(predicted: Mapping[str, Any], gold: Mapping[str, Any],
                    tag_f1: Callable[[Any, Any], float]) -> float:
    """Mean over the tags on either side of ``tag_f1`` (0.0 for a tag on one side only), summed as published.

    That order is the iteration order of ``set(predicted) | set(gold)``, a set of strings (so it follows
    PYTHONHASHSEED): float addition is not associative, and the callers build ``predicted`` and ``gold`` as
    the same ``defaultdict``s filled in the same order as published, so the sum is the same to the last bit.
    """
    scores = [tag_f1(predicted[tag], gold[tag]) if tag in predicted and tag in gold else 0.0
              for tag in set(predicted) | set(gold)]
    return sum(scores) / len(scores)


def token_f1(output: str, gold_tagged: str) -> float:
    """Per tag, F1 of the multisets of whitespace words of its span strings; mean over tags present."""
    predicted_spans, gold_spans = tagged_span_strings(output), tagged_span_strings(gold_tagged)
    if not predicted_spans or not gold_spans:
        return 1.0 if not predicted_spans and not gold_spans else 0.0

    def words_by_tag(spans: list[tuple[str, str]]) -> defaultdict[str, list[str]]:
        words: defaultdict[str, list[str]] = defaultdict(list)
        for tag, text in spans:
            words[tag].extend(text.split())
        return words

    def tag_f1(predicted: list[str], gold: list[str]) -> float:
        return f1_from_sizes(len(predicted), len(gold), sum((Counter(predicted) & Counter(gold)).values()))

    return _mean_over_tags(words_by_tag(predicted_spans), words_by_tag(gold_spans), tag_f1)


def exact_f1(output: str, gold_tagged: str) -> float:
    """Per tag, F1 of the sets of whole span strings; mean over tags present.

    As published, the (tag, string) pairs are first deduplicated as a set, whose iteration order fixes the
    order of the per-tag groups (and so the summation order, see ``_mean_over_tags``).
    """
    predicted_spans, gold_spans = set(tagged_span_strings(output)), set(tagged_span_strings(gold_tagged))
    if not predicted_spans or not gold_spans:
        return 1.0 if not predicted_spans and not gold_spans else 0.0

    def strings_by_tag(spans: set[tuple[str, str]]) -> defaultdict[str, set[str]]:
        strings: defaultdict[str, set[str]] = defaultdict(set)
        for tag, text in spans:
            strings[tag].add(text)
        return strings

    def tag_f1(predicted: set[str], gold: set[str]) -> float:
        return f1_from_sizes(len(predicted), len(gold), len(predicted & gold))

    return _mean_over_tags(strings_by_tag(predicted_spans), strings_by_tag(gold_spans), tag_f1)


# --- TRL reward functions --------------------------------------------------------------------------------------


def _column(kwargs: Mapping[str, Any], name: str, n: int) -> list[Any]:
    """A dataset column with one value per completion.

    The one deliberate difference from the published rewards: they ``zip`` completions with the column, so a
    missing column is a TypeError and a short one silently shortens the rewards; TRL always passes one value
    per completion, so anything else is a wiring mistake and stops here with the column's name.
    """
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
    cached, since tokenising the gold note is the expensive part. ``rule``: the scorer (``--scorer``; default the
    published one, see :mod:`utils.metric.tokens`).
    """

    __name__ = "official_score_reward"

    def __init__(self, rule: str = DEFAULT_SCORER) -> None:
        self.rule = check_scorer(rule)
        self._scorers: dict[str, Any] = {}

    def _scorer(self, file_id: str, text: str, gold_offsets: str):
        from utils.meddec.predictions import Span
        from utils.metric import Scorer

        key = f"{file_id}\x00{len(text)}\x00{gold_offsets}"
        if key not in self._scorers:
            gold = [Span(int(s), int(e), int(c)) for s, e, c in json.loads(gold_offsets or "[]")]
            self._scorers[key] = Scorer({file_id: gold}, {file_id: text}, rule=self.rule)
        return self._scorers[key]

    def score_one(self, file_id: str, text: str, gold_offsets: str, output: str) -> float:
        from utils.tagging.locate import locate_spans

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


def reward_functions(names: Iterable[str], scorer: str = DEFAULT_SCORER) -> list[Any]:
    """Reward callables by name (fidelity, token_f1, exact_f1, official), in the order given; ``official`` scores
    with ``scorer`` (``--scorer``)."""
    chosen = []
    for name in names:
        if name not in REWARDS_BY_NAME:
            raise ValueError(f"unknown reward {name!r}; expected one of {', '.join(REWARDS_BY_NAME)}")
        reward = REWARDS_BY_NAME[name]
        if name == "official" and check_scorer(scorer) != official_score_reward.rule:
            reward = OfficialScoreReward(scorer)
        chosen.append(reward)
    return chosen
