"""The span viewer (utils/metric/viewer.py, evaluate/viewer.py): its data, a self-contained page, and the page as
headless Chromium renders it: spans drawn, filters from the query string and from real checkbox clicks, a
non-blank screenshot. The Chromium tests need Debian's ``chromium`` package (``apt-get install chromium``) and
are skipped, saying so, without it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from utils.meddec.corpus import Annotation, read_gold_dir, read_split
from utils.meddec.predictions import Span, write_predictions
from utils.metric import Scorer, load_official_texts
from utils.metric.errors import classify_predictions, summarize
from utils.metric.tokens import prf
from utils.metric.viewer import CATEGORY_COLORS, render_viewer, viewer_data, write_viewer
from utils.paths import REPO_ROOT, load_module_from_path

viewer_cli = load_module_from_path("evaluate/viewer.py", "lamar_viewer_cli")
bench_scorer = load_module_from_path(REPO_ROOT / "benchmarks" / "bench_scorer.py", "lamar_bench_scorer")

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found: install Debian's package "
                                                             "(apt-get install chromium) to render the viewer")
HOSTILE = 'Start aspirin daily. </script><img src=x onerror="document.title=1"> & <b>bold</b> Stop warfarin.'


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    from dataset.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("viewer")
    paths = generate_corpus(root / "MedDec", seed=2, n_train=0, n_val=4, n_test=0, n_unlabeled=0, mean_chars=700,
                            mean_spans=12).paths
    ids = read_split(paths.split("val"))
    gold = read_gold_dir(paths.gold_dir, ids)
    sets = bench_scorer.prediction_sets(gold, load_official_texts(paths.raw_text_dir, ids))
    systems = {"shifted": sets["shifted"], "swapped": sets["swapped"]}
    files = []
    for name, predictions in systems.items():
        files.append(root / f"{name}.json")
        write_predictions(files[-1], predictions)
    scorer = Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir, split_file=paths.split("val"),
                               stats_csv=paths.stats_csv)
    return {"root": root, "paths": paths, "systems": systems, "files": files, "scorer": scorer}


class _Elements(HTMLParser):
    """Start tags of a page as (tag, attributes), and the text inside one element id."""

    def __init__(self, text_of: str = "text") -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text_of, self.depth, self.text = text_of, 0, []

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attrs))
        if self.depth or attrs.get("id") == self.text_of:
            self.depth += tag not in ("br", "img", "input")

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.text.append(data)

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if name in a.get("class", "").split()]

    def by_id(self, name: str) -> dict[str, str]:
        return next(a for _, a in self.elements if a.get("id") == name)


def parse(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


def chromium(url: str, tmp_path: Path, *extra: str) -> str:
    """Run headless Chromium on a local page; --dump-dom output unless --screenshot is among ``extra``."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *extra]
    if not any(a.startswith("--screenshot") for a in extra):
        argv.append("--dump-dom")
    result = subprocess.run([*argv, url], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def expected_spans(data: dict, note: int, cats=None, classes=None, sources=None, ref: int = 0) -> int:
    count = 0
    for span in data["notes"][note]["spans"]:
        source = "gold" if span["src"] == "g" else data["systems"][int(span["src"][1:])]
        cls = span["k"][ref] if span["src"] == "g" else span["k"]
        count += ((cats is None or span["c"] in cats) and (classes is None or cls in classes)
                  and (sources is None or source in sources))
    return count


# -- data and page, without a browser ----------------------------------------------------------------------------

def test_viewer_data_matches_scores_and_error_classes(corpus):
    scorer, systems = corpus["scorer"], corpus["systems"]
    data = viewer_data(scorer, systems, "demo")
    assert data["systems"] == ["shifted", "swapped"]
    assert [c["color"] for c in data["categories"]] == list(CATEGORY_COLORS)
    assert [n["id"] for n in data["notes"]] == sorted(scorer.note_ids)
    for j, (name, predictions) in enumerate(systems.items()):
        scores = scorer.note_scores(predictions)
        classified = {n.note_id: n for n in classify_predictions(scorer, predictions)}
        per_note = summarize(classified.values()).per_note
        for note in data["notes"]:
            row = scores.notes.ids.index(note["id"])
            span_f1 = prf(int(scores.tp[row]), int(scores.fp[row]), int(scores.fn[row]))[2]
            assert note["scores"][j] == {"span_f1": span_f1, "token_f1": float(scores.token_f1[row])}
            assert note["counts"][j] == per_note[note["id"]]
            occurrences = classified[note["id"]].occurrences
            mine = [s for s in note["spans"] if s["src"] == f"s{j}"]
            assert [(s["s"], s["e"], s["c"], s["k"]) for s in mine] == [
                (o.start, o.end, o.category, o.error) for o in occurrences if o.side == "pred"]
            gold = [s for s in note["spans"] if s["src"] == "g"]
            assert [(s["s"], s["e"], s["c"], s["k"][j]) for s in gold] == [
                (o.start, o.end, o.category, o.error) for o in occurrences if o.side == "gold"]
            assert all(note["text"][s["s"]:s["e"]].strip() for s in note["spans"])


def test_page_is_self_contained_and_escapes_note_text(corpus):
    scorer = Scorer({"1_1_1": [Annotation(0, 19, 5)]}, {"1_1_1": HOSTILE})
    page = render_viewer(viewer_data(scorer, {"a": {"1_1_1": [Span(0, 19, 5), Span(98, 111, 2)]}}, "<T&>"))
    head = page.split("<body>")[0]
    assert "Content-Security-Policy" in head and "default-src 'none'" in head
    before, rest = page.split('<script type="application/json" id="viewer-data">')
    data_block, after = rest.split("</script>", 1)
    for forbidden in ("<link", " src=", "url(", "@import", "http://", "https://", "//cdn", "fonts.", "fetch(",
                      "XMLHttpRequest", "WebSocket", "sendBeacon"):
        assert forbidden not in before + after, forbidden  # the page itself; the note text is data, escaped below
    assert page.count("<script") == 2  # the data block and the viewer's own code, both inline
    assert "<" not in data_block and ">" not in data_block and "&" not in data_block
    assert json.loads(data_block)["notes"][0]["text"] == HOSTILE
    assert "<title>&lt;T&amp;&gt;</title>" in page and "CONTAINS PATIENT NOTE TEXT (PHI)" in page


def test_viewer_cli_writes_only_the_given_html(corpus, tmp_path, capsys):
    paths = corpus["paths"]
    out = tmp_path / "out" / "v.html"
    argv = ["--predictions", *map(str, corpus["files"]), "--gold_dir", str(paths.gold_dir), "--raw_text_dir",
            str(paths.raw_text_dir), "--split_file", str(paths.split("val")), "--output", str(out)]
    assert viewer_cli.main(argv) == 0
    assert "CONTAINS NOTE TEXT (PHI)" in capsys.readouterr().out
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["v.html"]
    assert out.read_text(encoding="utf-8") == render_viewer(viewer_data(corpus["scorer"], corpus["systems"]))


# -- the page in headless Chromium -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(corpus, tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("page") / "viewer.html"
    return path, write_viewer(path, corpus["scorer"], corpus["systems"], "test viewer")


@needs_chromium
def test_chromium_draws_every_span_and_the_note_list(page, tmp_path):
    path, data = page
    dom = parse(chromium(path.as_uri(), tmp_path))
    assert dom.by_id("text") and dom.elements and dict(dom.elements)["body"].get("data-ready") == "1"
    first = dom.with_class("first")
    assert len(first) == len(data["notes"][0]["spans"]) == expected_spans(data, 0) > 10
    assert dom.by_id("text")["data-visible-spans"] == str(len(first))
    assert {b["data-src"] for b in first} == {"gold", "shifted", "swapped"}
    assert {b["data-cls"] for b in first} >= {"exact", "boundary"}
    rows = dom.with_class("note-row")
    assert [r["data-note"] for r in rows] == [n["id"] for n in data["notes"]]
    assert "".join(dom.text) == data["notes"][0]["text"].replace("\n", "")  # every character shown, in order


@needs_chromium
def test_chromium_applies_filters_from_the_query_string(page, tmp_path):
    path, data = page
    note = data["notes"][1]["id"]
    dom = parse(chromium(f"{path.as_uri()}?note={note}&cat=3,5&cls=boundary,exact&src=gold,swapped&ref=swapped",
                         tmp_path))
    bars = dom.with_class("bar")
    expected = expected_spans(data, 1, cats={3, 5}, classes={"boundary", "exact"}, sources={"gold", "swapped"}, ref=1)
    assert len(dom.with_class("first")) == expected > 0
    assert {b["data-cat"] for b in bars} <= {"3", "5"} and {b["data-cls"] for b in bars} <= {"boundary", "exact"}
    assert {b["data-src"] for b in bars} <= {"gold", "swapped"}
    selected = dom.with_class("selected")
    assert len(selected) == 1 and selected[0]["data-note"] == note
    boxes = {(a["data-group"], a["value"]): "checked" in a for t, a in dom.elements if t == "input"}
    assert [v for (g, v), on in boxes.items() if g == "cat" and on] == ["3", "5"]
    assert [v for (g, v), on in boxes.items() if g == "src" and on] == ["g", "s1"]
    shown = {r["data-note"]: int(r["data-shown"]) for r in dom.with_class("note-row")}
    assert shown == {n["id"]: expected_spans(data, i, {3, 5}, {"boundary", "exact"}, {"gold", "swapped"}, 1)
                     for i, n in enumerate(data["notes"])}


@needs_chromium
def test_chromium_checkbox_clicks_filter_the_spans(page, tmp_path):
    """A script appended to a copy of the page clicks the real checkboxes and records what is drawn after each."""
    path, data = page
    probe = """<script>
    (function () {
      function drawn() { return document.querySelectorAll('#text .bar.first').length; }
      var out = [drawn()];
      document.querySelector('input[data-group=cat][value="5"]').click(); out.push(drawn());
      document.querySelector('input[data-group=cls][value="exact"]').click(); out.push(drawn());
      document.querySelector('input[data-group=src][value="g"]').click(); out.push(drawn());
      document.querySelector('button[data-none=cat]').click(); out.push(drawn());
      document.querySelector('button[data-all=cat]').click(); out.push(drawn());
      document.querySelectorAll('#list-body tr')[2].click(); out.push(drawn());
      document.body.setAttribute('data-probe', out.join(','));
    })();
    </script></body>"""
    copy = tmp_path / "probe.html"
    copy.write_text(path.read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    dom = parse(chromium(copy.as_uri(), tmp_path))
    got = [int(x) for x in dict(dom.elements)["body"]["data-probe"].split(",")]
    cats = {c for c in range(1, 10)} - {5}
    expected = [expected_spans(data, 0),
                expected_spans(data, 0, cats=cats),
                expected_spans(data, 0, cats=cats, classes={"boundary", "category", "missed", "spurious"}),
                expected_spans(data, 0, cats=cats, classes={"boundary", "category", "missed", "spurious"},
                               sources={"shifted", "swapped"}),
                0,
                expected_spans(data, 0, classes={"boundary", "category", "missed", "spurious"},
                               sources={"shifted", "swapped"}),
                expected_spans(data, 2, classes={"boundary", "category", "missed", "spurious"},
                               sources={"shifted", "swapped"})]
    assert got == expected and expected[0] > expected[1] > expected[2] > expected[3] > 0


@needs_chromium
def test_chromium_screenshot_is_not_blank_and_shows_spans(page, tmp_path):
    from PIL import Image

    path, _ = page
    shot = tmp_path / "shot.png"
    chromium(path.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1300,1100", "--hide-scrollbars")
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert len(colours) > 50 and counts.max() < 0.9 * len(pixels)  # not blank, not one colour
    as_hex = {"#%02x%02x%02x" % tuple(c): n for c, n in zip(colours.tolist(), counts.tolist())}
    assert as_hex.get("#b00020", 0) > 5000  # the PHI banner
    drawn = {colour: as_hex.get(colour, 0) for colour in CATEGORY_COLORS}
    assert sum(1 for n in drawn.values() if n > 30) >= 3, drawn  # span bars of several categories


def test_no_hostile_markup_runs_in_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium binary found: install Debian's package (apt-get install chromium)")
    scorer = Scorer({"1_1_1": [Annotation(0, 19, 5)]}, {"1_1_1": HOSTILE})
    path = tmp_path / "hostile.html"
    write_viewer(path, scorer, {"a": {"1_1_1": [Span(0, 19, 5)]}})
    html = chromium(path.as_uri(), tmp_path)
    dom = parse(html)
    assert not any(tag in ("img", "b") for tag, _ in dom.elements[dom.elements.index(("div", dom.by_id("text"))):])
    assert "".join(dom.text) == HOSTILE
    assert re.search(r"<title>[^<]*</title>", html).group(0) == "<title>LAMAR span viewer</title>"
