"""docs/architecture.md's layer table is the import rule of the code: no import runs back up a layer, no entry point
imports another, every module is in a layer, and every entry point stays a thin front end."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

from utils.paths import REPO_ROOT

ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
CODE_FOLDERS = ("utils", "ensemble", "pseudolabels", "scripts", "evaluate", "baselines", "dataset", "unsloth", "docs")
ENTRY_POINT_LAYER = "entry points"
MAX_ENTRY_POINT_LINES = 80


@lru_cache(maxsize=None)
def layers() -> list[tuple[str, tuple[str, ...]]]:
    """(layer name, repository paths it names: files, or folders ending in '/'), top row first."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    table = text[text.index("## Layers"):].split("\n## ")[0]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "---"):
            continue
        paths = tuple(p for p in re.findall(r"`([\w./]+)`", cells[1])
                      if "/" in p and (p.endswith("/") and (REPO_ROOT / p).is_dir() or (REPO_ROOT / p).is_file()))
        rows.append((cells[0], paths))
    return rows


def code_files() -> list[Path]:
    return sorted(p.relative_to(REPO_ROOT) for folder in CODE_FOLDERS for p in (REPO_ROOT / folder).rglob("*.py"))


def layer_of(path: Path) -> int | None:
    """Index of the row naming ``path`` (the longest matching file or folder wins)."""
    best, best_length = None, -1
    for index, (_, paths) in enumerate(layers()):
        for named in paths:
            if (str(path) == named or named.endswith("/") and str(path).startswith(named)) and len(named) > best_length:
                best, best_length = index, len(named)
    return best


def module_file(dotted: str) -> Path | None:
    """The repository file of a dotted module name (None for a module of another package)."""
    base = REPO_ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(REPO_ROOT)
    return None


def project_imports(path: Path) -> set[Path]:
    """Repository files imported anywhere in ``path`` (function-level imports included)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" if module_file(f"{node.module}.{alias.name}") else node.module
                     for alias in node.names]
        else:
            continue
        found.update(f for f in map(module_file, names) if f is not None and f != path)
    return found


def test_the_table_names_every_layer_and_real_paths():
    names = [name for name, _ in layers()]
    assert names[0] == "single sources" and names[-1] == ENTRY_POINT_LAYER and len(names) == 9
    assert all(paths for _, paths in layers()), [name for name, paths in layers() if not paths]
    named = [path for _, paths in layers() for path in paths]
    assert sorted({p for p in named if named.count(p) > 1}) == []  # a path in two rows would make its layer ambiguous


def test_every_module_is_in_a_layer():
    unplaced = [str(p) for p in code_files()
                if layer_of(p) is None and not (p.name == "__init__.py" and not project_imports(p))]
    assert unplaced == []


def test_no_import_runs_back_up_a_layer():
    names = [name for name, _ in layers()]
    upward = []
    for path in code_files():
        source = layer_of(path)
        for target in project_imports(path):
            if source is not None and (layer_of(target) or 0) > source:
                upward.append(f"{path} ({names[source]}) imports {target} ({names[layer_of(target)]})")
    assert upward == []


def test_no_entry_point_imports_another():
    entry = len(layers()) - 1
    crossing = [f"{path} imports {target}" for path in code_files() if layer_of(path) == entry
                for target in project_imports(path) if layer_of(target) == entry and target.name != "__init__.py"]
    assert crossing == []


def entry_points() -> list[Path]:
    return [p for p in code_files() if layer_of(p) == len(layers()) - 1 and p.name != "__init__.py"]


@pytest.mark.parametrize("path", entry_points(), ids=str)
def test_entry_points_are_thin(path):
    lines = (REPO_ROOT / path).read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_ENTRY_POINT_LINES, f"{path}: {lines} lines; move the logic into a library module"


def test_layers_and_imports_are_resolved_to_files():
    """The checks above see real files: a command's library import, a package's submodules, both ends of the table."""
    assert len(entry_points()) >= 20
    assert layer_of(Path("utils/fileio.py")) == 0 and layer_of(Path("scripts/train_dft.py")) == len(layers()) - 1
    assert Path("utils/pseudolabels/embedding.py") in project_imports(Path("pseudolabels/embedding.py"))
    assert Path("utils/metric/scorer.py") in project_imports(Path("utils/metric/__init__.py"))


def leading_text(node: ast.expr) -> str | None:
    """The literal start of a string argument (plain or f-string), else None."""
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def flag_shaped_input_errors(source: str) -> list[int]:
    """Lines of ``InputError(...)`` calls that name a flag or the command line in another way than
    ``InputError.flag``: a first argument starting with "--" or "<", the COMMAND_LINE constant, or a file error with
    no place whose message starts with the flag (``InputError(path, "", "--output: ...")``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "InputError"
                and node.args):
            continue
        first, rest = node.args[0], node.args[1:]
        flag_first = (leading_text(first) or "").startswith(("--", "<"))
        constant = isinstance(first, ast.Name) and first.id == "COMMAND_LINE"
        flag_in_message = (len(rest) == 2 and leading_text(rest[0]) == ""
                           and (leading_text(rest[1]) or "").startswith("--"))
        if flag_first or constant or flag_in_message:
            found.append(node.lineno)
    return found


def test_flag_errors_go_through_one_constructor():
    """A flag value or combination is refused with InputError.flag (``<command line>: --flag: message``), never
    with the flag or the command line in the file's place."""
    offenders = [f"{path}:{line}" for path in code_files()
                 for line in flag_shaped_input_errors((REPO_ROOT / path).read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_flag_scan_sees_every_old_shape():
    """The scan above finds each old shape (a flag or the command line as the file, a flag inside a placeless
    message), and passes the named constructor and file errors, a flag as their place included."""
    source = ('InputError("--window", "", "m")\nInputError(f"--{name}", "", "m")\n'
              'InputError(COMMAND_LINE, "--cv", "m")\nInputError("<arguments>", "", "m")\n'
              'InputError(path, "", "--output: m")\nInputError.flag("--cv", "m")\nInputError(path, "row 2", "m")\n'
              'InputError(path, "--output", "m")\n')
    assert flag_shaped_input_errors(source) == [1, 2, 3, 4, 5]
