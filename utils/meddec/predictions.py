"""Prediction JSON, the evaluator's input: read with validation, write atomically.

Format (SPEC section 1)::

    [{"file_name": "<ID>", "predictions": [{"start_offset": 3, "end_offset": 9, "category": 5}, ...]}, ...]

Order matters: the token score gives a token the category of the first overlapping span in list order,
so every reader and writer here keeps the order it was given.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from utils.fileio import InputError, read_json, write_json_atomic


class Span(NamedTuple):
    """A predicted span: 0-based character offsets (end exclusive) and a category id."""

    start: int
    end: int
    category: int

    def to_json(self) -> dict[str, int]:
        return {"start_offset": self.start, "end_offset": self.end, "category": self.category}


Predictions = dict[str, list[Span]]


def _int_field(item: Mapping[str, Any], name: str, path: str, where: str) -> int:
    if name not in item:
        raise InputError(path, where, f"missing field '{name}'")
    value = item[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(path, where, f"field '{name}': expected an integer, got {value!r}")
    return value


def parse_predictions(data: Any, path: str = "<predictions>") -> Predictions:
    """Validate decoded prediction JSON; errors name the record, the span and the field."""
    if not isinstance(data, list):
        raise InputError(path, "top level", f"expected a list of {{'file_name', 'predictions'}} records, got {type(data).__name__}")
    out: Predictions = {}
    for i, record in enumerate(data):
        where = f"record {i}"
        if not isinstance(record, dict):
            raise InputError(path, where, f"expected an object, got {type(record).__name__}")
        name = record.get("file_name")
        if not isinstance(name, str) or not name:
            raise InputError(path, where, f"field 'file_name': expected a note id string, got {name!r}")
        where = f"record {i} ({name})"
        if name in out:
            raise InputError(path, where, "duplicate file_name: each note may appear once")
        spans = record.get("predictions", [])
        if not isinstance(spans, list):
            raise InputError(path, where, f"field 'predictions': expected a list, got {type(spans).__name__}")
        parsed = []
        for j, item in enumerate(spans):
            span_where = f"{where} predictions[{j}]"
            if not isinstance(item, dict):
                raise InputError(path, span_where, f"expected an object, got {type(item).__name__}")
            parsed.append(
                Span(
                    _int_field(item, "start_offset", path, span_where),
                    _int_field(item, "end_offset", path, span_where),
                    _int_field(item, "category", path, span_where),
                )
            )
        out[name] = parsed
    return out


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read a prediction JSON file into {note id: [Span, ...]} keeping file and list order."""
    return parse_predictions(read_json(path), str(path))


def predictions_to_json(predictions: Mapping[str, Iterable[Sequence[int]]]) -> list[dict[str, Any]]:
    """The evaluator's JSON structure for {note id: spans}; spans may be Span or (start, end, category)."""
    return [
        {"file_name": name, "predictions": [Span(*map(int, span)).to_json() for span in spans]}
        for name, spans in predictions.items()
    ]


def write_predictions(path: str | os.PathLike[str], predictions: Mapping[str, Iterable[Sequence[int]]]) -> None:
    """Write prediction JSON atomically."""
    write_json_atomic(path, predictions_to_json(predictions))
