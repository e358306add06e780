"""Seeded generator of realistic and damaged GRPO completions, for checking utils/rewards.py against the oracle.

Each case is (completion, note, gold): ``note`` feeds the fidelity reward (the ``raw_text`` column), ``gold`` the
F1 rewards (the ``gold_span`` column). Pieces: a synthetic discharge-summary note with MIMIC-style ``[** **]``
placeholders and non-ASCII characters, tagged with the nine tags (nested and crossing), then damaged the way a
sampled completion can be: dropped/duplicated lines, changed whitespace, typos, unknown or malformed tags,
unclosed and stray tags, placeholders glued to punctuation at span edges, unicode at span edges, think blocks
(closed, unclosed, empty, several) and every completion container (string, chat list, bare dict, empty list,
non-dict message, tuple, None). Everything is derived from ``random.Random(seed)``: the corpus is the same on
every run and every machine.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

NINE_TAGS = (
    "contact_related", "gather_info", "define_problem", "treatment_goal", "drug_decision",
    "therapeutic_procedure", "evaluate_result", "defer_decision", "advice_and_precaution",
)

# Phrases a span can cover; many start or end with punctuation, placeholders or non-ASCII characters.
PHRASES = (
    "Started aspirin 81 mg daily", "continue warfarin for stroke prevention", "CT head negative",
    "Follow up with [**Hospital1 18**] in 2 weeks", "([**Name**])", "Dr. [**Name**].", "[** 12**]",
    "[**2101-1-1**]", "seen by Dr. [**Last Name (STitle) 123**]", "(Lasix 40 mg).", "*important*",
    "café au lait spots", "vitamin D 1000 µg", "temp 38.5 °C", "BP 120–80", "“no acute process”",
    "µg", "°", "…", "- -", "[**", "**]", "[**]", "*", "x", "Ⅳ fluids", "Ｏ2 sat 95%", "İnr elevated",
    "echo showed EF 55%", "discharged home", "NPO after midnight", "consult cardiology", "? PNA",
    "hold metoprolol for HR < 60", "a > b < c", "<3 weeks", "re-check K+ in AM", "50 mg/m²",
    "GI consulted, EGD planned", "defer biopsy", "keep SBP < 140", "avoid NSAIDs!", "",
)

FILLER = (
    "Admission Date: [**2101-1-1**] Discharge Date: [**2101-1-9**]", "Service: MEDICINE",
    "History of Present Illness:", "Pt is a 67 yo M with CHF, AF.", "Physical Exam: afebrile, NAD.",
    "Labs notable for Cr 1.2.", "Brief Hospital Course:", "Medications on Admission:", "Disposition: Home",
    "Discharge Instructions:", "Pt tolerated diet.", "Allergies: NKDA", "Name: [**Known lastname **]",
)

UNKNOWN_TAGS = (
    "<b>", "</b>", "<i>", "</i>", "<Drug_decision>", "</Drug_decision>", "<foo_bar>", "</foo_bar>", "<h1>",
    "</h1>", "<drug_decision >", "</ drug_decision>", '<drug_decision x="1">', "<foo-bar>", "< b>", "<br/>",
    "<DEFINE_PROBLEM>", "<think>", "</think>", "<>", "</>", "<<drug_decision>>", "<//drug_decision>", "<",
    ">", "<drug_decision", "drug_decision>",
)

EDGE_JUNK = (
    "", "", "", " ", ".", ",", "(", ")", "[", "]", "([", "])", "- ", " -", "...", "é", "µ", "°", "–", "“", "”",
    "\u00a0", "\u2028", "\t", "\n", "*", "**", "[**", "**]", "[** ", " **]", "½", "²", "١", "<b>", "</b>",
)

WHITESPACE = (" ", "  ", "\n", "\n\n", "\t", " \n ", "\u00a0", "\r\n", "\u2003", "\x0b", "\x1c")

THOUGHTS = ("", "The note mentions aspirin.", "<drug_decision>x</drug_decision>")

TYPO_CHARS = "abcdefghijklmnopqrstuvwxyz ABC.,;:-*[]()<>/_éµ°–“”\u00a0\n0123456789"


def _note(rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    """A note as lines of plain text, and per line the tagged version (nine tags, nested and crossing)."""
    lines: list[str] = []
    tagged: list[str] = []
    for _ in range(rng.randint(1, 10)):
        if rng.random() < 0.35:
            line = rng.choice(FILLER)
            lines.append(line)
            tagged.append(line)
            continue
        plain_parts, tagged_parts = [], []
        for _ in range(rng.randint(1, 3)):
            phrase = rng.choice(PHRASES)
            before, after = rng.choice(EDGE_JUNK), rng.choice(EDGE_JUNK)
            tag = rng.choice(NINE_TAGS)
            inner = before + phrase + after
            roll = rng.random()
            if roll < 0.15 and " " in phrase:  # nested: a second tag around the first word(s)
                head, tail = phrase.split(" ", 1)
                other = rng.choice(NINE_TAGS)
                inner = f"{before}<{other}>{head}</{other}> {tail}{after}"
            elif roll < 0.25 and " " in phrase:  # crossing with the next piece of text
                head, tail = phrase.split(" ", 1)
                other = rng.choice(NINE_TAGS)
                inner = f"{before}{head} <{other}>{tail}{after}"
                tagged_parts.append(f"<{tag}>{inner}</{tag}> more</{other}>")
                plain_parts.append(f"{before}{head} {tail}{after} more")
                continue
            elif roll < 0.32:  # same-name nesting
                inner = f"{before}<{tag}>{phrase}</{tag}>{after}"
            tagged_parts.append(f"<{tag}>{inner}</{tag}>")
            plain_parts.append(before + phrase + after)
        sep = rng.choice((" ", ". ", ", ", "; ", " - "))
        lines.append(sep.join(plain_parts) + ".")
        tagged.append(sep.join(tagged_parts) + ".")
    return lines, list(zip(lines, tagged))


def _typos(rng: random.Random, text: str, n: int) -> str:
    chars = list(text)
    for _ in range(n):
        if not chars:
            chars.append(rng.choice(TYPO_CHARS))
            continue
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = rng.choice(TYPO_CHARS)
        elif op < 0.7:
            del chars[i]
        else:
            chars.insert(i, rng.choice(TYPO_CHARS))
    return "".join(chars)


def _damage_lines(rng: random.Random, lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        roll = rng.random()
        if roll < 0.06:
            continue  # dropped
        out.append(line)
        if roll > 0.95:
            out.append(line)  # duplicated
    if out and rng.random() < 0.1:
        rng.shuffle(out)
    return out


def _join(rng: random.Random, lines: list[str]) -> str:
    if rng.random() < 0.7:
        return "\n".join(lines)
    return "".join(line + rng.choice(WHITESPACE) for line in lines)


def _damage_tags(rng: random.Random, text: str) -> str:
    """Rename, drop, add and move tags the way a sampled completion might."""
    for _ in range(rng.choice((0, 0, 1, 2, 4))):
        roll = rng.random()
        tag = rng.choice(NINE_TAGS)
        if roll < 0.25:  # a known tag replaced by an unknown or malformed one
            target = rng.choice((f"<{tag}>", f"</{tag}>"))
            if target in text:
                text = text.replace(target, rng.choice(UNKNOWN_TAGS), 1)
        elif roll < 0.45:  # closing tag lost (unclosed span)
            target = f"</{tag}>"
            if target in text:
                text = text.replace(target, "", 1)
        elif roll < 0.65:  # stray tag or unknown tag inserted anywhere
            i = rng.randint(0, len(text))
            piece = rng.choice((f"<{tag}>", f"</{tag}>", rng.choice(UNKNOWN_TAGS), rng.choice(EDGE_JUNK)))
            text = text[:i] + piece + text[i:]
        elif roll < 0.8:  # a new span around arbitrary text
            i = rng.randint(0, len(text))
            j = rng.randint(i, min(len(text), i + 40))
            text = f"{text[:i]}<{tag}>{text[i:j]}</{tag}>{text[j:]}"
        else:  # all tags of one name dropped
            text = text.replace(f"<{tag}>", "").replace(f"</{tag}>", "")
    return text


def _think(rng: random.Random, answer: str) -> str:
    roll = rng.random()
    if roll < 0.45:
        return answer
    if roll < 0.65:
        return f"<think>\n{rng.choice(THOUGHTS)}\n</think>\n\n{answer}"
    if roll < 0.72:
        return "<think>\n\n</think>" + answer
    if roll < 0.78:
        return rng.choice(("", "  ", "\n")) + "<think>cut off before the answer " + answer[: len(answer) // 2]
    if roll < 0.84:
        return f"<think>a</think>b</think>{rng.choice(WHITESPACE)}{answer}{rng.choice(WHITESPACE)}"
    if roll < 0.9:
        return answer + "</think>" + rng.choice(("", " tail", answer[:20]))
    if roll < 0.95:
        return "Sure, here it is: <think>" + answer
    return rng.choice(WHITESPACE) + answer + rng.choice(WHITESPACE)


def _wrap(rng: random.Random, text: str) -> Any:
    roll = rng.random()
    if roll < 0.45:
        return [{"role": "assistant", "content": text}]
    if roll < 0.75:
        return text
    if roll < 0.8:
        return [{"role": "user", "content": "ignored"}, {"role": "assistant", "content": text}]
    if roll < 0.84:
        return {"role": "assistant", "content": text}  # bare message: published reads its str()
    if roll < 0.87:
        return [{"role": "assistant"}]  # no content key
    if roll < 0.9:
        return []
    if roll < 0.92:
        return [text]  # a list whose last element is not a dict
    if roll < 0.94:
        return ({"role": "assistant", "content": text},)  # a tuple is not a list
    if roll < 0.96:
        return None
    if roll < 0.98:
        return [{"role": "assistant", "content": None}]  # the published code raises
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]  # raises too


def fuzz_case(rng: random.Random) -> tuple[Any, str, str]:
    """One (completion, note, gold) case."""
    lines, pairs = _note(rng)
    note = _join(rng, lines)
    gold = "\n".join(tagged for _, tagged in pairs)
    kind = rng.random()
    if kind < 0.05:
        answer = ""
    elif kind < 0.1:
        answer = note  # a copy with no tags at all
    elif kind < 0.13:
        answer = rng.choice(("<drug_decision>start <b>aspirin</b></drug_decision>", "x" * rng.randint(1, 40)))
    else:
        tagged_lines = [tagged for _, tagged in pairs]
        if rng.random() < 0.5:
            tagged_lines = _damage_lines(rng, tagged_lines)
        answer = _join(rng, tagged_lines)
        answer = _damage_tags(rng, answer)
        answer = _typos(rng, answer, rng.choice((0, 0, 1, 2, 5, 20, 80)))
    if rng.random() < 0.04:
        note = rng.choice(("", "   \n", "<drug_decision></drug_decision>", "<define_problem> </define_problem>"))
    if rng.random() < 0.04:
        gold = rng.choice(("", "no tags here", "<gather_info>.</gather_info>"))
    elif rng.random() < 0.1:
        gold = _damage_tags(rng, gold)
    return _wrap(rng, _think(rng, answer)), note, gold


def fuzz_cases(n: int, seed: int = 20260101) -> Iterator[tuple[Any, str, str]]:
    """``n`` cases from one seeded generator (the same corpus on every run)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield fuzz_case(rng)
