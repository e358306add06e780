"""Per-step cost of copy-constrained decoding next to the unconstrained greedy step, in one run (CPU).

    python benchmarks/bench_copy_decoding.py [--steps 192] [--batch_sizes 1 8] [--vocab_sizes 2048 32768]
        [--hidden_size 96] [--threads 1] [--repeats 3] [--json out.json]

For each vocabulary size two offline byte-level BPE tokenizers are trained on synthetic tagged notes
(``dataset.synthetic``; the larger ones also on random words so they reach their size): one with the tags
as single added tokens (the demo's tokenizer, 2048 tokens) and one with the tags spelled by the BPE over
several tokens, some crossing into text (`` <``, ``>\\n``), as the real Qwen tokenizer spells them. A
random-weight tiny Qwen3.5 (``utils.testing.tiny_models``, 2 layers, ``--hidden_size``) then generates ``--steps``
greedy tokens for the same long notes, without and with the constraint, alternately ``--repeats`` times
(median). Printed per step: the unconstrained step, the constrained step, the LogitsProcessor's own time
(timed inside the run) and the overhead = processor time / unconstrained step. The random model writes
tags wherever the constraint lets it; a second measure replays the gold tagged notes' own tokens (what a
trained model writes) through the core alone (allowed set + advance per token).

Tiny models gain nothing from threads and a shared 2-core machine slows two threads down many times:
``--threads 1`` (default) keeps the numbers stable.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import random
import statistics
import string
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Sequence

from benchmarks.smoke import parse_with_smoke


@dataclass
class Row:
    tokenizer: str
    vocab: int
    batch: int
    steps: int
    plain_ms: float
    constrained_ms: float
    processor_ms: float
    trie_build_s: float

    @property
    def overhead(self) -> float:
        return self.processor_ms / self.plain_ms


def training_texts(vocab_size: int, seed: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Tagged synthetic notes to train on (plus random words for big vocabularies), and (note, gold tagged) pairs."""
    from dataset.synthetic import generate_notes
    from utils.tagging.convert import spans_to_tagged

    notes = generate_notes(60, seed=seed, mean_chars=9000, mean_spans=160)
    pairs = [(n.text, spans_to_tagged(n.text, [(a.start, a.end, a.category) for a in n.annotations])) for n in notes]
    texts = [tagged for _, tagged in pairs]
    if vocab_size > 4096:
        rng = random.Random(seed)
        words = [''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 12))) for _ in range(vocab_size * 2)]
        texts += [" ".join(words[i : i + 100]) for i in range(0, len(words), 100)]
    return texts, pairs


def build(workdir: str, vocab_size: int, atomic: bool, hidden_size: int, seed: int, texts: list[str]):
    """(generator, seconds to build the copy vocabulary) for one tokenizer."""
    from utils.generation.backends import TransformersGenerator
    from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(texts, vocab_size=vocab_size, tags_as_tokens=atomic)
    model_dir = build_tiny_qwen35(f"{workdir}/{vocab_size}_{atomic}", tokenizer, hidden_size=hidden_size, seed=seed)
    generator = TransformersGenerator(str(model_dir))
    import transformers.convert_slow_tokenizer  # noqa: F401  (imported once, not timed)

    from utils.generation.copy_decoding import CopyVocabulary

    seconds = []
    for _ in range(2):  # the faster of two builds: the first also pays one-off tokenizer caches
        started = time.perf_counter()
        vocabulary = CopyVocabulary.from_tokenizer(generator.tokenizer, generator.eos_ids)
        seconds.append(time.perf_counter() - started)
    generator.copy_vocabulary = vocabulary
    return generator, min(seconds)


def timed_processor(vocabulary, notes, guards=None):
    """The LogitsProcessor, with its own time summed up."""
    from utils.generation.copy_decoding_hf import CopyConstraintLogitsProcessor

    class Timed(CopyConstraintLogitsProcessor):
        seconds = 0.0

        def __call__(self, input_ids, scores):
            started = time.perf_counter()
            out = super().__call__(input_ids, scores)
            Timed.seconds += time.perf_counter() - started
            return out

    Timed.seconds = 0.0
    return (Timed(vocabulary, notes, guards) if guards is not None else Timed(vocabulary, notes)), Timed


def run_steps(generator, prompts: list[str], notes: list[str] | None, steps: int, guards=None) -> tuple[float, int, float]:
    """(wall seconds, steps run, processor seconds) of one greedy generate call."""
    import torch
    from transformers import LogitsProcessorList

    encoded = generator.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    extra, timer = {}, None
    if notes is not None:
        processor, timer = timed_processor(generator.copy_vocabulary, notes, guards)
        extra["logits_processor"] = LogitsProcessorList([processor])
    started = time.perf_counter()
    with torch.no_grad():
        out = generator.model.generate(**encoded, do_sample=False, max_new_tokens=steps, min_new_tokens=0,
                                       pad_token_id=generator.tokenizer.pad_token_id,
                                       eos_token_id=sorted(generator.eos_ids), **extra)
    wall = time.perf_counter() - started
    return wall, out.shape[1] - encoded["input_ids"].shape[1], timer.seconds if timer else 0.0


def measure(generator, notes: list[str], batch: int, steps: int, repeats: int, guards=None) -> tuple[float, float, float]:
    """Median ms per step: unconstrained, constrained, the processor alone."""
    from utils.prompt import render_chat_prompt

    chosen = (notes * batch)[:batch]
    prompts = [render_chat_prompt(generator.tokenizer, note) for note in chosen]
    run_steps(generator, prompts[:1], None, 4)  # warm up
    plain, constrained, processor = [], [], []
    for _ in range(repeats):
        wall, n, _ = run_steps(generator, prompts, None, steps)
        plain.append(1000 * wall / n)
        wall, n, own = run_steps(generator, prompts, chosen, steps, guards)
        constrained.append(1000 * wall / n)
        processor.append(1000 * own / n)
    return statistics.median(plain), statistics.median(constrained), statistics.median(processor)


def replay_gold(generator, pairs: list[tuple[str, str]], limit_tokens: int) -> tuple[float, int]:
    """Microseconds per token for allowed() + advance() over the gold tagged notes' own tokens."""
    from utils.generation.copy_decoding import CopyGuards

    guards = CopyGuards(max_tags_per_position=9)  # gold may open more than two spans at one character
    total, tokens = 0.0, 0
    for note, tagged in pairs:
        ids = generator.tokenizer(tagged, add_special_tokens=False)["input_ids"][:limit_tokens]
        constraint = generator.copy_vocabulary.start(note, guards)
        started = time.perf_counter()
        for token in ids:
            constraint.allowed()
            constraint.advance(token)
        total += time.perf_counter() - started
        tokens += len(ids)
        if tokens >= limit_tokens:
            break
    return 1e6 * total / tokens, tokens


SMOKE_SIZES = {"steps": 4, "batch_sizes": [1], "vocab_sizes": [2048], "hidden_size": 32, "repeats": 1}  # --smoke


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=192, help="greedy tokens generated per run")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--vocab_sizes", type=int, nargs="+", default=[2048, 32768])
    parser.add_argument("--hidden_size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument("--text_mass", action="store_true",
                        help="constrain with --copy_text_mass --copy_allow_unclosed (the demo's settings)")
    args = parse_with_smoke(parser, argv, SMOKE_SIZES)

    import torch

    torch.set_num_threads(args.threads)
    guards = None
    if args.text_mass:
        from utils.generation.copy_decoding import CopyGuards

        guards = CopyGuards(text_mass=True, allow_unclosed=True)
    rows: list[Row] = []
    replays: list[dict] = []
    print(f"{'tokenizer':<14} {'vocab':>6} {'batch':>5} {'plain ms/step':>14} {'constrained':>12} "
          f"{'processor':>10} {'overhead':>9} {'trie build':>10}")
    with tempfile.TemporaryDirectory() as workdir:
        for vocab_size in args.vocab_sizes:
            texts, pairs = training_texts(vocab_size, args.seed)
            notes = [note for note, _ in pairs[:8]]
            for atomic in (True, False):
                name = "tags as tokens" if atomic else "spelled tags"
                generator, build_s = build(workdir, vocab_size, atomic, args.hidden_size, args.seed, texts)
                for batch in args.batch_sizes:
                    plain, constrained, processor = measure(generator, notes, batch, args.steps, args.repeats, guards)
                    row = Row(name, len(generator.tokenizer), batch, args.steps, plain, constrained, processor, build_s)
                    rows.append(row)
                    print(f"{name:<14} {row.vocab:>6} {batch:>5} {plain:>14.2f} {constrained:>12.2f} "
                          f"{processor:>10.3f} {row.overhead:>8.1%} {build_s:>9.2f}s", flush=True)
                per_token, tokens = replay_gold(generator, pairs, 20000)
                replays.append({"tokenizer": name, "vocab": len(generator.tokenizer), "us_per_token": per_token,
                                "tokens": tokens})
    print("\ncore alone on the gold tagged notes' tokens (allowed set + advance):")
    for replay in replays:
        print(f"  {replay['tokenizer']:<14} vocab {replay['vocab']:>6}: {replay['us_per_token']:.1f} us/token "
              f"over {replay['tokens']} tokens")
    if args.json:
        from utils.fileio import write_json_atomic

        write_json_atomic(args.json, {"rows": [asdict(r) | {"overhead": r.overhead} for r in rows], "gold_replay": replays})
    return 0


if __name__ == "__main__":
    sys.exit(main())
