"""Official span refinement (utils/metric/spans.py): examples, and the Treebank shortcut equal to the full path."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import utils.metric.spans as spans
from utils.metric.spans import refine_span, refined_text


def _refine_without_shortcut(text, start, end):
    """refine_span forced through Treebank tokenisation (the function's shortcut disabled)."""
    original = spans._no_quote_rewriting
    spans._no_quote_rewriting = lambda piece: False
    try:
        return refine_span(text, start, end)
    finally:
        spans._no_quote_rewriting = original


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet='ab1 .,;:-()[]*"\'`é\n\t?$', max_size=30), st.integers(-35, 35), st.integers(-35, 35))
def test_refine_shortcut_equals_treebank_path(text, start, end):
    try:
        slow = _refine_without_shortcut(text, start, end)
    except (ValueError, StopIteration, RuntimeError):  # the official code crashes on these inputs too
        return
    assert refine_span(text, start, end) == slow


def test_the_shortcut_answers_plain_spans_and_leaves_quotes_and_brackets_to_treebank():
    assert spans._predictable_content(" stop aspirin. ") == (1, 13)  # final '.' split off, as Treebank does
    assert spans._predictable_content('"stop" aspirin') is None  # quotes are rewritten by Treebank
    assert spans._predictable_content("[**Name**] seen") is None  # a non-alphanumeric first character
    text = "Plan: stop aspirin. Then rest."
    assert refine_span(text, 6, 19) == _refine_without_shortcut(text, 6, 19) == (6, 18)


def test_refine_span_examples():
    text = 'He said "stop aspirin." Then [**Hospital1 18**], ok...'
    assert refined_text(text, 8, 23) == "stop aspirin"  # leading quote and trailing period dropped
    assert refined_text(text, 11, 18) == "stop aspirin"  # widened from inside both words
    assert refined_text(text, 29, 47) == "[**hospital1 18**]"  # MIMIC brackets kept
    assert refined_text(text, 47, 55) == "ok"
    assert refine_span(text, 49, 55) == (49, 51)  # ', ok...' -> 'ok'
    assert refine_span(text, 22, 24) is None  # punctuation and space only
    assert refine_span("", 0, 3) is None
    assert refine_span("abc def", -3, 100) == (-3, 0)  # as officially: the slice text[-3:0] is empty
