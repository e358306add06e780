"""Content fingerprints for caches and studies: what a cached result was computed from, by content, not by name.

A model folder replaced at the same path, a note text edited in place or a Punkt model swapped must make a cache
miss (or a refusal), never a silent reuse of results computed from something else. Files are identified by size
and sha256 (a copy or a touch keeps the fingerprint; one changed byte changes it); the hash is computed once per
process and file state (size, mtime).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

#: Files of a model folder that do not change what the model computes.
_IGNORED_SUFFIXES = (".md", ".lock", ".tmp", ".log")


@lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """``<size>:<sha256>`` of a file's bytes (memoised per size and mtime within a process)."""
    info = os.stat(path)
    return f"{info.st_size}:{_sha256(str(Path(path).resolve()), info.st_size, info.st_mtime_ns)}"


def path_fingerprint(reference: str | os.PathLike[str] | None) -> Any:
    """A model, adapter or tokenizer reference by content: a local folder -> {file: fingerprint} of its top-level
    files (weights, configs, tokenizer files; not checkpoints, not README), a local file -> its fingerprint, anything
    else (a Hub id, None) -> the reference itself."""
    if reference is None or str(reference) == "":
        return None
    path = Path(reference)
    if path.is_file():
        return file_fingerprint(path)
    if path.is_dir():
        return {p.name: file_fingerprint(p) for p in sorted(path.iterdir())
                if p.is_file() and not p.name.startswith(".") and not p.name.lower().endswith(_IGNORED_SUFFIXES)}
    return str(reference)


def texts_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 of (id, text) pairs in order: what a batch of embeddings or scores was computed from."""
    digest = hashlib.sha256()
    for note_id, text in pairs:
        digest.update(note_id.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    """sha256 of one text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def changed_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """The top-level keys whose values differ (a missing key differs)."""
    old = old or {}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# ------------------------------------------------------------------------------------- embedding shards
# A shard of the embedding cache is ``shard_N.npy`` (vectors), ``shard_N.texts.sha256`` (the sha256 of each
# note's text, one per line, in row order) and ``shard_N.ids.txt`` (written last: the shard is complete).


def shard_digest_path(ids_path: str | os.PathLike[str]) -> Path:
    """The text-digest file beside a shard's ids file."""
    ids_path = Path(ids_path)
    return ids_path.with_name(ids_path.name.replace(".ids.txt", ".texts.sha256"))


def shard_digests(texts: Iterable[str]) -> list[str]:
    return [text_sha256(t) for t in texts]


def write_shard_digests(ids_path: str | os.PathLike[str], texts: Iterable[str]) -> None:
    from utils.fileio import write_text_atomic

    write_text_atomic(shard_digest_path(ids_path), "".join(f"{d}\n" for d in shard_digests(texts)))


def read_shard_digests(ids_path: str | os.PathLike[str], count: int) -> list[str]:
    """The cached text digests of a complete shard; a cache without them (or with the wrong count) is refused."""
    from utils.fileio import InputError

    path = shard_digest_path(ids_path)
    try:
        digests = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise InputError(path, "", "missing or unreadable: the cache cannot show which note texts it embedded "
                                   "(made by an older version, or damaged); re-embed into a new folder") from None
    if len(digests) != count:
        raise InputError(path, "", f"{len(digests)} digests for {count} ids; re-embed into a new folder")
    return digests


def check_shard_texts(ids_path: str | os.PathLike[str], ids: list[str], texts: list[str]) -> None:
    """Refuse a cached shard whose notes have the same ids but other texts than the input (old vectors for new
    texts), naming the first such note."""
    from utils.fileio import InputError

    cached = read_shard_digests(ids_path, len(ids))
    for note_id, old, new in zip(ids, cached, shard_digests(texts)):
        if old != new:
            raise InputError(shard_digest_path(ids_path), f"note {note_id!r}", "its text changed since it was "
                             "embedded; re-embed into a new output folder")


def vectors_complete(npy_path: str | os.PathLike[str], rows: int) -> bool:
    """A shard's vector file is whole: it loads (header and data, memory-mapped) with one row per id and finite
    values. A file cut short by a full disk or a copy does not count as a finished shard."""
    import numpy as np

    try:
        vectors = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return vectors.ndim == 2 and vectors.shape[0] == rows and bool(np.isfinite(vectors).all())


def cached_text_digests(out_dir: str | os.PathLike[str]) -> list[str]:
    """The text digests of every complete shard of an embedding cache, in row order (what ``retrieve`` checks the
    pool CSV's texts against)."""
    out: list[str] = []
    index = 0
    while True:
        ids_path = Path(out_dir) / f"shard_{index:05d}.ids.txt"
        if not ids_path.is_file():
            return out
        with open(ids_path, encoding="utf-8") as handle:
            count = len(handle.read().splitlines())
        out.extend(read_shard_digests(ids_path, count))
        index += 1


def punkt_fingerprint(language: str = "english") -> dict[str, Any]:
    """The Punkt sentence model the official token F1 will use (by content) and NLTK's version: a study tuned
    under one Punkt model holds objective values another would not give."""
    import nltk

    try:
        folder = Path(str(nltk.data.find(f"tokenizers/punkt_tab/{language}/")))
    except LookupError:
        return {"nltk": nltk.__version__, "punkt_tab": None}
    return {"nltk": nltk.__version__, "punkt_tab": path_fingerprint(folder)}
