"""utils/pip_resolve.py (scripts/check_gpu_resolve.py): the pip command it builds, the marker swap, the verdict (all offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import check_gpu_resolve
from utils import pip_resolve as resolve


def test_linux_tags_cover_every_older_glibc_and_the_legacy_aliases():
    tags = resolve.platform_tags(resolve.TARGETS["linux-gpu"], "2.35", "14.0")
    assert tags[0] == "manylinux_2_35_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert "manylinux_2_28_x86_64" in tags and "manylinux_2_5_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux_2_36_x86_64" not in tags
    assert resolve.platform_tags(resolve.TARGETS["macos-cpu"], "2.35", "14.0") == ["macosx_14_0_arm64"]


def test_pip_runs_without_any_local_setting(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///somewhere")
    env = resolve.clean_environment()
    assert not {key for key in env if key.startswith("PIP_")} - {"PIP_CONFIG_FILE", "PIP_DISABLE_PIP_VERSION_CHECK"}
    args = resolve.pip_arguments(resolve.TARGETS["linux-gpu"], [Path("a.txt"), Path("b.txt")], "3.11",
                                 ["manylinux_2_35_x86_64"], Path("r.json"), Path("t"))
    assert args[:3] == ["--isolated", "install", "--dry-run"]
    assert "--only-binary=:all:" in args and args[args.index("--python-version") + 1] == "3.11"
    assert args[-4:] == ["-r", "a.txt", "-r", "b.txt"]


def _dry_run_with_markers(target: str, tmp_path: Path) -> subprocess.CompletedProcess:
    requirements = tmp_path / "req.txt"
    requirements.write_text('lamar-no-such-package==1.0; sys_platform == "darwin"\n')
    env_json = json.dumps(resolve.marker_environment(resolve.TARGETS[target], "3.12"))
    return subprocess.run(
        [sys.executable, "-c", resolve._BOOTSTRAP, env_json, "install", "--dry-run", "--no-index",
         "--ignore-installed", "--report", str(tmp_path / "r.json"), "-r", str(requirements)],
        env=resolve.clean_environment(), capture_output=True, text=True, timeout=120, check=False)


def test_markers_are_evaluated_for_the_target_machine_not_this_one(tmp_path):
    linux = _dry_run_with_markers("linux-gpu", tmp_path)
    assert linux.returncode == 0, linux.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["install"] == [] and report["environment"]["sys_platform"] == "linux"
    macos = _dry_run_with_markers("macos-cpu", tmp_path)  # the darwin-only line now applies (and cannot resolve)
    assert macos.returncode != 0
    assert "No matching distribution found for lamar-no-such-package" in macos.stdout + macos.stderr


def test_verdict_names_the_key_versions_and_what_is_absent():
    report = {"install": [{"metadata": {"name": "Torch", "version": "2.13.0"}},
                          {"metadata": {"name": "unsloth_zoo", "version": "2026.10.9"}}]}
    versions = resolve.resolved_versions(report)
    assert versions == {"torch": "2.13.0", "unsloth-zoo": "2026.10.9"}
    lines = resolve.verdict_lines("linux-gpu cp312", versions)
    assert lines[0] == "OK linux-gpu cp312: 2 distributions resolve from the public registry"
    assert lines[1] == "  torch 2.13.0, unsloth-zoo 2026.10.9"
    assert lines[2].startswith("  not in this set: triton, transformers")


def test_failure_shows_pips_conflict_explanation():
    output = "Collecting torch\nERROR: Cannot install a and b\n    The user requested triton==3.9.0\n" \
             "    torch 2.13.0 depends on triton==3.7.1\nERROR: ResolutionImpossible: ...\n"
    assert resolve.error_lines(output) == ["ERROR: Cannot install a and b", "    The user requested triton==3.9.0",
                                           "    torch 2.13.0 depends on triton==3.7.1",
                                           "ERROR: ResolutionImpossible: ..."]


def test_bad_version_argument_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        check_gpu_resolve.main(["--glibc", "2"])
    assert stop.value.code == 2
    assert "--glibc: expected X.Y, got '2'" in capsys.readouterr().err
