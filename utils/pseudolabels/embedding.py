"""Embedding the unlabeled pool and the MedDec notes for retrieval (SPEC section 4; the command:
``pseudolabels/embedding.py``).

Published: Qwen/Qwen3-Embedding-4B through sentence-transformers, L2-normalised embeddings (so a dot
product is the cosine similarity). Both sides are documents, so no query instruction is prepended
(``--prompt_name`` picks one of the model's saved prompts if wanted).

Embeddings are cached in shards: ``<out>/shard_00000.npy`` (float32, one row per note) and
``shard_00000.texts.sha256`` (the sha256 of each note's text) and ``shard_00000.ids.txt`` (the note ids, one per
line, written last = the shard is complete), plus ``meta.json`` (model, its content fingerprint, dtype, truncation,
shard size). A killed run resumes at the first missing shard and re-embeds a shard whose vector file is cut
short; a shard whose ids or note texts no longer match the input, or a cache made with another model (by
content) or settings, is an input error (use a new output folder). Memory: the pool CSV is streamed one shard at a time.

Several devices (``--devices cuda:0 cuda:1 ...``): each shard is split into chunks that sentence-transformers'
multi-process pool encodes on all devices at once and returns in input order (``SentenceTransformer.
start_multi_process_pool`` / ``encode(pool=...)``, the engine sentence-transformers 6.2 recommends for several
GPUs); shards are written and resumed exactly as with one device, and either mode resumes the other's cache.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from utils.configs.pipeline import EmbeddingArguments
from utils.fileio import InputError, atomic_open, read_json, write_json_atomic, write_text_atomic
from utils.fingerprint import (
    check_shard_texts, path_fingerprint, read_shard_digests, vectors_complete, write_shard_digests,
)
from utils.meddec.corpus import read_raw_text, read_split
from utils.meddec.tables import iter_notes_table
from utils.training.models import check_model_reference, loading_error

META_FILE = "meta.json"

Batch = tuple[list[str], list[str]]  # (ids, texts)
EncodeFn = Callable[[list[str]], np.ndarray]


# ----------------------------------------------------------------------------------------------- sources


def meddec_ids(split_files: Iterable[str | Path]) -> list[str]:
    """Ids of the split files in file order, each once."""
    return list(dict.fromkeys(note_id for path in split_files for note_id in read_split(path)))


def iter_meddec_batches(raw_text_dir: str | Path, split_files: Sequence[str | Path], size: int) -> Iterator[Batch]:
    """(ids, exact texts) of the MedDec notes named in the split files, ``size`` at a time."""
    ids = meddec_ids(split_files)
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield chunk, [read_raw_text(raw_text_dir, i) for i in chunk]


# ------------------------------------------------------------------------------------------ shard cache


def _shard_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    return out_dir / f"shard_{index:05d}.npy", out_dir / f"shard_{index:05d}.ids.txt"


def _read_ids(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def prepare_cache(out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Create the cache folder or check that an existing one was made with the same settings."""
    out_dir = Path(out_dir)
    meta_path = out_dir / META_FILE
    if meta_path.is_file():
        old = read_json(meta_path)
        changed = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: cached {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise InputError(meta_path, "", f"cache made with other settings ({detail}); use a new output folder")
    else:
        write_json_atomic(meta_path, meta)
    return out_dir


def _save_shard(out_dir: Path, index: int, ids: list[str], vectors: np.ndarray, texts: list[str]) -> None:
    """Vectors first, then the texts' digests, ids last: an ids file marks a complete shard."""
    npy_path, ids_path = _shard_paths(out_dir, index)
    with atomic_open(npy_path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))
    write_shard_digests(ids_path, texts)
    write_text_atomic(ids_path, "".join(f"{i}\n" for i in ids))


def _shard_is_done(out_dir: Path, index: int, ids: list[str], texts: list[str]) -> bool:
    npy_path, ids_path = _shard_paths(out_dir, index)
    if not (ids_path.is_file() and npy_path.is_file()):
        return False
    cached = _read_ids(ids_path)
    if cached != ids:
        raise InputError(ids_path, "", "cached shard holds other note ids than the input; use a new output folder")
    check_shard_texts(ids_path, ids, texts)
    return vectors_complete(npy_path, len(ids))  # a vector file cut short is embedded again


def embed_batches(
    batches: Iterable[Batch], out_dir: str | Path, encode: EncodeFn, total: int | None = None, progress: bool = True
) -> int:
    """Encode every shard not cached yet; returns how many shards were computed now."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    computed = 0
    for index, (ids, texts) in enumerate(tqdm(batches, total=total, desc=f"embed {out_dir.name}", disable=not progress)):
        if _shard_is_done(out_dir, index, ids, texts):
            continue
        vectors = np.asarray(encode(texts), dtype=np.float32)
        if vectors.shape[0] != len(ids):
            raise RuntimeError(f"encoder returned {vectors.shape[0]} vectors for {len(ids)} texts")
        _save_shard(out_dir, index, ids, vectors, texts)
        computed += 1
    return computed


def load_embeddings(out_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """All cached shards in order: (ids, float32 matrix with one row per id)."""
    out_dir = Path(out_dir)
    if not (out_dir / META_FILE).is_file():
        raise InputError(out_dir, "", f"no embedding cache here ({META_FILE} missing); run pseudolabels/embedding.py")
    ids: list[str] = []
    parts: list[np.ndarray] = []
    index = 0
    while True:
        npy_path, ids_path = _shard_paths(out_dir, index)
        if not ids_path.is_file():
            break
        shard_ids = _read_ids(ids_path)
        read_shard_digests(ids_path, len(shard_ids))
        if not vectors_complete(npy_path, len(shard_ids)):
            raise InputError(npy_path, "", "vector file incomplete or damaged; resume pseudolabels/embedding.py")
        vectors = np.load(npy_path)
        if vectors.shape[0] != len(shard_ids):
            raise InputError(npy_path, "", f"{vectors.shape[0]} vectors for {len(shard_ids)} ids; re-embed")
        ids.extend(shard_ids)
        parts.append(vectors)
        index += 1
    if _shard_paths(out_dir, index + 1)[1].is_file():
        raise InputError(out_dir, f"shard {index}", "missing while later shards exist: the run was interrupted, resume it")
    if not parts:
        raise InputError(out_dir, "", "no complete shard; run or resume pseudolabels/embedding.py")
    return ids, np.concatenate(parts, axis=0)


# ----------------------------------------------------------------------------------------------- model


def uses_cuda(device: str | None, devices: Sequence[str]) -> bool:
    """Whether the encoder runs on a GPU (sentence-transformers picks CUDA by itself when no device is named)."""
    import torch

    named = list(devices) or ([device] if device else [])
    if not named:
        return torch.cuda.is_available()
    return any(name.split(":")[0] == "cuda" for name in named)


def resolve_model_kwargs(dtype: str, attn_implementation: str | None, on_gpu: bool) -> dict[str, Any]:
    """The published float16 + flash_attention_2 where they apply: half precision on GPU only (CPU: float32),
    FlashAttention 2 only with a GPU and the flash-attn package (else transformers picks its default kernel)."""
    kwargs: dict[str, Any] = {"dtype": "float32" if dtype == "float16" and not on_gpu else dtype}
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if not (on_gpu and importlib.util.find_spec("flash_attn") is not None):
            attn_implementation = None
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_sentence_encoder(
    model: str,
    device: str | None = None,
    dtype: str = "float16",
    max_seq_length: int | None = None,
    batch_size: int = 8,
    prompt_name: str | None = None,
    devices: Sequence[str] = (),
    attn_implementation: str | None = "flash_attention_2",
    padding_side: str = "left",
) -> EncodeFn:
    """A function texts -> L2-normalised float32 embeddings, backed by sentence-transformers (on several devices at
    once with ``devices``: a :class:`PooledEncoder`, to be closed). Defaults: the published fp16, FlashAttention 2
    and left padding (see :func:`resolve_model_kwargs`)."""
    from sentence_transformers import SentenceTransformer

    check_model_reference("--model", model)
    model_kwargs = resolve_model_kwargs(dtype, attn_implementation, uses_cuda(device, devices))
    try:
        encoder = SentenceTransformer(model, device="cpu" if devices else device, model_kwargs=model_kwargs,
                                      processor_kwargs={"padding_side": padding_side})
    except (OSError, ValueError) as err:  # a missing or an incomplete model folder
        raise loading_error("--model", model, err) from None
    if max_seq_length is not None:
        encoder.max_seq_length = max_seq_length
    options = dict(batch_size=batch_size, prompt_name=prompt_name, normalize_embeddings=True, convert_to_numpy=True,
                   show_progress_bar=False)
    if devices:
        return PooledEncoder(encoder, list(devices), options)

    def encode(texts: list[str]) -> np.ndarray:
        return encoder.encode(texts, **options)

    return encode


class PooledEncoder:
    """Encodes on several devices at once with sentence-transformers' multi-process pool (one process per device,
    started on first use, results in input order); ``close()`` stops the processes."""

    def __init__(self, encoder: Any, devices: list[str], options: dict[str, Any]) -> None:
        self.encoder = encoder
        self.devices = devices
        self.options = options
        self.pool: dict[str, Any] | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.pool is None:
            with cpu_threads_for(self.devices):
                self.pool = self.encoder.start_multi_process_pool(target_devices=self.devices)
        return self.encoder.encode(texts, pool=self.pool, **self.options)

    def close(self) -> None:
        if self.pool is not None:
            self.encoder.stop_multi_process_pool(self.pool)
            self.pool = None


@contextlib.contextmanager
def cpu_threads_for(devices: Sequence[str]) -> Iterator[None]:
    """CPU worker processes share the cores (each would otherwise start a thread per core); the user's
    OMP_NUM_THREADS wins. Only the processes started inside the block see the setting."""
    cpu_workers = sum(1 for d in devices if d.split(":")[0] == "cpu")
    if not cpu_workers or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // cpu_workers))
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def check_devices(devices: Sequence[str]) -> None:
    """--devices names real devices, CUDA ones visible here (that it is not mixed with --device is a flag check of
    :class:`EmbeddingArguments`)."""
    if not devices:
        return
    import torch

    for name in devices:
        try:
            parsed = torch.device(name)
        except (RuntimeError, ValueError):
            raise InputError.flag("--devices", "not a device: expected e.g. cuda:0 or cpu", value=name) from None
        if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
            raise InputError.flag("--devices", f"not visible: {torch.cuda.device_count()} CUDA device(s) here",
                                  value=name)


class LazyEncoder:
    """Loads the (large) model only when a shard actually needs encoding, so a finished cache costs nothing."""

    def __init__(self, factory: Callable[[], EncodeFn]) -> None:
        self._factory = factory
        self._encode: EncodeFn | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._encode is None:
            self._encode = self._factory()
        return self._encode(texts)

    def close(self) -> None:
        """Stop the worker processes of a multi-device encoder, if one was started."""
        close = getattr(self._encode, "close", None)
        if close is not None:
            close()


def embed_sources(args: EmbeddingArguments, progress: bool = True) -> dict[str, int]:
    """Embed the chosen sources (flag values checked by :class:`EmbeddingArguments`); returns {source: shards computed
    now}."""
    check_devices(args.devices)
    encode = LazyEncoder(
        lambda: load_sentence_encoder(
            args.model, args.device, args.dtype, args.max_seq_length, args.batch_size, args.prompt_name, args.devices,
            args.attn_implementation, args.padding_side,
        )
    )
    try:
        return _embed_sources(args, encode, progress)
    finally:
        encode.close()


def _embed_sources(args: EmbeddingArguments, encode: EncodeFn, progress: bool) -> dict[str, int]:
    meta = {"model": args.model, "shard_size": args.shard_size, "normalized": True, "prompt_name": args.prompt_name,
            **encoder_content(args)}
    done: dict[str, int] = {}
    if "meddec" in args.sources:
        ids = meddec_ids(args.meddec_splits)  # validates the split files before any model is loaded
        out = prepare_cache(args.meddec_out, meta)
        shards = -(-len(ids) // args.shard_size)
        batches = iter_meddec_batches(args.meddec_raw_text, args.meddec_splits, args.shard_size)
        done["meddec"] = embed_batches(batches, out, encode, total=shards, progress=progress)
    if "pool" in args.sources:
        batches = iter_notes_table(args.pool_csv, args.shard_size)
        first = next(batches, None)  # validates the CSV before anything is written
        if first is None or not first[0]:
            raise InputError(args.pool_csv, "", "no notes: the pool CSV has a header but no rows")
        out = prepare_cache(args.pool_out, meta)
        done["pool"] = embed_batches(_prepend(first, batches), out, encode, progress=progress)
    return done


def encoder_content(args: EmbeddingArguments) -> dict[str, Any]:
    """What else determines the vectors: the model by content (a folder replaced at the same path is another
    model), its dtype, truncation length, padding side and attention kernel."""
    return {"model_content": path_fingerprint(args.model), "dtype": args.dtype, "max_seq_length": args.max_seq_length,
            "padding_side": args.padding_side, "attn_implementation": args.attn_implementation}


def _prepend(first: Batch | None, rest: Iterator[Batch]) -> Iterator[Batch]:
    if first is not None:
        yield first
    yield from rest
