"""Greedy unique assignment: equals a brute-force reference, ties are deterministic, the CSV feeds inference."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from pseudolabels.embedding import embed_batches, prepare_cache
from pseudolabels.retrieve import Assignment, assign_candidates, run, top_k_per_row
from utils.configs.pipeline import RetrieveArguments


def brute_force(queries: np.ndarray, pool: np.ndarray, top_k: int, per_note: int) -> list[Assignment]:
    """The documented rule, written the slow and obvious way."""
    sims = queries @ pool.T
    pairs = []
    for q in range(sims.shape[0]):
        ranked = sorted(range(sims.shape[1]), key=lambda c: (-sims[q, c], c))[:top_k]
        pairs.extend((float(sims[q, c]), q, c) for c in ranked)
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    taken, counts, out = set(), [0] * sims.shape[0], []
    for s, q, c in pairs:
        if c not in taken and counts[q] < per_note:
            taken.add(c)
            counts[q] += 1
            out.append(Assignment(q, c, s))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_assignment_equals_brute_force_on_random_matrices(seed):
    rng = np.random.default_rng(seed)
    n_q, n_c, dim = rng.integers(1, 12), rng.integers(1, 60), rng.integers(2, 8)
    queries = rng.normal(size=(n_q, dim)).astype(np.float32)
    pool = rng.normal(size=(n_c, dim)).astype(np.float32)
    top_k, per_note = int(rng.integers(1, 15)), int(rng.integers(1, 6))
    got = assign_candidates(queries, pool, top_k, per_note, query_block=n_q)
    assert got == brute_force(queries, pool, top_k, per_note)


@pytest.mark.parametrize("seed", range(6))
def test_ties_follow_the_documented_rule(seed):
    # Small integer vectors: exact dot products, many equal similarities; blocks of 3 queries.
    rng = np.random.default_rng(100 + seed)
    queries = rng.integers(-1, 2, size=(10, 3)).astype(np.float32)
    pool = rng.integers(-1, 2, size=(40, 3)).astype(np.float32)
    got = assign_candidates(queries, pool, top_k=7, per_note=3, query_block=3)
    assert got == brute_force(queries, pool, top_k=7, per_note=3)


def test_each_candidate_once_each_note_at_most_per_note():
    rng = np.random.default_rng(7)
    queries = rng.normal(size=(20, 4))
    pool = rng.normal(size=(200, 4))
    got = assign_candidates(queries, pool, top_k=100, per_note=5)
    assert len({a.candidate for a in got}) == len(got)
    assert max(np.bincount([a.query for a in got])) <= 5
    assert len(got) == 100  # 20 notes x 5: enough candidates for everyone
    assert [a.similarity for a in got] == sorted((a.similarity for a in got), reverse=True)


def test_top_k_is_exact_and_best_first():
    sims = np.array([[0.1, 0.9, 0.9, 0.5, 0.9], [0.0, 0.0, 0.0, 0.0, 0.0]])
    idx, vals = top_k_per_row(sims, 2)
    assert idx.tolist() == [[1, 2], [0, 1]] and vals.tolist() == [[0.9, 0.9], [0.0, 0.0]]
    idx, _ = top_k_per_row(sims, 10)  # k larger than the pool: everything, best first
    assert idx.tolist() == [[1, 2, 4, 3, 0], [0, 1, 2, 3, 4]]


def _cache(path, ids, vectors, texts=None):
    """A cache of these vectors; ``texts`` are what they stand for (the pool CSV's texts: retrieve checks them)."""
    texts = texts if texts is not None else [f"text of {i}" for i in ids]
    prepare_cache(path, {"model": "test", "shard_size": 4})
    batches = [(ids[i : i + 4], texts[i : i + 4]) for i in range(0, len(ids), 4)]
    rows = iter(np.asarray(vectors, dtype=np.float32)[i : i + 4] for i in range(0, len(ids), 4))
    embed_batches(batches, path, lambda texts: next(rows), progress=False)


def test_run_writes_candidates_with_text_and_query_splits_are_a_flag(tmp_path):
    pool_ids = [f"9_9_{i}" for i in range(10)]
    pool_csv = tmp_path / "pool.csv"
    with open(pool_csv, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "raw_text"])
        writer.writerows((i, f"note {i}\r\nline, \"two\"") for i in pool_ids)
    angles = np.radians([45, 0, 180, 85, 12, 100, 165, 135, 60, 30])
    _cache(tmp_path / "pool", pool_ids, np.c_[np.cos(angles), np.sin(angles)],
           [f"note {i}\r\nline, \"two\"" for i in pool_ids])
    meddec_ids = ["1_1_1", "2_2_2", "3_3_3"]
    _cache(tmp_path / "meddec", meddec_ids, [[1, 0], [0, 1], [-1, 0]])
    (tmp_path / "train.txt").write_text("1_1_1\n2_2_2\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("3_3_3\n", encoding="utf-8")
    args = RetrieveArguments(
        pool_embeddings=str(tmp_path / "pool"), meddec_embeddings=str(tmp_path / "meddec"), pool_csv=str(pool_csv),
        query_splits=[str(tmp_path / "train.txt"), str(tmp_path / "test.txt")], output=str(tmp_path / "cand.csv"),
        top_k=3, per_note=2,
    )
    run(args)
    with open(tmp_path / "cand.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["query_id"], r["file_id"], r["assign_rank"]) for r in rows] == [
        ("1_1_1", "9_9_1", "1"), ("3_3_3", "9_9_2", "1"),  # equal similarity 1.0: query order decides
        ("2_2_2", "9_9_3", "1"), ("2_2_2", "9_9_5", "2"),
        ("1_1_1", "9_9_4", "2"), ("3_3_3", "9_9_6", "2"),
    ]
    assert rows[0]["raw_text"] == 'note 9_9_1\r\nline, "two"'
    args.query_splits = [str(tmp_path / "train.txt")]  # test notes left out of the queries
    run(args)
    with open(tmp_path / "cand.csv", encoding="utf-8", newline="") as handle:
        assert {r["query_id"] for r in csv.DictReader(handle)} == {"1_1_1", "2_2_2"}
