"""The tag scheme of the generative taggers' outputs, defined once: exact tags, tag stripping, think blocks.

A tagger writes the note back with the nine inline tags of ``utils.categories`` (``<define_problem>...
</define_problem>``). Reasoning models may put a ``<think>...</think>`` block first; only the answer after it
counts. These helpers are shared by the converters (``utils.tagging.convert``, ``utils.tagging.locate``) and the
GRPO rewards, so all of them agree on what the answer of an output is and which strings are tags.
"""

from __future__ import annotations

import re

from utils.categories import ID_TO_TAG

# Exact tags only: ``<define_problem>`` / ``</define_problem>`` (lenient parsing lives in utils.tagging.locate).
TAG_PATTERN = re.compile(r"<(/?)(" + "|".join(re.escape(t) for t in ID_TO_TAG.values()) + r")>")
THINK_OPEN = re.compile(r"^\s*<think>")
THINK_CLOSE = "</think>"


def strip_tags(tagged: str) -> str:
    """The text without the nine exact tags (anything else, including other ``<...>``, stays)."""
    return TAG_PATTERN.sub("", tagged)


def remove_think(output: str) -> tuple[str, str]:
    """The answer part of an output and what happened to a reasoning block ("none", "removed", "unclosed").

    With a ``</think>``, what follows the last one; an output that starts (after whitespace) with ``<think>`` and
    never closes it has no answer (""). Case-sensitive, as the published rewards read it.
    """
    if THINK_CLOSE in output:
        return output.rsplit(THINK_CLOSE, 1)[1], "removed"
    if THINK_OPEN.match(output):
        return "", "unclosed"
    return output, "none"
