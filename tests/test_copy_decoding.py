"""Copy-constrained decoding (utils.generation.copy_decoding, utils.generation.copy_decoding_hf): the output is always the note with
well-formed tags in between, offsets come back exactly ("aligned"), the guards hold, EOS only at the end.

Three levels: the core with a hand-made vocabulary whose tags are spelled over several tokens (the real Qwen
case, without the real tokenizer) checked against a brute-force oracle; random walks through the allowed
sets with both tiny tokenizers (tags as single added tokens, and tags spelled by the BPE); and greedy
generation with random-weight tiny Qwen3.5 models through the transformers LogitsProcessor and
scripts/inference.py.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataset.synthetic import generate_notes
from utils.configs.pipeline import InferenceArguments
from utils.generation.runner import generate_outputs, resume_settings
from utils.prompt import render_chat_prompt
from utils.categories import TAG_TO_ID
from utils.generation.copy_decoding import (
    CopyConstraint,
    CopyConstraintError,
    CopyGuards,
    CopyVocabulary,
    credit_text_mass,
    tag_strings,
)
from utils.generation.copy_decoding_hf import CopyConstraintLogitsProcessor
from utils.fileio import InputError
from utils.generation.backends import TransformersGenerator
from utils.tagging.convert import TagError, spans_to_tagged, tagged_to_spans
from utils.tagging.locate import TAG_LIKE, locate_spans, normalize_tag_name
from utils.tagging.tags import TAG_PATTERN, strip_tags
from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer

LONGEST_TAG = max(len(s) for s in tag_strings())


def render_prompts(tokenizer, texts) -> list[str]:
    return [render_chat_prompt(tokenizer, text) for text in texts]


pytestmark = pytest.mark.usefixtures("one_torch_thread")
DRUG_OPEN, DRUG_CLOSE = "<drug_decision>", "</drug_decision>"

# --------------------------------------------------------------------------------------- random notes

PIECES = [
    "\r\n", "\r", "\n", "\n\n", "  ", "\t", " ", ".", ",", "mg", "Aspirin 81", "Continue", "é", "😀", "°", "µ", "–",
    "[**2101-10-20**]", "[**Hospital 1234**]", "[**", "**]", "<", ">", "</", "<b>", "a<b", "x > y", "/",
]


def _piece(long_max: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(PIECES),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=6),  # any unicode, 4-byte characters included
        st.builds(lambda c, k: c * k, st.sampled_from(["x", "-", "=", " ", "ab"]), st.integers(1, long_max)),
    )


def readable(note: str) -> bool:
    """Notes no reader could tell from tagged text are out of scope (never seen in MedDec): tag-like text of a
    known category, or a reasoning block."""
    if "</think>" in note or note.lstrip().lower().startswith("<think>"):
        return False
    return not any(normalize_tag_name(m.group(2)) in TAG_TO_ID for m in TAG_LIKE.finditer(note))


def notes(max_pieces: int, long_max: int) -> st.SearchStrategy[str]:
    return st.lists(_piece(long_max), max_size=max_pieces).map("".join).filter(readable)


# ------------------------------------------------------------------------------------- checking outputs


def check_output(note: str, output: str, guards: CopyGuards) -> list:
    """Everything a constrained output must satisfy; returns its spans."""
    assert strip_tags(output) == note  # the note, byte for byte
    located = locate_spans(note, output, locator="align")  # the alignment reads copy-decoded outputs exactly
    if guards.allow_unclosed:  # spans left open are unclosed tags, dropped as in any output
        closed = output + "".join(f"</{d.tag}>" for d in reversed(located.dropped))
        assert all(d.reason == "unclosed tag" for d in located.dropped)
        output = closed
    plain, spans = tagged_to_spans(output)  # raises on a stray or unclosed tag
    assert plain == note
    kept = {(s.start, s.end, s.category) for s in located.spans}
    assert located.spans == [s for s in spans if (s.start, s.end, s.category) in kept]
    assert located.matches == ["aligned"] * len(located.spans)  # no alignment fallback
    assert guards.allow_unclosed or not located.dropped
    # guards, read off the text independently of the state machine
    opened_at: dict[int, list[str]] = defaultdict(list)
    position = previous = 0
    open_now = 0
    for match in TAG_PATTERN.finditer(output):
        position += match.start() - previous
        previous = match.end()
        if match.group(1):
            open_now -= 1
        else:
            opened_at[position].append(match.group(2))
            open_now += 1
            assert guards.max_open is None or open_now <= guards.max_open
    for tags in opened_at.values():
        assert len(tags) == len(set(tags)), "a category reopened at one position"
        assert len(tags) <= guards.max_tags_per_position
    for span in spans:
        assert note[span.start : span.end].strip(), "a span without a visible character"
        if guards.word_boundaries:
            for edge in (span.start, span.end):
                assert not (0 < edge < len(note) and note[edge - 1].isalnum() and note[edge].isalnum()), "a tag in a word"
        if guards.max_span_chars is not None:
            text = note[span.start : span.end]
            visible = sum(not ch.isspace() for ch in text)
            # with the word guard the span may finish the word it started while it had room
            head = text.rstrip()
            while head and head[-1].isalnum():
                head = head[:-1]
            assert visible <= guards.max_span_chars or (
                guards.word_boundaries and sum(not ch.isspace() for ch in head) < guards.max_span_chars), "span too long"
    return spans


def random_walk(vocabulary: CopyVocabulary, note: str, rng: random.Random, guards: CopyGuards,
                oracle: bool = False) -> list[int]:
    """Pick uniformly among the allowed tokens until EOS; checks EOS is allowed exactly when it should be."""
    constraint = vocabulary.start(note, guards)
    ids: list[int] = []
    while not constraint.finished:
        allowed = constraint.allowed()
        if oracle:
            assert allowed == brute_force_allowed(constraint)
        text = vocabulary.text(ids)
        eos_allowed = bool(set(vocabulary.eos_ids) & set(allowed))
        assert eos_allowed == (strip_tags(text) == note and (guards.allow_unclosed or _well_formed(text)))
        token = rng.choice(allowed)
        constraint.advance(token)
        ids.append(token)
    assert ids[-1] in vocabulary.eos_ids and not any(t in vocabulary.eos_ids for t in ids[:-1])
    return ids


def _well_formed(text: str) -> bool:
    try:
        tagged_to_spans(text)
    except TagError:
        return False
    return True


def brute_force_allowed(constraint: CopyConstraint) -> list[int]:
    """Every token id the state machine accepts, by trying each one (the trie walk must find exactly these)."""
    allowed = []
    for token in range(len(constraint.vocabulary.token_bytes)):
        trial = copy.copy(constraint)
        try:
            trial.advance(token)
        except CopyConstraintError:
            continue
        allowed.append(token)
    return allowed


# ----------------------------------------------------------------------------- a hand-made vocabulary

# 0-255: single bytes; then pieces that spell tags over several tokens and cross text/tag boundaries.
PIECES_VOCAB = [
    b"</", b"drug", b"_decision", b">", b">\n", b">\r", b" <", b"></", b"<d", b"define", b"_problem", b"e_", b"ision>",
    b"Give", b" aspirin", b".\r\n", b"\r\n", b"Stop", "é".encode(), b"<drug_decision>", b"n>\r\n", b"<<", b"a<",
]
HAND_EOS = 256 + len(PIECES_VOCAB) + 1  # after one special token that writes nothing


@pytest.fixture(scope="module")
def hand_vocab() -> CopyVocabulary:
    token_bytes: list[bytes | None] = [bytes([b]) for b in range(256)] + PIECES_VOCAB + [None, None]
    return CopyVocabulary(token_bytes, [HAND_EOS])


def tid(data: str | bytes) -> int:
    data = data.encode() if isinstance(data, str) else data
    return data[0] if len(data) == 1 else 256 + PIECES_VOCAB.index(data)


def write(constraint: CopyConstraint, *pieces: str | bytes) -> None:
    for piece in pieces:
        constraint.advance(tid(piece))


def write_bytes(constraint: CopyConstraint, text: str | bytes) -> None:
    """Byte by byte through the single-byte tokens."""
    for byte in text.encode() if isinstance(text, str) else text:
        constraint.advance(byte)


def refused(constraint: CopyConstraint, text: str | bytes) -> bool:
    trial = copy.copy(constraint)
    try:
        write_bytes(trial, text)
    except CopyConstraintError:
        return True
    return False


def test_tags_spelled_over_tokens_that_cross_text_and_tag_boundaries(hand_vocab):
    note = "Give aspirin.\r\nStop."
    c = hand_vocab.start(note)
    pieces = ["Give", " <", "drug", "_decision", ">", "a", "s", "p", "i", "r", "i", "n", "</", "drug", "_decision",
              ">", ".\r\n", "<d", "e", "f", "i", "n", "e", "_problem", ">", "Stop", "</", "d", "e", "f", "i", "n",
              "e_", "p", "r", "o", "b", "l", "e", "m", ">", "."]
    for piece in pieces:
        assert tid(piece) in c.allowed(), piece
        assert HAND_EOS not in c.allowed()
        write(c, piece)
    assert c.complete and c.allowed() == [HAND_EOS]
    c.advance(HAND_EOS)
    assert c.finished and c.allowed() == []
    output = "".join(pieces)
    assert check_output(note, output, CopyGuards()) == [(5, 12, TAG_TO_ID["drug_decision"]),
                                                       (15, 19, TAG_TO_ID["define_problem"])]


def test_one_token_may_close_a_tag_and_write_text_or_chain_tags(hand_vocab):
    note = "x\r\ny"
    c = hand_vocab.start(note)
    pieces = ["<drug_decision>", "x", "</", "drug", "_decision", ">\r"]  # ">\r": the tag's end, then the note's \r
    write(c, *pieces)
    assert c.position == 2
    tail = "<define_problem>\n<drug_decision>y</define_problem"  # a tag between \r and \n: a character boundary
    write_bytes(c, tail)
    write(c, "></", "drug", "_decision", ">")  # "></": the end of one closing tag and the start of the next
    assert c.complete
    output = "".join(pieces) + tail + "></drug_decision>"
    assert check_output(note, output, CopyGuards()) == [(0, 1, 5), (2, 4, 3), (3, 4, 5)]


def test_allowed_set_equals_a_brute_force_check_of_every_token(hand_vocab):
    rng = random.Random(7)
    for note in ["Give aspirin.\r\nStop.", "a<b", "é<<d", " \r\n x ", "<", ""]:
        for _ in range(3):
            ids = random_walk(hand_vocab, note, rng, CopyGuards(), oracle=True)
            check_output(note, hand_vocab.text(ids), CopyGuards())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(note=notes(max_pieces=4, long_max=12), seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3),
       max_open=st.sampled_from([None, 1, 2]), words=st.booleans(), span_chars=st.sampled_from([None, 1, 3]),
       unclosed=st.booleans())
def test_random_walks_over_the_hand_vocabulary_match_the_oracle(hand_vocab, note, seed, k, max_open, words, span_chars,
                                                                unclosed):
    guards = CopyGuards(k, max_open, words, max_span_chars=span_chars, allow_unclosed=unclosed)
    ids = random_walk(hand_vocab, note, random.Random(seed), guards, oracle=True)
    check_output(note, hand_vocab.text(ids), guards)


def test_max_span_chars_closes_a_span_once_it_holds_that_many_visible_characters(hand_vocab):
    c = hand_vocab.start("ab cd", CopyGuards(max_span_chars=2))
    write(c, "<drug_decision>")
    write_bytes(c, "ab ")  # whitespace does not count
    assert refused(c, "c") and refused(c, "<d")  # full: no more text, nothing opens
    assert not refused(c, "</drug_decision>cd")
    words = hand_vocab.start("abc d", CopyGuards(max_span_chars=2, word_boundaries=True))
    write(words, "<drug_decision>")
    write_bytes(words, "abc")  # the word that started with room is finished
    assert refused(words, " d") and not refused(words, "</drug_decision> d")
    with pytest.raises(ValueError, match="max_span_chars must be at least 1"):
        CopyGuards(max_span_chars=0)


def test_allow_unclosed_lets_the_model_end_with_spans_open(hand_vocab):
    strict = hand_vocab.start("ab")
    loose = hand_vocab.start("ab", CopyGuards(allow_unclosed=True))
    for c in (strict, loose):
        write(c, "<drug_decision>")
        write_bytes(c, "ab")
    assert HAND_EOS not in strict.allowed() and HAND_EOS in loose.allowed()
    assert tid("</") in loose.allowed()  # closing stays the model's choice
    loose.advance(HAND_EOS)
    located = locate_spans("ab", hand_vocab.text([tid("<drug_decision>"), ord("a"), ord("b")]))
    assert located.spans == [] and [d.reason for d in located.dropped] == ["unclosed tag"]


def test_no_tag_inside_a_utf8_character(hand_vocab):
    c = hand_vocab.start("é😀")
    write_bytes(c, b"\xc3")
    assert refused(c, "<")
    write_bytes(c, b"\xa9<drug_decision>\xf0\x9f")
    assert refused(c, "</") and refused(c, "<")
    write_bytes(c, b"\x98\x80</drug_decision>")
    assert c.complete


def test_no_reopening_at_one_position_and_at_most_k_openings(hand_vocab):
    c = hand_vocab.start("ab", CopyGuards(max_tags_per_position=2))
    write_bytes(c, DRUG_OPEN)
    assert refused(c, DRUG_OPEN)  # the same category again at the same position
    write_bytes(c, "<define_problem>")
    assert refused(c, "<gather_info>") and refused(c, "<")  # K = 2 reached: no tag can start (no close either)
    write_bytes(c, "a")
    assert not refused(c, DRUG_OPEN)  # a new position
    one = hand_vocab.start("ab", CopyGuards(max_tags_per_position=1))
    write_bytes(one, "<gather_info>")
    assert refused(one, "<define_problem>")


def test_closing_then_reopening_at_one_position_is_adjacent_spans(hand_vocab):
    c = hand_vocab.start("ab")
    write_bytes(c, DRUG_OPEN + "a" + DRUG_CLOSE + DRUG_OPEN)
    assert refused(c, DRUG_OPEN) and refused(c, DRUG_CLOSE)  # reopen, and an empty span
    write_bytes(c, "b" + DRUG_CLOSE)
    assert c.complete


def test_no_span_without_a_visible_character(hand_vocab):
    c = hand_vocab.start("a \r\n b")
    write_bytes(c, "a" + DRUG_OPEN)
    assert refused(c, DRUG_CLOSE)  # empty span
    write_bytes(c, " \r\n ")
    assert refused(c, DRUG_CLOSE)  # whitespace only: pred_to_offset would drop it
    write_bytes(c, "b" + DRUG_CLOSE)
    assert c.complete
    tail = hand_vocab.start("a \n")
    write_bytes(tail, "a")
    assert refused(tail, "<")  # only whitespace ahead: an opened tag could never close
    write_bytes(tail, " \n")
    assert tail.allowed() == [HAND_EOS]


def test_closing_pairs_with_the_most_recent_open_tag_of_its_category(hand_vocab):
    c = hand_vocab.start("abc")
    write_bytes(c, DRUG_OPEN + "a" + DRUG_OPEN)
    assert refused(c, DRUG_CLOSE)  # would close the inner one, opened here: empty
    write_bytes(c, "b" + DRUG_CLOSE + DRUG_CLOSE + "c")
    assert c.complete
    assert tagged_to_spans(f"{DRUG_OPEN}a{DRUG_OPEN}b{DRUG_CLOSE}{DRUG_CLOSE}c")[1] == [(0, 2, 5), (1, 2, 5)]


def test_eos_only_at_the_end_with_every_span_closed(hand_vocab):
    c = hand_vocab.start("ab")
    with pytest.raises(CopyConstraintError, match="end of sequence at note byte 0 of 2"):
        copy.copy(c).advance(HAND_EOS)
    write_bytes(c, "a" + DRUG_OPEN + "b")
    assert HAND_EOS not in c.allowed() and not c.complete
    assert {bytes([t]) for t in c.allowed() if t < 256} == {b"<"}  # only a closing tag can follow
    assert refused(c, DRUG_OPEN) and refused(c, "b")
    write_bytes(c, DRUG_CLOSE)
    assert c.allowed() == [HAND_EOS]
    c.advance(HAND_EOS)
    with pytest.raises(CopyConstraintError, match="after the end of sequence"):
        c.advance(ord("x"))


def test_max_open_limits_spans_open_at_once(hand_vocab):
    c = hand_vocab.start("abc", CopyGuards(max_open=1))
    write_bytes(c, DRUG_OPEN + "a")
    assert refused(c, "<define_problem>")
    write_bytes(c, DRUG_CLOSE + "<define_problem>bc</define_problem>")
    assert c.complete


def test_word_guard_keeps_tags_out_of_alphanumeric_runs(hand_vocab):
    note = "Give 81mg, é2 x"
    c = hand_vocab.start(note, CopyGuards(word_boundaries=True))
    for k, char in enumerate(note):
        inside = 0 < k and note[k - 1].isalnum() and char.isalnum()
        assert refused(c, "<") == inside, (k, char)  # "é" is alphanumeric too, as for the scorer's str.isalnum
        write_bytes(c, char)
    free = hand_vocab.start("Give", CopyGuards())
    write_bytes(free, "Gi")
    assert not refused(free, DRUG_OPEN)  # off by default: a tag may sit anywhere between characters
    tail = hand_vocab.start("ab", CopyGuards(word_boundaries=True))
    write_bytes(tail, DRUG_OPEN + "ab" + DRUG_CLOSE)  # the end of the note is always an edge: a span can close
    assert tail.complete


def test_a_note_with_angle_brackets_keeps_both_readings(hand_vocab):
    # "<" in the note may be text or the start of a tag until the bytes tell them apart
    c = hand_vocab.start("a<b")
    write(c, "a<", "<d")  # text "a<", then a tag starts
    write_bytes(c, "rug_decision>b</drug_decision>")
    assert c.complete
    d = hand_vocab.start("<d")
    write(d, "<d")  # the note's text or the start of <define_problem>/<defer_decision>/<drug_decision>
    assert HAND_EOS in d.allowed()
    write_bytes(d, "efer_decision>")  # it was a tag: the note is still to be written
    assert HAND_EOS not in d.allowed() and d.position == 0
    write_bytes(d, "<d</defer_decision>")
    assert d.allowed() == [HAND_EOS]


def test_update_takes_only_new_tokens_and_errors_name_the_token(hand_vocab):
    c = hand_vocab.start("Give")
    c.update([tid("G")])
    c.update([tid("G"), tid("i")])
    assert c.consumed == 2 and c.position == 2
    with pytest.raises(CopyConstraintError, match=r"token 120 b'x' does not continue the note at byte 2"):
        c.advance(tid("x"))
    with pytest.raises(CopyConstraintError, match="writes no text"):
        c.advance(HAND_EOS - 1)  # a special token


def test_vocabulary_needs_every_single_byte_and_an_eos():
    with pytest.raises(ValueError, match="no single-byte token for 1 byte value"):
        CopyVocabulary([bytes([b]) for b in range(255)] + [None], [255])
    with pytest.raises(ValueError, match="at least one end-of-sequence"):
        CopyVocabulary([bytes([b]) for b in range(256)], [])
    with pytest.raises(ValueError, match="atomic tags need every tag as one token"):
        CopyVocabulary([bytes([b]) for b in range(256)] + [None], [256], atomic_tags=True)


# ----------------------------------------------------------------------------- the tiny tokenizers


def _tagged_training_texts() -> list[str]:
    """Synthetic notes with their gold tags, so the spelled-tag tokenizer learns merges like ">\\n" and " <"."""
    synthetic = generate_notes(12, seed=3, mean_chars=1200, mean_spans=15)
    texts = [spans_to_tagged(n.text, [(a.start, a.end, a.category) for a in n.annotations]) for n in synthetic]
    return texts + PIECES * 3


@pytest.fixture(scope="module", params=["atomic_tags", "spelled_tags"])
def tokenizer(request):
    return build_tiny_tokenizer(_tagged_training_texts(), vocab_size=500, tags_as_tokens=request.param == "atomic_tags")


def test_token_bytes_are_exact_and_tags_are_atomic_only_when_single_tokens(tokenizer):
    vocabulary = CopyVocabulary.from_tokenizer(tokenizer)
    atomic = DRUG_OPEN in tokenizer.get_added_vocab()
    assert vocabulary.atomic_tags == atomic
    text = "Hold <b> 81 mg\r\n° é 😀 [**2101-10-20**]" + (DRUG_OPEN + "x" + DRUG_CLOSE)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert vocabulary.text(ids) == text == tokenizer.decode(ids)
    # byte-level pieces of one 4-byte character are exact bytes, not replacement characters
    pieces = [vocabulary.token_bytes[i] for i in tokenizer("😀", add_special_tokens=False)["input_ids"]]
    assert b"".join(pieces) == "😀".encode()
    assert vocabulary.token_bytes[tokenizer.eos_token_id] is None
    assert vocabulary.token_bytes[tokenizer.convert_tokens_to_ids("<|im_start|>")] is None
    if not atomic:  # the BPE spells tags in pieces, some crossing into text
        tagged_ids = tokenizer("in <drug_decision>x</drug_decision>\n", add_special_tokens=False)["input_ids"]
        assert len(tagged_ids) > 6


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(note=notes(max_pieces=8, long_max=120), seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3), words=st.booleans())
def test_random_walks_with_the_tiny_tokenizers(tokenizer, note, seed, k, words):
    vocabulary = CopyVocabulary.from_tokenizer(tokenizer)
    guards = CopyGuards(k, word_boundaries=words)
    ids = random_walk(vocabulary, note, random.Random(seed), guards)
    output = vocabulary.text(ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == output
    check_output(note, output, guards)


def test_oracle_with_the_tiny_tokenizers(tokenizer):
    vocabulary = CopyVocabulary.from_tokenizer(tokenizer)
    rng = random.Random(1)
    for note in ["Give 81 mg\r\nStop é.", "a<b> x", "😀 [**2101**]"]:
        ids = random_walk(vocabulary, note, rng, CopyGuards(), oracle=True)
        check_output(note, vocabulary.text(ids), CopyGuards())


# ------------------------------------------------------------------------------ the LogitsProcessor


def test_processor_masks_each_row_and_leaves_finished_rows_alone(hand_vocab):
    processor = CopyConstraintLogitsProcessor(hand_vocab, ["ab", "b"])
    vocab_size = HAND_EOS + 3
    prompt = torch.tensor([[0, 7, 7], [7, 7, 7]])  # left padded prompts: generation starts at column 3
    scores = processor(prompt, torch.zeros(2, vocab_size))
    allowed = [set(torch.nonzero(row == 0).flatten().tolist()) for row in scores]
    assert allowed == [set(hand_vocab.start("ab").allowed()), set(hand_vocab.start("b").allowed())]
    assert torch.isinf(scores).sum() == 2 * vocab_size - sum(len(a) for a in allowed)
    step = torch.cat([prompt, torch.tensor([[ord("a")], [ord("b")]])], dim=1)
    processor(step, torch.zeros(2, vocab_size))
    step = torch.cat([step, torch.tensor([[ord("b")], [HAND_EOS]])], dim=1)
    scores = processor(step, torch.randn(2, vocab_size))
    assert set(torch.nonzero(torch.isfinite(scores[0])).flatten().tolist()) == {HAND_EOS}
    assert torch.isfinite(scores[1]).all()  # finished: untouched
    step = torch.cat([step, torch.tensor([[HAND_EOS], [0]])], dim=1)  # then padding
    assert torch.isfinite(processor(step, torch.randn(2, vocab_size))).all()
    assert [c.consumed for c in processor.constraints] == [3, 2]
    with pytest.raises(ValueError, match="batch of 1 rows, but 2 notes"):
        processor(step[:1], torch.zeros(1, vocab_size))


def test_text_tokens_are_the_allowed_tokens_that_only_continue_the_note(hand_vocab):
    c = hand_vocab.start("Give aspirin")
    assert c.text_tokens() == sorted({ord("G"), tid("Give")})  # no tag starts (<, <d, <drug_decision>), no EOS
    assert set(c.text_tokens()) < set(c.allowed()) and tid("<drug_decision>") in c.allowed()
    write(c, "Give")
    assert c.text_tokens() == sorted({ord(" "), tid(" aspirin")})  # " <" would open a tag: not text
    write(c, "<drug_decision>")
    write_bytes(c, " aspirin")
    assert c.text_tokens() == [] and HAND_EOS not in c.allowed()  # the note is written; only the close is left
    note = hand_vocab.start("a<b")  # a note "<" is text too
    write_bytes(note, "a")
    assert ord("<") in note.text_tokens() and tid("<<") not in note.text_tokens()


def test_credit_text_mass_moves_forbidden_probability_to_the_notes_continuation():
    # vocabulary: 0 = the note's next word, 1 = the word the model expected, 2 = an allowed tag, 3 = forbidden tag
    probs = torch.tensor([[0.05, 0.80, 0.10, 0.05]])
    out = credit_text_mass(probs.log(), [[0, 2]], [[0]])
    assert out.exp().tolist()[0] == pytest.approx([0.90, 0.0, 0.10, 0.0])  # the tag keeps its own 0.10
    plain = probs.log().masked_fill(torch.tensor([[False, True, False, True]]), float("-inf")).softmax(-1)
    assert plain.tolist()[0] == pytest.approx([1 / 3, 0.0, 2 / 3, 0.0])  # plain masking: the tag wins
    assert out.softmax(-1).tolist()[0] == pytest.approx(out.exp().tolist()[0])  # normalised: entropy reads it as is
    two = credit_text_mass(torch.zeros(2, 4), [[0, 1, 2], [3]], [[0, 1], []])
    assert two.exp().tolist()[0] == pytest.approx([0.375, 0.375, 0.25, 0.0])  # text shares 0.75 in proportion
    assert two.exp().tolist()[1] == pytest.approx([0.0, 0.0, 0.0, 1.0])  # a row of its own
    no_text = credit_text_mass(probs.log(), [[0, 2]], [[]])  # inside a tag: plain masking
    assert no_text.exp().tolist()[0] == pytest.approx(plain.tolist()[0])
    tiny = credit_text_mass(torch.tensor([[-200.0, 0.0, -1.0]]), [[0, 2]], [[0]])  # the note's token at ~e-87
    assert tiny.exp().tolist()[0] == pytest.approx([1 - math.exp(-1) / (1 + math.exp(-1)), 0.0,
                                                   math.exp(-1) / (1 + math.exp(-1))])


def test_processor_with_text_mass_writes_the_note_where_plain_masking_escapes_into_a_tag(hand_vocab):
    vocab_size = HAND_EOS + 3
    scores = torch.full((1, vocab_size), -10.0)
    scores[0, tid("Give")] = 0.0          # the note's next token: unlikely ...
    scores[0, ord("X")] = 5.0             # ... the model expected other text
    scores[0, tid("<drug_decision>")] = 1.0  # a tag is likelier than the note's token, not than text
    prompt = torch.tensor([[7, 7]])
    plain = CopyConstraintLogitsProcessor(hand_vocab, ["Give"])(prompt, scores.clone())
    credited = CopyConstraintLogitsProcessor(hand_vocab, ["Give"], CopyGuards(text_mass=True))(prompt, scores.clone())
    assert plain.argmax().item() == tid("<drug_decision>")
    assert credited.argmax().item() == tid("Give")
    assert torch.isinf(credited[0, ord("X")]) and credited.exp().sum().item() == pytest.approx(1.0)


# ------------------------------------------------------------------------- greedy with tiny models


@pytest.fixture(scope="module")
def generator(tokenizer, tmp_path_factory) -> TransformersGenerator:
    model_dir = build_tiny_qwen35(tmp_path_factory.mktemp("tiny_qwen_copy"), tokenizer, hidden_size=32, seed=5)
    return TransformersGenerator(str(model_dir), copy_constraint=True)


def worst_case_budget(note: str, guards: CopyGuards) -> int:
    """Tokens a constrained output can need at most: each byte, and every tag opened (and closed) spelled byte by byte."""
    return len(note.encode()) + 2 * guards.max_tags_per_position * len(note) * LONGEST_TAG + 1


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batch=st.lists(notes(max_pieces=4, long_max=40), min_size=1, max_size=3), k=st.integers(1, 3))
def test_greedy_generation_is_always_a_tagged_copy_of_each_note(generator, batch, k):
    generator.copy_guards = guards = CopyGuards(k)
    prompts = render_prompts(generator.tokenizer, batch)
    generations = generator.generate(prompts, [worst_case_budget(n, guards) for n in batch], notes=batch)
    for note, generation in zip(batch, generations):
        assert generation.finished and generation.token_ids[-1] in generator.eos_ids
        assert generation.text == generator.tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        check_output(note, generation.text, guards)
        assert len(generation.logprobs) == generation.num_tokens and all(lp <= 0 for lp in generation.logprobs)


@pytest.mark.slow
def test_chosen_tokens_are_greedy_under_the_constraint_and_logprobs_are_the_constrained_distribution(generator):
    note = "Give 81 mg\r\nStop é."
    prompt = render_prompts(generator.tokenizer, [note])[0]
    generator.copy_guards = CopyGuards()
    generation = generator.generate([prompt], [worst_case_budget(note, CopyGuards())], notes=[note])[0]
    assert generation.finished
    ids = generator.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    full = torch.cat([ids, torch.tensor([generation.token_ids])], dim=1)
    with torch.no_grad():
        logits = generator.model(full).logits[0, ids.shape[1] - 1 : -1].float()
    replay = generator.copy_vocabulary.start(note, CopyGuards())
    expected = []
    unconstrained = []
    for step, token in enumerate(generation.token_ids):
        allowed = torch.tensor(replay.allowed())
        masked = torch.full_like(logits[step], float("-inf"))
        masked[allowed] = logits[step][allowed]
        assert token == int(masked.argmax())  # greedy among the allowed tokens
        expected.append(float(masked.log_softmax(-1)[token]))
        unconstrained.append(float(logits[step].log_softmax(-1)[token]))
        replay.advance(token)
    assert generation.logprobs == pytest.approx(expected, abs=1e-4)
    assert all(c >= u - 1e-6 for c, u in zip(expected, unconstrained))  # renormalised over fewer tokens
    assert generation.entropy == pytest.approx(-sum(expected) / len(expected), abs=1e-4)


def test_the_generator_needs_the_notes_when_constrained(generator):
    with pytest.raises(ValueError, match="needs the note of every prompt"):
        generator.generate(["p"], [3])


# ------------------------------------------------------------------------------- scripts/inference.py


CSV_NOTES = [("1_2_3", "Continue aspirin 81 mg.\r\nStop é."), ("1_2_4", "NA"), ("1_2_5", "a<b>\rc")]


def _input_csv(path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "raw_text"])
        writer.writerows(CSV_NOTES)
    return path


@pytest.mark.slow
def test_inference_with_copy_constraint_writes_exact_copies_and_offsets(tmp_path, generator):
    source = _input_csv(tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    args = InferenceArguments(backend="transformers", model="unused", input=[str(source)], output=[str(out)],
                              max_new_tokens=4000, batch_size=2, copy_constraint=True, locate="align")
    generate_outputs(args, lambda: (generator, generator.tokenizer), progress=False)
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    predictions = {p["file_name"]: p["predictions"] for p in json.loads(out.with_suffix(".json").read_text())}
    for (file_id, note), predicted, truncated, entropy in zip(CSV_NOTES, frame.predicted, frame.truncated, frame.entropy):
        assert truncated == "False" and not math.isnan(float(entropy))
        spans = check_output(note, predicted, CopyGuards())
        assert [(p["start_offset"], p["end_offset"], p["category"]) for p in predictions[file_id]] == [tuple(s) for s in spans]
    settings_line = json.loads(out.with_name("out.csv.partial.jsonl").read_text().splitlines()[0])["settings"]
    assert (settings_line["copy_constraint"], settings_line["copy_max_tags_per_position"], settings_line["copy_max_open"]) == (True, 2, None)


def test_copy_settings_are_resume_keys(tmp_path):
    assert resume_settings(InferenceArguments(backend="transformers"))["copy_constraint"] is False
    on = InferenceArguments(backend="transformers", copy_constraint=True, copy_max_tags_per_position=3)
    assert resume_settings(on)["copy_max_tags_per_position"] == 3
    source = _input_csv(tmp_path / "in.csv")
    out = tmp_path / "o.csv"
    out.with_name("o.csv.partial.jsonl").write_text(json.dumps({"settings": resume_settings(
        InferenceArguments(backend="transformers", model="m"))}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="partial results made with other settings"):
        generate_outputs(InferenceArguments(backend="transformers", model="m", input=[str(source)], output=[str(out)],
                               copy_constraint=True), lambda: pytest.fail("model loaded"), progress=False)
    assert resume_settings(InferenceArguments(copy_word_boundaries=True))["copy_word_boundaries"] is True
    with pytest.raises(InputError,
                       match="<command line>: --copy_max_tags_per_position: expected a positive number, got 0"):
        generate_outputs(InferenceArguments(backend="transformers", input=[str(source)], output=[str(out)], copy_constraint=True,
                               copy_max_tags_per_position=0), lambda: pytest.fail("loaded"))
