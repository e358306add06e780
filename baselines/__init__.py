"""Baselines of the shared task: the RoBERTa-style B/I/O token classifier (``baselines/train_bert.py``)."""
