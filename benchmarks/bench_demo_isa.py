"""The demo's table under two instruction-set settings, and GRPO's held-out effect over three seeds, with times.

    python benchmarks/bench_demo_isa.py [--profile full] [--seeds 0 1 2] [--settings native avx2]
        [--unpinned] [--jobs 2] [--extra_heldout N] [--work_dir DIR] [--json out.json]
    python benchmarks/bench_demo_isa.py --smoke        # seconds: the numerics fingerprint under both settings

Each run is ``scripts/demo.py`` in a fresh interpreter whose environment emulates one machine
(``utils.numerics.ISA_SETTINGS``): ``native`` leaves this CPU's kernels alone (AVX-512 here), ``avx2`` caps
ATen, MKL and oneDNN at AVX2 as a CPU without AVX-512 would. The demo pins its own numerics
(``--portable_numerics``, on by default), so both settings must print the same table to the last digit; the
first seed runs under every setting, the others under the first setting only, ``--jobs`` demos at a time.
Printed: each setting's table side by side with its wall time, whether they are identical, and per seed the
mean reward of Model 1's and Model 2's greedy outputs on the held-out val + test notes
(``utils.training.heldout``) and on the demo's extra held-out notes (fresh notes of a second synthetic corpus
that no model trained on: 64 in the full profile), each difference with its paired bootstrap interval, and the
GRPO rewards per step. Exits 1 unless the tables are identical and Model 2's reward is above Model 1's on the
extra notes of every seed (on val + test with ``--extra_heldout 0``): 16 val + test notes cannot tell a
difference of ~0.01 from chance. ``--unpinned`` adds the first seed under each setting with
``--portable_numerics false``, which shows that the settings do reach the kernels (those tables may differ). Wall times depend on the
machine's load: read them with the ``uptime`` line printed first.

``--smoke`` trains and decodes a tiny model (``utils.numerics.fingerprint``) under each setting, pinned and
not, and checks that the pinned hashes agree.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from utils.numerics import ISA_SETTINGS, emulated_environment, fingerprint_in, portable_environment
from utils.paths import REPO_ROOT


def run_demo(work: Path, profile: str, seed: int, setting: str, portable: bool,
             extra_heldout: int | None = None) -> dict[str, object]:
    """One demo run in a fresh interpreter under ``setting``; its results.json plus the wall time."""
    argv = [sys.executable, "scripts/demo.py", "--work_dir", str(work), "--profile", profile, "--seed", str(seed),
            "--portable_numerics", str(portable).lower()]
    if extra_heldout is not None:
        argv += ["--extra_heldout", str(extra_heldout)]
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO_ROOT, env=emulated_environment(os.environ, setting), capture_output=True,
                            text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"bench_demo_isa: demo failed under {setting} (seed {seed}):\n{result.stdout[-2000:]}"
                         f"\n{result.stderr[-2000:]}")
    data = json.loads((work / "results.json").read_text(encoding="utf-8"))
    return {"setting": setting, "seed": seed, "portable": portable, "wall_s": round(wall, 1), **data}


def table_lines(run: dict[str, object]) -> list[str]:
    return [f"{r['system']:<22} {r['n_spans']:>5} {r['span_f1']:.4f} {r['token_f1']:.4f} {r['worst_group']:.4f} "
            f"{r['final']:.4f}" for r in run["results"]]


def print_side_by_side(runs: Sequence[dict[str, object]]) -> None:
    header = f"{'system':<22} {'spans':>5} {'span':>6} {'token':>6} {'worst':>6} {'final':>6}"
    columns = [[f"{r['setting']} (pinned={r['portable']}), {r['wall_s']} s", header, *table_lines(r)] for r in runs]
    width = max(len(line) for column in columns for line in column) + 3
    for row in zip(*columns):
        print("".join(cell.ljust(width) for cell in row).rstrip())


def identical(runs: Sequence[dict[str, object]]) -> bool:
    return all(r["results"] == runs[0]["results"] and r["stages"] == runs[0]["stages"] for r in runs[1:])


def heldout_cell(stages: dict[str, object], prefix: str) -> str:
    """'notes: M1 -> M2, M2 - M1 [95 % interval]' of one held-out comparison in a run's stage figures."""
    if f"{prefix}_notes" not in stages:
        return "-"
    reward, difference = stages[f"{prefix}_reward"], stages[f"{prefix}_difference"]
    return (f"{stages[f'{prefix}_notes']}: {reward['model1']:.4f} -> {reward['model2']:.4f}, "
            f"{difference['estimate']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]")


def model2_gains(run: dict[str, object]) -> bool:
    """Model 2's reward above Model 1's on the extra held-out notes (on val + test when there are none)."""
    stages = run["stages"]
    reward = stages["extra_heldout_reward"] if "extra_heldout_reward" in stages else stages["heldout_reward"]
    return reward["model2"] > reward["model1"]


def print_grpo(runs: Sequence[dict[str, object]]) -> None:
    print("\nGRPO on held-out notes: notes: Model 1 -> Model 2 (mean reward of greedy outputs), Model 2 - Model 1 "
          "[95 % paired bootstrap interval]")
    for run in runs:
        stages = run["stages"]
        print(f"seed {run['seed']} ({run['setting']}, {run['wall_s']} s): val + test "
              f"{heldout_cell(stages, 'heldout')}; extra {heldout_cell(stages, 'extra_heldout')}; "
              f"GRPO reward per step (sampled, train) {stages['grpo_rewards']}")


def smoke() -> int:
    """Seconds: the tiny fingerprint under each setting, pinned and not; the pinned ones must agree."""
    rows = []
    for portable in (True, False):
        for setting in ISA_SETTINGS:
            env = portable_environment(emulated_environment(os.environ, setting), portable)
            started = time.perf_counter()
            rows.append({"setting": setting, "pinned": portable, **fingerprint_in(env, steps=4),
                         "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(rows[-1]), flush=True)
    pinned = {(r["weights"], r["tokens"]) for r in rows if r["pinned"]}
    print("pinned settings identical:", len(pinned) == 1)
    return 0 if len(pinned) == 1 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="full", choices=["full", "ci"], help="Demo profile to run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Demo seeds (corpus and models).")
    parser.add_argument("--settings", nargs="+", default=list(ISA_SETTINGS), choices=list(ISA_SETTINGS),
                        help="Instruction-set settings the first seed runs under.")
    parser.add_argument("--unpinned", action="store_true", help="Also run the first seed without the pins.")
    parser.add_argument("--work_dir", default=None, help="Keep the runs here (default: a temporary folder).")
    parser.add_argument("--json", default=None, help="Write every run's results here.")
    parser.add_argument("--jobs", type=int, default=2, help="Demos run side by side (each uses one thread).")
    parser.add_argument("--extra_heldout", type=int, default=None,
                        help="Fresh notes no model trained on, for GRPO's held-out check (the demo's flag; 0: none). "
                             "Default: the profile's (64 full, 4 ci).")
    parser.add_argument("--smoke", action="store_true", help="Seconds-long check of the pins on a tiny model.")
    args = parser.parse_args(argv)
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    if args.smoke:
        return smoke()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.work_dir or scratch)
        seed, first_setting = args.seeds[0], args.settings[0]
        plan = [(root / f"seed{seed}_{s}", seed, s, True) for s in args.settings]
        if args.unpinned:
            plan += [(root / f"seed{seed}_{s}_unpinned", seed, s, False) for s in args.settings]
        plan += [(root / f"seed{other}_{first_setting}", other, first_setting, True) for other in args.seeds[1:]]
        # each demo process uses one thread: --jobs of them share the machine's cores side by side
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(lambda job: run_demo(job[0], args.profile, *job[1:], args.extra_heldout), plan))
        first = runs[:len(args.settings)]
        unpinned = runs[len(args.settings):len(args.settings) * (1 + args.unpinned)]
        others = runs[len(args.settings) * (1 + args.unpinned):]
        print_side_by_side(first)
        same = identical(first)
        print(f"tables and stage figures identical across {', '.join(args.settings)}: {same}")
        if unpinned:
            print_side_by_side(unpinned)
            print(f"unpinned tables identical: {identical(unpinned)}")
        print_grpo([first[0], *others])
        gains = [model2_gains(r) for r in (first[0], *others)]
        where = "the extra notes" if "extra_heldout_notes" in first[0]["stages"] else "val + test"
        print(f"Model 2's held-out reward above Model 1's on {where} on {sum(gains)} of {len(gains)} seeds")
        if args.json:
            Path(args.json).write_text(json.dumps({"pinned": first, "unpinned": unpinned, "seeds": others}, indent=2))
    return 0 if same and all(gains) else 1


if __name__ == "__main__":
    raise SystemExit(main())
