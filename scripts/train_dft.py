"""Fine-tune a LoRA adapter with the DFT loss on tagged notes (LAMAR Model 1; Model 3 with pseudo-labels).

    python scripts/train_dft.py --config recipes/model1_dft.yaml
    python scripts/train_dft.py --backend hf --model_name_or_path tiny/model --train_csv train.csv \
        --output_dir out/smoke --max_steps 2 --max_length 4096
    python scripts/train_dft.py --config recipes/model1_dft.yaml --dft_route kernel   # our Triton kernel (GPU)

Data: a split CSV from ``utils/gt_to_tag.py``: user = the published instruction with the note, assistant = the
tagged note; the loss covers the answer only. Every default is the published setting (``utils.configs.training``:
``DFTScriptArguments``, ``DFTModelConfig``, ``DFTConfig``); every TrainingArguments flag works too. Backends, DFT
routes, the loss guard and resuming: ``utils.training.sft``. With ``--backend unsloth`` (flag, recipe or default)
Unsloth is imported before anything imports trl, transformers or peft (``utils.training.backend``). On CPU, 8-bit
AdamW (bitsandbytes) is unavailable: ``adamw_torch`` is used instead, with a warning.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import logging
import sys
from typing import Sequence

# Light on purpose: nothing above this line may import trl, transformers or peft (Unsloth must come first).
from utils.training.backend import import_unsloth_first


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import_unsloth_first(argv)  # --backend unsloth (flag, recipe or default): import it before trl & co.

    from utils.cli import parse_args, run_cli
    from utils.configs.training import DFTConfig, DFTModelConfig, DFTScriptArguments
    from utils.training.backend import UnslothImportOrderError
    from utils.training.dft import DFTNotInEffectError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> None:
        from utils.training.sft import train

        script, model_args, config = parse_args(DFTScriptArguments, DFTModelConfig, DFTConfig, argv=argv,
                                                description=__doc__.split("\n\n")[0])
        train(script, model_args, config)

    return run_cli(body, extra_errors=(DFTNotInEffectError, UnslothImportOrderError))


if __name__ == "__main__":
    sys.exit(main())
