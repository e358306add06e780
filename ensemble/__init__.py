"""Span-Cluster Consensus ensemble: the merge (``ensemble.consensus``), the same on arrays for tuning
(``ensemble.batch``), its all-pairs oracle (``ensemble.reference``), the tuner (``ensemble.optimize``) and the
merge command (``ensemble/mbr.py``)."""

from ensemble.consensus import Thresholds, merge_note, merge_predictions

__all__ = ["Thresholds", "merge_note", "merge_predictions"]
