"""The official MedExACT 2026 score, re-implemented to give identical numbers, fast enough to tune on.

Reference: ``evaluate.py`` of github.com/CLU-UML/MedDec at commit f4374cd (SPEC section 2). Every number
here (span precision/recall/F1 with tp/fp/fn, token F1, base, each subgroup, worst, final) equals the
official one bit for bit. What that takes, and why the code looks the way it does:

- Texts are read as the official script reads them: ``open(path, 'r')``, i.e. with universal-newline
  translation (CRLF and lone CR become LF) in the platform's default encoding. That differs from
  :func:`utils.meddec.corpus.read_raw_text` (exact bytes, used for training and tagging): gold offsets of a
  CRLF file therefore point to slightly different characters when scored, exactly as officially.
- A span is "refined" (widened to whole words, leading/trailing punctuation tokens dropped, see
  :func:`refine_span`) and compared as (note, category, lowercased refined text); duplicates collapse.
- Token labels: NLTK ``word_tokenize`` over the note, tokens located with a forward ``str.find``;
  each token takes the category of the FIRST overlapping annotation in list order.
- Float sums follow the official summation order, which is the iteration order of Python sets
  (``set(gold) | set(pred)`` for the token mean, one set per subgroup, and the set of labels per note).
  String hashing is randomised per process, so the last bits of the official token F1 depend on
  ``PYTHONHASHSEED``; in the same process (or under the same fixed seed) our numbers are identical.

Speed: :class:`Scorer` tokenises and refines the gold once; prediction refinements are cached per
(note, start, end); token labels are painted with numpy and per-note F1 comes from one ``bincount``.
"""

from __future__ import annotations

import os
import itertools
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from utils.categories import ID_TO_NAME, ID_TO_TAG, VALID_CATEGORY_IDS, parse_gold_category
from utils.meddec.corpus import Annotation, Demographics, read_gold_file, read_stats
from utils.fileio import InputError

OFFICIAL_REFERENCE = "github.com/CLU-UML/MedDec evaluate.py at commit f4374cd"

#: Subgroups of the shared-task score, in the official order (dimension -> group values).
SUBGROUPS: dict[str, tuple[str, ...]] = {
    "sex": ("Female", "Male"),
    "race": ("White", "African American", "Hispanic", "Asian", "Other"),
    "language": ("English", "Non-English"),
}

N_LABELS = 10  # label 0 (no decision) and categories 1-9

# ---------------------------------------------------------------------------------------------------------
# Reading inputs the official way


def read_official_text(path: str | os.PathLike[str]) -> str:
    """A note text as the official evaluator sees it: default encoding, universal newlines (CRLF -> LF)."""
    with open(path, "r", encoding=None, newline=None) as handle:  # noqa: PLW1514 - deliberately the official way
        return handle.read()


def raw_text_path(raw_text_dir: str | os.PathLike[str], note_id: str) -> Path:
    return Path(raw_text_dir) / f"{note_id}.txt"


def load_official_texts(raw_text_dir: str | os.PathLike[str], note_ids: Iterable[str]) -> dict[str, str]:
    """Texts of the given notes, read the official way; a missing file is a one-line InputError."""
    texts = {}
    for note_id in note_ids:
        path = raw_text_path(raw_text_dir, note_id)
        if not path.is_file():
            raise InputError(path, "", f"raw text of note {note_id} not found (every scored note needs one)")
        texts[note_id] = read_official_text(path)
    return texts


def read_official_split(path: str | os.PathLike[str]) -> set[str]:
    """Split ids as the official script reads them: each line stripped, nothing else (no '_' stripping)."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return {line.strip() for line in handle}
    except FileNotFoundError:
        raise InputError(path, "", "split file not found") from None


def read_gold_dir_official_order(gold_dir: str | os.PathLike[str]) -> dict[str, list[Annotation]]:
    """All ``*.json`` gold files in ``os.listdir`` order, later files overriding earlier ones.

    The order is kept because the official script builds its note sets from this dict; set iteration
    order (and with it the last bits of the token F1 sum) can depend on insertion order.
    """
    gold_dir = Path(gold_dir)
    if not gold_dir.is_dir():
        raise InputError(gold_dir, "", "gold directory not found")
    gold: dict[str, list[Annotation]] = {}
    for name in os.listdir(gold_dir):
        if name.endswith(".json"):
            gold.update(read_gold_file(gold_dir / name))
    return gold


def official_note_key(file_name: str) -> tuple[int, int, int] | None:
    """(SUBJECT_ID, HADM_ID, ROW_ID) of a note id as the official subgroup code parses it.

    Looser than :func:`utils.meddec.corpus.parse_note_id` on purpose: base name, extension dropped, split on
    '_', the first three parts read with int() (the ROW part up to a '-annotator' suffix).
    """
    base = os.path.splitext(os.path.basename(str(file_name)))[0]
    parts = base.split("_")
    if len(parts) < 3:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2].split("-")[0])
    except (TypeError, ValueError):
        return None


def normalize_sex(gender: object) -> str:
    value = str(gender or "").strip().upper()
    if value in ("F", "FEMALE"):
        return "Female"
    if value in ("M", "MALE"):
        return "Male"
    return "Other"  # not a scored group


def normalize_language(language: object) -> str:
    return "English" if str(language or "").strip().upper() in ("ENGL", "ENGLISH") else "Non-English"


def normalize_race(ethnicity: object) -> str:
    value = str(ethnicity or "").strip().upper()
    if value == "W" or "WHITE" in value:
        return "White"
    if value == "AA" or "BLACK" in value or "AFRICAN" in value:
        return "African American"
    if value.startswith("HISP"):
        return "Hispanic"
    if "ASIAN" in value:
        return "Asian"
    return "Other"


def demographic_groups(demographics: Demographics) -> dict[str, str]:
    """The subgroup of a note in each dimension."""
    return {
        "sex": normalize_sex(demographics.gender),
        "race": normalize_race(demographics.ethnicity),
        "language": normalize_language(demographics.language),
    }


# ---------------------------------------------------------------------------------------------------------
# Span refinement


def _treebank():
    from nltk.tokenize import TreebankWordTokenizer

    global _TREEBANK
    if _TREEBANK is None:
        _TREEBANK = TreebankWordTokenizer()
    return _TREEBANK


_TREEBANK = None


def _is_content(word: str) -> bool:
    """A token that carries text: any alphanumeric character, or part of a MIMIC ``[** **]`` placeholder."""
    return "**" in word or any(ch.isalnum() for ch in word)


def _no_quote_rewriting(piece: str) -> bool:
    """Treebank only rewrites quotes; without them every token is a verbatim substring, found in order."""
    return '"' not in piece and "''" not in piece and "`" not in piece


def _predictable_content(piece: str) -> tuple[int, int] | None:
    """Where Treebank's content tokens start and end in ``piece``, when that is certain without tokenising.

    Without quotes every token is a verbatim substring found in order, tokens never span whitespace, and
    a token holding an alphanumeric character is content. So with an alphanumeric first non-space
    character, content starts there; it ends at the last non-space character when that is alphanumeric,
    or one before when that is a single '.', ',', ';' or ':' after an alphanumeric (Treebank always
    splits such a final mark off). Anything else (about one span in seven) goes through Treebank.
    """
    if not _no_quote_rewriting(piece):
        return None
    core = piece.strip()
    first = len(piece) - len(piece.lstrip())
    if not core[0].isalnum():
        return None
    end = first + len(core)
    if core[-1].isalnum():
        return first, end
    if core[-1] in ".,;:" and len(core) >= 2 and core[-2].isalnum():
        return first, end - 1
    return None


def refine_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Official span refinement; (new_start, new_end) or None when nothing of the span is left.

    1. widen each edge that cuts an alphanumeric run to the whole run;
    2. tokenise the span alone with Treebank's span tokenizer and drop leading/trailing tokens without
       content, keeping a '[' before a '**' token and a ']' after one.
    Offsets are used as Python uses them: a negative start slices from the end, and the returned
    offsets are ``start`` plus token offsets (so they may be negative, as officially).
    """
    if not text:
        return None
    n = len(text)
    while 0 < start < n and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    while 0 < end < n and text[end - 1].isalnum() and text[end].isalnum():
        end += 1
    piece = text[start:end]
    if not piece.strip():
        return None
    shortcut = _predictable_content(piece)
    if shortcut is not None:
        return start + shortcut[0], start + shortcut[1]
    offsets = list(_treebank().span_tokenize(piece))
    words = [piece[a:b] for a, b in offsets]
    first = 0
    while first < len(words) and not _is_content(words[first]):
        if words[first] == "[" and first + 1 < len(words) and "**" in words[first + 1]:
            break
        first += 1
    last = len(words)  # exclusive
    while last > first and not _is_content(words[last - 1]):
        if words[last - 1] == "]" and last - 2 >= 0 and "**" in words[last - 2]:
            break
        last -= 1
    if first >= last:
        return None
    return start + offsets[first][0], start + offsets[last - 1][1]


def refined_text(text: str, start: int, end: int) -> str | None:
    """The lowercased refined text that identifies a span, None when the span refines to nothing."""
    refined = refine_span(text, start, end)
    if refined is None:
        return None
    return text[refined[0]:refined[1]].lower()


# ---------------------------------------------------------------------------------------------------------
# Tokens and token labels


def official_tokens(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token (starts, ends): ``word_tokenize`` then a forward ``str.find``; tokens not found are lost."""
    from nltk.tokenize import word_tokenize

    starts: list[int] = []
    ends: list[int] = []
    position = 0
    for token in word_tokenize(text):
        index = text.find(token, position)
        if index != -1:
            position = index + len(token)
            starts.append(index)
            ends.append(position)
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def token_labels(starts: np.ndarray, ends: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Label per token: the category of the first span (in row order) that overlaps it, 0 if none.

    ``spans`` is an int array of rows (start, end, category) already restricted to categories 1-9.
    Tokens are sorted and disjoint, so the tokens a span overlaps (token.start < end and token.end >
    start) are one index range found by binary search; the first span wins via ``np.minimum.at``.
    """
    n_tokens = len(starts)
    labels = np.zeros(n_tokens, dtype=np.int64)
    if n_tokens == 0 or len(spans) == 0:
        return labels
    lo = np.searchsorted(ends, spans[:, 0], side="right")
    hi = np.searchsorted(starts, spans[:, 1], side="left")
    lengths = np.maximum(hi - lo, 0)
    total = int(lengths.sum())
    if total == 0:
        return labels
    owner = np.repeat(np.arange(len(spans)), lengths)
    first_of_owner = np.cumsum(lengths) - lengths
    positions = np.arange(total) - np.repeat(first_of_owner - lo, lengths)
    winner = np.full(n_tokens, len(spans), dtype=np.int64)
    np.minimum.at(winner, positions, owner)
    categories = np.append(spans[:, 2], 0)
    return categories[winner]


def _first_occurrence_order(labels: np.ndarray) -> list[int]:
    """Distinct labels in order of first occurrence."""
    values, first_index = np.unique(labels, return_index=True)
    return values[np.argsort(first_index)].tolist()


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 with the official expressions (0.0 on empty denominators)."""
    precision = tp / (tp + fp) if (tp + fp) > 0 else 0.0
    recall = tp / (tp + fn) if (tp + fn) > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) > 0 else 0.0
    return precision, recall, f1


def confusion(gold_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """10x10 token confusion matrix (rows gold, columns prediction)."""
    return np.bincount(gold_labels * N_LABELS + pred_labels, minlength=N_LABELS * N_LABELS).reshape(N_LABELS, N_LABELS)


def macro_token_f1(matrix: np.ndarray, label_order: Sequence[int]) -> float:
    """Official per-note token F1 from a confusion matrix.

    Macro mean over the labels present in gold or prediction, summed in the iteration order of
    ``set(gold_labels + pred_labels)`` (``label_order`` is that list's first-occurrence order, which
    builds the same set); 1.0 when no note token has a label on either side.
    """
    labels = set(label_order)
    labels.discard(0)
    if not labels:
        return 1.0
    gold_count = matrix.sum(axis=1).tolist()
    pred_count = matrix.sum(axis=0).tolist()
    diagonal = matrix.diagonal().tolist()
    scores = []
    for label in labels:
        tp = diagonal[label]
        scores.append(prf(tp, pred_count[label] - tp, gold_count[label] - tp)[2])
    return sum(scores) / len(scores)


def label_order_of(
    gold_order: Sequence[int], pred_labels: np.ndarray, pred_present: Iterable[int] | None = None
) -> list[int]:
    """First-occurrence order of ``gold_labels + pred_labels`` given the gold part's order.

    ``pred_present`` (the labels occurring in ``pred_labels``, if already known) skips the search when
    the prediction brings at most one label that gold lacks, which is the common case.
    """
    seen = set(gold_order)
    if pred_present is None:
        pred_present = np.unique(pred_labels).tolist()
    new = [label for label in pred_present if label not in seen]
    if len(new) > 1:
        new = [label for label in _first_occurrence_order(pred_labels) if label not in seen]
    return [*gold_order, *new]


# ---------------------------------------------------------------------------------------------------------
# Inputs: gold annotations and predictions in any of their usual shapes


def _gold_rows(annotations: Sequence[Any]) -> list[tuple[int, int, int]]:
    """(start, end, category 0-9) per gold annotation, in list order."""
    rows = []
    for ann in annotations:
        if isinstance(ann, Mapping):
            category = parse_gold_category(ann.get("category", 0))
            rows.append((int(ann.get("start_offset", 0)), int(ann.get("end_offset", 0)), category))
        else:
            rows.append((int(ann.start), int(ann.end), int(ann.category)))
    return rows


def _prediction_rows(spans: Sequence[Any]) -> Sequence[tuple[int, int, int]]:
    """(start, end, category) per prediction; Span/tuples as they are, dicts read as officially (int())."""
    if len(spans) == 0 or isinstance(spans[0], tuple):
        return spans  # Span NamedTuples or (start, end, category) tuples
    rows = []
    for span in spans:
        if isinstance(span, Mapping):
            start, end = int(span.get("start_offset", 0)), int(span.get("end_offset", 0))
            rows.append((start, end, int(span.get("category", 0))))
        else:
            start, end, category = span
            rows.append((int(start), int(end), int(category)))
    return rows


_OFFSET_LIMIT = 2**62  # far beyond any text: clipping offsets there keeps every overlap test unchanged


def _valid_array(rows: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Rows of categories 1-9 as an (n, 3) int64 array, order kept (others never label a token)."""
    if len(rows) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    try:
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=3 * len(rows))
    except OverflowError:  # absurd offsets beyond int64: clip them (category ids that large are invalid anyway)
        values = itertools.chain.from_iterable(rows)
        flat = np.fromiter((max(-_OFFSET_LIMIT, min(_OFFSET_LIMIT, int(v))) for v in values),
                           dtype=np.int64, count=3 * len(rows))
    array = flat.reshape(-1, 3)
    categories = array[:, 2]
    return array[(categories >= 1) & (categories <= 9)]


# ---------------------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class SpanScore:
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> "SpanScore":
        return cls(*prf(tp, fp, fn), tp, fp, fn)


@dataclass(frozen=True)
class SubgroupScore:
    n_files: int
    n_spans: int
    span_f1: float
    token_f1: float
    base_score: float


@dataclass(frozen=True)
class CategoryScore:
    """Per-category diagnostics (not part of the official score).

    Span P/R/F1 as the official span F1 restricted to one category; token F1 pooled over the tokens
    of all scored notes (micro), with the same first-overlap token labels.
    """

    span: SpanScore
    token_precision: float
    token_recall: float
    token_f1: float
    token_tp: int
    token_fp: int
    token_fn: int


@dataclass
class ScoreReport:
    """Everything the official evaluator reports, plus a per-category table."""

    span: SpanScore
    token_f1: float
    base: float
    worst: float | None = None
    final: float | None = None
    subgroups: dict[str, dict[str, SubgroupScore]] | None = None
    per_category: dict[int, CategoryScore] = field(default_factory=dict)
    gold_files: int = 0
    prediction_files: int = 0
    files_with_text: int = 0

    def to_official_dict(self) -> dict[str, Any]:
        """The official ``--output`` JSON structure (tp/fp/fn and per_category are extra keys)."""
        result: dict[str, Any] = {
            "span_f1": {"precision": self.span.precision, "recall": self.span.recall, "f1": self.span.f1,
                        "tp": self.span.tp, "fp": self.span.fp, "fn": self.span.fn},
            "token_f1": self.token_f1,
            "statistics": {"gold_files": self.gold_files, "prediction_files": self.prediction_files,
                           "files_with_text": self.files_with_text},
        }
        if self.final is not None:
            result["shared_task"] = {
                "base_score": self.base,
                "worst_group_score": self.worst,
                "final_score": self.final,
                "subgroups": {dim: {g: asdict(s) for g, s in groups.items()}
                              for dim, groups in (self.subgroups or {}).items()},
            }
        result["per_category"] = {
            str(cat): {"name": ID_TO_NAME[cat], "tag": ID_TO_TAG[cat], "span": asdict(score.span),
                       **{k: v for k, v in asdict(score).items() if k != "span"}}
            for cat, score in self.per_category.items()
        }
        return result

    def format_official(self) -> str:
        """The report exactly as the official script prints it."""
        lines = ["=" * 50, "MedDec Shared Task Evaluation Results", "=" * 50,
                 f"\nSpan F1:\n  {self.span.f1:.4f}", f"\nToken F1:\n  {self.token_f1:.4f}"]
        if self.final is not None:
            lines += ["\nShared-task final scoring (uses stats.csv):",
                      f"  Base score:        {self.base:.4f}",
                      f"  Worst group score: {self.worst:.4f}",
                      f"  Final score:       {self.final:.4f}",
                      "\nWorst-group candidates (base_score by subgroup):"]
            for dim in SUBGROUPS:
                for group, m in (self.subgroups or {}).get(dim, {}).items():
                    lines.append(f"  - {dim:8s} = {group:20s} n={m.n_spans:3d}  base={m.base_score:.4f}  "
                                 f"span_f1={m.span_f1:.4f}  token_f1={m.token_f1:.4f}")
        lines.append("=" * 50)
        return "\n".join(lines)

    def format_per_category(self) -> str:
        """Per-category table: span P/R/F1 (with gold/predicted counts) and pooled token F1."""
        header = (f"{'category':34s} {'gold':>5s} {'pred':>5s} {'span_P':>7s} {'span_R':>7s} {'span_F1':>7s} "
                  f"{'tok_F1':>7s}")
        lines = ["\nPer-category scores (diagnostic; span: official matching per category; token: pooled):", header]
        for cat, score in self.per_category.items():
            s = score.span
            label = f"{cat} {ID_TO_NAME[cat]}"
            lines.append(f"{label:34s} {s.tp + s.fn:5d} {s.tp + s.fp:5d} {s.precision:7.4f} {s.recall:7.4f} "
                         f"{s.f1:7.4f} {score.token_f1:7.4f}")
        return "\n".join(lines)

    def format(self) -> str:
        """The official printed report followed by the per-category table."""
        return self.format_official() + "\n" + self.format_per_category()


# ---------------------------------------------------------------------------------------------------------
# The scorer


_DROPPED = ("dropped",)  # cache value of a span that is out of scope or refines to nothing


class _Note:
    """One note's text, tokens and the refinement cache of spans seen so far."""

    __slots__ = ("text", "starts", "ends", "refined")

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts, self.ends = official_tokens(text) if text else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.refined: dict[tuple[int, int, int], tuple[int, str] | tuple[str]] = {}

    def span_set(self, rows: Sequence[tuple[int, int, int]]) -> set[tuple[int, str]]:
        """The note's set of (category, lowercased refined text) for its spans of categories 1-9."""
        out = set(self.entries(rows))
        out.discard(_DROPPED)
        return out

    def entries(self, rows: Sequence[tuple[int, int, int]]) -> list[tuple[int, str] | tuple[str]]:
        """(category, refined text) per (start, end, category) row, ``_DROPPED`` for rows that do not count.

        Refinements are cached per row, so a span seen before costs one C-level dict lookup (``map``),
        which is what makes re-scoring fast.
        """
        cache = self.refined
        values = list(map(cache.get, rows))
        if None in values:
            for row in rows:
                if row not in cache:
                    cache[row] = self._span_entry(*row)
            values = list(map(cache.get, rows))
        return values

    def _span_entry(self, start: int, end: int, category: int) -> tuple[int, str] | object:
        if category not in VALID_CATEGORY_IDS:
            return _DROPPED
        text = refined_text(self.text, start, end)
        return _DROPPED if text is None else (category, text)

    @property
    def scored(self) -> bool:
        """Whether the note enters the token F1 (official: non-empty text with at least one token)."""
        return len(self.starts) > 0


@dataclass
class _Pass:
    """Per-note intermediate results of one scoring pass."""

    all_files: set[str]
    span_counts: dict[str, tuple[int, int, int]]  # per note: tp, fp, fn of its refined span sets
    token_f1_by_file: dict[str, float]
    n_prediction_files: int
    pred_sets: dict[str, set[tuple[int, str]]] = field(default_factory=dict)  # kept for the full report
    matrices: dict[str, np.ndarray] = field(default_factory=dict)


class Scorer:
    """Official score of many prediction sets against one fixed gold set.

    Build it once (tokenisation and gold refinement happen here), then call :meth:`score` for the full
    report or :meth:`final_score` for the one number an optimiser needs.
    """

    def __init__(
        self,
        gold: Mapping[str, Sequence[Any]],
        texts: Mapping[str, str],
        stats: Mapping[tuple[int, int, int], Demographics] | None = None,
        *,
        split_ids: Iterable[str] | None = None,
        raw_text_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """``gold``: note id -> annotations (utils.meddec.corpus.Annotation, or official JSON dicts), in the order
        the official script would hold them; ``texts``: note id -> text as read by
        :func:`read_official_text` (needed for every gold note and every predicted note; with
        ``raw_text_dir`` the texts of other predicted notes are read from there on demand);
        ``stats``: stats.csv rows (enables worst/final); ``split_ids``: predictions of other notes are
        ignored, as with the official ``--split_file``.
        """
        self.split_ids = None if split_ids is None else set(split_ids)
        self.raw_text_dir = raw_text_dir
        self._texts = dict(texts)
        self._notes: dict[str, _Note] = {}
        self.gold_ids = list(gold)
        self._gold_sets: dict[str, set[tuple[int, str]]] = {}
        self._gold_labels: dict[str, np.ndarray] = {}
        self._gold_order: dict[str, list[int]] = {}
        for note_id, annotations in tqdm(gold.items(), desc="tokenising gold notes", unit="note", leave=False,
                                         disable=len(gold) < 20):
            note = self._note(note_id)
            rows = _gold_rows(annotations)
            self._gold_sets[note_id] = note.span_set(rows)
            if note.scored:
                labels = token_labels(note.starts, note.ends, _valid_array(rows))
                self._gold_labels[note_id] = labels
                self._gold_order[note_id] = _first_occurrence_order(labels)
        self.has_stats = stats is not None
        self._groups: dict[str, dict[str, list[str]]] = {}
        if stats is not None:
            self._groups = self._subgroup_members(stats)

    @classmethod
    def from_files(
        cls,
        gold_dir: str | os.PathLike[str] | None = None,
        raw_text_dir: str | os.PathLike[str] = "raw_text",
        split_file: str | os.PathLike[str] | None = None,
        stats_csv: str | os.PathLike[str] | None = None,
        gold_file: str | os.PathLike[str] | None = None,
        extra_ids: Iterable[str] = (),
    ) -> "Scorer":
        """A scorer over a MedDec download, loaded as the official script loads it.

        ``gold_file`` overrides ``gold_dir``; ``extra_ids`` are predicted notes outside the gold set
        whose texts should be read now (others are read on demand from ``raw_text_dir``).
        """
        if gold_file is not None:
            gold = read_gold_file(gold_file)
        elif gold_dir is not None:
            gold = read_gold_dir_official_order(gold_dir)
        else:
            raise InputError("<arguments>", "", "give gold_dir or gold_file")
        split_ids = read_official_split(split_file) if split_file is not None else None
        extra_ids = list(extra_ids)
        if split_ids is not None:
            gold = {k: v for k, v in gold.items() if k in split_ids}
            extra_ids = [i for i in extra_ids if i in split_ids]
        wanted = list(gold) + [i for i in extra_ids if i not in gold]
        texts = load_official_texts(raw_text_dir, wanted)
        stats = read_stats(stats_csv) if stats_csv is not None else None
        return cls(gold, texts, stats, split_ids=split_ids, raw_text_dir=raw_text_dir)

    def _note(self, note_id: str) -> _Note:
        note = self._notes.get(note_id)
        if note is None:
            text = self._texts.get(note_id)
            if text is None:
                if self.raw_text_dir is None:
                    raise KeyError(f"no text for note {note_id!r}: pass its text to Scorer (officially needed too)")
                text = load_official_texts(self.raw_text_dir, [note_id])[note_id]
                self._texts[note_id] = text
            note = self._notes[note_id] = _Note(text)
        return note

    def _subgroup_members(self, stats: Mapping[tuple[int, int, int], Demographics]) -> dict[str, dict[str, list[str]]]:
        """Gold notes of each non-empty subgroup, each list in the iteration order of the official set."""
        note_groups = {}
        for note_id in self.gold_ids:
            key = official_note_key(note_id)
            if key is not None and key in stats:
                note_groups[note_id] = demographic_groups(stats[key])
        members: dict[str, dict[str, list[str]]] = {}
        for dim, values in SUBGROUPS.items():
            members[dim] = {}
            for value in values:
                files = {note_id for note_id, g in note_groups.items() if g[dim] == value}
                if files:
                    members[dim][value] = list(files)
        return members

    @property
    def note_ids(self) -> list[str]:
        """The gold notes, in the order given."""
        return list(self.gold_ids)

    def text(self, note_id: str) -> str:
        """A note's text as scored (read the official way)."""
        return self._note(note_id).text

    # -- scoring -------------------------------------------------------------------------------------------

    def _run(self, predictions: Mapping[str, Sequence[Any]], full: bool) -> _Pass:
        if self.split_ids is not None:
            predictions = {k: v for k, v in predictions.items() if k in self.split_ids}
        pred_rows = {name: _prediction_rows(spans) for name, spans in predictions.items()}
        pred_sets = {name: self._note(name).span_set(rows) for name, rows in pred_rows.items()}
        all_files = set(self._gold_sets.keys()) | set(predictions.keys())
        no_spans: set = set()
        span_counts = {}
        for name in all_files:
            gold = self._gold_sets.get(name, no_spans)
            pred = pred_sets.get(name, no_spans)
            common = len(gold & pred)
            span_counts[name] = (common, len(pred) - common, len(gold) - common)
        token_f1_by_file: dict[str, float] = {}
        matrices: dict[str, np.ndarray] = {}
        for name in all_files:
            note = self._note(name)
            if not note.scored:
                continue
            gold_labels = self._gold_labels.get(name)
            if gold_labels is None:  # a predicted note outside the gold set: no gold labels
                gold_labels = np.zeros(len(note.starts), dtype=np.int64)
                gold_order = [0]
            else:
                gold_order = self._gold_order[name]
            pred_labels = token_labels(note.starts, note.ends, _valid_array(pred_rows.get(name, ())))
            matrix = confusion(gold_labels, pred_labels)
            pred_present = np.flatnonzero(matrix.sum(axis=0)).tolist()
            token_f1_by_file[name] = macro_token_f1(matrix, label_order_of(gold_order, pred_labels, pred_present))
            if full:
                matrices[name] = matrix
        run = _Pass(all_files, span_counts, token_f1_by_file, len(predictions))
        if full:
            run.pred_sets, run.matrices = pred_sets, matrices
        return run

    @staticmethod
    def _summed_counts(run: _Pass, files: Iterable[str]) -> SpanScore:
        tp = fp = fn = 0
        for name in files:
            a, b, c = run.span_counts[name]
            tp += a
            fp += b
            fn += c
        return SpanScore.from_counts(tp, fp, fn)

    def _subgroups(self, run: _Pass) -> dict[str, dict[str, SubgroupScore]]:
        out: dict[str, dict[str, SubgroupScore]] = {}
        for dim, groups in self._groups.items():
            out[dim] = {}
            for value, files in groups.items():
                span_f1 = self._summed_counts(run, files).f1
                values = [run.token_f1_by_file[name] for name in files if name in run.token_f1_by_file]
                token = sum(values) / len(values) if values else 0.0
                n_spans = sum(len(self._gold_sets[name]) for name in files)
                out[dim][value] = SubgroupScore(len(files), n_spans, span_f1, token, (span_f1 + token) / 2)
        return out

    def _headline(self, run: _Pass) -> tuple[SpanScore, float, float, float | None, float | None, dict | None]:
        span = self._summed_counts(run, run.all_files)
        values = [run.token_f1_by_file[name] for name in run.all_files if name in run.token_f1_by_file]
        token = sum(values) / len(values) if values else 0.0
        base = (span.f1 + token) / 2
        if not self.has_stats:
            return span, token, base, None, None, None
        subgroups = self._subgroups(run)
        bases = [s.base_score for groups in subgroups.values() for s in groups.values()]
        worst = min(bases) if bases else 0.0
        return span, token, base, worst, (base + worst) / 2, subgroups

    def score(self, predictions: Mapping[str, Sequence[Any]]) -> ScoreReport:
        """The full official report (plus per-category diagnostics) for one prediction set."""
        run = self._run(predictions, full=True)
        span, token, base, worst, final, subgroups = self._headline(run)
        return ScoreReport(
            span=span, token_f1=token, base=base, worst=worst, final=final, subgroups=subgroups,
            per_category=self._per_category(run),
            gold_files=len(self.gold_ids), prediction_files=run.n_prediction_files, files_with_text=len(run.all_files),
        )

    def final_score(self, predictions: Mapping[str, Sequence[Any]]) -> float:
        """The shared-task final score (the base score when no stats were given): the tuning objective."""
        span, token, base, worst, final, _ = self._headline(self._run(predictions, full=False))
        return base if final is None else final

    def base_score(self, predictions: Mapping[str, Sequence[Any]]) -> float:
        """(span F1 + token F1) / 2 over all notes."""
        return self._headline(self._run(predictions, full=False))[2]

    def _per_category(self, run: _Pass) -> dict[int, CategoryScore]:
        counts = {kind: Counter() for kind in ("tp", "fp", "fn")}
        empty: set = set()
        for name in run.all_files:
            gold = self._gold_sets.get(name, empty)
            pred = run.pred_sets.get(name, empty)
            counts["tp"].update(cat for cat, _ in gold & pred)
            counts["fp"].update(cat for cat, _ in pred - gold)
            counts["fn"].update(cat for cat, _ in gold - pred)
        total = sum(run.matrices.values(), np.zeros((N_LABELS, N_LABELS), dtype=np.int64))
        gold_tokens, pred_tokens, diagonal = total.sum(axis=1), total.sum(axis=0), total.diagonal()
        out = {}
        for cat in sorted(VALID_CATEGORY_IDS):
            tp = int(diagonal[cat])
            fp, fn = int(pred_tokens[cat]) - tp, int(gold_tokens[cat]) - tp
            out[cat] = CategoryScore(
                SpanScore.from_counts(counts["tp"][cat], counts["fp"][cat], counts["fn"][cat]),
                *prf(tp, fp, fn), tp, fp, fn,
            )
        return out


class SpanTableScorer:
    """The official final score of prediction sets that all draw their spans from one fixed table.

    An ensemble only ever outputs spans that its models proposed, so a tuner can name each prediction
    set by the table rows it keeps. Everything per row (its refined text and which tokens it covers) is
    worked out once here; a prediction set is then scored with a few array operations over all notes at
    once, and the per-note numbers go through the same aggregation as :meth:`Scorer.final_score`, which
    this equals bit for bit (``tests/test_ensemble_batch.py``).
    """

    def __init__(
        self,
        scorer: Scorer,
        note_ids: Sequence[str],
        span_note: np.ndarray,
        span_start: np.ndarray,
        span_end: np.ndarray,
        span_category: np.ndarray,
    ) -> None:
        """Row r of the table is span (span_start[r], span_end[r], span_category[r]) of note
        ``note_ids[span_note[r]]``; every prediction set has a (possibly empty) list for each of ``note_ids``."""
        self.scorer = scorer
        split = scorer.split_ids
        predicted = {name: None for name in note_ids if split is None or name in split}  # as Scorer._run filters
        self.n_prediction_files = len(predicted)
        self.all_files = set(scorer._gold_sets.keys()) | set(predicted.keys())
        self.files = list(self.all_files)
        file_index = {name: i for i, name in enumerate(self.files)}
        note_file = np.array([file_index[name] if name in predicted else -1 for name in note_ids] + [-1], dtype=np.int64)
        span_note = np.asarray(span_note, dtype=np.int64)
        self.row_start = np.asarray(span_start, dtype=np.int64)
        self.row_end = np.asarray(span_end, dtype=np.int64)
        self.row_category = np.asarray(span_category, dtype=np.int64)
        self.row_file = note_file[span_note] if len(span_note) else np.zeros(0, dtype=np.int64)
        # prediction lists are sorted by (start, end, category): a row's rank gives the token-labelling order
        order = np.lexsort((self.row_category, self.row_end, self.row_start, self.row_file))
        self.row_rank = np.empty(len(order), dtype=np.int64)
        self.row_rank[order] = np.arange(len(order))
        self._build_values()
        self._build_tokens()

    def _build_values(self) -> None:
        """An id per distinct (note, category, refined text), for the table rows and the gold spans."""
        ids: dict[tuple[int, Any], int] = {}
        self.row_value = np.full(len(self.row_file), -1, dtype=np.int64)
        rows_by_file = np.argsort(self.row_file, kind="stable")
        bounds = np.searchsorted(self.row_file[rows_by_file], np.arange(len(self.files) + 1))
        for f, name in enumerate(self.files):
            rows = rows_by_file[bounds[f]:bounds[f + 1]]
            if not len(rows):
                continue
            triples = list(zip(self.row_start[rows].tolist(), self.row_end[rows].tolist(), self.row_category[rows].tolist()))
            entries = self.scorer._note(name).entries(triples)
            self.row_value[rows] = [-1 if entry == _DROPPED else ids.setdefault((f, entry), len(ids)) for entry in entries]
        gold_values = [ids.setdefault((f, entry), len(ids))
                       for f, name in enumerate(self.files) for entry in self.scorer._gold_sets.get(name, ())]
        self.value_file = np.array([f for f, _ in ids], dtype=np.int64)
        self.value_is_gold = np.zeros(len(ids), dtype=bool)
        self.value_is_gold[gold_values] = True
        self.n_gold = [len(self.scorer._gold_sets.get(name, ())) for name in self.files]

    def _build_tokens(self) -> None:
        """All scored notes' tokens on one axis (each note shifted past the previous one's text)."""
        starts, ends, gold, owner = [], [], [], []
        self.scored: list[tuple[str, slice, list[int]]] = []  # name, its token range, gold label order
        shift = np.zeros(len(self.files) + 1, dtype=np.int64)
        length = np.zeros(len(self.files) + 1, dtype=np.int64)
        scored_file = np.full(len(self.files) + 1, -1, dtype=np.int64)
        position = offset = 0
        for f, name in enumerate(self.files):
            note = self.scorer._note(name)
            if not note.scored:
                continue
            n = len(note.starts)
            labels = self.scorer._gold_labels.get(name)
            order = self.scorer._gold_order.get(name, [0]) if labels is not None else [0]
            starts.append(note.starts + offset)
            ends.append(note.ends + offset)
            gold.append(labels if labels is not None else np.zeros(n, dtype=np.int64))
            owner.append(np.full(n, len(self.scored), dtype=np.int64))
            scored_file[f] = len(self.scored)
            self.scored.append((name, slice(position, position + n), order))
            shift[f], length[f] = offset, len(note.text)
            offset += len(note.text) + 1  # a gap: a span clipped to one text never reaches the next
            position += n
        empty = np.zeros(0, dtype=np.int64)
        self.token_starts = np.concatenate(starts) if starts else empty
        self.token_ends = np.concatenate(ends) if ends else empty
        self.gold_labels = np.concatenate(gold) if gold else empty
        self.token_note = np.concatenate(owner) if owner else empty
        # rows on the same axis; clipping to [0, len(text)] changes no token overlap
        files = self.row_file
        self.row_scored = scored_file[files] >= 0
        self.row_axis_start = np.clip(self.row_start, 0, length[files]) + shift[files]
        self.row_axis_end = np.clip(self.row_end, 0, length[files]) + shift[files]
        self.row_labels_tokens = self.row_scored & (self.row_category >= 1) & (self.row_category <= 9)

    def final_score(self, rows: np.ndarray) -> float:
        """Final score (base score without stats) of the prediction set made of these table rows."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[self.row_file[rows] >= 0]
        rows = rows[np.argsort(self.row_rank[rows], kind="stable")]
        values = self.row_value[rows]
        present = np.zeros(len(self.value_file), dtype=bool)
        present[values[values >= 0]] = True
        n_files = len(self.files)
        predicted = np.bincount(self.value_file[present], minlength=n_files).tolist()
        common = np.bincount(self.value_file[present & self.value_is_gold], minlength=n_files).tolist()
        span_counts = {name: (c, p - c, g - c) for name, c, p, g in zip(self.files, common, predicted, self.n_gold)}
        token_f1_by_file = self._token_f1(rows[self.row_labels_tokens[rows]])
        run = _Pass(self.all_files, span_counts, token_f1_by_file, self.n_prediction_files)
        _span, _token, base, _worst, final, _groups = self.scorer._headline(run)
        return base if final is None else final

    def _token_f1(self, rows: np.ndarray) -> dict[str, float]:
        spans = np.stack([self.row_axis_start[rows], self.row_axis_end[rows], self.row_category[rows]], axis=1)
        pred_labels = token_labels(self.token_starts, self.token_ends, spans)
        n = len(self.scored)
        cells = self.token_note * (N_LABELS * N_LABELS) + self.gold_labels * N_LABELS + pred_labels
        matrices = np.bincount(cells, minlength=n * N_LABELS * N_LABELS).reshape(n, N_LABELS, N_LABELS)
        present = matrices.sum(axis=1) > 0
        out = {}
        for i, (name, tokens, gold_order) in enumerate(self.scored):
            order = label_order_of(gold_order, pred_labels[tokens], np.flatnonzero(present[i]).tolist())
            out[name] = macro_token_f1(matrices[i], order)
        return out


def score_files(
    predictions: Mapping[str, Sequence[Any]],
    gold_dir: str | os.PathLike[str] | None = None,
    raw_text_dir: str | os.PathLike[str] = "raw_text",
    split_file: str | os.PathLike[str] | None = None,
    stats_csv: str | os.PathLike[str] | None = None,
    gold_file: str | os.PathLike[str] | None = None,
) -> ScoreReport:
    """One-shot official scoring of predictions against a MedDec folder layout."""
    scorer = Scorer.from_files(gold_dir, raw_text_dir, split_file, stats_csv, gold_file, extra_ids=list(predictions))
    return scorer.score(predictions)


__all__ = [
    "OFFICIAL_REFERENCE", "SUBGROUPS", "CategoryScore", "ScoreReport", "Scorer", "SpanScore", "SpanTableScorer", "SubgroupScore",
    "confusion", "demographic_groups", "load_official_texts", "macro_token_f1", "official_note_key", "official_tokens",
    "prf", "read_gold_dir_official_order", "read_official_split", "read_official_text", "refine_span", "refined_text",
    "score_files", "token_labels",
]
