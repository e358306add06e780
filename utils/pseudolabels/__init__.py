"""The library behind ``pseudolabels/*.py``: pool extraction, embedding cache and encoders, retrieval, entropy
threshold (each command in ``pseudolabels/`` parses its flags and calls one function here)."""
