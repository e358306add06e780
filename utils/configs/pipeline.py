"""Argument dataclasses of the data, inference, pseudo-label, scoring, ensemble, hub and demo commands.

Defaults are the published settings and the README's folder layout (``utils.configs``). Parsed by
``utils.cli.parse_args``: each field is a flag, ``--config`` takes a YAML recipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from utils.configs import (
    EMBEDDING_MODEL, MEDDEC, MIXED_TRAIN_CSV, MODEL_CLASSES, OPTUNA_STORAGE, OPTUNA_STUDY, RELEASED_MODEL_1, TAGGED_DIR,
    WORK_DIR,
    split_files,
)
from utils.fileio import InputError
from utils.guards import is_unit_interval
from utils.metric.rules import DEFAULT_SCORER, SCORER_HELP, SCORERS
from utils.tagging.locate import DEFAULT_LOCATOR, LOCATORS

ANY_DESCRIPTION = "any"
UNCLOSED_POLICIES = ("drop", "close_at_end")
INFERENCE_BACKENDS = ("vllm", "transformers")
PSEUDO_TARGETS = ("nan", "raw", "located")
EMPTY_OUTPUT_ENTROPIES = ("zero", "none")
EMBEDDING_SOURCES = ("pool", "meddec")
LOCATE_HELP = ("How spans are found in the note: 'published' = the published utils/pred_to_offset.py's search "
               "(exact, whitespace-normalised, case-insensitive, prefix/suffix, difflib fuzzy >= 0.85; duplicates kept; "
               "sorted by start, end); 'align' = our edlib alignment of the whole output (utils.tagging.locate).")


# ------------------------------------------------------------------------------------------- flag checks
# Each dataclass refuses flag values that cannot work in ``__post_init__``, so every command (and every library call
# with a dataclass) rejects them the same way before any input is read.


def require_at_least_one(args: Any, names: tuple[str, ...]) -> None:
    """Sizes and counts that must be positive (shard sizes, batch sizes, top-k)."""
    for name in names:
        if getattr(args, name) < 1:
            raise InputError.flag(f"--{name}", f"expected a positive number, got {getattr(args, name)}")


def check_quantile(quantile: float, flag: str) -> None:
    """A threshold is a quantile of the pool's entropies: a number from 0 to 1."""
    if not 0.0 <= quantile <= 1.0:
        raise InputError.flag(flag, f"expected a quantile between 0 and 1, got {quantile}")


#: The logprobs vLLM reports under the copy constraint: those of the processed (constrained) distribution.
COPY_LOGPROBS_MODE = "processed_logprobs"


def check_vllm_copy_settings(extra: dict[str, Any]) -> None:
    """What copy-constrained decoding cannot run with on vLLM 0.31: ValueError naming the setting.

    Speculative decoding (several logits rows per request) and logprobs other than the processed ones are refused.
    Both model runners are supported (``utils.generation.backends.copy_model_runner`` picks the processor's
    interface).
    """
    if extra.get("speculative_config") is not None:
        raise ValueError("copy-constrained decoding does not support speculative decoding (speculative_config)")
    if extra.get("logprobs_mode", COPY_LOGPROBS_MODE) != COPY_LOGPROBS_MODE:
        raise ValueError(f"copy-constrained decoding reports logprobs under the constraint (logprobs_mode "
                         f"{COPY_LOGPROBS_MODE!r}), got logprobs_mode {extra['logprobs_mode']!r}")


# ------------------------------------------------------------------------------------------- data preparation


@dataclass
class GtToTagArguments:
    """``utils/gt_to_tag.py``: gold annotations -> tagged-text CSVs, one per split."""

    gold_dir: str = field(default=str(MEDDEC.gold_dir), metadata={"help": "MedDec data/ folder with <ID>.json gold files."})
    raw_text_dir: str = field(default=str(MEDDEC.raw_text_dir), metadata={"help": "MedDec raw_text/ folder with <ID>.txt notes."})
    raw_text_csv: str | None = field(default=None, metadata={
        "help": "CSV with file_id and raw_text columns: note texts come from here instead of --raw_text_dir."})
    train_split: str = field(default=str(MEDDEC.split("train")), metadata={"help": "Train split file (one id per line)."})
    val_split: str = field(default=str(MEDDEC.split("val")), metadata={"help": "Validation split file."})
    test_split: str | None = field(default=None, metadata={
        "help": "Optional test split file (notes without gold get empty gold columns)."})
    out_dir: str = field(default=str(TAGGED_DIR), metadata={"help": "Folder for train.csv, val.csv (and test.csv)."})
    dedupe_spans: bool = field(default=False, metadata={
        "help": "Collapse exact duplicate gold spans (same start, end, category) into one. Default: kept as doubled "
                "tags and repeated offsets, as the published gt_to_tag.py did."})
    keep_split_order: bool = field(default=False, metadata={
        "help": "Write the notes in split-file order. Default: sorted by <ID>.json file name, as the published "
                "gt_to_tag.py did (the order training sees before shuffling)."})


@dataclass
class PredToOffsetArguments:
    """``utils/pred_to_offset.py``: tagged model outputs -> prediction JSON (character offsets)."""

    input: str = field(metadata={"help": "CSV with file_id, predicted (model output) and raw_text columns."})
    output: str = field(metadata={"help": "Prediction JSON to write (the evaluator's format)."})
    raw_text_dir: str | None = field(default=None, metadata={
        "help": "MedDec raw_text/ folder: note texts come from here instead of the CSV."})
    report: str | None = field(default=None, metadata={
        "help": "Optional JSON Lines report: per note, how spans were matched and what was dropped."})
    locate: str = field(default=DEFAULT_LOCATOR, metadata={"help": LOCATE_HELP, "choices": list(LOCATORS)})
    unclosed: str = field(default="drop", metadata={"help": "What to do with tags left open.",
                                                    "choices": list(UNCLOSED_POLICIES)})
    id_column: str = field(default="file_id", metadata={"help": "Column with the note id."})
    output_column: str = field(default="predicted", metadata={"help": "Column holding the model output."})
    text_column: str = field(default="raw_text", metadata={"help": "Column with the note text (ignored with --raw_text_dir)."})


# -------------------------------------------------------------------------------------------------- inference


@dataclass
class InferenceArguments:
    """``scripts/inference.py`` (defaults = the published run: vLLM, greedy, 24,576 new tokens, context 32,768)."""

    model: str = field(default=RELEASED_MODEL_1, metadata={"help": "Merged model, or the base model with --adapter."})
    adapter: str | None = field(default=None, metadata={"help": "PEFT LoRA adapter on top of --model (vLLM LoRA)."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer (default: --model)."})
    backend: str = field(default="vllm", metadata={"help": "vllm (GPU) or transformers (CPU fallback).",
                                                   "choices": list(INFERENCE_BACKENDS)})
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
    flush_every: int = field(default=0, metadata={
        "help": "vLLM: prompts per generate call = rows written per resume step. 0 (published): all rows of an input "
                "in one call (a killed run then keeps nothing of that input); e.g. 64 to resume in steps."})
    logprobs: bool = field(default=True, metadata={"help": "Keep the chosen tokens' logprobs (needed for entropy)."})
    enable_thinking: bool = field(default=False, metadata={"help": "Chat template thinking switch (published: off)."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallel GPUs."})
    gpu_memory_utilization: float = field(default=0.95, metadata={"help": "vLLM GPU memory share (published: 0.95)."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype (auto, bfloat16, float32, ...)."})
    device: str = field(default="cpu", metadata={"help": "transformers backend device (cpu, cuda, ...)."})
    seed: int = field(default=3407, metadata={"help": "Engine seed (greedy decoding does not depend on it)."})
    vllm_kwargs: str | None = field(default=None, metadata={"help": "Extra vllm.LLM arguments as a JSON object."})
    locate: str = field(default=DEFAULT_LOCATOR, metadata={
        "help": LOCATE_HELP + " Makes the spans column and <output>.json.", "choices": list(LOCATORS)})
    unclosed: str = field(default="drop", metadata={
        "help": "Tags left open in an output when its spans are located (utils/pred_to_offset.py).",
        "choices": list(UNCLOSED_POLICIES)})
    copy_constraint: bool = field(default=False, metadata={
        "help": "Constrain decoding to the note with tags in between: exact offsets by construction "
                "(utils.generation.copy_decoding; off in the published run; both backends, on vLLM through a Model "
                "Runner V2 logits processor). Entropy is then the constrained distribution's."})
    copy_max_tags_per_position: int = field(default=2, metadata={
        "help": "--copy_constraint: tags opened at one position at most."})
    copy_max_open: int | None = field(default=None, metadata={
        "help": "--copy_constraint: spans open at once at most (default: no limit)."})
    copy_word_boundaries: bool = field(default=False, metadata={
        "help": "--copy_constraint: no tag between two alphanumeric characters (the scorer widens such span edges "
                "to the whole word anyway)."})
    copy_text_mass: bool = field(default=False, metadata={
        "help": "--copy_constraint: credit the probability of text the constraint forbids to the note's continuation, "
                "so a tag is written only where the model prefers it to writing any text (not merely to the note's "
                "exact next token; an unsure model otherwise escapes into tags)."})
    copy_max_span_chars: int | None = field(default=None, metadata={
        "help": "--copy_constraint: non-whitespace characters in one span at most; the span must close there "
                "(default: no limit; the synthetic corpus's spans hold at most 130)."})
    copy_allow_unclosed: bool = field(default=False, metadata={
        "help": "--copy_constraint: allow the end of sequence once the note is written even with spans open; those "
                "are then unclosed tags, handled by --unclosed (default: dropped) as in an unconstrained output, "
                "instead of being closed by force at the end of the note."})
    overwrite: bool = field(default=False, metadata={"help": "Ignore earlier partial results and start afresh."})
    # Data parallelism (utils.generation.data_parallel); the defaults are one process, as published.
    data_parallel_size: int = field(default=1, metadata={
        "help": "Start this many engine processes here, one per GPU (--tensor_parallel_size GPUs each, taken in order "
                "from CUDA_VISIBLE_DEVICES; CPU processes with --backend transformers --device cpu), each on its share "
                "of the rows with its own resumable partial file; waits, then writes the outputs in input order."})
    num_shards: int = field(default=1, metadata={
        "help": "Rows split into this many shards for processes you start yourself (one per GPU or node, e.g. a "
                "SLURM array); give each its --shard_index, then run once with --merge."})
    shard_index: int | None = field(default=None, metadata={
        "help": "With --num_shards N: generate only this shard's rows (blocks of --batch_size rows, block b to "
                "shard b %% N) into <output>.shard-I-of-N.partial.jsonl; writes no output (see --merge)."})
    merge: bool = field(default=False, metadata={
        "help": "With --num_shards N: write the outputs (CSV + JSON, input order) from the N finished shards."})

    def __post_init__(self) -> None:
        """Flag values and combinations that cannot work, refused before any model or input is read (whether the
        models and inputs exist is checked where they are read: ``utils.generation.runner.prepare_jobs``)."""
        if self.backend == "transformers" and self.temperature != 0:
            raise InputError.flag("--temperature", "the transformers fallback decodes greedily only (temperature 0)")
        require_at_least_one(self, ("max_new_tokens", "max_model_len", "batch_size", "copy_max_tags_per_position"))
        for name in ("copy_max_open", "copy_max_span_chars"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError.flag(f"--{name}", f"expected a positive number (or nothing for no limit), "
                                      f"got {getattr(self, name)}")
        if self.flush_every < 0:
            raise InputError.flag("--flush_every", f"expected 0 (all rows in one call) or a positive number, "
                                  f"got {self.flush_every}")
        self.check_sharding()
        self.check_vllm_kwargs()
        if len(self.input) != len(self.output):
            raise InputError.flag("--output", f"expected one output per --input ({len(self.input)}), "
                                  f"got {len(self.output)}")
        outputs = [output.resolve() for _, output in self.input_output_pairs()]
        if len(set(outputs)) != len(outputs):
            raise InputError.flag("--output", "two inputs would write the same output file")

    def check_sharding(self) -> None:
        """The data-parallel flags (``utils.generation.data_parallel``) are consistent."""
        require_at_least_one(self, ("data_parallel_size", "num_shards"))
        if self.data_parallel_size > 1 and (self.num_shards > 1 or self.shard_index is not None or self.merge):
            raise InputError.flag("--data_parallel_size", "starts and merges its own shards; leave out --num_shards, "
                                  "--shard_index and --merge")
        if self.data_parallel_size > 1 and self.backend == "transformers" and self.device.startswith("cuda:"):
            raise InputError.flag("--device", "each shard process sees only its own GPU: use --device cuda",
                                  value=self.device)
        if self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            raise InputError.flag("--shard_index", f"expected 0 to {self.num_shards - 1} (--num_shards "
                                  f"{self.num_shards}), got {self.shard_index}")
        if self.merge and self.shard_index is not None:
            raise InputError.flag("--merge", "merges every shard: leave out --shard_index")
        if self.merge and self.num_shards < 2:
            raise InputError.flag("--merge", "needs --num_shards N (N >= 2), as given to the shards")
        if self.num_shards > 1 and self.shard_index is None and not self.merge:
            raise InputError.flag("--num_shards", "give this process's --shard_index, or --merge once every shard "
                                  "is done")

    def check_vllm_kwargs(self) -> None:
        """--vllm_kwargs is a JSON object, and holds nothing the copy constraint cannot run with on vLLM."""
        if self.vllm_kwargs:
            try:
                if not isinstance(json.loads(self.vllm_kwargs), dict):
                    raise ValueError
            except ValueError:
                raise InputError.flag("--vllm_kwargs", "expected a JSON object, e.g. '{\"enforce_eager\": true}'") \
                    from None
        if self.copy_constraint and self.backend == "vllm":
            try:
                check_vllm_copy_settings(json.loads(self.vllm_kwargs) if self.vllm_kwargs else {})
            except ValueError as err:
                raise InputError.flag("--copy_constraint", str(err)) from None

    def input_output_pairs(self) -> list[tuple[Path, Path]]:
        """(input CSV, output CSV): --val_csv/--test_csv into --output_dir, then each --input with its --output."""
        pairs = [(Path(path), Path(self.output_dir) / f"{name}_predictions.csv")
                 for name, path in (("val", self.val_csv), ("test", self.test_csv)) if path]
        return pairs + [(Path(i), Path(o)) for i, o in zip(self.input, self.output)]


# -------------------------------------------------------------------------------------------------- pseudo-labels


@dataclass
class ExtractArguments:
    """``pseudolabels/extract_unlabel.py``: the unlabeled discharge-summary pool."""

    noteevents: str = field(default=str(MEDDEC.noteevents_csv), metadata={"help": "MIMIC-III NOTEEVENTS.csv."})
    splits: list[str] = field(default_factory=split_files, metadata={
        "help": "Split files (one MedDec id per line) whose notes must not enter the pool."})
    output: str = field(default=str(WORK_DIR / "unlabeled.csv"), metadata={"help": "Output CSV (file_id, raw_text)."})
    description: str = field(default="Report", metadata={
        "help": f"DESCRIPTION to keep (exact match); '{ANY_DESCRIPTION}' keeps Report and Addendum alike."})
    exclude_patients: bool = field(default=False, metadata={
        "help": "Also drop every note of a patient (SUBJECT_ID) found in the splits."})
    exclude_by_exact_id: bool = field(default=False, metadata={
        "help": "Exclude split notes only where SUBJECT_HADM_ROW equals a split id exactly, as the published "
                "extract_unlabel.py did: notes whose MedDec id has an annotator suffix (-name) then stay in the pool, "
                "so evaluation notes can leak into pseudo-label training (warns). Default: exclude by ROW_ID."})
    chunksize: int = field(default=2_000, metadata={"help": "Rows of NOTEEVENTS read at a time (bounds memory)."})

    def __post_init__(self) -> None:
        if self.chunksize < 1:
            raise InputError.flag("--chunksize", f"expected a positive number of rows, got {self.chunksize}")


@dataclass
class EmbeddingArguments:
    """``pseudolabels/embedding.py``: embeddings of the pool and of the MedDec notes."""

    model: str = field(default=EMBEDDING_MODEL, metadata={"help": "sentence-transformers model (Hub id or folder)."})
    sources: list[str] = field(default_factory=lambda: ["pool", "meddec"], metadata={
        "help": "What to embed: pool, meddec or both."})
    pool_csv: str = field(default=str(WORK_DIR / "unlabeled.csv"), metadata={"help": "Pool CSV (file_id, raw_text)."})
    pool_out: str = field(default=str(WORK_DIR / "embeddings/pool"), metadata={"help": "Shard folder of the pool."})
    meddec_raw_text: str = field(default=str(MEDDEC.raw_text_dir), metadata={"help": "MedDec raw_text/ folder."})
    meddec_splits: list[str] = field(default_factory=split_files, metadata={
        "help": "Split files whose notes are embedded (retrieve.py picks the query splits)."})
    meddec_out: str = field(default=str(WORK_DIR / "embeddings/meddec"), metadata={"help": "Shard folder of the MedDec notes."})
    shard_size: int = field(default=1024, metadata={"help": "Notes per cached shard (the unit of resuming)."})
    batch_size: int = field(default=8, metadata={"help": "Encoding batch size."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Truncate notes to this many tokens."})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: automatic)."})
    dtype: str = field(default="float16", metadata={
        "help": "Model weights dtype: float16 (published; float32 on CPU, where half precision is slow), auto (the "
                "checkpoint's), bfloat16, float32."})
    attn_implementation: str = field(default="flash_attention_2", metadata={
        "help": "Attention kernel: flash_attention_2 (published; used where flash-attn and a GPU are present, else "
                "transformers' default), sdpa or eager."})
    padding_side: str = field(default="left", metadata={
        "help": "Which side a batch's shorter notes are padded on (published: left; position ids are not shifted, "
                "so it changes their embeddings).", "choices": ["left", "right"]})
    prompt_name: str | None = field(default=None, metadata={"help": "Saved prompt of the model to prepend."})
    devices: list[str] = field(default_factory=list, metadata={
        "help": "Encode on several devices at once, one process per entry (sentence-transformers' multi-process "
                "pool), e.g. cuda:0 cuda:1 cuda:2 cuda:3, or cpu cpu; shards are cached and resumed as with one "
                "device. Default: one process on --device."})

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in EMBEDDING_SOURCES]
        if unknown:
            raise InputError.flag("--sources", f"unknown source(s) {', '.join(unknown)}; expected pool and/or meddec")
        require_at_least_one(self, ("shard_size", "batch_size"))
        if self.devices and self.device is not None:
            raise InputError.flag("--devices", "give --device (one process) or --devices (one process each), not both")


@dataclass
class RetrieveArguments:
    """``pseudolabels/retrieve.py``: greedy unique assignment of pool notes to MedDec notes."""

    pool_embeddings: str = field(default=str(WORK_DIR / "embeddings/pool"), metadata={"help": "Shard folder of the pool."})
    meddec_embeddings: str = field(default=str(WORK_DIR / "embeddings/meddec"), metadata={"help": "Shard folder of MedDec."})
    pool_csv: str = field(default=str(WORK_DIR / "unlabeled.csv"), metadata={"help": "Pool CSV (file_id, raw_text)."})
    query_splits: list[str] = field(default_factory=split_files, metadata={
        "help": "Split files whose notes act as queries (published: train, val and test)."})
    output: str = field(default=str(WORK_DIR / "pseudo_candidates.csv"), metadata={"help": "Assigned candidates CSV."})
    top_k: int = field(default=100, metadata={"help": "Candidates considered per MedDec note."})
    per_note: int = field(default=5, metadata={"help": "Candidates assigned per MedDec note at most."})
    query_block: int = field(default=256, metadata={"help": "Query rows per similarity block (bounds memory)."})

    def __post_init__(self) -> None:
        require_at_least_one(self, ("top_k", "per_note", "query_block"))


@dataclass
class ExploreArguments:
    """``dynamic_threshold.py explore``: does low entropy mean good output, and what would each quantile keep?"""

    val_predictions: str = field(default="outputs/inference/model1/val_predictions.csv", metadata={
        "help": "Inference CSV of Model 1 on validation."})
    gold_dir: str = field(default=str(MEDDEC.gold_dir), metadata={"help": "MedDec data/ (gold of the validation notes)."})
    raw_text_dir: str = field(default=str(MEDDEC.raw_text_dir), metadata={"help": "MedDec raw_text/ (texts as scored)."})
    pool_predictions: str | None = field(default=None, metadata={"help": "Inference CSV on the pool candidates."})
    bins: int = field(default=5, metadata={"help": "Entropy quantile bins of the validation notes."})
    quantiles: list[float] = field(default_factory=lambda: [0.10, 0.15, 0.20, 0.25, 0.30, 0.5, 0.75], metadata={
        "help": "Candidate thresholds (quantiles; published: 0.10 0.15 0.20 0.25 0.30 0.5 0.75)."})
    report: str = field(default=str(WORK_DIR / "threshold_report.json"), metadata={"help": "JSON report."})
    plot: str | None = field(default=str(WORK_DIR / "threshold_explore.png"), metadata={"help": "PNG plot ('' for none)."})

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise InputError.flag("--bins", f"expected at least 1 entropy bin, got {self.bins}")
        for quantile in self.quantiles:
            check_quantile(quantile, "--quantiles")


@dataclass
class SelectArguments:
    """``dynamic_threshold.py select``: keep the low-entropy pool outputs and mix them into the train CSV."""

    pool_predictions: str = field(default=str(WORK_DIR / "pseudo_candidates_model1.csv"), metadata={
        "help": "Inference CSV of Model 1 on the pool candidates."})
    train_csv: str = field(default=str(TAGGED_DIR / "train.csv"), metadata={"help": "gt_to_tag train CSV to mix with."})
    threshold: float = field(default=0.10, metadata={"help": "Keep entropy <= this quantile of the pool (0.10 = 10%%)."})
    output: str = field(default=str(MIXED_TRAIN_CSV), metadata={"help": "Mixed training CSV."})
    min_spans: int = field(default=0, metadata={"help": "Also drop selected rows with fewer located spans."})
    drop_truncated: bool = field(default=False, metadata={"help": "Also drop outputs that hit the token budget."})
    pseudo_target: str = field(default="nan", metadata={
        "help": "Answer a selected pool row trains on. nan: as the published mix, which left gold_span empty so that "
                "the published train_dft.py read it as NaN and trained on the string 'nan' (warns); raw: Model 1's "
                "output verbatim; located: the exact note re-tagged from the spans inference located in it.",
        "choices": list(PSEUDO_TARGETS)})
    empty_output_entropy: str = field(default="zero", metadata={
        "help": "Entropy of an output without generated tokens. zero: 0.0 as the published inference.py, so it is "
                "always selected and counts in the quantile; none: undefined, never selected.",
        "choices": list(EMPTY_OUTPUT_ENTROPIES)})

    def __post_init__(self) -> None:
        check_quantile(self.threshold, "--threshold")
        if self.min_spans < 0:
            raise InputError.flag("--min_spans", f"expected 0 or more, got {self.min_spans}")


# ----------------------------------------------------------------------------------------------- scoring, ensemble


@dataclass
class EvaluateArguments:
    """``evaluate/evaluate.py``: the official flags of the MedDec evaluation script."""

    predictions: str = field(metadata={"help": "Path to predictions JSON file"})
    raw_text_dir: str = field(metadata={"help": "Directory containing raw text files (raw_text/)"})
    gold_dir: str | None = field(default=None, metadata={"help": "Directory containing gold annotation files (data/)"})
    gold_file: str | None = field(default=None, metadata={"help": "Optional: specific gold file (overrides gold_dir)"})
    stats_csv: str | None = field(default=None, metadata={"help": "Optional: path to stats.csv for shared-task final scoring"})
    split_file: str | None = field(default=None, metadata={"help": "Optional: path to split file (e.g. splits/val.txt)"})
    output: str | None = field(default=None, metadata={"help": "Optional: output file for results (JSON)"})
    scorer: str = field(default=DEFAULT_SCORER, metadata={"help": SCORER_HELP, "choices": list(SCORERS)})


@dataclass
class ThresholdArguments:
    """The four Span-Cluster Consensus thresholds as flags; unset ones come from --thresholds_json or the defaults."""

    t_cluster: float | None = field(default=None, metadata={
        "help": "IoU that links two spans of a category into one cluster (default 0.1, published)."})
    t_pair: float | None = field(default=None, metadata={
        "help": "IoU a span pair needs to count in the model-agreement matching (default 0.1, published)."})
    t_support: float | None = field(default=None, metadata={
        "help": "Summed model weight a cluster needs to be kept (default 0.34, published)."})
    t_dedup: float | None = field(default=None, metadata={
        "help": "IoU at which a kept span duplicates another of its category (default 0.8, published)."})

    def __post_init__(self) -> None:
        """Each threshold given is an IoU or a weight share: a number in [0, 1] (a JSON's are checked on reading)."""
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if value is not None and not is_unit_interval(value):
                raise InputError.flag(f"--{name}", f"expected a number in [0, 1], got {value!r}")


@dataclass
class MergeArguments:
    """``ensemble/mbr.py``: merge several models' predictions (thresholds: :class:`ThresholdArguments`)."""

    predictions: list[str] = field(metadata={
        "help": "One prediction JSON per model (scripts/inference.py writes <output>.json beside each CSV)."})
    output: str = field(metadata={"help": "Merged prediction JSON."})
    raw_text_dir: str | None = field(default=None, metadata={
        "help": "MedDec raw_text/ folder: spans ending past their note's end are dropped (with a count). Without "
                "it such spans cannot be detected, and a warning says so."})
    thresholds_json: str | None = field(default=None, metadata={
        "help": "Thresholds from a JSON object (e.g. the tuner's best.json); flags given win over it."})
    explain: str | None = field(default=None, metadata={
        "help": "JSON Lines file: per note and category, model weights, clusters, support, boundary."})


@dataclass
class OptimizeArguments:
    """``ensemble/optimize.py``: Optuna TPE tuning of the thresholds on validation (published: 5,000 trials)."""

    predictions: list[str] = field(metadata={"help": "Validation prediction JSON, one file per model."})
    gold_csv: str | None = field(default=str(TAGGED_DIR / "val.csv"), metadata={
        "help": "Gold and note texts from this tagged table (utils/gt_to_tag.py): its gold_offsets and raw_text, as "
                "the published optimize.py read them. '' scores against the gold JSON files (--gold_dir, "
                "--raw_text_dir) as evaluate/evaluate.py reads them."})
    gold_dir: str = field(default=str(MEDDEC.gold_dir), metadata={"help": "MedDec data/ folder (with --gold_csv '')."})
    raw_text_dir: str = field(default=str(MEDDEC.raw_text_dir), metadata={
        "help": "MedDec raw_text/ folder (with --gold_csv '')."})
    split_file: str | None = field(default=None, metadata={
        "help": "Note ids to tune on (e.g. splits/val.txt); default: all gold notes."})
    stats_csv: str | None = field(default=None, metadata={
        "help": "stats.csv: objective = final score; without it the base score."})
    scorer: str = field(default=DEFAULT_SCORER, metadata={"help": SCORER_HELP, "choices": list(SCORERS)})
    n_trials: int = field(default=5000, metadata={"help": "Total finished trials the study should hold."})
    storage: str = field(default=OPTUNA_STORAGE, metadata={
        "help": "Optuna storage URL, resumable; 'none' for in memory only."})
    study_name: str = field(default=OPTUNA_STUDY, metadata={"help": "Optuna study name."})
    seed: int | None = field(default=None, metadata={
        "help": "TPE sampler seed (and the --cv folds'). Default: unseeded, as published (each run samples other "
                "thresholds); give one, e.g. --seed 0, for a run that repeats exactly and resumes bit for bit."})
    output: str = field(default="outputs/ensemble/best.json", metadata={"help": "Best thresholds and scores as JSON."})
    history_plot: str | None = field(default=None, metadata={
        "help": "Optimisation-history PNG (default: <output stem>_history.png)."})
    importance_plot: str | None = field(default=None, metadata={
        "help": "Parameter-importance PNG (default: <output stem>_importance.png)."})
    no_plots: bool = field(default=False, metadata={"help": "Do not draw the PNG plots."})
    cv: int = field(default=0, metadata={"help": "Also report the K-fold cross-validated score (K >= 2; 0 = none)."})
    cv_trials: int | None = field(default=None, metadata={"help": "Trials per CV fold (default: --n_trials)."})
    per_category: bool = field(default=False, metadata={
        "help": "Tune one support threshold per category (9 parameters instead of t_support)."})
    apply: list[str] = field(default_factory=list, metadata={
        "help": "Other predictions (e.g. test), one per model in the same order, merged with the best thresholds."})
    apply_output: str | None = field(default=None, metadata={"help": "Merged JSON for --apply."})
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self) -> None:
        """Flag combinations that cannot work, refused before any input is read."""
        def refuse(flag: str, message: str) -> None:
            raise InputError.flag(flag, message)

        if self.n_trials < 1:
            refuse("--n_trials", f"expected at least 1, got {self.n_trials}")
        if self.cv == 1 or self.cv < 0:
            refuse("--cv", f"K needs K >= 2 (or 0 for none), got {self.cv}")
        if self.cv_trials is not None and self.cv_trials < 1:
            refuse("--cv_trials", f"expected at least 1, got {self.cv_trials}")
        if bool(self.apply) != bool(self.apply_output):
            refuse("--apply", "--apply and --apply-output go together")
        if self.apply and len(self.apply) != len(self.predictions):
            refuse("--apply", f"needs one file per model, in the same order: {len(self.predictions)} expected, "
                              f"got {len(self.apply)}")


# ----------------------------------------------------------------------------------------------- hub, corpus, demo


@dataclass
class PushArguments:
    """``scripts/push_to_hub.py``: where the model is, where it goes, and whether to merge an adapter first."""

    folder: str = field(metadata={"help": "Folder to upload (the merged model is written here with --adapter)."})
    repo_id: str = field(metadata={"help": "Hub repository, e.g. user/lamar-model1."})
    base_model: str | None = field(default=None, metadata={"help": "Base model to merge --adapter into."})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder to merge before uploading."})
    model_class: str = field(default="auto", metadata={
        "help": "auto (the class the base checkpoint names, as Unsloth and vLLM load it), causal_lm (text only) or "
                "image_text_to_text (keeps a VLM's vision tower, e.g. full Qwen3.5).",
        "choices": list(MODEL_CLASSES)})
    dtype: str = field(default="bfloat16", metadata={"help": "dtype of the merged weights (bfloat16 as published)."})
    private: bool = field(default=True, metadata={"help": "Create the repository as private."})
    commit_message: str = field(default="Upload LAMAR model", metadata={"help": "Commit message."})
    token: str | None = field(default=None, metadata={"help": "Hub token (prefer the HF_TOKEN variable)."})
    dry_run: bool = field(default=False, metadata={"help": "List what would be uploaded; upload nothing."})
    model_card: bool = field(default=True, metadata={"help": "Write a README.md model card into the folder."})

    def __post_init__(self) -> None:
        if self.adapter and not self.base_model:
            raise InputError.flag("--adapter", "merging needs --base_model as well")


@dataclass
class GenerateArguments:
    """``python -m dataset.generate``: sizes and seed of the synthetic corpus (official split sizes, real lengths)."""

    out_dir: str = field(metadata={"help": "Folder to write (created; an earlier synthetic corpus there is replaced)."})
    seed: int = field(default=0, metadata={"help": "Random seed: the same seed and sizes give byte-identical files."})
    n_train: int = field(default=350, metadata={"help": "Notes in splits/train.txt."})
    n_val: int = field(default=53, metadata={"help": "Notes in splits/val.txt."})
    n_test: int = field(default=53, metadata={"help": "Notes in splits/test.txt."})
    n_unlabeled: int = field(default=300, metadata={
        "help": "Extra NOTEEVENTS discharge summaries (DESCRIPTION 'Report') outside every split, the pseudo-label "
                "pool. Addenda and non-discharge rows are added on top."})
    mean_chars: int = field(default=9000, metadata={
        "help": "Median note length in characters (real val: ~9k). Every note also has a skeleton of section headers "
                "and admission data, so below ~2,000 the median stays near 1,350-1,500 (measured: 400 -> 1,370)."})
    mean_spans: int = field(default=160, metadata={"help": "Spans per note of median length (real val: ~160)."})


@dataclass
class DemoArguments:
    """``scripts/demo.py``: the whole pipeline on synthetic data with tiny models."""

    work_dir: str = field(default="work/demo", metadata={"help": "Folder for every artefact (re-running resumes)."})
    profile: str = field(default="full", metadata={"help": "Sizes: full (~14 min on 2 cores) or ci (reduced).",
                                                   "choices": ["full", "ci"]})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic corpus and tiny models."})
    force: bool = field(default=False, metadata={"help": "Run every step again even if its outputs exist."})
    portable_numerics: bool = field(default=True, metadata={
        "help": "Pin torch's CPU kernels (ATen AVX2, MKL's CNR COMPATIBLE branch, oneDNN AVX2, one thread) so every "
                "x86-64 CPU with AVX2 prints the same table; false uses the machine's fastest kernels."})
    extra_heldout: int | None = field(default=None, metadata={
        "help": "Also score Model 1's and Model 2's greedy outputs on this many fresh synthetic notes that no model "
                "trained on (a second corpus, seed + 10000): the val + test notes are too few to tell a GRPO effect "
                "of ~0.01 from chance (~1 s per note; 0: none). Default: the profile's, 64 (full) or 4 (ci)."})

    def __post_init__(self) -> None:
        if self.extra_heldout is not None and self.extra_heldout < 0:
            raise InputError.flag("--extra_heldout", f"expected a number of notes >= 0, got {self.extra_heldout}")


@dataclass
class FingerprintArguments:
    """``python -m utils.numerics``: the numerics fingerprint under each instruction-set setting."""

    steps: int = field(default=30, metadata={"help": "Training steps of the tiny model before hashing."})
    portable: bool = field(default=True, metadata={"help": "Apply the portable pins (false: the machine's kernels)."})
