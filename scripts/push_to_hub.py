"""Upload a trained model to the Hugging Face Hub, optionally merging a LoRA adapter into its base first.

    HF_TOKEN=hf_... python scripts/push_to_hub.py --folder outputs/model1_merged --repo_id me/lamar-model1 \
        --base_model Qwen/Qwen3.5-4B --adapter outputs/model1_dft
    python scripts/push_to_hub.py --folder outputs/model1_dft --repo_id me/lamar-model1-lora --dry_run

Only model files are ever uploaded, each checked to be what its name claims, plus a model card written by this
script; anything else in the folder (a CSV, a log, a checkpoint, a symbolic link) may hold MIMIC note text, which
the data use agreement forbids sharing: the upload is then REFUSED and those files are named
(``utils.training.hub``). ``--dry_run`` checks and lists, and writes and uploads nothing. The token comes from
``HF_TOKEN`` (or ``huggingface-cli login``); ``--token`` exists but puts the secret in your shell history.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sys
from typing import Sequence

from utils.cli import parse_args, run_cli
from utils.configs.pipeline import PushArguments


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        from utils.training.hub import push

        (args,) = parse_args(PushArguments, argv=argv, description=__doc__.split("\n\n")[0])
        files = push(args)
        if args.dry_run and args.adapter:
            print(f"would merge {args.adapter} into {args.base_model}, write the model to {args.folder}, check it and "
                  f"upload its model files to {args.repo_id} (nothing written now)")
            return
        print(f"{'would upload' if args.dry_run else 'uploaded'} {len(files)} file(s) to {args.repo_id}:")
        for name in files:
            print(f"  {name}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
