"""A synthetic stand-in for MedDec (credentialed PhysioNet data never present on our machines).

``dataset.synthetic`` writes a corpus in the exact MedDec download layout so that every script, test and
benchmark of this repository runs end to end without the real data. ``python -m dataset.generate`` is its CLI.
"""
