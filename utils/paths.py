"""Repository paths, and loading our modules that live in folders named like installed packages.

``evaluate/`` and ``unsloth/`` have no ``__init__.py`` on purpose: the real Hugging Face ``evaluate`` and
Unsloth packages must always win an ``import``. Our files there are loaded by path under private names.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_module_from_path(path: str | Path, module_name: str) -> ModuleType:
    """Import a Python file under ``module_name`` (cached in sys.modules), without touching package names."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def installed_distribution_version(name: str) -> str | None:
    """Version of an installed distribution, None when absent.

    Detects a real install by its metadata: ``importlib.util.find_spec`` alone would also "find" our
    namespace folders ``evaluate/`` and ``unsloth/`` when the repository root is on ``sys.path``.
    """
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
