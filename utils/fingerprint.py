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
