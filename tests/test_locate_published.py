"""The default span locator (``--locate published``) gives exactly the published ``utils/pred_to_offset.py``'s JSON.

The expected outputs are the published script's own, recorded by running it (tests/fixtures/locator/published.json,
provenance there; re-record with tests/fixtures/record_published_locator.py --published PATH).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from difflib import SequenceMatcher
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils import pred_to_offset as p2o
from utils.configs.pipeline import InferenceArguments, PredToOffsetArguments
from utils.generation.backends import Generation
from utils.generation.runner import RESUME_KEYS, result_record
from utils.meddec.predictions import Span
from utils.paths import REPO_ROOT, load_module_from_path
from utils.tagging import locate
from utils.tagging.locate_published import FuzzyWindows, find_published



@lru_cache(maxsize=None)
def _recorded() -> dict:
    return json.loads((REPO_ROOT / "tests/fixtures/locator/published.json").read_text(encoding="utf-8"))


def _sets() -> dict:
    return _recorded()["sets"]


@pytest.fixture(scope="module")
def recorder():
    return load_module_from_path("tests/fixtures/record_published_locator.py", "lamar_record_published_locator")


def _rows(recorder, name: str) -> list[tuple[str, str, str]]:
    rows = list(recorder.CASES) if name == "cases" else recorder.set_rows(name)
    assert recorder.sha256(recorder.rows_csv(rows)) == _sets()[name]["input_sha256"], f"{name}: inputs changed; re-record"
    return rows


def _cli_json(tmp_path: Path, recorder, rows, *flags: str) -> list[dict]:
    """Our utils/pred_to_offset.py on these rows, its JSON parsed."""
    src, out = tmp_path / "pred.csv", tmp_path / "pred.json"
    src.write_text(recorder.rows_csv(rows), encoding="utf-8", newline="")
    assert p2o.main(["--input", str(src), "--output", str(out), *flags]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_fixture_provenance_and_sizes():
    assert _recorded()["provenance"].startswith("output of biodatlab/medexact-lamar utils/pred_to_offset.py")
    sizes = {name: len(s["published"]) for name, s in _sets().items()}
    assert sizes == {"cases": 19, "damaged": 12, "rewritten": 12, "garbage": 400}
    spans = sum(len(spans) for s in _sets().values() for _, spans in s["published"])
    assert spans > 2500  # damaged synthetic notes carry ~100 spans each


def test_default_is_published_everywhere():
    assert locate.DEFAULT_LOCATOR == "published" and locate.LOCATORS == ("published", "align")
    assert PredToOffsetArguments(input="x", output="y").locate == "published"
    assert InferenceArguments().locate == "published" and "locate" in RESUME_KEYS


def test_cases_equal_the_published_json(tmp_path, recorder):
    assert _cli_json(tmp_path, recorder, _rows(recorder, "cases")) == recorder.expand(_sets()["cases"]["published"])


def test_fuzzed_garbage_outputs_equal_the_published_json(tmp_path, recorder):
    rows = _rows(recorder, "garbage")
    assert _cli_json(tmp_path, recorder, rows) == recorder.expand(_sets()["garbage"]["published"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["damaged", "rewritten"])
def test_damaged_synthetic_outputs_equal_the_published_json(tmp_path, recorder, name):
    assert _cli_json(tmp_path, recorder, _rows(recorder, name)) == recorder.expand(_sets()[name]["published"])


def test_align_differs_from_published_on_the_damaged_cases(tmp_path, recorder):
    """``--locate align`` is really another locator (the recorded cases are not all the same under it)."""
    rows = _rows(recorder, "cases")
    aligned = _cli_json(tmp_path, recorder, rows, "--locate", "align")
    published = recorder.expand(_sets()["cases"]["published"])
    differing = [a["file_name"] for a, p in zip(aligned, published) if a != p]
    assert "c_think_spans" in differing and "c_duplicates" in differing and len(differing) >= 6


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_subset_in_any_order_gives_those_published_records(tmp_path_factory, recorder, data):
    """Property over the recorded fixture set: each note's spans depend on that note's row alone, and notes come
    out in input order (so every recorded record is reproduced in any file it is part of)."""
    pool = {name: list(zip(_rows(recorder, name), recorder.expand(_sets()[name]["published"]))) for name in ("cases", "garbage")}
    items = pool["cases"] + pool["garbage"]
    picked = data.draw(st.lists(st.sampled_from(items), min_size=1, max_size=30, unique_by=lambda x: x[0][0]))
    got = _cli_json(tmp_path_factory.mktemp("subset"), recorder, [row for row, _ in picked])
    assert got == [record for _, record in picked]


# ------------------------------------------------------------------------------------------- rules


def _published(note: str, output: str) -> list[Span]:
    return locate.locate_spans(note, output).spans


NOTE = "Start aspirin. Continue aspirin daily.\nCall if fever.\n"


def test_think_blocks_are_text_and_their_spans_count():
    output = "<think>maybe <drug_decision>Continue aspirin</drug_decision></think>" + NOTE
    assert _published(NOTE, output) == [Span(15, 31, 5)]
    assert locate.locate_spans(NOTE, output, locator="align").spans == []  # the think block is removed there


def test_duplicates_kept_and_sorted_by_start_then_end():
    output = "<gather_info>Call</gather_info><drug_decision>aspirin daily</drug_decision><drug_decision>aspirin daily</drug_decision>"
    assert _published(NOTE, output) == [Span(24, 37, 5), Span(24, 37, 5), Span(39, 43, 2)]


def test_nearest_occurrence_by_relative_position():
    # the span starts 60 % into the de-tagged output: the second "aspirin" (at 24 of 54 = 0.44) is nearer than 6
    output = "x" * 30 + "<drug_decision>aspirin</drug_decision>" + "y" * 13
    assert _published(NOTE, output) == [Span(24, 31, 5)]


def test_case_insensitive_offsets_are_those_of_the_lower_cased_note():
    note = "İİ Heparin"  # "İ".lower() is two characters: the lower-cased note is 12 long, the note 10
    assert _published(note, "<drug_decision>heparin</drug_decision>") == [Span(5, 12, 5)]


def test_spans_left_open_are_dropped_or_closed_at_the_end():
    output = "<drug_decision>Continue aspirin daily"
    assert _published(NOTE, output) == []
    located = locate.locate_spans(NOTE, output, "close_at_end")
    assert located.spans == [Span(15, 37, 5)] and located.closed_at_end == 1


def test_failure_reasons_are_the_published_ones():
    note = "Start aspirin. Continue aspirin daily.\nCall if fever is above 101.5 or you have chest pain.\n"
    output = ("<drug_decision>Cxntinue asxirin daxly now</drug_decision><gather_info>Call if fever is ab" + "q" * 40
              + "</gather_info><define_problem>qqqqqqq wwwwwww</define_problem><treatment_goal> </treatment_goal>")
    result = locate.locate_spans(note, output)
    assert result.spans == [] and [d.reason for d in result.dropped] == ["model_typo", "truncated", "not_in_text", "empty_span"]


@settings(max_examples=150, deadline=None)
@given(st.text("ab cd\n", min_size=5, max_size=40), st.text("ab cd\n", min_size=0, max_size=300))
def test_pruned_fuzzy_search_equals_scoring_every_window(text, note):
    """The window skipping of FuzzyWindows (an LCS bound) changes neither the best window nor its score."""
    step = max(1, len(text) // 10)
    widths = (len(text), max(int(len(text) * 0.8), 1), min(int(len(text) * 1.2), len(note)))

    def scan(best, window, starts_for):
        for width in widths:
            if width > len(note):
                continue
            for start in starts_for(width):
                score = SequenceMatcher(None, text, note[start : start + width]).ratio()
                if score > best:
                    best, window = score, (start, start + width)
        return best, window

    coarse = scan(0.0, None, lambda w: range(0, len(note) - w + 1, step))
    search = FuzzyWindows(text, note) if note else None
    if search is None:
        return
    assert (search.coarse_best, search.coarse_window) == coarse
    if coarse[1] is not None:
        first, last = max(0, coarse[1][0] - step), min(len(note), coarse[1][0] + step)
        refined = scan(*coarse, lambda w: range(first, min(last, len(note) - w + 1)))
        search.refine()
        assert (search.best, search.window) == refined


def test_fuzzy_match_on_a_long_span_uses_difflib_with_autojunk():
    """Windows of 200+ characters: difflib junks their popular characters, so a near copy scores 0 (as published)."""
    rng = random.Random(0)
    note = "".join(rng.choice("abcde fgh\n") for _ in range(3000))
    chars = list(note[1000:1250])
    chars[::25] = "z" * 10
    text = "".join(chars)
    assert SequenceMatcher(None, text, note[1000:1250], autojunk=False).ratio() == 0.96
    assert SequenceMatcher(None, text, note[1000:1250]).ratio() == 0.0
    assert find_published(text, note, 0.3) == (None, "not_in_text")


def test_inference_spans_column_uses_the_chosen_locator():
    output = "<think>x</think><drug_decision>aspirin daily</drug_decision> <drug_decision>aspirin daily</drug_decision>"
    generation = Generation(output, 5, None, True)
    assert result_record("n1", NOTE, generation)["spans"] == [[24, 37, 5], [24, 37, 5]]
    aligned = result_record("n1", NOTE, generation, locator="align")
    assert aligned["spans"] == [[24, 37, 5]] and aligned["report"]["dropped"][0]["reason"] == "duplicate"
