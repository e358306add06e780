"""The three published GRPO rewards (and the optional official-score reward) on hand-made completions."""

from __future__ import annotations

import difflib
import json

import pytest

from utils.rewards import (
    completion_text,
    exact_f1,
    exact_f1_reward,
    fidelity_reward,
    fidelity_score,
    normalize_span_string,
    official_score_reward,
    reward_functions,
    tagged_span_strings,
    token_f1,
    token_f1_reward,
)

NOTE = "Started aspirin 81 mg daily.\nCT head negative. Follow up with [**Hospital1 18**] in 2 weeks."
GOLD = ("<drug_decision>Started aspirin 81 mg daily</drug_decision>.\n<evaluate_result>CT head negative"
        "</evaluate_result>. <contact_related>Follow up with [**Hospital1 18**] in 2 weeks</contact_related>.")


def as_chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# --- completion text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain answer", "plain answer"),
        ("<think>\n\n</think>\n\nanswer", "answer"),  # the text after </think> is stripped
        ("<think>r</think>\n a  b \n", "a  b"),  # ...but only that text; without </think> nothing is stripped
        ("  plain  ", "  plain  "),
        ("<think>reasoning</think>answer", "answer"),
        ("<think>a</think>b</think>c", "c"),  # text after the last </think>
        ("<think>never closed <define_problem>x</define_problem>", ""),
        ("  <think>never closed", ""),
        ("", ""),
    ],
)
def test_completion_text_think_rules(content: str, expected: str) -> None:
    assert completion_text(as_chat(content)) == expected
    assert completion_text(content) == expected


def test_completion_text_takes_the_last_message() -> None:
    messages = [{"role": "assistant", "content": "first"}, {"role": "assistant", "content": "last"}]
    assert completion_text(messages) == "last"
    assert completion_text([]) == ""


# --- fidelity ---------------------------------------------------------------------------------------------------


def test_fidelity_ignores_tags_and_whitespace_runs() -> None:
    assert fidelity_score(GOLD, NOTE) == 1.0
    assert fidelity_score(NOTE.replace("\n", "   \n\t "), NOTE) == 1.0


def test_fidelity_ramp_between_090_and_099() -> None:
    note = "abcdefghij" * 10  # 100 characters
    for changed, ratio in ((5, 0.95), (20, 0.80), (1, 0.99)):
        output = "#" * changed + note[changed:]
        assert difflib.SequenceMatcher(None, output, note).ratio() == pytest.approx(ratio)
    assert fidelity_score("#" * 5 + note[5:], note) == pytest.approx((0.95 - 0.90) / 0.09)
    assert fidelity_score("#" * 20 + note[20:], note) == 0.0
    assert fidelity_score("#" + note[1:], note) == 1.0  # r = 0.99 exactly: full reward


def test_fidelity_reward_reads_the_raw_text_column() -> None:
    rewards = fidelity_reward([as_chat(GOLD), as_chat("<think>unclosed"), as_chat("")], raw_text=[NOTE] * 3)
    assert rewards == [1.0, 0.0, 0.0]
    with pytest.raises(KeyError, match="raw_text"):
        fidelity_reward([as_chat(GOLD)])


# --- span strings -----------------------------------------------------------------------------------------------


def test_span_strings_per_tag_with_nesting_crossing_and_normalisation() -> None:
    text = ("<drug_decision>Continue warfarin for <treatment_goal>stroke prevention</treatment_goal>."
            "</drug_decision> <define_problem>(A <evaluate_result>B</define_problem> C)</evaluate_result>"
            " <contact_related>- see [**Hospital1 18**]. </contact_related>")
    assert tagged_span_strings(text) == [  # in closing order
        ("treatment_goal", "stroke prevention"),
        ("drug_decision", "continue warfarin for stroke prevention"),
        ("define_problem", "a b"),
        ("evaluate_result", "b c"),
        ("contact_related", "see [**hospital1 18**"),  # ends with '.', so '**]' is not protected: '].' trimmed
    ]


def test_span_strings_drop_unclosed_stray_and_empty_spans() -> None:
    text = ("</gather_info><define_problem>open forever <drug_decision>  ... </drug_decision>"
            "<defer_decision>kept</defer_decision><unknown_tag>x</unknown_tag>")
    assert tagged_span_strings(text) == [("defer_decision", "kept")]


@pytest.mark.parametrize(
    ("inner", "expected"),
    [
        ("  (Lasix 40 mg).  ", "lasix 40 mg"),
        ("[**2101-1-1**]", "[**2101-1-1**]"),
        ("*important*", "*important*"),
        ("...[**Name**] called.", "**name**] called"),  # '[**' is kept only at the very start
        ("- -", ""),
    ],
)
def test_normalize_span_string_edges(inner: str, expected: str) -> None:
    assert normalize_span_string(inner) == expected


# --- F1 rewards -------------------------------------------------------------------------------------------------


def test_perfect_output_scores_one_on_both_f1s() -> None:
    assert token_f1(GOLD, GOLD) == 1.0 and exact_f1(GOLD, GOLD) == 1.0


def test_token_and_exact_f1_exact_numbers() -> None:
    output = ("<drug_decision>Started aspirin</drug_decision> 81 mg daily.\n<evaluate_result>CT head negative"
              "</evaluate_result>. <define_problem>Follow up</define_problem> with ...")
    # drug: pred {started, aspirin} vs gold {started, aspirin, 81, mg, daily}: P 1, R 0.4 -> F1 4/7
    # evaluate: 1.0; contact: gold only -> 0; define: pred only -> 0. Mean over 4 tags.
    assert token_f1(output, GOLD) == pytest.approx((4 / 7 + 1.0) / 4)
    assert exact_f1(output, GOLD) == pytest.approx(1.0 / 4)


def test_multiset_counts_repeated_words() -> None:
    gold = "<define_problem>pain pain</define_problem>"
    assert token_f1("<define_problem>pain</define_problem>", gold) == pytest.approx(2 / 3)
    # exact F1 uses sets: the duplicate string counts once
    assert exact_f1("<define_problem>pain pain</define_problem><define_problem>pain pain</define_problem>",
                    gold) == 1.0


def test_empty_sides() -> None:
    assert token_f1("no tags", "no tags either") == 1.0 and exact_f1("", "") == 1.0
    assert token_f1("no tags", GOLD) == 0.0 and exact_f1("no tags", GOLD) == 0.0
    assert token_f1(GOLD, "nothing") == 0.0 and exact_f1(GOLD, "nothing") == 0.0


def test_trl_reward_functions_one_value_per_completion() -> None:
    completions = [as_chat(GOLD), as_chat("<think>\n\n</think>\n\n" + GOLD), as_chat("<think>cut off"),
                   as_chat(NOTE)]
    kwargs = {"gold_span": [GOLD] * 4, "raw_text": [NOTE] * 4, "prompts": [None] * 4}
    assert token_f1_reward(completions, **kwargs) == [1.0, 1.0, 0.0, 0.0]
    assert exact_f1_reward(completions, **kwargs) == [1.0, 1.0, 0.0, 0.0]
    assert fidelity_reward(completions, **kwargs) == [1.0, 1.0, 0.0, 1.0]
    assert [f.__name__ for f in reward_functions(["fidelity", "token_f1", "exact_f1"])] == [
        "fidelity_reward", "token_f1_reward", "exact_f1_reward"]
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        reward_functions(["bleu"])


def test_official_score_reward_uses_located_spans_and_the_official_metric() -> None:
    start = NOTE.index("CT head negative")
    gold_offsets = json.dumps([[0, 27, 5], [start, start + 16, 7]])
    kwargs = {"file_id": ["1_2_3"] * 3, "raw_text": [NOTE] * 3, "gold_offsets": [gold_offsets] * 3}
    perfect = ("<drug_decision>Started aspirin 81 mg daily</drug_decision>.\n"
               "<evaluate_result>CT head negative</evaluate_result>. Follow up with [**Hospital1 18**] in 2 weeks.")
    rewards = official_score_reward([as_chat(perfect), as_chat(NOTE), as_chat(GOLD)], **kwargs)
    assert rewards[0] == 1.0
    assert rewards[1] == 0.0  # no spans at all
    assert 0.0 < rewards[2] < 1.0  # one extra (contact) span


def test_official_reward_scores_with_the_chosen_scorer() -> None:
    """Overlapping spans: the published rule leaves the shared tokens ambiguous, f4374cd gives them the first span."""
    start = NOTE.index("CT head negative")
    gold_offsets = json.dumps([[0, 27, 5], [start, start + 16, 7]])
    kwargs = {"file_id": ["1_2_3"], "raw_text": [NOTE], "gold_offsets": [gold_offsets]}
    nested = ("<drug_decision><evaluate_result>Started aspirin</evaluate_result> 81 mg daily</drug_decision>.\n"
              "<evaluate_result>CT head negative</evaluate_result>. Follow up with [**Hospital1 18**] in 2 weeks.")
    published, meddec = (reward_functions(["official"], scorer)[0] for scorer in ("published", "meddec"))
    assert published is official_score_reward and published.rule == "published"  # the default
    assert meddec.rule == "meddec"
    scores = {f.rule: f([as_chat(nested)], **kwargs)[0] for f in (published, meddec)}
    assert 0.0 < scores["published"] < 1.0 and 0.0 < scores["meddec"] < 1.0
    assert scores["published"] != scores["meddec"]
    with pytest.raises(ValueError, match="unknown scorer 'f4374cd'"):
        reward_functions(["official"], "f4374cd")
