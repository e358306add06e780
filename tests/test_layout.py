"""The repository layout never shadows installed libraries that share our folder names."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from utils.paths import REPO_ROOT, installed_distribution_version, load_module_from_path

OUR_PACKAGES = ("scripts", "ensemble", "pseudolabels", "baselines", "utils", "dataset")
NAMESPACE_FOLDERS = ("evaluate", "unsloth")


def test_published_layout_exists():
    for folder in (*OUR_PACKAGES, *NAMESPACE_FOLDERS):
        assert (REPO_ROOT / folder).is_dir(), folder
    for name in ("requirements.txt", "README.md"):
        assert (REPO_ROOT / name).is_file(), name


def test_folders_named_like_pypi_packages_are_not_packages():
    # No __init__.py: an installed regular package of that name always wins the import.
    for folder in NAMESPACE_FOLDERS:
        assert not (REPO_ROOT / folder / "__init__.py").exists(), folder
        for sub in (REPO_ROOT / folder).rglob("__init__.py"):
            raise AssertionError(f"{sub} would make {folder} importable as a regular package")


def test_no_installed_distribution_provides_our_package_names():
    provided = importlib.metadata.packages_distributions()
    clashes = {name: provided[name] for name in OUR_PACKAGES if name in provided}
    assert clashes == {}, f"installed distributions already own these import names: {clashes}"


def _import_from_repo_root(code: str, extra_path: str | None = None) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), extra_path) if p)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return result.stdout.strip()


def test_hugging_face_evaluate_wins_over_our_evaluate_folder():
    assert installed_distribution_version("evaluate") is not None  # installed by requirements-dev.txt
    out = _import_from_repo_root(
        "import evaluate, os; print(os.path.dirname(evaluate.__file__)); print(callable(evaluate.load))"
    )
    location, has_load = out.splitlines()
    assert Path(location).resolve() != (REPO_ROOT / "evaluate").resolve()
    assert "site-packages" in location and has_load == "True"


def test_an_installed_unsloth_wins_over_our_unsloth_folder(tmp_path):
    # Unsloth cannot be installed on a CPU machine: plant a stand-in regular package later on sys.path.
    fake = tmp_path / "site" / "unsloth"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    out = _import_from_repo_root("import unsloth; print(unsloth.REAL, unsloth.__file__)", str(tmp_path / "site"))
    assert out.startswith("True ") and str(tmp_path) in out


def test_our_kernel_file_loads_by_path_without_the_unsloth_name():
    module = load_module_from_path("unsloth/kernels/cross_entropy_loss.py", "lamar_test_cross_entropy_loss")
    assert module.__name__ == "lamar_test_cross_entropy_loss"
    assert callable(module.install_into_unsloth)
    assert "unsloth" not in sys.modules  # loading our kernel never imports (or fakes) the unsloth package


def test_unsloth_detection_uses_metadata_not_our_folder():
    # find_spec would report our namespace folder; distribution metadata does not.
    assert installed_distribution_version("unsloth") is None
    assert installed_distribution_version("lamar-definitely-not-installed") is None
