"""Write a synthetic MedDec corpus (exact PhysioNet layout) for tests, benchmarks and dry runs.

    python -m dataset.generate --out_dir data/synthetic --seed 0 --n_train 350 --n_val 53 --n_test 53 --n_unlabeled 300

Point every script's --gold_dir/--raw_text_dir/--split_file/--stats_csv/--noteevents options at the folder
it writes, exactly as at a real MedDec download.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Sequence

from dataset.synthetic import SyntheticCorpusInfo, generate_corpus, summarize_notes
from utils.categories import CATEGORY_IDS, gold_name
from utils.cli import parse_args, run_cli
from utils.configs.pipeline import GenerateArguments
from utils.meddec.corpus import load_notes


def format_summary(info: SyntheticCorpusInfo) -> str:
    """Counts, note sizes per split and the category histogram, as a short text report."""
    lines = [
        f"wrote {info.root}",
        f"  notes: train {len(info.train_ids)}, val {len(info.val_ids)}, test {len(info.test_ids)}; "
        f"NOTEEVENTS rows {info.n_noteevents_rows} ({len(info.unlabeled_row_ids)} unlabeled reports)",
    ]
    paths = info.paths
    for split in ("train", "val", "test"):
        ids = info.ids(split)
        if not ids:
            continue
        s = summarize_notes(list(load_notes(paths.gold_dir, paths.raw_text_dir, ids).values()))
        lines.append(
            f"  {split:5s}: chars median {s['chars_median']:.0f} max {s['chars_max']}; spans/note median "
            f"{s['spans_median']:.0f} mean {s['spans_mean']:.1f}; CRLF notes {s['crlf_notes']}; "
            f"annotator-suffixed {s['annotator_suffix_notes']}"
        )
    counts = info.category_counts
    total = sum(counts.values()) or 1
    lines.append(f"  annotations: {info.n_annotations} over {info.n_chars} characters")
    for name in [gold_name(c) for c in CATEGORY_IDS] + [gold_name(10), gold_name(11), "TBD"]:
        lines.append(f"    {counts.get(name, 0):7d} {100 * counts.get(name, 0) / total:5.1f}%  {name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(GenerateArguments, argv=argv, prog="python -m dataset.generate",
                             description=__doc__.split("\n\n")[0])
        info = generate_corpus(
            args.out_dir, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
            n_unlabeled=args.n_unlabeled, mean_chars=args.mean_chars, mean_spans=args.mean_spans,
        )
        print(format_summary(info))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
