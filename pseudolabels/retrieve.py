"""Pick pseudo-label candidates: greedy unique assignment of pool notes to MedDec notes (SPEC section 4).

As published: every MedDec query note (train, val AND test notes by default) takes its ``top_k`` (100)
most similar pool notes (cosine similarity = dot product of normalised embeddings); all these
(note, candidate) pairs are then visited best first and a pair is assigned when its candidate is still
free and its note has fewer than ``per_note`` (5) candidates. Each candidate goes to one note at most.

Ties, defined so that a run is reproducible:
- top-k: among equal similarities the candidate earlier in the pool (lower row) ranks first;
- greedy order: similarity descending, then query order (the order of the MedDec embedding cache, i.e.
  split-file order), then pool row ascending.

Output CSV (feeds ``scripts/inference.py``): ``file_id, raw_text`` of each assigned candidate, plus
``query_id`` (the MedDec note it was assigned to), ``similarity`` and ``assign_rank`` (1 = that note's
best), rows in assignment order.

Usage::

    python -m pseudolabels.retrieve --pool_embeddings work/embeddings/pool \\
        --meddec_embeddings work/embeddings/meddec --pool_csv work/unlabeled.csv \\
        --query_splits MedDec/splits/train.txt MedDec/splits/val.txt MedDec/splits/test.txt \\
        --output work/pseudo_candidates.csv
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file (the published command): make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import csv
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from pseudolabels.embedding import load_embeddings, meddec_ids
from utils.cli import parse_args, run_cli
from utils.configs.pipeline import RetrieveArguments
from utils.fileio import InputError, atomic_open, check_output_path
from utils.fingerprint import cached_text_digests, text_sha256
from utils.meddec.tables import iter_notes_table

OUTPUT_COLUMNS = ("file_id", "raw_text", "query_id", "similarity", "assign_rank")


class Assignment(NamedTuple):
    """One assigned (query note, pool candidate) pair; indices into the query and pool matrices."""

    query: int
    candidate: int
    similarity: float


def top_k_per_row(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n, k) and values of each row's k largest entries, best first; ties: lower column first.

    np.partition finds each row's k-th largest value; the selection is then made exact and deterministic
    by taking every entry above it plus the lowest-column entries equal to it (all rows at once).
    """
    n_cols = similarity.shape[1]
    k = min(k, n_cols)
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1 : k]
    above = similarity > kth
    equal = similarity == kth
    still_needed = k - above.sum(axis=1, keepdims=True)
    chosen = above | (equal & (np.cumsum(equal, axis=1, dtype=np.int32) <= still_needed))
    columns = np.nonzero(chosen)[1].reshape(-1, k)  # row-major: ascending columns within a row
    values = np.take_along_axis(similarity, columns, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")  # stable: equal values keep the lower column first
    return np.take_along_axis(columns, order, axis=1), np.take_along_axis(values, order, axis=1)


def candidate_pairs(
    queries: np.ndarray, pool: np.ndarray, top_k: int, query_block: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query, candidate, similarity) top-k pairs as flat arrays, computed block by block of queries."""
    q_parts, c_parts, s_parts = [], [], []
    for start in range(0, queries.shape[0], max(1, query_block)):
        block = queries[start : start + query_block] @ pool.T
        idx, sims = top_k_per_row(block, top_k)
        q_parts.append(np.repeat(np.arange(start, start + block.shape[0]), idx.shape[1]))
        c_parts.append(idx.ravel())
        s_parts.append(sims.ravel())
    if not q_parts:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)
    return np.concatenate(q_parts), np.concatenate(c_parts), np.concatenate(s_parts)


def greedy_assign(
    query_idx: np.ndarray, cand_idx: np.ndarray, sims: np.ndarray, n_queries: int, per_note: int
) -> list[Assignment]:
    """Visit pairs best first (ties: query, then candidate ascending); each candidate once, each query <= per_note."""
    order = np.lexsort((cand_idx, query_idx, -sims))
    taken: set[int] = set()
    counts = np.zeros(n_queries, dtype=np.int64)
    result: list[Assignment] = []
    full = 0
    for pos in order:
        q, c = int(query_idx[pos]), int(cand_idx[pos])
        if counts[q] >= per_note or c in taken:
            continue
        taken.add(c)
        counts[q] += 1
        result.append(Assignment(q, c, float(sims[pos])))
        full += counts[q] == per_note
        if full == n_queries:
            break
    return result


def assign_candidates(
    queries: np.ndarray, pool: np.ndarray, top_k: int = 100, per_note: int = 5, query_block: int = 256
) -> list[Assignment]:
    """The published greedy unique assignment on embedding matrices (rows = notes)."""
    if top_k < 1 or per_note < 1:
        raise ValueError(f"top_k and per_note must be positive, got {top_k} and {per_note}")
    q, c, s = candidate_pairs(np.asarray(queries), np.asarray(pool), top_k, query_block)
    return greedy_assign(q, c, s, queries.shape[0], per_note)


def select_queries(meddec_ids_cached: list[str], split_files: Sequence[str]) -> list[int]:
    """Rows of the MedDec cache that belong to the query splits (cache order); every id must be cached."""
    wanted = meddec_ids(split_files)
    position = {note_id: row for row, note_id in enumerate(meddec_ids_cached)}
    missing = [i for i in wanted if i not in position]
    if missing:
        raise InputError(split_files[0], "", f"note(s) {', '.join(missing[:5])} not in the MedDec embedding cache")
    return sorted(position[i] for i in wanted)


def write_assignments(
    output: str | Path, assignments: list[Assignment], query_ids: list[str], pool_ids: list[str], pool_csv: str | Path,
    pool_digests: list[str] | None = None,
) -> None:
    """Stream the pool CSV once for the assigned texts, then write the CSV atomically in assignment order."""
    wanted = {pool_ids[a.candidate]: None for a in assignments}
    texts: dict[str, str] = {}
    row = 0
    for ids, batch_texts in iter_notes_table(pool_csv, 10_000):
        for note_id, text in zip(ids, batch_texts):
            if row < len(pool_ids) and note_id != pool_ids[row]:
                raise InputError(pool_csv, f"row {row + 1}", f"file_id {note_id!r} differs from the embedding cache ({pool_ids[row]!r}); re-embed")
            if pool_digests is not None and row < len(pool_digests) and text_sha256(text) != pool_digests[row]:
                raise InputError(pool_csv, f"row {row + 1}", f"the text of {note_id!r} differs from the one embedded "
                                                             "(old vectors for a new text); re-embed")
            if note_id in wanted:
                texts[note_id] = text
            row += 1
    missing = [i for i in wanted if i not in texts]
    if missing:
        raise InputError(pool_csv, "", f"assigned note(s) {', '.join(missing[:5])} not in the pool CSV")
    rank: dict[int, int] = {}
    with atomic_open(output, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(OUTPUT_COLUMNS)
        for a in assignments:
            rank[a.query] = rank.get(a.query, 0) + 1
            file_id = pool_ids[a.candidate]
            writer.writerow([file_id, texts[file_id], query_ids[a.query], f"{a.similarity:.6f}", rank[a.query]])


def run(args: RetrieveArguments) -> list[Assignment]:
    """Load both caches, assign, and write the candidates CSV."""
    for name in ("top_k", "per_note", "query_block"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name}", "", f"expected a positive number, got {getattr(args, name)}")
    check_output_path(args.output)
    pool_ids, pool = load_embeddings(args.pool_embeddings)
    cached_ids, meddec = load_embeddings(args.meddec_embeddings)
    if pool.shape[1] != meddec.shape[1]:
        raise InputError(args.pool_embeddings, "", f"dimension {pool.shape[1]} differs from MedDec's {meddec.shape[1]}: same model?")
    rows = select_queries(cached_ids, args.query_splits)
    query_ids = [cached_ids[r] for r in rows]
    assignments = assign_candidates(meddec[rows], pool, args.top_k, args.per_note, args.query_block)
    write_assignments(args.output, assignments, query_ids, pool_ids, args.pool_csv, cached_text_digests(args.pool_embeddings))
    return assignments


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> None:
        (args,) = parse_args(RetrieveArguments, argv=argv, description=__doc__.split("\n\n")[0])
        assignments = run(args)
        notes = len({a.query for a in assignments})
        print(f"assigned {len(assignments)} candidates to {notes} MedDec notes; wrote {args.output}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
