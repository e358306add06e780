"""The ``--smoke`` flag every benchmark has: a seconds-long run with tiny sizes, run by ``tests/test_benchmarks.py``
in the default suite so that no benchmark can silently stop working. Its numbers mean nothing."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

SMOKE_HELP = ("seconds-long run with tiny sizes (the test suite runs it so the benchmark cannot rot; "
              "its numbers mean nothing)")


def parse_with_smoke(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                     smoke_sizes: dict[str, Any]) -> argparse.Namespace:
    """``parser``'s arguments plus ``--smoke``, which replaces the sizes named in ``smoke_sizes``."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in smoke_sizes.items():
            setattr(args, name, value)
    return args
