"""Model 3's data: the unlabeled discharge-summary pool, its embeddings, retrieval and entropy selection.

Pipeline (SPEC section 4), one command per step:
``extract_unlabel`` -> ``embedding`` -> ``retrieve`` -> ``scripts/inference.py`` -> ``dynamic_threshold``.
"""
