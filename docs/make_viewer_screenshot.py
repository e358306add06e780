"""Regenerate docs/viewer.png: the span viewer on SYNTHETIC notes (dataset.synthetic), rendered by headless Chromium.

    NLTK_DATA=tests/fixtures/nltk_data python docs/make_viewer_screenshot.py

Needs a ``chromium`` binary (Debian: ``apt-get install chromium``). Only synthetic text ever goes into the picture.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import shutil
import subprocess
import tempfile
from pathlib import Path

from utils.paths import REPO_ROOT, load_module_from_path

OUTPUT = REPO_ROOT / "docs" / "viewer.png"


def main() -> int:
    from PIL import Image

    from dataset.synthetic import generate_corpus
    from utils.meddec.corpus import read_gold_dir, read_split
    from utils.metric import Scorer, load_official_texts
    from utils.metric.viewer import write_viewer

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium binary: apt-get install chromium")
    bench_scorer = load_module_from_path(REPO_ROOT / "benchmarks" / "bench_scorer.py", "lamar_bench_scorer")
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate_corpus(Path(tmp) / "MedDec", seed=5, n_train=0, n_val=8, n_test=0, n_unlabeled=0,
                                mean_chars=1200, mean_spans=18).paths
        ids = read_split(paths.split("val"))
        gold = read_gold_dir(paths.gold_dir, ids)
        sets = bench_scorer.prediction_sets(gold, load_official_texts(paths.raw_text_dir, ids))
        scorer = Scorer.from_files(gold_dir=paths.gold_dir, raw_text_dir=paths.raw_text_dir,
                                   split_file=paths.split("val"), stats_csv=paths.stats_csv)
        page = Path(tmp) / "viewer.html"
        write_viewer(page, scorer, {"system A": sets["shifted"], "system B": sets["mixed"]},
                     "LAMAR span viewer (synthetic notes)")
        shot = Path(tmp) / "shot.png"
        url = f"{page.as_uri()}?note={sorted(ids)[3]}"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={Path(tmp) / 'profile'}", "--window-size=1280,860",
                        f"--screenshot={shot}", url], check=True, capture_output=True, timeout=180)
        Image.open(shot).convert("RGB").save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
