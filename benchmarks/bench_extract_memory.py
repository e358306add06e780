"""Benchmark: pseudolabels/extract_unlabel.py keeps memory bounded on a large NOTEEVENTS.csv.

Writes a synthetic NOTEEVENTS.csv of at least ``--size_mb`` (default 200 MB) to a temporary folder by
repeating generated discharge summaries (with fresh ROW_IDs) among other note kinds, runs the extraction
as its own process (``python -m pseudolabels.extract_unlabel``) and reports its peak RSS and wall time,
for each ``--chunksize``. The real file is ~2 GB: memory must depend on the chunk size, not on the file.
The temporary folder is deleted afterwards.

    python benchmarks/bench_extract_memory.py --size_mb 200 --chunksize 1000 10000
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.smoke import parse_with_smoke
from utils.paths import REPO_ROOT

HEADER = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY", "DESCRIPTION",
          "CGID", "ISERROR", "TEXT"]
OTHER_KINDS = (("Radiology", "CHEST (PORTABLE AP)"), ("Nursing", "Nursing Progress Note"), ("ECG", "Report"))


def write_noteevents(path: Path, size_bytes: int, seed: int = 0) -> tuple[int, list[str]]:
    """Rows until the file reaches ``size_bytes``; returns (rows, ids of 10 discharge notes to use as a split)."""
    from dataset.synthetic import generate_notes

    texts = [n.text for n in generate_notes(40, seed=seed, mean_chars=9000, mean_spans=10)]
    split_ids: list[str] = []
    rows = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        while handle.tell() < size_bytes:
            row_id, subject, hadm = rows + 1, 10_000 + rows // 3, 100_000 + rows // 3
            if rows % 4 == 3:
                category, description = OTHER_KINDS[rows % 3]
                text = "Sinus rhythm. No acute change.\n" * 20
            else:
                category, description = "Discharge summary", ("Addendum" if rows % 17 == 0 else "Report")
                text = texts[rows % len(texts)]
                if len(split_ids) < 10 and description == "Report":
                    split_ids.append(f"{subject}_{hadm}_{row_id}")
            writer.writerow([row_id, subject, hadm, "2150-01-01", "", "", category, description, "", "", text])
            rows += 1
    return rows, split_ids


def run_extraction(noteevents: Path, split: Path, output: Path, chunksize: int) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB of the extraction process, its summary line)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pseudolabels.extract_unlabel", "--noteevents", str(noteevents), "--splits", str(split),
         "--output", str(output), "--chunksize", str(chunksize)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB; max over finished children
    return wall, peak_kib / 1024, done.stdout.splitlines()[0]


SMOKE_SIZES = {"size_mb": 1.0, "chunksize": [1_000]}  # --smoke


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size_mb", type=float, default=200.0, help="size of the synthetic NOTEEVENTS.csv")
    parser.add_argument("--chunksize", type=int, nargs="+", default=[1_000, 2_000, 10_000], help="rows per chunk (one run each)")
    args = parse_with_smoke(parser, argv, SMOKE_SIZES)
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        tmp_path = Path(tmp)
        noteevents = tmp_path / "NOTEEVENTS.csv"
        start = time.perf_counter()
        rows, split_ids = write_noteevents(noteevents, int(args.size_mb * 1024 * 1024))
        size_mb = noteevents.stat().st_size / 1024 / 1024
        print(f"NOTEEVENTS.csv: {size_mb:.0f} MiB, {rows} rows (written in {time.perf_counter() - start:.1f} s)")
        split = tmp_path / "split.txt"
        split.write_text("".join(f"{i}\n" for i in split_ids), encoding="utf-8")
        # Children's peak RSS is a running maximum: run the smallest chunk size first so each line is its own.
        for chunksize in sorted(args.chunksize):
            wall, peak, summary = run_extraction(noteevents, split, tmp_path / "pool.csv", chunksize)
            pool_mb = (tmp_path / "pool.csv").stat().st_size / 1024 / 1024
            print(f"chunksize {chunksize}: wall {wall:.1f} s, peak RSS {peak:.0f} MiB, pool CSV {pool_mb:.0f} MiB | {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
