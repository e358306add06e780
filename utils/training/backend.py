"""Which DFT backend a command asks for, decided before anything imports trl, transformers or peft.

Unsloth must be imported before those three: at import it rebinds ``trl.SFTTrainer`` (and the config) to its own
trainer and patches transformers and PEFT; a name bound earlier keeps the unpatched object and Unsloth only warns
(``unsloth/_gpu_init.py``, ``unsloth/models/rl.py`` of 2026.10.9). Our argument classes subclass TRL's, so parsing
the command line already imports trl. Hence :func:`import_unsloth_first`: it reads ``--backend`` from the flags, or
from the ``--config`` recipe, or takes the default, with no library beyond PyYAML, and imports Unsloth at once when
the unsloth backend is asked for. ``scripts/train_dft.py`` calls it first thing; :func:`ensure_unsloth_first` is what
the trainer builder checks. This module must stay free of trl / transformers / peft imports (a test checks it).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Sequence

from utils.configs import DEFAULT_DFT_BACKEND

CRITICAL_MODULES = ("trl", "transformers", "peft")


class UnslothImportOrderError(RuntimeError):
    """Unsloth was imported after trl / transformers / peft, so its trainer patches would be (partly) skipped."""


@dataclass(frozen=True)
class UnslothImport:
    """What happened when Unsloth was imported: whether it worked, what was already imported, why not."""

    imported: bool
    imported_before: tuple[str, ...] = ()
    error: str | None = None


_STATE: UnslothImport | None = None


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The last value given for ``flag`` (``--flag v`` or ``--flag=v``), as argparse would take it."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def requested_backend(argv: Sequence[str]) -> str:
    """``--backend`` of a train_dft command line: the flag wins over the recipe, the recipe over the default.

    An unreadable recipe gives the default here; the real parser reports it afterwards in one line.
    """
    flag = _flag_value(argv, "--backend")
    if flag is not None:
        return flag
    config = _flag_value(argv, "--config")
    if config is not None:
        import yaml

        try:
            with open(config, encoding="utf-8") as handle:
                recipe = yaml.safe_load(handle)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return DEFAULT_DFT_BACKEND
        if isinstance(recipe, dict) and recipe.get("backend") is not None:
            return str(recipe["backend"])
    return DEFAULT_DFT_BACKEND


def unsloth_installed() -> bool:
    """Unsloth's distribution is installed (our ``unsloth/`` folder alone does not count)."""
    from utils.paths import installed_distribution_version

    return installed_distribution_version("unsloth") is not None


def _import_unsloth() -> UnslothImport:
    global _STATE
    if _STATE is not None:
        return _STATE
    before = tuple(name for name in CRITICAL_MODULES if name in sys.modules)
    if "unsloth" in sys.modules:  # imported elsewhere, order unknown: judge by what is loaded now
        _STATE = UnslothImport(True, ())
        return _STATE
    try:
        importlib.import_module("unsloth")
    except Exception as err:  # noqa: BLE001  (no GPU, wrong torch build, ...: reported as one line later)
        from utils.fileio import first_line

        _STATE = UnslothImport(False, before, f"{type(err).__name__}: {first_line(err)}")
        return _STATE
    _STATE = UnslothImport(True, before)
    return _STATE


def import_unsloth_first(argv: Sequence[str]) -> UnslothImport | None:
    """Import Unsloth now if this command line trains on the unsloth backend and Unsloth is installed.

    Returns None when Unsloth is not needed (another backend, ``--help``) or not installed (the trainer builder then
    refuses with one line). Call before importing anything that imports trl, transformers or peft.
    """
    if any(arg in ("-h", "--help") for arg in argv) or requested_backend(argv) != "unsloth":
        return None
    if not unsloth_installed():
        return None
    return _import_unsloth()


def ensure_unsloth_first() -> UnslothImport:
    """Unsloth imported, and before trl / transformers / peft; else :class:`UnslothImportOrderError`.

    A failed import is returned (``imported`` False, ``error`` set) for the caller to report as an input error.
    """
    state = _import_unsloth()
    if state.imported and state.imported_before:
        raise UnslothImportOrderError(
            f"unsloth was imported after {', '.join(state.imported_before)}, so Unsloth's trainer and loss patches "
            "would be skipped; run scripts/train_dft.py as a command (it imports unsloth first) or import unsloth "
            "before anything else")
    return state
