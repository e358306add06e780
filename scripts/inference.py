"""Tag notes with a generative model: greedy decoding with the logprob of every chosen token (SPEC section 4).

Published settings (the defaults): vLLM, temperature 0, at most 24,576 new tokens, context 32,768,
8 sequences at a time, the chosen token's logprob at every step. The prompt is ``utils.prompt`` through
the model's chat template with thinking off. ``--backend transformers`` is the CPU fallback with the same
output format.

Inputs: CSVs with at least ``file_id`` and ``raw_text`` (the gt_to_tag CSVs, the pseudo-label candidates
of ``pseudolabels/retrieve.py``, ...): ``--val_csv``/``--test_csv`` as published (outputs
``<output_dir>/val_predictions.csv`` / ``test_predictions.csv``), or ``--input a.csv b.csv --output
a_out.csv b_out.csv``. Each output CSV = the input columns + ``predicted`` (model output), ``entropy``
(mean negative log-probability of the generated tokens), ``num_tokens`` (generated, EOS included) and
``truncated`` (hit the token budget without EOS). ``--offsets_json`` also writes ``<output>.json``:
prediction JSON through ``utils.pred_to_offset``.

``--copy_constraint`` (off by default: the published run decodes unconstrained): every step may only
continue the note exactly, open one of the nine tags or close an open one, and end only when the note
is fully written with every span closed (``utils.copy_decoding``), so the de-tagged output IS the note
and offsets are exact. Guards against an unsure model escaping into tags: no category opened twice at
one position, at most ``--copy_max_tags_per_position`` openings per position (default 2), no span
without a visible character, optionally at most ``--copy_max_open`` spans open at once. Its ``entropy``
is the mean -log p of the chosen tokens under the CONSTRAINED distribution (log-softmax of the masked
logits), lower than an unconstrained run's: do not mix the two in one entropy quantile. transformers
backend only for now.

Resumable: every finished batch is appended to ``<output>.partial.jsonl`` (flushed and fsynced) and
rows found there are skipped when the command is run again after a crash or kill; the CSV itself is
written atomically once all rows are done. The partial file stays as a cache; ``--overwrite`` starts
afresh. Rows whose prompt alone fills the context get an empty output (``truncated``, entropy NaN).

Usage::

    python scripts/inference.py --model Keetawan/Qwen3.5-4B_LoRA_Exact_BF16_Rank256_Alpha32_DFT \\
        --val_csv data/tagged/val.csv --test_csv data/tagged/test.csv --output_dir outputs/model1
    python scripts/inference.py --model Qwen/Qwen3.5-4B --adapter outputs/model1_lora \\
        --input work/pseudo_candidates.csv --output work/pseudo_predictions.csv
    python scripts/inference.py --backend transformers --model tiny_model --input val.csv --output val_out.csv \\
        --max_new_tokens 64
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import csv
import json
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from utils.fileio import InputError, atomic_open, report_input_error
from utils.generation import (
    Generation,
    Generator,
    TransformersGenerator,
    VllmGenerator,
    adapter_rank,
    new_token_budget,
    vllm_engine_kwargs,
)

RELEASED_MODEL_1 = "Keetawan/Qwen3.5-4B_LoRA_Exact_BF16_Rank256_Alpha32_DFT"
RESULT_COLUMNS = ("predicted", "entropy", "num_tokens", "truncated")
BACKENDS = ("vllm", "transformers")
# Settings that change the outputs: a partial file made with others is not reused.
RESUME_KEYS = ("model", "adapter", "tokenizer", "max_new_tokens", "max_model_len", "temperature", "enable_thinking", "logprobs")
# Recorded only when the constraint is on, so partial files of unconstrained runs made earlier stay valid.
COPY_RESUME_KEYS = ("copy_constraint", "copy_max_tags_per_position", "copy_max_open")


@dataclass
class InferenceArguments:
    """Flags of ``scripts/inference.py`` (defaults = the published run)."""

    model: str = field(default=RELEASED_MODEL_1, metadata={"help": "Merged model, or the base model with --adapter."})
    adapter: str | None = field(default=None, metadata={"help": "PEFT LoRA adapter on top of --model (vLLM LoRA)."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer (default: --model)."})
    backend: str = field(default="vllm", metadata={"help": "vllm (GPU) or transformers (CPU fallback)."})
    val_csv: str | None = field(default=None, metadata={"help": "Validation CSV -> <output_dir>/val_predictions.csv."})
    test_csv: str | None = field(default=None, metadata={"help": "Test CSV -> <output_dir>/test_predictions.csv."})
    output_dir: str = field(default="outputs/inference", metadata={"help": "Folder for --val_csv/--test_csv outputs."})
    input: list[str] = field(default_factory=list, metadata={"help": "Input CSVs (file_id, raw_text, ...)."})
    output: list[str] = field(default_factory=list, metadata={"help": "Output CSVs, one per --input."})
    id_column: str = field(default="file_id", metadata={"help": "Column with the note id."})
    text_column: str = field(default="raw_text", metadata={"help": "Column with the exact note text."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (published)."})
    max_new_tokens: int = field(default=24576, metadata={"help": "Generated tokens at most."})
    max_model_len: int = field(default=32768, metadata={"help": "Context length (prompt + generation)."})
    batch_size: int = field(default=8, metadata={"help": "Sequences generated at a time (vLLM max_num_seqs)."})
    flush_every: int = field(default=64, metadata={"help": "vLLM: prompts per generate call = rows per resume step."})
    logprobs: bool = field(default=True, metadata={"help": "Keep the chosen tokens' logprobs (needed for entropy)."})
    enable_thinking: bool = field(default=False, metadata={"help": "Chat template thinking switch (published: off)."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallel GPUs."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM GPU memory share."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype (auto, bfloat16, float32, ...)."})
    device: str = field(default="cpu", metadata={"help": "transformers backend device (cpu, cuda, ...)."})
    seed: int = field(default=3407, metadata={"help": "Engine seed (greedy decoding does not depend on it)."})
    vllm_kwargs: str | None = field(default=None, metadata={"help": "Extra vllm.LLM arguments as a JSON object."})
    copy_constraint: bool = field(default=False, metadata={"help": "Constrain decoding to the note with tags in between "
                                  "(exact offsets; off in the published run; transformers backend)."})
    copy_max_tags_per_position: int = field(default=2, metadata={"help": "--copy_constraint: tags opened at one position at most."})
    copy_max_open: int | None = field(default=None, metadata={"help": "--copy_constraint: spans open at once at most (default: no limit)."})
    offsets_json: bool = field(default=False, metadata={"help": "Also write <output>.json (offsets via pred_to_offset)."})
    overwrite: bool = field(default=False, metadata={"help": "Ignore earlier partial results and start afresh."})


@dataclass(frozen=True)
class Job:
    """One input CSV and where its results go."""

    input: Path
    output: Path

    @property
    def partial(self) -> Path:
        return self.output.with_name(self.output.name + ".partial.jsonl")

    @property
    def offsets(self) -> Path:
        return self.output.with_suffix(".json")


def plan_jobs(args: InferenceArguments) -> list[Job]:
    """(input, output) pairs from --val_csv/--test_csv and --input/--output."""
    jobs = []
    for name, path in (("val", args.val_csv), ("test", args.test_csv)):
        if path:
            jobs.append(Job(Path(path), Path(args.output_dir) / f"{name}_predictions.csv"))
    if len(args.input) != len(args.output):
        raise InputError("--output", "", f"expected one output per --input ({len(args.input)}), got {len(args.output)}")
    jobs.extend(Job(Path(i), Path(o)) for i, o in zip(args.input, args.output))
    if not jobs:
        raise InputError("--input", "", "nothing to do: give --val_csv/--test_csv or --input/--output")
    outputs = [j.output.resolve() for j in jobs]
    if len(set(outputs)) != len(outputs):
        raise InputError("--output", "", "two inputs would write the same output file")
    return jobs


def read_input(path: Path, id_column: str, text_column: str) -> "pd.DataFrame":  # noqa: F821
    """The input CSV with every cell an exact string; ids must be present and unique (they key the resume)."""
    from utils.gt_to_tag import read_csv_strings

    frame = read_csv_strings(path, (id_column, text_column))
    clash = [c for c in RESULT_COLUMNS if c in frame.columns]
    if clash:
        raise InputError(path, "line 1", f"column(s) {', '.join(clash)} would be overwritten; is this already an output?")
    seen: set[str] = set()
    for row, file_id in enumerate(frame[id_column], start=1):
        if not file_id.strip():
            raise InputError(path, f"row {row}", f"empty '{id_column}'")
        if file_id in seen:
            raise InputError(path, f"row {row}", f"duplicate {id_column} {file_id!r}: each note may appear once")
        seen.add(file_id)
    return frame


# ----------------------------------------------------------------------------------------- partial file


def resume_settings(args: InferenceArguments) -> dict[str, Any]:
    values = asdict(args)
    keys = RESUME_KEYS + (COPY_RESUME_KEYS if args.copy_constraint else ())
    return {k: values[k] for k in keys}


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
                raise InputError(path, "line 1", f"partial results made with other settings {record.get('settings')}; "
                                 "delete the file or use --overwrite")
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
            self._write([{"settings": settings}])

    def _write(self, records: list[dict[str, Any]]) -> None:
        self.handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def add(self, file_ids: Sequence[str], generations: Sequence[Generation]) -> list[dict[str, Any]]:
        records = [result_record(i, g) for i, g in zip(file_ids, generations)]
        self._write(records)
        return records

    def close(self) -> None:
        self.handle.close()


def result_record(file_id: str, generation: Generation) -> dict[str, Any]:
    entropy = generation.entropy
    return {
        "file_id": file_id,
        "predicted": generation.text,
        "entropy": None if math.isnan(entropy) else entropy,
        "num_tokens": generation.num_tokens,
        "truncated": generation.truncated,
    }


# ----------------------------------------------------------------------------------------------- running


def render_prompts(tokenizer: Any, texts: Sequence[str], enable_thinking: bool = False) -> list[str]:
    """Chat-template prompts for notes (utils.prompt's instruction, generation prompt added)."""
    from utils.prompt import build_messages

    return [
        tokenizer.apply_chat_template(
            build_messages(t), tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
        for t in texts
    ]


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_rows(
    generator: Generator, tokenizer: Any, ids: Sequence[str], texts: Sequence[str], args: InferenceArguments
) -> list[Generation]:
    """Generate one step's rows; prompts that leave no room for output get an empty, truncated result."""
    prompts = render_prompts(tokenizer, texts, args.enable_thinking)
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


def infer_file(job: Job, generator_factory, args: InferenceArguments, progress: bool = True) -> int:
    """Run the rows of one input not done yet, then write its CSV (and offsets JSON); returns rows generated now."""
    from tqdm.auto import tqdm

    frame = read_input(job.input, args.id_column, args.text_column)
    settings = resume_settings(args)
    done = {} if args.overwrite else load_partial(job.partial, settings)
    ids = frame[args.id_column].tolist()
    texts = dict(zip(ids, frame[args.text_column]))
    pending = [i for i in ids if i not in done]
    step = args.batch_size if args.backend == "transformers" else max(args.flush_every, 1)
    generated = 0
    if pending:
        generator, tokenizer = generator_factory()
        writer = PartialWriter(job.partial, settings, fresh=args.overwrite)
        try:
            with tqdm(total=len(ids), initial=len(ids) - len(pending), desc=job.input.name, unit="note", disable=not progress) as bar:
                for chunk in batches(pending, step):
                    gens = generate_rows(generator, tokenizer, chunk, [texts[i] for i in chunk], args)
                    for record in writer.add(chunk, gens):
                        done[record["file_id"]] = record
                    generated += len(chunk)
                    bar.update(len(chunk))
        finally:
            writer.close()
    write_output(job, frame, done, args)
    return generated


def write_output(job: Job, frame: "pd.DataFrame", done: dict[str, dict[str, Any]], args: InferenceArguments) -> None:  # noqa: F821
    """Input columns + results, in input order, written atomically (and the offsets JSON if asked)."""
    out = frame.copy()
    records = [done[i] for i in out[args.id_column]]
    out["predicted"] = [r["predicted"] for r in records]
    out["entropy"] = [math.nan if r["entropy"] is None else float(r["entropy"]) for r in records]
    out["num_tokens"] = [int(r["num_tokens"]) for r in records]
    out["truncated"] = [bool(r["truncated"]) for r in records]
    with atomic_open(job.output, "w", encoding="utf-8", newline="") as handle:
        # QUOTE_ALL: a lone "\r" inside a note would otherwise break the row (pandas quotes only on "\n").
        out.to_csv(handle, index=False, float_format="%.17g", quoting=csv.QUOTE_ALL)
    if args.offsets_json:
        from utils.pred_to_offset import outputs_to_predictions, summarize_reports
        from utils.predictions import write_predictions

        rows = zip(out[args.id_column], out[args.text_column], out["predicted"])
        predictions, reports = outputs_to_predictions(rows)
        write_predictions(job.offsets, predictions)
        print(f"{job.offsets}: {summarize_reports(reports)}")


def make_generator_factory(args: InferenceArguments):
    """Build the backend once, on first need (a run with nothing left to do loads no model)."""
    cache: dict[str, Any] = {}

    def factory():
        if "gen" not in cache:
            cache["gen"] = build_generator(args)
        return cache["gen"]

    return factory


def build_generator(args: InferenceArguments) -> tuple[Generator, Any]:
    """(backend, tokenizer used for the chat template)."""
    if args.backend == "transformers":
        guards = None
        if args.copy_constraint:
            from utils.copy_decoding import CopyGuards

            guards = CopyGuards(args.copy_max_tags_per_position, args.copy_max_open)
        gen = TransformersGenerator(args.model, args.adapter, args.tokenizer, args.dtype, args.device,
                                    copy_constraint=args.copy_constraint, copy_guards=guards)
        return gen, gen.tokenizer
    extra = json.loads(args.vllm_kwargs) if args.vllm_kwargs else None
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
        extra=extra,
    )
    gen = VllmGenerator(engine, args.adapter, args.temperature, args.logprobs, args.seed)
    return gen, gen.tokenizer


def validate(args: InferenceArguments) -> list[Job]:
    """Check flags and every input before any model is loaded."""
    if args.backend not in BACKENDS:
        raise InputError("--backend", "", f"expected one of {', '.join(BACKENDS)}, got {args.backend!r}")
    if args.backend == "transformers" and args.temperature != 0:
        raise InputError("--temperature", "", "the transformers fallback decodes greedily only (temperature 0)")
    for name in ("max_new_tokens", "max_model_len", "batch_size", "copy_max_tags_per_position"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name}", "", f"expected a positive number, got {getattr(args, name)}")
    if args.copy_max_open is not None and args.copy_max_open < 1:
        raise InputError("--copy_max_open", "", f"expected a positive number (or nothing for no limit), got {args.copy_max_open}")
    if args.copy_constraint and args.backend != "transformers":
        raise InputError("--copy_constraint", "", "available on the transformers backend only (for now); add --backend transformers")
    if args.vllm_kwargs:
        try:
            if not isinstance(json.loads(args.vllm_kwargs), dict):
                raise ValueError
        except ValueError:
            raise InputError("--vllm_kwargs", "", "expected a JSON object, e.g. '{\"enforce_eager\": true}'") from None
    jobs = plan_jobs(args)
    for job in jobs:
        read_input(job.input, args.id_column, args.text_column)
    return jobs


def run(args: InferenceArguments, generator_factory=None, progress: bool = True) -> dict[str, int]:
    """All jobs; returns {output path: rows generated in this call}."""
    jobs = validate(args)
    factory = generator_factory or make_generator_factory(args)
    return {str(job.output): infer_file(job, factory, args, progress) for job in jobs}


def main(argv: Sequence[str] | None = None) -> int:
    from trl import TrlParser

    (args,) = TrlParser(InferenceArguments).parse_args_and_config(argv)
    try:
        generated = run(args)
    except InputError as err:
        return report_input_error(err)
    for output, count in generated.items():
        print(f"{output}: {count} note(s) generated now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
