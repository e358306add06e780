"""Command-line entry points of the LAMAR reproduction (run as ``python scripts/x.py`` or ``python -m scripts.x``)."""
