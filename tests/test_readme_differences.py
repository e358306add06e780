"""The README's "Differences from the published code" table: every row names a command and flags it really has."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache

import pytest

from utils.paths import REPO_ROOT

SECTION = "## Differences from the published code"
COLUMNS = ["difference", "default", "flag", "measured effect", "why"]


def table_rows() -> list[list[str]]:
    """The cells of the section's table (header and separator left out)."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert SECTION in readme, f"README has no '{SECTION}' section"
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    assert [c.lower() for c in rows[0]] == COLUMNS, rows[0]
    return rows[2:]


def commands(cell: str) -> list[tuple[tuple[str, ...], str]]:
    """(script [+ subcommand], flag) for each code span ``script [subcommand] --flag [value]`` of a cell."""
    found = []
    for code in re.findall(r"`([^`]+)`", cell):
        words = shlex.split(code)
        if not words or not words[0].endswith(".py"):
            continue
        script = tuple(words[:2]) if len(words) > 1 and not words[1].startswith("--") else (words[0],)
        found.extend((script, word) for word in words if word.startswith("--"))
    return found


@lru_cache(maxsize=None)
def help_text(script: tuple[str, ...]) -> str:
    result = subprocess.run([sys.executable, *script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{' '.join(script)} --help failed: {result.stderr[-2000:]}"
    return result.stdout


ROWS = table_rows()


def test_every_row_is_filled_and_names_a_command_with_a_flag():
    assert len(ROWS) >= 15
    for row in ROWS:
        assert len(row) == len(COLUMNS) and all(row), row
        assert commands(row[2]), f"no `script --flag` in the flag cell of {row[0]!r}"


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=[row[0][:40] for row in ROWS])
def test_each_named_flag_is_in_the_scripts_help(row):
    for script, flag in commands(row[2]):
        assert (REPO_ROOT / script[0]).is_file(), script[0]
        text = help_text(script)
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{flag} is not a flag of {' '.join(script)}"
