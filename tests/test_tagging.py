"""Gold offsets <-> tagged text (utils.tagging.convert) and the gold -> CSV converter (utils/gt_to_tag.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset.synthetic import generate_corpus, generate_notes
from utils import gt_to_tag
from utils.paths import REPO_ROOT
from utils.meddec.predictions import Span
from utils.meddec.tables import TAGGED_COLUMNS, read_tagged_table, write_tagged_table
from utils.tagging.convert import TagError, clean_spans, spans_to_tagged, tagged_to_spans
from utils.testing.references import same_category_crossings
from utils.tagging.tags import strip_tags

# ------------------------------------------------------------------------------- writing rules


def test_identical_offsets_more_frequent_category_is_inner():
    # INNER_ORDER 3,5,7,1,6,9,2,4,8: 3 innermost, 8 outermost; input order must not matter.
    tagged = spans_to_tagged("abc", [(0, 3, 3), (0, 3, 8), (0, 3, 5)])
    assert tagged == (
        "<defer_decision><drug_decision><define_problem>abc</define_problem></drug_decision></defer_decision>"
    )
    assert spans_to_tagged("abc", [(0, 3, 5), (0, 3, 8), (0, 3, 3)]) == tagged


def test_closing_tags_come_before_opening_tags_at_one_position():
    assert spans_to_tagged("ab", [(1, 2, 3), (0, 1, 3)]) == "<define_problem>a</define_problem><define_problem>b</define_problem>"
    assert spans_to_tagged("ab", [(1, 2, 5), (0, 1, 7)]) == "<evaluate_result>a</evaluate_result><drug_decision>b</drug_decision>"


def test_longer_span_opens_first_and_closes_are_lifo():
    assert spans_to_tagged("abcd", [(2, 4, 7), (0, 4, 5)]) == "<drug_decision>ab<evaluate_result>cd</evaluate_result></drug_decision>"
    assert spans_to_tagged("abcd", [(0, 2, 3), (0, 4, 3)]) == "<define_problem><define_problem>ab</define_problem>cd</define_problem>"
    # same start, same end, three categories: LIFO closes mirror the opening order
    assert spans_to_tagged("xy", [(0, 2, 1), (0, 2, 9), (0, 2, 7)]) == (
        "<advice_and_precaution><contact_related><evaluate_result>xy"
        "</evaluate_result></contact_related></advice_and_precaution>"
    )


def test_crossing_spans_of_different_categories_as_in_the_prompt_example():
    text = "The next previous examination suggested atelectasis - density in the left base cannot be evaluated"
    a_end = text.index(" - density")
    spans = [(0, a_end, 3), (text.index("atelectasis"), len(text), 7)]
    tagged = spans_to_tagged(text, spans)
    assert tagged == (
        "<define_problem>The next previous examination suggested <evaluate_result>atelectasis</define_problem>"
        " - density in the left base cannot be evaluated</evaluate_result>"
    )
    assert tagged_to_spans(tagged) == (text, [Span(*s) for s in spans])


def test_spans_come_back_in_writing_order():
    text = "0123456789"
    spans = [(5, 9, 3), (0, 10, 8), (0, 5, 3), (2, 8, 7), (0, 5, 5)]
    plain, back = tagged_to_spans(spans_to_tagged(text, spans))
    assert plain == text
    assert back == [Span(0, 10, 8), Span(0, 5, 5), Span(0, 5, 3), Span(2, 8, 7), Span(5, 9, 3)]


def test_invalid_and_duplicate_spans_are_dropped_with_reasons():
    kept, dropped = clean_spans(10, [(1, 3, 2), (3, 3, 1), (4, 2, 1), (0, 11, 1), (-1, 2, 1), (1, 3, 0),
                                     (1, 3, 10), (1.0, 3, 2), (1, 3, True), (1, 3, 2)])
    assert kept == [Span(1, 3, 2)]
    assert [d.reason for d in dropped] == [
        "empty span (start >= end)", "empty span (start >= end)", "offsets outside the text", "offsets outside the text",
        "category out of scope (not 1-9)", "category out of scope (not 1-9)", "offsets are not integers",
        "category out of scope (not 1-9)", "duplicate of an earlier span",
    ]
    assert spans_to_tagged("abcdefghij", [(1, 3, 2), (1, 3, 2), (3, 3, 1), (0, 11, 1)]) == "a<gather_info>bc</gather_info>defghij"


def test_numpy_integers_are_accepted():
    import numpy as np

    kept, dropped = clean_spans(5, [(np.int64(1), np.int64(3), np.int64(4))])
    assert kept == [Span(1, 3, 4)] and dropped == [] and type(kept[0].start) is int


def test_strict_parser_rejects_stray_and_unclosed_tags():
    with pytest.raises(TagError, match=r"stray closing tag </drug_decision> at character 1"):
        tagged_to_spans("a</drug_decision>")
    with pytest.raises(TagError, match=r"unclosed tag <gather_info> opened at plain-text offset 2"):
        tagged_to_spans("ab<gather_info>c")


def test_strip_tags_removes_only_the_nine_tags():
    tagged = "<b>x</b> <drug_decision>Hct <30</drug_decision> < drug_decision >"
    assert strip_tags(tagged) == "<b>x</b> Hct <30 < drug_decision >"
    assert tagged_to_spans(tagged)[1] == [Span(9, 16, 5)]


def test_same_category_crossing_is_read_back_as_nesting():
    # The documented loss: <a>x <a>y</a> z</a> cannot tell crossing from nesting.
    text = "0123456789"
    crossing = [(0, 6, 3), (3, 9, 3)]
    assert same_category_crossings(crossing) == [(Span(0, 6, 3), Span(3, 9, 3))]
    assert same_category_crossings([(0, 6, 3), (3, 9, 5), (0, 9, 3), (2, 4, 3)]) == []
    _, back = tagged_to_spans(spans_to_tagged(text, crossing))
    assert back == [Span(0, 9, 3), Span(3, 6, 3)]


# ------------------------------------------------------------------------------- round trips

_TEXT = st.text(alphabet=st.sampled_from(list("ab c\r\n<>/_[**]é°“")), min_size=1, max_size=60)


@st.composite
def _text_and_spans(draw):
    text = draw(_TEXT)
    n = len(text)
    spans = draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n), st.integers(1, 9)), max_size=25))
    return text, spans


def _per_category_boundaries(spans):
    return Counter((s[2], "start", s[0]) for s in spans) + Counter((s[2], "end", s[1]) for s in spans)


@settings(max_examples=400, deadline=None)
@given(_text_and_spans())
def test_round_trip_property(case):
    text, spans = case
    kept, _ = clean_spans(len(text), spans)
    plain, back = tagged_to_spans(spans_to_tagged(text, spans))
    assert plain == text
    # always: per category the start and end offsets survive (only the pairing of crossings can change)
    assert _per_category_boundaries(back) == _per_category_boundaries(kept)
    if not same_category_crossings(kept):
        assert set(back) == set(kept) and len(back) == len(kept)


def test_round_trip_on_synthetic_notes_loses_only_same_category_crossings():
    notes = generate_notes(20, seed=7)
    assert any("\r\n" in n.text for n in notes)
    changed_notes = crossings = spans = 0
    for note in notes:
        kept, _ = clean_spans(len(note.text), [(a.start, a.end, a.category) for a in note.in_scope])
        plain, back = tagged_to_spans(spans_to_tagged(note.text, kept))
        assert plain == note.text
        pairs = same_category_crossings(kept)
        involved = {s for pair in pairs for s in pair}
        assert set(back) - set(kept) <= {Span(min(a.start, b.start), max(a.end, b.end), a.category) for a, b in pairs} | {
            Span(max(a.start, b.start), min(a.end, b.end), a.category) for a, b in pairs
        }
        assert set(kept) - set(back) <= involved
        assert set(back) & set(kept) >= set(kept) - involved
        changed_notes += set(back) != set(kept)
        crossings += len(pairs)
        spans += len(kept)
    assert spans > 1000
    assert crossings < 0.01 * spans  # rare, and reported by the converter's docs


# ------------------------------------------------------------------------------------ gt_to_tag


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("meddec") / "MedDec"
    info = generate_corpus(root, seed=3, n_train=3, n_val=2, n_test=2, n_unlabeled=0, mean_chars=1500, mean_spans=25)
    return info


def _split_args(paths, out_dir, test=False):
    args = ["--gold_dir", str(paths.gold_dir), "--train_split", str(paths.split("train")),
            "--val_split", str(paths.split("val")), "--out_dir", str(out_dir)]
    if test:
        args += ["--test_split", str(paths.split("test"))]
    return args


def test_gt_to_tag_writes_exact_text_tagged_text_and_offsets(small_corpus, tmp_path, capsys):
    paths = small_corpus.paths
    out = tmp_path / "tagged"
    assert gt_to_tag.main(_split_args(paths, out, test=True) + ["--raw_text_dir", str(paths.raw_text_dir),
                                                                "--keep_split_order", "--dedupe_spans"]) == 0
    assert "train: 3 notes" in capsys.readouterr().out
    from utils.meddec.corpus import load_notes, read_split

    for split in ("train", "val", "test"):
        frame = read_tagged_table(out / f"{split}.csv")
        assert list(frame.columns) == list(TAGGED_COLUMNS)
        ids = read_split(paths.split(split))
        assert list(frame["file_id"]) == ids and sorted(ids) == sorted(small_corpus.ids(split))  # split-file order
        notes = load_notes(paths.gold_dir, paths.raw_text_dir, ids)
        for row in frame.to_dict("records"):
            note = notes[row["file_id"]]
            assert row["raw_text"] == note.text  # exact, \r\n included
            offsets = [Span(*s) for s in json.loads(row["gold_offsets"])]
            expected, _ = clean_spans(len(note.text), [(a.start, a.end, a.category) for a in note.in_scope])
            assert offsets == expected  # gold-file order, in scope, no duplicates
            assert row["gold_span"] == spans_to_tagged(note.text, offsets)
            assert strip_tags(row["gold_span"]) == note.text
    assert any("\r\n" in t for s in ("train", "val", "test") for t in read_tagged_table(out / f"{s}.csv")["raw_text"])


def test_gt_to_tag_raw_text_csv_keeps_crlf_lone_cr_quotes_and_na(tmp_path):
    gold_dir = tmp_path / "data"
    gold_dir.mkdir()
    texts = {"1_2_3": 'Start "aspirin",\r\nthen\rstop.\n', "4_5_6": "NA", "7_8_9": "x"}
    for note_id, text in texts.items():
        annotations = [{"start_offset": 0, "end_offset": 2, "category": "Category 5: Drug related"},
                       {"start_offset": 0, "end_offset": 1, "category": "TBD"}]
        (gold_dir / f"{note_id}.json").write_text(json.dumps({"discharge_summary_id": note_id + "_", "annotations": annotations}))
    (gold_dir / "7_8_9.json").unlink()  # a test note without gold
    csv_path = tmp_path / "raw.csv"
    write_tagged_table(tmp_path / "raw_full.csv", [])  # header-only file is readable too
    import pandas as pd

    with open(csv_path, "w", encoding="utf-8", newline="") as handle:
        pd.DataFrame({"file_id": list(texts), "raw_text": list(texts.values())}).to_csv(handle, index=False, quoting=1)
    for name, ids in (("train", ["1_2_3"]), ("val", ["4_5_6"]), ("test", ["7_8_9"])):
        (tmp_path / f"{name}.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "out"
    argv = ["--gold_dir", str(gold_dir), "--raw_text_csv", str(csv_path), "--train_split", str(tmp_path / "train.txt"),
            "--val_split", str(tmp_path / "val.txt"), "--test_split", str(tmp_path / "test.txt"), "--out_dir", str(out)]
    assert gt_to_tag.main(argv) == 0
    train = read_tagged_table(out / "train.csv").iloc[0]
    assert train["raw_text"] == texts["1_2_3"]
    assert train["gold_span"] == '<drug_decision>St</drug_decision>art "aspirin",\r\nthen\rstop.\n'
    assert json.loads(train["gold_offsets"]) == [[0, 2, 5]]
    val = read_tagged_table(out / "val.csv").iloc[0]
    assert (val["raw_text"], val["gold_span"]) == ("NA", "<drug_decision>NA</drug_decision>")
    test = read_tagged_table(out / "test.csv").iloc[0]
    assert (test["file_id"], test["raw_text"], test["gold_span"], test["gold_offsets"]) == ("7_8_9", "x", "", "")
    assert read_tagged_table(tmp_path / "raw_full.csv").empty


def test_gt_to_tag_errors_are_one_line_with_exit_code_2(small_corpus, tmp_path, capsys):
    paths = small_corpus.paths
    missing = small_corpus.ids("train")[0]
    (tmp_path / "train.txt").write_text(f"{missing}\n9_9_9\n")
    argv = _split_args(paths, tmp_path / "o", False) + ["--raw_text_dir", str(paths.raw_text_dir)]
    argv[argv.index("--train_split") + 1] = str(tmp_path / "train.txt")
    assert gt_to_tag.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {paths.gold_dir}: no gold file for train note(s) 9_9_9"
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,text\n1,x\n")
    argv = _split_args(paths, tmp_path / "o", False) + ["--raw_text_csv", str(bad_csv)]
    assert gt_to_tag.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad_csv}: line 1: missing column(s) file_id, raw_text; expected file_id, raw_text"
    assert not (tmp_path / "o").exists()


def test_gt_to_tag_defaults_are_the_published_sorted_order_and_doubled_duplicates(small_corpus, tmp_path):
    from utils.meddec.corpus import load_notes, read_split

    paths = small_corpus.paths
    published, ours = tmp_path / "published", tmp_path / "ours"
    base = _split_args(paths, published) + ["--raw_text_dir", str(paths.raw_text_dir)]
    assert gt_to_tag.main(base) == 0
    assert gt_to_tag.main(_split_args(paths, ours) + ["--raw_text_dir", str(paths.raw_text_dir), "--keep_split_order",
                                                      "--dedupe_spans"]) == 0
    doubled = 0
    for split in ("train", "val"):
        frame, plain = read_tagged_table(published / f"{split}.csv"), read_tagged_table(ours / f"{split}.csv")
        assert list(frame["file_id"]) == sorted(read_split(paths.split(split)), key=lambda i: i + ".json")
        notes = load_notes(paths.gold_dir, paths.raw_text_dir, list(frame["file_id"]))
        by_id = dict(zip(plain["file_id"], plain["gold_offsets"]))
        for row in frame.to_dict("records"):
            gold = [(a.start, a.end, a.category) for a in notes[row["file_id"]].in_scope]
            assert [tuple(s) for s in json.loads(row["gold_offsets"])] == gold  # every copy, gold-file order
            assert row["gold_span"] == spans_to_tagged(row["raw_text"], gold, keep_duplicates=True)
            assert strip_tags(row["gold_span"]) == row["raw_text"]
            copies = len(gold) - len(set(gold))
            assert len(json.loads(by_id[row["file_id"]])) == len(gold) - copies
            doubled += copies
    assert doubled > 0  # the synthetic corpus has exact duplicates (1% of spans)


def test_published_order_sorts_json_file_names_and_duplicates_become_doubled_tags():
    from utils.tagging.splits import published_note_order

    ids = ["1_2_3", "1_2_3-anna", "1_2_30", "0_9_9.json"]
    assert published_note_order(ids) == ["0_9_9.json", "1_2_3-anna", "1_2_3", "1_2_30"]  # "-" < "." < "0"
    assert sorted(ids) != published_note_order(ids)
    text = "stop aspirin now"
    spans = [(5, 12, 5), (0, 12, 5), (5, 12, 5)]
    assert spans_to_tagged(text, spans, keep_duplicates=True) == (
        "<drug_decision>stop <drug_decision><drug_decision>aspirin</drug_decision></drug_decision></drug_decision> now")
    assert spans_to_tagged(text, spans) == (
        "<drug_decision>stop <drug_decision>aspirin</drug_decision></drug_decision> now")
    plain, back = tagged_to_spans(spans_to_tagged(text, spans, keep_duplicates=True))
    assert plain == text and sorted(back) == sorted(Span(*s) for s in spans)  # the multiset comes back
    kept, dropped = clean_spans(len(text), spans, keep_duplicates=True)
    assert kept == [Span(*s) for s in spans] and dropped == []


@pytest.mark.parametrize("command", [["utils/gt_to_tag.py"], ["-m", "utils.gt_to_tag"]])
def test_gt_to_tag_runs_as_file_and_module(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--raw_text_csv" in result.stdout and "--test_split" in result.stdout


def test_gt_to_tag_refuses_an_id_listed_twice_and_warns_about_a_train_val_leak(small_corpus, tmp_path, capsys):
    paths = small_corpus.paths
    train_ids = small_corpus.ids("train")
    (tmp_path / "train.txt").write_text(f"{train_ids[0]}\n\n{train_ids[1]}\n{train_ids[0]}\n")
    argv = _split_args(paths, tmp_path / "o", False) + ["--raw_text_dir", str(paths.raw_text_dir)]
    argv[argv.index("--train_split") + 1] = str(tmp_path / "train.txt")
    assert gt_to_tag.main(argv) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'train.txt'}: line 4: note {train_ids[0]} is listed twice "
                                       "(first on line 1)\n")
    assert not (tmp_path / "o").exists()

    leak = small_corpus.ids("val")[0]
    (tmp_path / "train.txt").write_text(f"{train_ids[0]}\n{leak}\n")
    assert gt_to_tag.main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]  # not progress
    assert warnings == [f"warning: 1 note id(s) are in both the train and the val split (e.g. {leak}): the val scores "
                        "will not be held out"]


def test_gt_to_tag_writes_every_split_or_none(small_corpus, tmp_path, monkeypatch):
    from utils.meddec import tables

    paths = small_corpus.paths
    out = tmp_path / "o"
    argv = _split_args(paths, out, True) + ["--raw_text_dir", str(paths.raw_text_dir)]
    assert gt_to_tag.main(argv) == 0
    before = {name: (out / f"{name}.csv").read_bytes() for name in ("train", "val", "test")}
    calls = []

    def fail_on_the_last(handle, frame):
        calls.append(len(frame))
        if len(calls) == 3:
            raise OSError("disk full")
        return original(handle, frame)

    original = tables.write_frame
    monkeypatch.setattr("utils.tagging.splits.write_frame", fail_on_the_last)
    with pytest.raises(OSError, match="disk full"):
        gt_to_tag.main(argv)
    assert {name: (out / f"{name}.csv").read_bytes() for name in ("train", "val", "test")} == before
    assert sorted(p.name for p in out.iterdir()) == ["test.csv", "train.csv", "val.csv"]  # no temporary files left
