"""Shared building blocks of the LAMAR reproduction: categories, prompt, corpus and prediction I/O."""
