"""GRPO on top of the DFT model (LAMAR Model 2): DAPO loss, GDPO reward aggregation, a new small LoRA.

    python scripts/train_grpo.py --config recipes/model2_grpo.yaml
    python scripts/train_grpo.py --model_name_or_path Qwen/Qwen3.5-4B --adapter outputs/model1_dft ...

Every default is the published setting (``utils.configs.training``: ``GRPOScriptArguments``, ``GRPOModelConfig``,
``LamarGRPOConfig``); the start model, rewards, prompt-length filter and vLLM use are explained in
``utils.training.grpo``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import logging
import sys
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.training import GRPOModelConfig, GRPOScriptArguments, LamarGRPOConfig


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> None:
        from utils.training.grpo import train

        script, model_args, config = parse_args(GRPOScriptArguments, GRPOModelConfig, LamarGRPOConfig, argv=argv,
                                                description=__doc__.split("\n\n")[0])
        train(script, model_args, config)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
