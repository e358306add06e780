"""utils/rewards.py gives the published GRPO rewards exactly: same value (to the last bit) and same type.

The reference is tests/oracles/published_rewards.py, a transcription of biodatlab/medexact-lamar
``utils/rewards.py`` at 2c0d9c5 (see its docstring for every rule). The hand-written numbers below were obtained
by running those published functions on the same inputs; each test names the published rule it pins down.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.paths import REPO_ROOT, load_module_from_path
from utils.rewards import (
    completion_text,
    exact_f1,
    exact_f1_reward,
    fidelity_reward,
    fidelity_score,
    normalize_span_string,
    tagged_span_strings,
    token_f1,
    token_f1_reward,
)

ORACLE = load_module_from_path("tests/oracles/published_rewards.py", "lamar_oracle_published_rewards")
FUZZ = load_module_from_path("tests/oracles/reward_fuzz.py", "lamar_oracle_reward_fuzz")
N_FUZZ = 6000

Case = tuple[Any, str, str]  # (completion, note, gold tagged text)

OURS: dict[str, Callable[[Any, str, str], Any]] = {
    "fidelity": lambda c, note, gold: fidelity_reward([c], raw_text=[note])[0],
    "token_f1": lambda c, note, gold: token_f1_reward([c], gold_span=[gold])[0],
    "exact_f1": lambda c, note, gold: exact_f1_reward([c], gold_span=[gold])[0],
}
PUBLISHED: dict[str, Callable[[Any, str, str], Any]] = {
    "fidelity": lambda c, note, gold: ORACLE.reward_fidelity([c], [note])[0],
    "token_f1": lambda c, note, gold: ORACLE.reward_fast_token_f1([c], [gold])[0],
    "exact_f1": lambda c, note, gold: ORACLE.reward_exact_match_f1([c], [gold])[0],
}


def outcome(reward: Callable[[Any, str, str], Any], case: Case) -> tuple:
    """("value", v, type(v)) or ("raises",): equal outcomes mean the same value AND the same type."""
    try:
        value = reward(*case)
    except Exception:  # the published code raises on message content that is not a string; so must we
        return ("raises",)
    return ("value", value, type(value))


def as_chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# --- fuzzed completions -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return list(FUZZ.fuzz_cases(N_FUZZ))


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["fidelity", "token_f1", "exact_f1"])
def test_reward_equals_published_on_fuzzed_completions(reward: str, corpus: list[Case]) -> None:
    ours, published = OURS[reward], PUBLISHED[reward]
    outcomes = [(outcome(ours, case), outcome(published, case)) for case in corpus]
    mismatches = [(i, mine, theirs) for i, (mine, theirs) in enumerate(outcomes) if mine != theirs]
    if mismatches:
        i, mine, theirs = mismatches[0]
        pytest.fail(f"{reward}: {len(mismatches)}/{len(corpus)} cases differ from the published reward; "
                    f"first, case {i}: ours {mine}, published {theirs}, input {corpus[i]!r}")
    # The corpus must reach every regime, or agreement would prove little.
    values = [theirs[1] for _, theirs in outcomes if theirs[0] == "value"]
    regimes = Counter("one" if v == 1.0 else "zero" if v == 0.0 else "between" for v in values)
    assert len(corpus) - len(values) >= 100  # completions the published code raises on
    assert min(regimes.values()) >= (500 if reward == "fidelity" else 800), regimes


# A test-local alphabet of pieces that hit every rule of the span cleaning.
SPAN_PIECES = (
    "[**", "**]", "*", "**", "[", "]", "(", ")", ".", ",", "-", " ", "  ", "\n", "\t", "\u00a0", "\u2028", "\x1c",
    "a", "Z", "9", "word", "é", "µ", "°", "–", "“", "”", "İ", "ß", "²", "١", "Ⅳ", "_", "<b>", "</b>", "<h1>",
    "<Drug_decision>", "</foo_bar>", "< b>", "<a x>", "<", ">", "/", "<drug_decision>", "</drug_decision>",
)
TAG_PIECES = SPAN_PIECES + (
    "<define_problem>", "</define_problem>", "<gather_info>", "</gather_info>", "<drug_decision >",
    "</Drug_decision>", "<//drug_decision>", "<<define_problem>>", "<define_problem",
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(SPAN_PIECES) | st.characters(), max_size=14).map("".join))
def test_span_cleaning_equals_published(inner: str) -> None:
    assert normalize_span_string(inner) == ORACLE.clean_inner_text(inner)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(TAG_PIECES), max_size=30).map("".join))
def test_span_extraction_equals_published(tagged: str) -> None:
    assert tagged_span_strings(tagged) == ORACLE.closed_span_pairs(tagged)


# --- one test per published rule, with the published numbers ----------------------------------------------------


def test_any_word_tag_inside_a_span_is_removed() -> None:
    output = "<drug_decision>start <b>aspirin</b></drug_decision>"
    gold = "<drug_decision>start aspirin</drug_decision>"
    assert (token_f1(output, gold), exact_f1(output, gold)) == (1.0, 1.0)  # only the nine removed: 0.5, 0.0
    assert normalize_span_string("a <Drug_decision>b</foo_bar> c") == "a b c"
    assert normalize_span_string("a <h1>b <foo-bar> c") == "a <h1>b <foo-bar> c"  # digits, '-': not tags


@pytest.mark.parametrize(
    ("inner", "expected"),
    [("café", "caf"), ("CAFÉ", "caf"), ("µg", "g"), ("5 °C", "5 °c"), ("(İnr)", "nr"), ("x²", "x")],
)
def test_span_edges_are_trimmed_to_ascii_letters_digits_and_stars(inner: str, expected: str) -> None:
    assert normalize_span_string(inner) == expected


def test_unicode_edges_count_as_punctuation_in_the_f1_rewards() -> None:
    assert token_f1("<define_problem>café</define_problem>", "<define_problem>caf</define_problem>") == 1.0
    assert exact_f1("<drug_decision>µg</drug_decision>", "<drug_decision>g</drug_decision>") == 1.0


@pytest.mark.parametrize(
    ("inner", "expected"),
    [
        ("([**Name**])", "**name**"),  # '[**' not at the very start, '**]' not at the very end
        ("Dr. [**Name**].", "dr. [**name**"),
        ("[** 12**]", "[**12**]"),  # after a kept '[**' the leading run is still trimmed
        ("[**]", "[**"),
        ("**]", "**]"),
        ("a\n**]", "a**]"),
    ],
)
def test_placeholder_brackets_are_kept_only_at_the_very_ends(inner: str, expected: str) -> None:
    assert normalize_span_string(inner) == expected


def test_placeholder_in_brackets_does_not_match_the_bare_placeholder() -> None:
    gold = "<contact_related>[**Name**]</contact_related>"
    assert token_f1("<contact_related>([**Name**])</contact_related>", gold) == 0.0
    assert token_f1("<contact_related>[**Name**]</contact_related>", gold) == 1.0


def test_fidelity_ramp_divides_by_the_literal_009() -> None:
    note = "abcdefghij" * 10
    output = "#" * 5 + note[5:]  # ratio 0.95
    assert fidelity_score(output, note) == 0.5555555555555548  # published value
    assert fidelity_score(output, note) != (0.95 - 0.90) / (0.99 - 0.90)  # 0.555555555555555


@pytest.mark.parametrize("output", ["anything at all", "", "<drug_decision>x</drug_decision>"])
@pytest.mark.parametrize("note", ["", "  \n\t", "<define_problem></define_problem>"])
def test_an_empty_note_gives_full_fidelity(output: str, note: str) -> None:
    assert fidelity_reward([as_chat(output)], raw_text=[note]) == [1.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (as_chat("<think>\n\n</think>\n\n answer \n"), "answer"),
        (as_chat(" <think>never closed"), ""),
        (None, "None"),
        ({"role": "assistant", "content": "x"}, "{'role': 'assistant', 'content': 'x'}"),
        (("a",), "('a',)"),
        (["plain string in a list"], ""),
        ([{"role": "assistant"}], ""),
        ([], ""),
    ],
)
def test_completion_containers_as_published(completion: Any, expected: str) -> None:
    assert completion_text(completion) == expected


@pytest.mark.parametrize("content", [None, 3, [{"type": "text", "text": "x"}]])
def test_non_string_content_raises_like_the_published_code(content: Any) -> None:
    with pytest.raises(TypeError, match="content must be a string"):
        completion_text([{"role": "assistant", "content": content}])
    with pytest.raises(Exception):
        ORACLE.answer_text([{"role": "assistant", "content": content}])


def test_every_reward_value_is_a_float() -> None:
    completions = [as_chat("x"), as_chat(""), "<drug_decision>x</drug_decision>", None]
    columns = {"raw_text": ["x", "", "x", "None"], "gold_span": ["", "", "<drug_decision>x</drug_decision>", "y"]}
    for reward in (fidelity_reward, token_f1_reward, exact_f1_reward):
        assert [type(v) for v in reward(completions, **columns)] == [float] * 4


# Three tags whose F1s (2/3, 6/7, 4/9) sum to three different floats depending on the order of addition.
ORDER_OUTPUT = ("<define_problem>a</define_problem> <drug_decision>a b c</drug_decision>"
                " <gather_info>a b x</gather_info>")
ORDER_GOLD = ("<define_problem>a b</define_problem> <drug_decision>a b c d</drug_decision>"
              " <gather_info>a b y z w v</gather_info>")
ORDER_SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from utils.paths import load_module_from_path
from utils.rewards import token_f1_reward, exact_f1_reward
oracle = load_module_from_path("tests/oracles/published_rewards.py", "oracle")
fuzz = load_module_from_path("tests/oracles/reward_fuzz.py", "fuzz")
cases = [({ORDER_OUTPUT!r}, "", {ORDER_GOLD!r})] + list(fuzz.fuzz_cases(800, seed=7))
def safe(f, *a, **kw):
    try:
        return f(*a, **kw)
    except Exception:
        return "raises"
ours = [safe(token_f1_reward, [c], gold_span=[g]) for c, _, g in cases]
ours += [safe(exact_f1_reward, [c], gold_span=[g]) for c, _, g in cases]
theirs = [safe(oracle.reward_fast_token_f1, [c], [g]) for c, _, g in cases]
theirs += [safe(oracle.reward_exact_match_f1, [c], [g]) for c, _, g in cases]
print(json.dumps({{"equal": ours == theirs, "order_case": ours[0][0]}}))
"""


@pytest.mark.slow
def test_summation_order_follows_the_published_set_order_under_any_hash_seed() -> None:
    """The published mean sums per-tag F1 in string-set order (PYTHONHASHSEED): ours must follow it exactly."""
    seen = set()
    for seed in range(6):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        run = subprocess.run([sys.executable, "-c", ORDER_SCRIPT], env=env, capture_output=True, text=True, check=True)
        result = json.loads(run.stdout)
        assert result["equal"], f"PYTHONHASHSEED={seed}: ours differs from the published rewards"
        seen.add(result["order_case"])
    sums = {sum(p) / 3 for p in itertools.permutations((2 / 3, 6 / 7, 4 / 9))}
    assert len(sums) == 3 and seen <= sums
    assert len(seen) >= 2  # the published value really depends on the hash seed
