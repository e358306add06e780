"""Span-Cluster Consensus ensemble: the merge (``ensemble.consensus``), the same on arrays for tuning
(``ensemble.batch``), its all-pairs oracle (``ensemble.reference``), the tuning study (``ensemble.tuning``,
``ensemble.study``, ``ensemble.storage``) and the merge's inputs (``ensemble.merging``); the commands
``ensemble/mbr.py`` and ``ensemble/optimize.py`` are thin front ends over them."""

from ensemble.consensus import Thresholds, merge_note, merge_predictions

__all__ = ["Thresholds", "merge_note", "merge_predictions"]
