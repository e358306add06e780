"""The nine MedExACT decision categories: ids, MedDec names and inline tags, defined once.

Everything that maps between category ids (1-9), MedDec gold strings ("Category 3: Defining problem")
and the XML-like tags the generative taggers emit reads this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """One shared-task category."""

    id: int
    name: str
    tag: str


CATEGORIES: tuple[Category, ...] = (
    Category(1, "Contact related", "contact_related"),
    Category(2, "Gathering additional information", "gather_info"),
    Category(3, "Defining problem", "define_problem"),
    Category(4, "Treatment goal", "treatment_goal"),
    Category(5, "Drug related", "drug_decision"),
    Category(6, "Therapeutic procedure related", "therapeutic_procedure"),
    Category(7, "Evaluating test result", "evaluate_result"),
    Category(8, "Deferment", "defer_decision"),
    Category(9, "Advice and precaution", "advice_and_precaution"),
)

CATEGORY_IDS: tuple[int, ...] = tuple(c.id for c in CATEGORIES)
VALID_CATEGORY_IDS: frozenset[int] = frozenset(CATEGORY_IDS)
ID_TO_TAG: dict[int, str] = {c.id: c.tag for c in CATEGORIES}
TAG_TO_ID: dict[str, int] = {c.tag: c.id for c in CATEGORIES}
ID_TO_NAME: dict[int, str] = {c.id: c.name for c in CATEGORIES}
TAGS: tuple[str, ...] = tuple(c.tag for c in CATEGORIES)

# Out-of-scope gold categories (legal/insurance, other); ignored everywhere like "TBD".
OUT_OF_SCOPE_NAMES: dict[int, str] = {10: "Legal and insurance related", 11: "Other"}

# For identical offsets the more frequent category is written as the more inner tag (SPEC section 3).
INNER_ORDER: tuple[int, ...] = (3, 5, 7, 1, 6, 9, 2, 4, 8)
INNER_RANK: dict[int, int] = {cat: rank for rank, cat in enumerate(INNER_ORDER)}

_GOLD_CATEGORY = re.compile(r"Category\s*(\d+)")


def gold_name(category_id: int) -> str:
    """MedDec gold string for a category id, e.g. 3 -> 'Category 3: Defining problem'."""
    name = ID_TO_NAME.get(category_id) or OUT_OF_SCOPE_NAMES.get(category_id)
    if name is None:
        raise ValueError(f"unknown category id {category_id!r}")
    return f"Category {category_id}: {name}"


def parse_gold_category(value: object) -> int:
    """Category id of a MedDec gold string; 0 for TBD, 10/11 or anything unparsable.

    Matches the official evaluator: a leading 'Category <n>' with n in 1-9, otherwise out of scope.
    """
    match = _GOLD_CATEGORY.match(str(value))
    if match is None:
        return 0
    cat = int(match.group(1))
    return cat if cat in VALID_CATEGORY_IDS else 0
