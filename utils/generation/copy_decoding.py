"""Copy-constrained decoding: the model may only write the note back, with the nine tags in between.

At every step the allowed next tokens are those whose bytes continue "the note interleaved with tags":
the remaining note text exactly (any tokenisation of it, down to single bytes), an opening tag, a
closing tag of a span still open, or a mix of these inside one token (``>\\n``, `` <``, ``></``).
End of sequence is allowed only when the whole note has been written and no span is open (with
``allow_unclosed``: once the whole note is written, open spans or not; see the guards). The
output with its tags removed is then the note byte for byte, so ``utils.pred_to_offset`` places every
span by plain alignment ("aligned") and offsets are exact by construction.

Framework free: :class:`CopyVocabulary` is built once per tokenizer from every token's exact bytes
(byte-level BPE tokens through the byte decoder, not ``decode()`` of single ids, so tokens holding part
of a UTF-8 character, ``\\r`` or ``\\r\\n`` are exact) into a byte trie. :class:`CopyConstraint` is one
request's state; backends (transformers ``LogitsProcessor``, vLLM logits processor) are thin adapters
that call :meth:`CopyConstraint.update` / :meth:`CopyConstraint.allowed` per row and mask the logits.

The state machine. A state is (byte position in the note, position in a partly typed tag or none, the
tags still allowed to complete it, the open spans as (category, opening position) in opening order,
the categories opened at the current position). Reading a byte: a note byte moves the position on; a
``<`` may start a tag where tags are allowed. A completed opening tag pushes an open span, a closing
tag removes the most recent open span of its category (LIFO per category, as ``utils.tagging`` and
``utils.pred_to_offset`` read them). Where a note byte is also a tag byte (the note contains ``<``)
both readings are kept: the constraint holds a small set of states, advanced together.

Guards (an under-trained model escapes into tags wherever unsure; a probe on the demo Model 1 opened
tags forever at one position):

* tags only between characters (never inside a multi-byte UTF-8 character); between ``\\r`` and ``\\n``
  is allowed, it is a character boundary;
* no reopening a category already opened at the current position (no duplicate spans; the price: two
  spans of one category that start at the same character cannot both be written; none among the 55,376
  spans of the synthetic corpus, unknown for MedDec);
* at most ``max_tags_per_position`` openings per position (default 2: the documented multi-label case
  is two categories starting together, e.g. a drug decision and its treatment goal; the synthetic
  corpus, built to mimic it, never starts more than two spans at one character (1,620 of 53,756 start
  positions have two); each extra allowance multiplies the escape routes of an unsure model);
* no span without a visible character: a tag closes only when a non-whitespace character was written
  since it opened (``pred_to_offset`` drops empty and whitespace-only spans), and a tag opens only
  where a non-whitespace character is still ahead (otherwise it could never close);
* optionally at most ``max_open`` spans open at once;
* optionally (``word_boundaries``) no tag between two alphanumeric characters: the official scorer widens a
  span edge that falls inside a word to the whole word, so such a tag can never score better than one at
  the word's edge, while a model unsure of the text escapes into tags mid-word and loses its context;
* optionally at most ``max_span_chars`` non-whitespace characters in a span: the note cannot go on past
  that while the span is open, so it must close (an unsure model otherwise leaves a wrong span open to the
  end of the note, where it is closed by force and costs every token on the way); nothing opens once the
  oldest open span is full, so every span still open holds a visible character and can close;
* optionally (``allow_unclosed``) the end of sequence once the note is written even with spans open: the
  closing tags after the last character are then the model's choice, not forced, and a span it leaves
  open is an unclosed tag, which ``--unclosed`` handles as in any output (dropped by default, as
  ``utils/pred_to_offset.py`` drops them). Without it every span an unsure model opened and never closed
  is closed by force at the end of the note and covers the rest of it;
* optionally (``text_mass``) a tag must beat the model's wish to write TEXT, not its belief in the note's exact
  next token: the probability of every text the constraint forbids (a word the model expected instead of
  the note's, an early end) is credited to the note's continuation, tags and the end of sequence keep their
  own (:func:`credit_text_mass`). Plain masking renormalises over the allowed tokens, so wherever a model
  is unsure of the next word (a drug name it could not guess) a tag of small probability wins: the escape
  above. With the credit, a tag is written where the model puts more probability on that tag than on
  writing any text at all.

Every state the machine allows can be completed (the note can always go on; every open span can close
once its visible character is written; opening needs one ahead), so with a tokenizer that has all 256
single-byte tokens (every byte-level BPE does) decoding never reaches a dead end.

Cost: allowed tokens are found by walking the trie together with the state machine, so a step costs
the longest token that fits (times the few tag spellings at a tag boundary), never a scan of the
vocabulary; advancing is O(token length). Known limit: a note that itself contains one of the exact tag
strings (never seen in MedDec) cannot be told apart from a tag by any reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from utils.categories import TAGS

DEFAULT_MAX_TAGS_PER_POSITION = 2
_IDS = -1  # key under which a trie node keeps the ids of the tokens that end there
_LT = ord("<")

# A state: (pos, tag_node, tag_mask, opens, here); tag_node 0 = not inside a tag, tag_mask = the tags
# that may still be completed (fixed when the tag started), opens = ((category, pos), ...) in opening
# order, here = bitmask of categories opened at pos.
State = tuple[int, int, int, tuple[tuple[int, int], ...], int]


class CopyConstraintError(ValueError):
    """A token the constraint does not allow (a backend bug: allowed tokens are masked in)."""


@dataclass(frozen=True)
class CopyGuards:
    """Limits on tags (see the module docstring)."""

    max_tags_per_position: int = DEFAULT_MAX_TAGS_PER_POSITION
    max_open: int | None = None
    word_boundaries: bool = False
    text_mass: bool = False
    max_span_chars: int | None = None
    allow_unclosed: bool = False

    def __post_init__(self) -> None:
        if self.max_tags_per_position < 1:
            raise ValueError(f"max_tags_per_position must be at least 1, got {self.max_tags_per_position}")
        if self.max_open is not None and self.max_open < 1:
            raise ValueError(f"max_open must be at least 1 (or None for no limit), got {self.max_open}")
        if self.max_span_chars is not None and self.max_span_chars < 1:
            raise ValueError(f"max_span_chars must be at least 1 (or None for no limit), got {self.max_span_chars}")


def tag_strings(tags: Sequence[str] = TAGS) -> list[bytes]:
    """Tag index 2c = ``<tag_c>``, 2c + 1 = ``</tag_c>`` (c = position in ``tags``)."""
    return [s.encode("utf-8") for name in tags for s in (f"<{name}>", f"</{name}>")]


def byte_level_token_bytes(tokenizer) -> list[bytes | None]:
    """Every token id's exact bytes for a byte-level BPE tokenizer (Qwen, GPT-2 style); None = never text.

    Regular tokens are mapped back through the byte-level alphabet (a token may hold part of a UTF-8
    character); added non-special tokens (``<think>``, the tiny tokenizer's tags) are their literal text;
    special tokens (end of turn, padding) are not text.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    added = tokenizer.added_tokens_decoder
    ids = list(range(len(tokenizer)))
    out: list[bytes | None] = []
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if token_id in added:
            entry = added[token_id]
            out.append(None if entry.special else entry.content.encode("utf-8"))
        elif token is None:
            out.append(None)
        else:
            try:
                out.append(bytes(byte_of[char] for char in token))
            except KeyError:
                raise ValueError(
                    f"token {token_id} {token!r} is not a byte-level BPE token: copy-constrained decoding needs a "
                    "byte-level tokenizer (Qwen, GPT-2 style)"
                ) from None
    for token_id, entry in added.items():  # an added token must decode to its literal text
        if not entry.special and token_id < len(out) and tokenizer.decode([token_id]) != entry.content:
            raise ValueError(f"added token {token_id} {entry.content!r} decodes to {tokenizer.decode([token_id])!r}")
    return out


class CopyVocabulary:
    """Built once per tokenizer: every text token's bytes in a trie, the tags' prefix trie, the EOS ids.

    Tags are spelled byte by byte through the trie (a real Qwen tokenizer writes ``<drug_decision>`` as
    several tokens, and ``>\n`` or `` <`` cross from a tag into text) unless every tag is one token of its
    own (the tiny tokenizer's added tokens): then tags are ATOMIC, written by their token only, as the
    tokenizer itself would encode any tagged text; ``atomic_tags`` forces either mode.
    """

    def __init__(
        self,
        token_bytes: Sequence[bytes | None],
        eos_ids: Iterable[int],
        tags: Sequence[str] = TAGS,
        atomic_tags: bool | None = None,
    ) -> None:
        self.eos_ids: tuple[int, ...] = tuple(sorted(set(eos_ids)))
        if not self.eos_ids:
            raise ValueError("copy-constrained decoding needs at least one end-of-sequence token id")
        self.token_bytes: list[bytes | None] = [None if i in self.eos_ids else b for i, b in enumerate(token_bytes)]
        self.tags = tuple(tags)
        strings = tag_strings(self.tags)
        index_of = {data: index for index, data in enumerate(strings)}
        single = {t: index_of[data] for t, data in enumerate(self.token_bytes) if data in index_of}  # tag = one token
        if atomic_tags is None:
            atomic_tags = len(set(single.values())) == len(strings)
        elif atomic_tags and len(set(single.values())) != len(strings):
            missing = [data.decode() for index, data in enumerate(strings) if index not in single.values()]
            raise ValueError(f"atomic tags need every tag as one token; none for {', '.join(missing)}")
        self.atomic_tags = atomic_tags
        # atomic: token -> tag index and tag index -> (first) token; these tokens never write note text
        self.token_tag: dict[int, int] = single if atomic_tags else {}
        self.tag_token: list[int] = [min(t for t, i in single.items() if i == index) for index in range(len(strings))] if atomic_tags else []
        self.root: dict = {}
        for token_id, data in enumerate(self.token_bytes):
            if not data or token_id in self.token_tag:
                continue
            node = self.root
            for byte in data:
                node = node.setdefault(byte, {})
            node[_IDS] = node.get(_IDS, ()) + (token_id,)
        missing = [b for b in range(256) if _IDS not in self.root.get(b, {})]
        if missing:
            raise ValueError(
                f"no single-byte token for {len(missing)} byte value(s) (e.g. {missing[0]:#04x}): decoding could reach "
                "text no token can write"
            )
        self._build_tag_trie(strings)

    @classmethod
    def from_tokenizer(cls, tokenizer, eos_ids: Iterable[int] | None = None, atomic_tags: bool | None = None) -> "CopyVocabulary":
        """From a byte-level BPE tokenizer (transformers); EOS defaults to the tokenizer's eos token."""
        if eos_ids is None:
            eos_ids = [tokenizer.eos_token_id]
        return cls(byte_level_token_bytes(tokenizer), eos_ids, atomic_tags=atomic_tags)

    def _build_tag_trie(self, strings: list[bytes]) -> None:
        """Node 0 is "not inside a tag"; node 1 is "typed ``<``" (every tag starts with it)."""
        if any(not s.startswith(b"<") or not s.endswith(b">") or b">" in s[:-1] for s in strings):
            raise ValueError("tags must look like <name> and </name>")
        self._tag_children: list[dict[int, int]] = [{}, {}]
        self._tag_reach: list[int] = [0, 0]
        self._tag_at: list[int] = [-1, -1]
        for index, data in enumerate(strings):
            node = 1
            self._tag_reach[1] |= 1 << index
            for byte in data[1:]:
                child = self._tag_children[node].get(byte)
                if child is None:
                    child = len(self._tag_children)
                    self._tag_children[node][byte] = child
                    self._tag_children.append({})
                    self._tag_reach.append(0)
                    self._tag_at.append(-1)
                node = child
                self._tag_reach[node] |= 1 << index
            self._tag_at[node] = index
        n_categories = len(strings) // 2
        self._open_all = sum(1 << (2 * c) for c in range(n_categories))
        self._open_bits = [sum(1 << (2 * c) for c in range(n_categories) if here >> c & 1) for here in range(1 << n_categories)]
        self._popcount = [bin(here).count("1") for here in range(1 << n_categories)]

    def start(self, note: str, guards: CopyGuards = CopyGuards()) -> "CopyConstraint":
        """A fresh constraint for one request."""
        return CopyConstraint(self, note, guards)

    def text(self, token_ids: Iterable[int]) -> str:
        """The exact text of generated tokens (EOS and special tokens write nothing)."""
        return b"".join(self.token_bytes[t] or b"" for t in token_ids).decode("utf-8", errors="replace")


class CopyConstraint:
    """One request: which tokens may come next, given the tokens generated so far."""

    def __init__(self, vocabulary: CopyVocabulary, note: str, guards: CopyGuards = CopyGuards()) -> None:
        self.vocabulary = vocabulary
        self.guards = guards
        self.note = note.encode("utf-8")
        self._n = len(self.note)
        # boundary[p]: a tag may sit at byte p: a character starts there (or p is the end), and with the
        # word guard not between two alphanumeric characters; visible[p]: non-whitespace characters
        # starting before byte p (read at boundaries only).
        self._boundary = bytearray(self._n + 1)
        self._visible = [0] * (self._n + 1)
        self._counts = bytearray(self._n + 1)  # 1 where a non-whitespace character starts (max_span_chars)
        position = count = 0
        previous = ""
        for char in note:
            self._boundary[position] = not (guards.word_boundaries and previous.isalnum() and char.isalnum())
            previous = char
            self._visible[position] = count
            count += not char.isspace()
            self._counts[position] = not char.isspace()
            code = ord(char)
            position += 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
        self._boundary[self._n] = 1
        self._visible[self._n] = count
        self._states: list[State] = [(0, 0, 0, (), 0)]
        self._allowed: list[int] | None = None
        self.finished = False  # EOS was generated
        self.consumed = 0  # tokens advanced over

    # ------------------------------------------------------------------------------------- reading

    @property
    def complete(self) -> bool:
        """The whole note is written and no span is open (or ``allow_unclosed``): EOS is allowed."""
        unclosed = self.guards.allow_unclosed
        return any(s[0] == self._n and s[1] == 0 and (unclosed or not s[3]) for s in self._states)

    @property
    def position(self) -> int:
        """Note bytes written so far (the furthest reading)."""
        return max(s[0] for s in self._states)

    def allowed(self) -> list[int]:
        """Token ids allowed next (EOS ids only when complete); empty once finished."""
        if self.finished:
            return []
        if self._allowed is None:
            found = self._walk()
            if self.complete:
                found.update(self.vocabulary.eos_ids)
            if not found:  # cannot happen with all single-byte tokens present: a bug, not a model error
                raise RuntimeError(f"copy constraint reached a dead end at note byte {self.position}")
            self._allowed = sorted(found)
        return self._allowed

    def text_tokens(self) -> list[int]:
        """The allowed tokens that only write note text (no tag, no EOS): the continuation ``text_mass`` credits."""
        if self.finished:
            return []
        vocabulary, note, n = self.vocabulary, self.note, self._n
        found: set[int] = set()
        for pos, opens in {(s[0], s[3]) for s in self._states if s[1] == 0}:
            node = vocabulary.root
            while pos < n and not self._span_full(pos, opens):
                node = node.get(note[pos])
                if node is None:
                    break
                found.update(node.get(_IDS, ()))
                pos += 1
        return sorted(found)

    def _span_full(self, pos: int, opens: tuple[tuple[int, int], ...]) -> bool:
        """max_span_chars: the note byte at ``pos`` starts a visible character that the oldest open span has no room for.

        Only where a tag may sit (a word the word guard keeps whole is finished first), so the span can close here.
        """
        limit = self.guards.max_span_chars
        return (limit is not None and bool(opens) and bool(self._counts[pos]) and bool(self._boundary[pos])
                and self._visible[pos] - self._visible[opens[0][1]] >= limit)

    # ----------------------------------------------------------------------------------- advancing

    def advance(self, token_id: int) -> None:
        """Take one generated token; raises CopyConstraintError if it is not allowed."""
        if self.finished:
            raise CopyConstraintError(f"token {token_id} after the end of sequence")
        vocabulary = self.vocabulary
        if token_id in vocabulary.eos_ids:
            if not self.complete:
                raise CopyConstraintError(f"end of sequence at note byte {self.position} of {self._n} with spans open or text left")
            self.finished = True
        elif token_id in vocabulary.token_tag:
            tag = vocabulary.token_tag[token_id]
            states = [self._after_tag(tag, pos, opens, here) for pos, _, _, opens, here in self._states
                      if self._tag_mask(pos, opens, here) >> tag & 1]
            if not states:
                raise CopyConstraintError(f"tag token {token_id} is not allowed at note byte {self.position}")
            self._states = list(dict.fromkeys(states))
        else:
            data = vocabulary.token_bytes[token_id] if 0 <= token_id < len(vocabulary.token_bytes) else None
            if not data:
                raise CopyConstraintError(f"token {token_id} writes no text and is not an end of sequence")
            states = self._states
            for byte in data:
                following: dict[State, None] = {}
                for state in states:
                    for nxt in self._step(state, byte):
                        following[nxt] = None
                if not following:
                    raise CopyConstraintError(
                        f"token {token_id} {data!r} does not continue the note at byte {self.position}")
                states = list(following)
            self._states = states
        self._allowed = None
        self.consumed += 1

    def update(self, token_ids: Sequence[int]) -> None:
        """Advance over the tokens of ``token_ids`` (all generated so far) not taken yet: O(new tokens)."""
        for token_id in token_ids[self.consumed :]:
            self.advance(token_id)

    # ------------------------------------------------------------------------------- the machine

    def _tag_mask(self, pos: int, opens: tuple[tuple[int, int], ...], here: int) -> int:
        """The tags that may start at ``pos`` (bit 2c: open category c, bit 2c + 1: close it)."""
        if not self._boundary[pos]:
            return 0
        vocabulary, guards, visible = self.vocabulary, self.guards, self._visible
        mask = 0
        if (vocabulary._popcount[here] < guards.max_tags_per_position
                and (guards.max_open is None or len(opens) < guards.max_open)
                and visible[pos] < visible[self._n]
                and not (guards.max_span_chars is not None and opens
                         and visible[pos] - visible[opens[0][1]] >= guards.max_span_chars)):
            mask = vocabulary._open_all & ~vocabulary._open_bits[here]
        seen = 0
        for category, opened in reversed(opens):  # the most recent open span of each category closes
            bit = 1 << category
            if not seen & bit:
                seen |= bit
                if visible[opened] < visible[pos]:
                    mask |= 2 << (2 * category)
        return mask

    @staticmethod
    def _after_tag(tag: int, pos: int, opens: tuple[tuple[int, int], ...], here: int) -> State:
        category = tag >> 1
        if not tag & 1:
            return (pos, 0, 0, opens + ((category, pos),), here | (1 << category))
        for index in range(len(opens) - 1, -1, -1):
            if opens[index][0] == category:
                return (pos, 0, 0, opens[:index] + opens[index + 1 :], here)
        raise AssertionError("closing tag without an open span")  # excluded by _tag_mask

    def _step(self, state: State, byte: int) -> list[State]:
        """The states after reading one byte (none, one, or two where a note ``<`` could start a tag)."""
        pos, tag_node, tag_mask, opens, here = state
        vocabulary = self.vocabulary
        if tag_node:
            child = vocabulary._tag_children[tag_node].get(byte)
            if child is None or not vocabulary._tag_reach[child] & tag_mask:
                return []
            tag = vocabulary._tag_at[child]
            return [self._after_tag(tag, pos, opens, here) if tag >= 0 else (pos, child, tag_mask, opens, here)]
        out: list[State] = []
        if pos < self._n and self.note[pos] == byte and not self._span_full(pos, opens):
            out.append((pos + 1, 0, 0, opens, 0))
        if byte == _LT and not vocabulary.atomic_tags:
            mask = self._tag_mask(pos, opens, here)
            if mask:
                out.append((pos, 1, mask, opens, here))
        return out

    def _walk(self) -> set[int]:
        """Tokens whose every byte keeps some state alive: the trie and the machine walked together."""
        vocabulary = self.vocabulary
        note, n = self.note, self._n
        tag_children, tag_reach, tag_at = vocabulary._tag_children, vocabulary._tag_reach, vocabulary._tag_at
        found: set[int] = set()
        stack = [(vocabulary.root, state) for state in self._states]
        if vocabulary.atomic_tags:  # tags are whole tokens: only from the root, never inside a text token
            tag_token = vocabulary.tag_token
            for pos, _, _, opens, here in self._states:
                mask = self._tag_mask(pos, opens, here)
                found.update(tag_token[tag] for tag in range(len(tag_token)) if mask >> tag & 1)
        while stack:
            node, (pos, tag_node, tag_mask, opens, here) = stack.pop()
            if tag_node:
                for byte, tchild in tag_children[tag_node].items():
                    child = node.get(byte)
                    if child is None or not tag_reach[tchild] & tag_mask:
                        continue
                    ids = child.get(_IDS)
                    if ids:
                        found.update(ids)
                    tag = tag_at[tchild]
                    nxt = self._after_tag(tag, pos, opens, here) if tag >= 0 else (pos, tchild, tag_mask, opens, here)
                    stack.append((child, nxt))
                continue
            if pos < n and not self._span_full(pos, opens):
                child = node.get(note[pos])
                if child is not None:
                    ids = child.get(_IDS)
                    if ids:
                        found.update(ids)
                    stack.append((child, (pos + 1, 0, 0, opens, 0)))
            child = None if vocabulary.atomic_tags else node.get(_LT)
            if child is not None:
                mask = self._tag_mask(pos, opens, here)
                if mask:
                    ids = child.get(_IDS)
                    if ids:
                        found.update(ids)
                    stack.append((child, (pos, 1, mask, opens, here)))
        return found


def credit_text_mass(logits, allowed: Sequence[Sequence[int]], text: Sequence[Sequence[int]]):
    """Log-probabilities over each row's allowed tokens, the forbidden tokens' probability moved to its text ones.

    ``logits``: a rows x vocabulary torch tensor; ``allowed[r]``: row r's allowed token ids; ``text[r]``: those
    of them that only write note text. Each row: allowed tags and EOS keep their unconstrained probability p;
    the text tokens share ``1 - p(allowed tags and EOS)`` in proportion to their own probabilities; every
    other token is ``-inf``. A row without text tokens (inside a partly written tag, at the end of the note)
    is plain masking, renormalised. Rows sum to 1 (softmax leaves them unchanged), so the entropy read from
    them is of this distribution. Cost: one log-sum-exp over the rows; the rest is arithmetic on the few
    allowed tokens (in Python: cheaper than a dozen tensor operations at a decoding step).
    """
    import math

    import torch

    device = logits.device
    rows = [r for r, ids in enumerate(allowed) for _ in ids]
    cols = [t for ids in allowed for t in ids]
    out = torch.full_like(logits, float("-inf"))
    if not cols:
        return out
    index = (torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device))
    log_z = logits.logsumexp(-1).tolist()
    picked = logits[index].tolist()
    values: list[float] = []
    start = 0
    for r, ids in enumerate(allowed):
        logp = [v - log_z[r] for v in picked[start : start + len(ids)]]
        start += len(ids)
        chosen = set(text[r])
        is_text = [t in chosen for t in ids]
        if any(is_text):
            text_lse = _log_sum_exp([l for l, x in zip(logp, is_text) if x])
            other = sum(math.exp(l) for l, x in zip(logp, is_text) if not x)
            rest = math.log(max(1.0 - other, 1e-300))
            values.extend(l - text_lse + rest if x else l for l, x in zip(logp, is_text))
        elif logp:
            total = _log_sum_exp(logp)
            values.extend(l - total for l in logp)
    out[index] = torch.tensor(values, dtype=logits.dtype, device=device)
    return out


def _log_sum_exp(values: Sequence[float]) -> float:
    import math

    top = max(values)
    if top == float("-inf"):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))
