"""The two scorers and their one option (``--scorer {published,meddec}``, default published), without numpy, so
argument dataclasses and ``--help`` can name them cheaply. The token rule itself is :mod:`utils.metric.tokens`.
"""

from __future__ import annotations

#: The two scorers (``--scorer``): the published LAMAR script and CLU-UML/MedDec's at f4374cd.
SCORERS = ("published", "meddec")
#: The default everywhere a score is made: the script LAMAR shipped and tuned its ensemble with.
DEFAULT_SCORER = "published"
#: What each scorer reproduces, named in every report.
SCORER_REFERENCES = {
    "published": "github.com/biodatlab/medexact-lamar evaluate/evaluate.py (the published LAMAR scorer)",
    "meddec": "github.com/CLU-UML/MedDec evaluate.py at commit f4374cd",
}
SCORER_HELP = ("Token rule of the score: published (biodatlab/medexact-lamar evaluate/evaluate.py: a token under two "
               "or more spans is ambiguous and gold-ambiguous tokens are left out) or meddec (CLU-UML/MedDec "
               "evaluate.py at f4374cd: the first overlapping span in list order labels a token).")
AMBIGUOUS = 10  # a token under two or more spans (the published script's -1); categories are 1-9


def check_scorer(rule: str) -> str:
    """``rule`` if it names a scorer, else ValueError (CLIs restrict the choice before this)."""
    if rule not in SCORERS:
        raise ValueError(f"unknown scorer {rule!r}: expected one of {', '.join(SCORERS)}")
    return rule


__all__ = ["AMBIGUOUS", "DEFAULT_SCORER", "SCORERS", "SCORER_HELP", "SCORER_REFERENCES", "check_scorer"]
