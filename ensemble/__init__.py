"""Span-Cluster Consensus ensemble (``ensemble.mbr``, on arrays in ``ensemble.batch``), its oracle and tuning."""

from typing import Any

__all__ = ["Thresholds", "merge_note", "merge_predictions"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m ensemble.mbr` does not find its own module already imported.
    if name in __all__:
        from ensemble import mbr

        return getattr(mbr, name)
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
