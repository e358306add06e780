"""Tag notes with a generative model: greedy decoding with the logprob of every chosen token (SPEC section 4).

    python scripts/inference.py --model Keetawan/Qwen3.5-4B_LoRA_Exact_BF16_Rank256_Alpha32_DFT \
        --val_csv data/tagged/val.csv --test_csv data/tagged/test.csv --output_dir outputs/model1
    python scripts/inference.py --model Qwen/Qwen3.5-4B --adapter outputs/model1_lora \
        --input work/pseudo_candidates.csv --output work/pseudo_candidates_model1.csv
    python scripts/inference.py --backend transformers --model tiny_model --input val.csv --output val_out.csv

Defaults are the published run (``utils.configs.pipeline.InferenceArguments``): vLLM, greedy, the chosen token's
logprob at every step, the published prompt through the chat template with thinking off; ``--backend
transformers`` is the CPU fallback with the same outputs. Inputs are CSVs with ``file_id`` and ``raw_text``
(``--val_csv``/``--test_csv`` -> ``<output_dir>/{val,test}_predictions.csv``, or ``--input``/``--output``); each
output CSV adds ``predicted``, ``entropy`` (mean negative log-probability of the generated tokens),
``num_tokens``, ``truncated`` and ``spans``, and ``<output>.json`` holds the spans as prediction JSON. A killed run
resumes where it stopped (``utils.generation.runner``).

Several GPUs or nodes (``utils.generation.data_parallel``): ``--data_parallel_size N`` starts N engine processes here,
one per GPU, and merges their shards into the same outputs; or run ``--num_shards N --shard_index i`` once per node
or GPU yourself, then ``--num_shards N --merge``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from pathlib import Path
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import InferenceArguments
from utils.generation.data_parallel import run_inference_command


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)  # what each shard process of --data_parallel_size reruns

    def body() -> int:
        (args,) = parse_args(InferenceArguments, argv=argv, description=__doc__.split("\n\n")[0])
        return run_inference_command(args, command, script=Path(__file__).resolve())

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
