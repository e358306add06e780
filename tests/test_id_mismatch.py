"""Prediction ids that miss the split (issue 24, class 2): scored exactly as officially (they are dropped), but said
in ONE warning with counts, the likely slip and repr() examples; a prediction set that matches no note at all is
refused with one line and exit code 2 (evaluate.py, and compare.py / errors.py / viewer.py per system); a split file
with a UTF-8 byte-order mark keeps it in its first id, as officially, and says so.

Each case runs the command in-process through its ``main`` on a four-note synthetic MedDec, and checks the numbers
against the same command given only the matching predictions (what the official script scores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.meddec.predictions import Span, read_predictions, write_predictions
from utils.paths import load_module_from_path

evaluate = load_module_from_path("evaluate/evaluate.py", "lamar_evaluate_for_ids")
compare = load_module_from_path("evaluate/compare.py", "lamar_compare_for_ids")
errors = load_module_from_path("evaluate/errors.py", "lamar_errors_for_ids")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Four val notes, the second renamed with an annotator suffix everywhere; gold predictions of all four."""
    from dataset.synthetic import generate_corpus
    from utils.meddec.corpus import read_gold_dir, read_split

    root = tmp_path_factory.mktemp("ids")
    paths = generate_corpus(root / "MedDec", seed=5, n_train=0, n_val=4, n_test=0, n_unlabeled=0, mean_chars=500,
                            mean_spans=6).paths
    ids = read_split(paths.split("val"))
    old, new = ids[1], f"{ids[1]}-annotator"
    record = json.loads((paths.gold_dir / f"{old}.json").read_text(encoding="utf-8"))
    record["discharge_summary_id"] = new
    (paths.gold_dir / f"{old}.json").unlink()
    (paths.gold_dir / f"{new}.json").write_text(json.dumps(record), encoding="utf-8")
    (paths.raw_text_dir / f"{old}.txt").rename(paths.raw_text_dir / f"{new}.txt")
    ids[1] = new
    paths.split("val").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    gold = read_gold_dir(paths.gold_dir, ids)
    predictions = {i: [Span(a.start, a.end, a.category) for a in gold[i] if a.category] for i in ids}
    return {"root": root, "paths": paths, "ids": ids, "predictions": predictions}


def _flags(corpus: dict, predictions: Path, split: Path | None = None) -> list[str]:
    paths = corpus["paths"]
    return ["--gold_dir", str(paths.gold_dir), "--raw_text_dir", str(paths.raw_text_dir), "--predictions",
            str(predictions), "--split_file", str(split or paths.split("val")), "--stats_csv", str(paths.stats_csv)]


def _score(corpus: dict, tmp_path: Path, name: str, predictions: dict, capsys, split: Path | None = None,
           extra: tuple[str, ...] = ()):
    """(exit code, output JSON or None, warning lines, error lines) of evaluate.py on these predictions."""
    pred_path, out = tmp_path / f"{name}.json", tmp_path / f"{name}_scores.json"
    write_predictions(pred_path, predictions)
    capsys.readouterr()
    code = evaluate.main([*_flags(corpus, pred_path, split), *extra, "--output", str(out)])
    err = capsys.readouterr().err.splitlines()
    result = json.loads(out.read_text()) if out.exists() else None
    return code, result, [l for l in err if l.startswith("warning")], [l for l in err if l.startswith("error")]


def _numbers(result: dict) -> dict:
    return {"span": result["span_f1"], "token": result["token_f1"], "shared": result["shared_task"],
            "statistics": result["statistics"]}


SLIPS = {  # how a prediction id slips, the reason the warning gives
    "annotator": (lambda i: i.split("-")[0], "1 with no '-annotator' suffix"),
    "whitespace": (lambda i: f" {i}\t", "1 with surrounding whitespace"),
    "json": (lambda i: f"{i}.json", "1 with a '.json' suffix"),
    "fullwidth": (lambda i: i.translate({ord(d): ord(d) + 0xFEE0 for d in "0123456789"}),
                  "1 with non-ASCII look-alike characters (e.g. fullwidth digits)"),
}


@pytest.mark.parametrize("scorer", ["published", "meddec"])
@pytest.mark.parametrize("slip", sorted(SLIPS))
def test_a_slipped_id_is_dropped_as_officially_with_one_warning(corpus, tmp_path, capsys, slip, scorer):
    rename, reason = SLIPS[slip]
    target = corpus["ids"][1]  # the suffixed note: every slip applies to it
    slipped = rename(target)
    predictions = {(slipped if i == target else i): v for i, v in corpus["predictions"].items()}
    split = tmp_path / "val.txt"
    split.write_text("".join(f"{i}\n" for i in corpus["ids"]), encoding="utf-8")
    extra = ("--scorer", scorer)
    code, result, warnings, errors_ = _score(corpus, tmp_path, "slipped", predictions, capsys, split, extra)
    kept = {i: v for i, v in corpus["predictions"].items() if i != target}
    code_ref, reference, _, _ = _score(corpus, tmp_path, "reference", kept, capsys, split, extra)
    assert code == code_ref == 0 and not errors_ and result["scorer"]["name"] == scorer
    assert _numbers(result) == _numbers(reference)  # scored as officially: the slipped note has no predictions
    assert result["shared_task"]["final_score"] < 1.0
    mismatch = [line for line in warnings if "not in the split file" in line]
    assert mismatch == [f"warning: 1 of 4 predicted note id(s) are not in the split file and are not scored, as "
                        f"officially: {reason} (e.g. {slipped!r})"]


def test_no_matching_prediction_is_refused_in_one_line(corpus, tmp_path, capsys):
    predictions = {f" {i} ": v for i, v in corpus["predictions"].items()}
    code, result, _, errors_ = _score(corpus, tmp_path, "none", predictions, capsys)
    assert code == 2 and result is None  # no output written
    assert len(errors_) == 1 and "none of the 4 predicted note id(s) is a gold note of the split file" in errors_[0]
    assert "4 with surrounding whitespace" in errors_[0] and repr(f" {corpus['ids'][0]} ") in errors_[0]


def test_a_split_file_with_a_bom_drops_its_first_note_as_officially_and_says_so(corpus, tmp_path, capsys):
    split = tmp_path / "bom.txt"
    split.write_text("\ufeff" + "".join(f"{i}\n" for i in corpus["ids"]), encoding="utf-8")
    code, result, warnings, _ = _score(corpus, tmp_path, "bom", corpus["predictions"], capsys, split)
    assert code == 0 and result["statistics"]["gold_files"] == 3  # the first note is not scored, as officially
    first = "\ufeff" + corpus["ids"][0]
    assert (f"warning: the split file starts with a UTF-8 byte-order mark: its first id is read as {first!r}, which "
            "matches no note, so that note is not scored, as officially (save the file without a BOM)") in warnings
    mismatch = [line for line in warnings if "not in the split file" in line]
    assert mismatch == [f"warning: 1 of 4 predicted note id(s) are not in the split file and are not scored, as "
                        f"officially: 1 outside the split (e.g. {corpus['ids'][0]!r})"]
    assert any(repr(first) in line for line in warnings if "have no gold file" in line)  # the BOM is visible


@pytest.mark.parametrize("tool", ["compare", "errors"])
def test_a_system_predicting_none_of_the_notes_is_never_ranked(corpus, tmp_path, capsys, tool):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    write_predictions(good, corpus["predictions"])
    write_predictions(bad, {f"{i}.json": v for i, v in corpus["predictions"].items()})
    paths = corpus["paths"]
    flags = ["--predictions", str(good), str(bad), "--gold_dir", str(paths.gold_dir), "--raw_text_dir",
             str(paths.raw_text_dir), "--split_file", str(paths.split("val"))]
    out = tmp_path / "out"
    capsys.readouterr()
    if tool == "compare":
        code = compare.main([*flags, "--bootstrap", "50", "--output", str(out)])
    else:
        code = errors.main([*flags, "--output_dir", str(out)])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error")]
    assert code == 2 and not out.exists() and "better" not in captured.out
    assert lines == [f"error: {bad}: none of the 4 predicted note id(s) is a gold note of the split file, so nothing "
                     f"would be scored (4 with a '.json' suffix (e.g. "
                     + ", ".join(repr(f"{i}.json") for i in sorted(corpus["ids"])[:3])
                     + ")): check the 'file_name' values"]
    assert read_predictions(bad)  # the input is untouched
