"""How well utils.pred_to_offset recovers exact gold offsets from damaged model outputs under each locator
(``--locate published``, the default, and ``--locate align``), how fast, and whether anything makes it crash.

    python benchmarks/bench_pred_to_offset.py [--notes 100] [--seed 0] [--fuzz 10000] [--out result.json]
        [--locators published align]

Each synthetic note (dataset.synthetic) is written as its gold tagged text (utils.tagging.convert), then damaged
with the mix below (``Mix``; per note, every item independently):

* 10 whitespace edits anywhere except next to a tag (a space doubled, a double space made single,
  a space before a newline added, a tab for a space);
* 10 typos outside every span (substitution, insertion or deletion of one character);
* 3 substitution typos inside spans (not on a span's first or last character);
* 2 % of the tags written in a variant form (``< tag >``, ``</ tag>``, ``<tag class="x">``, upper case);
* with p 0.5 one line dropped, with p 0.5 one line repeated (tags included);
* with p 0.5 a stray closing tag, with p 0.5 an extra opening tag never closed (each placed where no
  span of that category is open: elsewhere the pairing is ambiguous for any reader);
* with p 0.3 an unknown tag pair (``<medication>...</medication>``) around some text;
* with p 0.3 the output cut short at a random point in its last 30 %;
* with p 0.3 a ``<think>...</think>`` block before the answer, with p 0.2 a chatty first line and a
  code fence around the answer.

Exact-offset recovery = |recoverable gold spans whose exact (start, end, category) is predicted| /
|recoverable gold spans|. The gold spans are those the clean tagged text encodes (``tagged_to_spans``,
i.e. after the documented same-category-crossing re-pairing); recoverable = those whose opening and
closing tags both survive: not cut off by the truncation and not on a dropped line.

Fuzz: random garbage and mangled outputs (random tag soup, random unicode, shuffled or chopped tagged
text) against short notes; a crash is any exception or any offset outside ``0 <= start < end <= len`` (for the
published locator ``len`` is that of the lower-cased note: its case-insensitive rule reports offsets there).

Both locators see the same damaged outputs (the damage depends only on ``--seed``), so their numbers compare.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file: make the repository root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from utils.categories import ID_TO_TAG, TAG_TO_ID, TAGS
from utils.fileio import write_json_atomic
from utils.tagging.locate import DEFAULT_LOCATOR, LOCATORS, locate_spans
from utils.meddec.predictions import Span
from utils.tagging.convert import spans_to_tagged, tagged_to_spans
from utils.tagging.tags import TAG_PATTERN


@dataclass(frozen=True)
class Mix:
    """The damage applied to each note's gold tagged text (see the module docstring)."""

    whitespace_edits: int = 10
    typos_outside: int = 10
    typos_inside: int = 3
    tag_variant_rate: float = 0.02
    p_drop_line: float = 0.5
    p_repeat_line: float = 0.5
    p_stray_close: float = 0.5
    p_unclosed_open: float = 0.5
    p_unknown_tag: float = 0.3
    p_truncate: float = 0.3
    truncate_tail: float = 0.3
    p_think: float = 0.3
    p_chatter: float = 0.2


@dataclass
class Damaged:
    """A damaged output, the spans the clean output encodes, and those that survived the damage."""

    output: str
    reference: list[Span]
    recoverable: set[Span]


# A unit is one character ("c", char, None) or one tag ("t", text, (span id or -1, is_close, category)).
Unit = tuple[str, str, Any]


def _units(tagged: str) -> list[Unit]:
    units: list[Unit] = []
    stacks: dict[int, list[int]] = {}
    next_id = 0
    previous = 0
    for match in TAG_PATTERN.finditer(tagged):
        units.extend(("c", ch, None) for ch in tagged[previous : match.start()])
        previous = match.end()
        category = TAG_TO_ID[match.group(2)]
        stack = stacks.setdefault(category, [])
        if match.group(1):
            units.append(("t", match.group(0), (stack.pop(), True, category)))
        else:
            stack.append(next_id)
            units.append(("t", match.group(0), (next_id, False, category)))
            next_id += 1
    units.extend(("c", ch, None) for ch in tagged[previous:])
    return units


def _open_categories(units: list[Unit]) -> list[Counter[int]]:
    """Per unit, how many spans of each category are open before it."""
    depth: Counter[int] = Counter()
    out = []
    for kind, _, info in units:
        out.append(Counter(+depth))
        if kind == "t" and info[0] >= 0:
            depth[info[2]] += -1 if info[1] else 1
    return out


def _char_neighbours_ok(units: list[Unit], i: int) -> bool:
    return 0 < i < len(units) - 1 and units[i - 1][0] == "c" and units[i + 1][0] == "c"


def _letter(rng: random.Random) -> str:
    return rng.choice("abcdefghijklmnopqrstuvwxyz0123456789.,")


def _char_edits(units: list[Unit], rng: random.Random, mix: Mix) -> None:
    depth = _open_categories(units)
    chars = [i for i, u in enumerate(units) if u[0] == "c"]
    outside = [i for i in chars if not depth[i]]
    inside = [i for i in chars if depth[i] and _char_neighbours_ok(units, i) and units[i][1].isalnum()]
    spaces = [i for i in chars if units[i][1] in " \n" and _char_neighbours_ok(units, i)]
    edits: dict[int, str] = {}
    for i in rng.sample(outside, min(mix.typos_outside, len(outside))):
        edits[i] = rng.choice(("sub", "ins", "del"))
    for i in rng.sample(inside, min(mix.typos_inside, len(inside))):
        edits.setdefault(i, "sub")
    for i in rng.sample(spaces, min(mix.whitespace_edits, len(spaces))):
        edits.setdefault(i, "space")
    for i in sorted(edits, reverse=True):
        ch = units[i][1]
        if edits[i] == "sub":
            units[i] = ("c", _letter(rng) if ch != "x" else "y", None)
        elif edits[i] == "ins":
            units.insert(i, ("c", _letter(rng), None))
        elif edits[i] == "del":
            del units[i]
        elif ch == "\n":
            units.insert(i, ("c", " ", None))
        elif units[i + 1][1] == " ":
            del units[i]
        else:
            units[i] = ("c", rng.choice(("  ", "\t")), None)


def _tag_variants(units: list[Unit], rng: random.Random, mix: Mix) -> None:
    for i, (kind, text, info) in enumerate(units):
        if kind == "t" and rng.random() < mix.tag_variant_rate:
            tag = ID_TO_TAG[info[2]]
            if info[1]:
                variant = rng.choice((f"</ {tag}>", f"</{tag} >", f"</{tag.upper()}>"))
            else:
                variant = rng.choice((f"< {tag} >", f'<{tag} class="x">', f"<{tag.replace('_', '-')}>"))
            units[i] = ("t", variant, info)


def _insert_bad_tags(units: list[Unit], rng: random.Random, mix: Mix) -> None:
    inserts: list[tuple[int, list[Unit]]] = []
    depth = _open_categories(units)
    for probability, closing in ((mix.p_stray_close, True), (mix.p_unclosed_open, False)):
        if rng.random() < probability:
            category = rng.choice(list(ID_TO_TAG))
            free = [i for i in range(len(units)) if not depth[i][category]]
            if free:
                tag = ID_TO_TAG[category]
                inserts.append((rng.choice(free), [("t", f"</{tag}>" if closing else f"<{tag}>", (-1, closing, category))]))
    if rng.random() < mix.p_unknown_tag and len(units) > 40:
        i = rng.randrange(len(units) - 30)
        inserts.append((i + rng.randrange(5, 30), [("t", "</medication>", (-1, True, 0))]))
        inserts.append((i, [("t", "<medication>", (-1, False, 0))]))
    for i, new in sorted(inserts, key=lambda x: x[0], reverse=True):
        units[i:i] = new


def _line_bounds(units: list[Unit]) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for i, (kind, text, _) in enumerate(units):
        if kind == "c" and text == "\n":
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, len(units)))
    return bounds


def _span_ids(units: list[Unit]) -> set[int]:
    return {u[2][0] for u in units if u[0] == "t" and u[2][0] >= 0}


def _line_edits(units: list[Unit], rng: random.Random, mix: Mix) -> set[int]:
    """Drop and/or repeat a line; returns the span ids whose tags were removed."""
    lost: set[int] = set()
    if rng.random() < mix.p_repeat_line:
        lo, hi = rng.choice(_line_bounds(units))
        units[hi:hi] = units[lo:hi]
    if rng.random() < mix.p_drop_line:
        lo, hi = rng.choice(_line_bounds(units))
        lost |= _span_ids(units[lo:hi])
        del units[lo:hi]
    return lost


def damage_tagged_output(note_text: str, spans: list[tuple[int, int, int]], rng: random.Random, mix: Mix = Mix()) -> Damaged:
    """Gold tagged text of a note with the damage of ``mix`` applied, and which gold spans stay recoverable."""
    tagged = spans_to_tagged(note_text, spans)
    _, reference = tagged_to_spans(tagged)
    units = _units(tagged)
    _char_edits(units, rng, mix)
    _tag_variants(units, rng, mix)
    _insert_bad_tags(units, rng, mix)
    lost = _line_edits(units, rng, mix)
    if rng.random() < mix.p_truncate and units:
        cut = len(units) - int(rng.random() * mix.truncate_tail * len(units))
        lost |= _span_ids(units[cut:])
        del units[cut:]
    surviving = _span_ids(units)
    output = "".join(u[1] for u in units)
    if rng.random() < mix.p_chatter:
        output = "Here is the annotated discharge summary:\n```\n" + output + "\n```\n"
    if rng.random() < mix.p_think:
        output = "<think>\nI will tag the decisions. <drug_decision> is for medications.\n</think>\n\n" + output
    recoverable = {span for k, span in enumerate(reference) if k in surviving and k not in lost}
    return Damaged(output, reference, recoverable)


# --------------------------------------------------------------------------------------------- fuzz


def _random_tag(rng: random.Random) -> str:
    name = rng.choice((*TAGS, "think", "medication", "b", "DRUG_DECISION", "drug decision"))
    return rng.choice((f"<{name}>", f"</{name}>", f"< {name} >", f"</ {name}>", f"<{name}/>", f'<{name} x="1">', "<", ">"))


def random_garbage_output(note_text: str, rng: random.Random) -> str:
    """One of several kinds of garbage or badly mangled output for a note."""
    kind = rng.randrange(6)
    if kind == 0:  # tag soup
        return "".join(_random_tag(rng) if rng.random() < 0.3 else rng.choice(note_text or "x") for _ in range(rng.randrange(200)))
    if kind == 1:  # random unicode with tags
        return "".join(_random_tag(rng) if rng.random() < 0.1 else chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(300)))
    if kind == 2:  # chopped pieces of the note with random tags between them
        pieces = []
        for _ in range(rng.randrange(1, 20)):
            i = rng.randrange(len(note_text) + 1)
            pieces.append(note_text[i : i + rng.randrange(1, 60)])
            pieces.append(_random_tag(rng))
        return "".join(pieces)
    if kind == 3:  # the note with random tags at random places
        out = list(note_text)
        for _ in range(rng.randrange(1, 30)):
            out.insert(rng.randrange(len(out) + 1), _random_tag(rng))
        return "".join(out)
    if kind == 4:  # a well-tagged note, then shuffled lines
        spans = [(a, a + rng.randrange(1, 20), rng.randrange(1, 10)) for a in rng.sample(range(max(len(note_text), 1)), min(10, len(note_text)))]
        lines = spans_to_tagged(note_text, spans).split("\n")
        rng.shuffle(lines)
        return "\n".join(lines)
    return rng.choice(("", "<think>", "<think>never closed", "</think>", "<drug_decision>", "</drug_decision>" * 3, "\x00\r\n"))


def _random_note(rng: random.Random) -> str:
    alphabet = "abc de\nf.,[**]\r\u00b0\u00e9<>/"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))


def fuzz(n: int, seed: int = 0, locator: str = DEFAULT_LOCATOR) -> dict[str, Any]:
    """Run ``n`` garbage outputs through locate_spans; count exceptions and out-of-range offsets."""
    rng = random.Random(seed)
    crashes: list[str] = []
    started = time.perf_counter()
    for k in range(n):
        note = _random_note(rng)
        output = random_garbage_output(note, rng)
        try:
            result = locate_spans(note, output, rng.choice(("drop", "close_at_end")), locator)
            limit = len(note.lower()) if locator == "published" else len(note)
            bad = [s for s in result.spans if not (0 <= s.start < s.end <= limit)]
            if bad or len(result.spans) != len(result.matches):
                crashes.append(f"case {k}: bad spans {bad[:3]}")
        except Exception as err:  # noqa: BLE001 - counting crashes is the point
            crashes.append(f"case {k}: {type(err).__name__}: {err}")
    return {"cases": n, "crashes": len(crashes), "first_crashes": crashes[:5], "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------- benchmark


def recovery(n_notes: int, seed: int = 0, mix: Mix = Mix(), locator: str = DEFAULT_LOCATOR) -> dict[str, Any]:
    """Exact-offset recovery and speed of one locator over ``n_notes`` synthetic notes with damaged outputs."""
    from dataset.synthetic import generate_notes

    rng = random.Random(seed)
    notes = generate_notes(n_notes, seed=seed)
    recoverable = recovered = extra = reference = 0
    matches: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    seconds = 0.0
    chars = 0
    for note in notes:
        damaged = damage_tagged_output(note.text, [(a.start, a.end, a.category) for a in note.in_scope], rng, mix)
        started = time.perf_counter()
        result = locate_spans(note.text, damaged.output, locator=locator)
        seconds += time.perf_counter() - started
        predicted = set(result.spans)
        recoverable += len(damaged.recoverable)
        recovered += len(damaged.recoverable & predicted)
        extra += len(predicted - set(damaged.reference))
        reference += len(damaged.reference)
        matches.update(result.matches)
        reasons.update(d.reason for d in result.dropped)
        chars += len(note.text)
    return {
        "locator": locator,
        "notes": n_notes,
        "mean_note_chars": chars / max(n_notes, 1),
        "reference_spans": reference,
        "recoverable_spans": recoverable,
        "recovered_exactly": recovered,
        "exact_recovery": recovered / max(recoverable, 1),
        "predicted_spans_not_in_gold": extra,
        "notes_per_second": n_notes / seconds if seconds else float("inf"),
        "matches": dict(matches.most_common()),
        "dropped": dict(reasons.most_common()),
        "mix": asdict(mix),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=100, help="synthetic notes for the recovery benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz", type=int, default=10_000, help="garbage outputs for the crash test")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    parser.add_argument("--locators", nargs="+", default=list(LOCATORS), choices=LOCATORS,
                        help="locators to measure, side by side on the same damaged outputs")
    args = parser.parse_args(argv)
    result = {
        "recovery": {name: recovery(args.notes, args.seed, locator=name) for name in args.locators},
        "fuzz": {name: fuzz(args.fuzz, args.seed, name) for name in args.locators},
    }
    print(json.dumps(result, indent=2))
    print(side_by_side(result["recovery"]))
    if args.out:
        write_json_atomic(args.out, result)
    return 0 if all(r["crashes"] == 0 for r in result["fuzz"].values()) else 1


def side_by_side(recoveries: dict[str, dict[str, Any]]) -> str:
    """A small table: one row per locator (exact recovery, spans recovered, extra spans, speed)."""
    lines = ["locator    exact recovery  recovered/recoverable  predicted not in gold  notes/s"]
    for name, r in recoveries.items():
        lines.append(f"{name:<10} {r['exact_recovery']:>14.2%}  {r['recovered_exactly']:>9}/{r['recoverable_spans']:<11}"
                     f"  {r['predicted_spans_not_in_gold']:>21}  {r['notes_per_second']:>7.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
