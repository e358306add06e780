"""The whole published LAMAR pipeline, end to end, on the synthetic corpus with tiny local models.

Every step is the same command a user runs on the real data (see README), only with tiny sizes, CPU
settings and a tiny random-initialised Qwen3.5 instead of Qwen/Qwen3.5-4B. All artefacts go to one work
folder; a step whose outputs exist is skipped, so re-running resumes. The exact commands are appended to
``<work_dir>/commands.sh`` as they run.

Inference decodes with the copy constraint (``--copy_constraint --copy_text_mass --copy_allow_unclosed
--copy_word_boundaries``: the output is the note with tags in between, so a tiny model's only job is where
tags go); Model 1 is also decoded unconstrained, as published, for comparison. THE SCORES ARE MEANINGLESS: tiny models trained for
minutes on synthetic notes. Real numbers need the MedDec data (PhysioNet) and a GPU.

    python scripts/demo.py --work_dir work/demo            # full demo (~14 minutes on 2 CPU cores)
    python scripts/demo.py --work_dir work/ci --profile ci  # reduced size, used by the test suite
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import os
import sys
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import DemoArguments
from utils.demo import run_demo


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(DemoArguments, argv=argv, description=__doc__.split("\n\n")[0])
        run_demo(args)

    return run_cli(body)


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":
        # the table is scored in this process, and the official token F1 sums in set-iteration order: a fixed hash
        # seed makes its last digit the same in every run (the children get it from utils.numerics' pins)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    raise SystemExit(main())
