"""Portable CPU numerics: the same floating-point bits on every x86-64 CPU with AVX2, for the demo's processes.

On CPU, torch's float32 results depend on which kernels the machine dispatches to, and a long training run
(the demo's 2,000 warm-start steps) amplifies the last bits into a different table. Three libraries dispatch by
instruction set, and each is pinned here through its own environment variable (read when the library loads,
so the variables must be set before ``import torch``; the demo sets them for its own process and its children):

- ATen's vectorised kernels (reductions, softmax, norms, Sleef's exp/log): ``ATEN_CPU_CAPABILITY=avx2``. The
  AVX-512 kernels reduce in a different order (measured here: other weights after 60 training steps).
- MKL's GEMM (every ``nn.Linear``): ``MKL_CBWR=COMPATIBLE``, MKL's conditional-numerical-reproducibility
  branch without the approximate rcpps/rsqrtps instructions. Intel documents it as the only CNR branch besides
  AUTO that MKL honours on non-Intel CPUs; the others (AVX2, AVX512) fall back to AUTO there, i.e. to
  whatever the CPU offers (measured here on an AMD EPYC: AVX2, AVX512 and SSE4_2 gave one result, COMPATIBLE
  and the default two others).
- oneDNN's JIT convolutions (the causal conv1d of Qwen3.5's linear-attention layers):
  ``ONEDNN_MAX_CPU_ISA=AVX2`` (otherwise AVX-512, or AMX where present).

One thread everywhere (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, no dynamic thread counts), and
``PYTHONHASHSEED=0`` so that set-iteration order (the official token F1 sums in it) is the same in every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Sequence

PORTABLE_CPU_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "PYTHONHASHSEED": "0",
}

# Two instruction-set settings one machine can emulate, as the environment a user's shell might carry: the
# machine's own kernels (AVX-512 here), and a machine without AVX-512 (every library capped at AVX2).
ISA_SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def portable_environment(base: Mapping[str, str], portable: bool = True) -> dict[str, str]:
    """``base`` with the portable pins on top (they win over the same variables in ``base``)."""
    return {**base, **PORTABLE_CPU_ENV} if portable else dict(base)


def emulated_environment(base: Mapping[str, str], setting: str) -> dict[str, str]:
    """``base`` as a machine of instruction-set ``setting`` (a key of ``ISA_SETTINGS``) would present it."""
    cleared = {k: v for k, v in base.items() if k not in {key for s in ISA_SETTINGS.values() for key in s}}
    return {**cleared, **ISA_SETTINGS[setting]}


def fingerprint(steps: int = 30, new_tokens: int = 40) -> dict[str, object]:
    """Train a tiny Qwen3.5 for ``steps`` AdamW steps, then decode greedily: hashes of the weights and tokens.

    Small enough to run in seconds, and it goes through every kernel family the demo uses (MKL GEMM, ATen's
    vectorised ops, oneDNN's conv1d forward and backward), so two environments that agree here differ in
    nothing the demo computes with; two that disagree show the setting reaches the kernels.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from utils.testing.tiny_models import build_tiny_tokenizer, tiny_qwen35_config

    torch.set_num_threads(1)
    texts = [f"patient {i} was started on <define_problem>aspirin {i}</define_problem> for chest pain"
             for i in range(20)]
    tokenizer = build_tiny_tokenizer(texts, vocab_size=600)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_qwen35_config(tokenizer, hidden_size=96, num_layers=2)).float()
    ids = tokenizer(texts, return_tensors="pt", padding=True).input_ids
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = ids[(step % 4) * 5:(step % 4) * 5 + 5]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        tokens = model.generate(ids[:2, :6], max_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    weights = hashlib.sha256()
    for _, tensor in sorted(model.state_dict().items()):
        weights.update(tensor.detach().numpy().tobytes())
    return {"aten_capability": torch.backends.cpu.get_cpu_capability(), "weights": weights.hexdigest()[:16],
            "tokens": hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:16]}


def fingerprint_in(env: Mapping[str, str], steps: int = 30) -> dict[str, object]:
    """``fingerprint`` in a fresh interpreter with environment ``env`` (the variables act at library load)."""
    from utils.paths import REPO_ROOT

    code = f"import json; from utils.numerics import fingerprint; print(json.dumps(fingerprint({int(steps)})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=dict(env), capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    from utils.cli import parse_args, run_cli
    from utils.configs.pipeline import FingerprintArguments

    def body() -> None:
        (args,) = parse_args(FingerprintArguments, argv=argv, description=__doc__.split("\n\n")[0])
        for setting in ISA_SETTINGS:
            env = portable_environment(emulated_environment(os.environ, setting), args.portable)
            print(json.dumps({"setting": setting, "portable": args.portable, **fingerprint_in(env, args.steps)}))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
