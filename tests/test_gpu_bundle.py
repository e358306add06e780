"""The offline GPU bundle (scripts/gpu_bundle.sh, utils/testing/gpu_bundle.py): dependencies read from wheel
metadata, what the machine has left out, trimmed wheels that pip still installs, and the real bundle built from the
cached wheelhouse and installed with no network into a fresh Python 3.12 venv (the GPU machine's Python)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from utils.paths import REPO_ROOT
from utils.testing import gpu_bundle as B


def make_wheel(folder: Path, name: str, version: str, requires: list[str] = (), files: dict[str, bytes] | None = None
               ) -> Path:
    """A minimal valid pure-Python wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name.replace('-', '_')}-{version}"
    files = dict(files or {f"{name.replace('-', '_')}/__init__.py": b"VALUE = 1\n"})
    files[f"{dist}.dist-info/METADATA"] = ("Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n" +
                                           "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    files[f"{dist}.dist-info/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        lines = []
        for member, data in files.items():
            archive.writestr(member, data)
            lines.append(B._record_line(member, data))
        archive.writestr(f"{dist}.dist-info/RECORD", "\n".join(lines + [f"{dist}.dist-info/RECORD,,"]) + "\n")
    return path


def test_requirements_come_from_the_wheel_metadata_with_markers_for_the_machine(tmp_path) -> None:
    wheel = make_wheel(tmp_path, "pkg", "1.0", ["a>=1", 'mlx==0.3; sys_platform == "darwin"',
                                                'b<2; python_version >= "3.10"', 'c; extra == "dev"'])
    assert [str(r) for r in B.wheel_requirements(wheel)] == ["a>=1", 'b<2; python_version >= "3.10"']
    assert B.wheel_name_version(wheel)[0] == "pkg"
    assert B.find_wheel(tmp_path, "PKG", ">=1") == wheel and B.find_wheel(tmp_path, "pkg", "<1") is None


def test_the_closure_ships_what_the_machine_lacks_and_leaves_the_rest(tmp_path) -> None:
    house = tmp_path / "house"
    make_wheel(house, "root", "2.0", ["dep>=1", "torch<3", "xformers", "onmachine>=1", "stale>=2", "unknown",
                                      "bounded<=5"])
    make_wheel(house, "dep", "1.5", ["leaf"])
    make_wheel(house, "leaf", "0.1")
    make_wheel(house, "stale", "2.1")
    make_wheel(house, "bounded", "4.0")
    machine = {"torch": "2.11.0", "onmachine": "1.2", "stale": "1.0", "unknown": None, "bounded": None}
    closure = B.resolve(("root",), house, machine, {"root": "2.0", "dep": "1.5"}, offline=True)
    assert sorted(closure.wheels) == ["bounded", "dep", "leaf", "root", "stale"]  # stale: the machine's is too old
    assert sorted(closure.on_machine) == ["onmachine", "unknown"]  # bounded: unknown version, so shipped
    assert closure.on_machine["onmachine"] == [">=1"]
    assert closure.excluded == {"torch": B.EXCLUDED["torch"], "xformers": B.EXCLUDED["xformers"]}
    assert closure.conflicts == []
    make_wheel(house, "top", "1.0", ["leaf>=1"])  # our pin of leaf (0.1) is below what top asks
    clash = B.resolve(("top",), house, {}, {"top": "1.0", "leaf": "0.1"}, offline=True)
    assert clash.conflicts == ["leaf-0.1-py3-none-any.whl does not satisfy leaf>=1"]
    with pytest.raises(FileNotFoundError, match="missing==1.0: no wheel in"):
        B.resolve(("missing",), house, {}, {"missing": "1.0"}, offline=True)


def test_a_trimmed_wheel_drops_the_files_and_keeps_a_consistent_record(tmp_path) -> None:
    wheel = make_wheel(tmp_path / "in", "big", "1.0", files={"big/__init__.py": b"X = 1\n", "studio/app.js": b"x" * 999,
                                                             "big/lib_a.so": b"a", "big/lib_b.so": b"b"})
    out = B.trim_wheel(wheel, tmp_path, ("studio/", "big/lib_"), keep=("big/lib_b.so",))
    assert out.name == wheel.name
    with zipfile.ZipFile(out) as archive:
        names = sorted(archive.namelist())
        record = archive.read("big-1.0.dist-info/RECORD").decode().splitlines()
        assert names == ["big-1.0.dist-info/METADATA", "big-1.0.dist-info/RECORD", "big-1.0.dist-info/WHEEL",
                         "big/__init__.py", "big/lib_b.so"]
        assert sorted(line.split(",")[0] for line in record) == names
        for line in record:
            member, digest, size = line.split(",")
            if digest:
                assert line == B._record_line(member, archive.read(member))


def python312() -> str | None:
    """An interpreter of the GPU machine's Python version (3.12), if this machine has one."""
    candidates = [shutil.which("python3.12") or ""] + sorted(glob.glob(os.path.expanduser(
        "~/.pyenv/versions/3.12*/bin/python3.12")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    return None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The real bundle, built offline from the wheel cache (filled once with network if empty)."""
    out = tmp_path_factory.mktemp("bundle") / "gpu_bundle"
    build = [sys.executable, "-m", "utils.testing.gpu_bundle", str(out)]
    result = subprocess.run(build + ["--offline"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:  # first use on this machine: fill the cache (network)
        result = subprocess.run(build, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        if result.returncode != 0 and "pip download" in result.stderr:
            pytest.skip(f"the wheel cache {B.default_wheelhouse()} is empty and the registry is unreachable: "
                        f"{result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_bundle_builds_under_60_mib_and_installs_offline_into_a_fresh_venv(bundle, tmp_path) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    wheels = sorted(p.name for p in (bundle / "wheels").glob("*.whl"))
    assert wheels == manifest["wheels"] and manifest["bytes"] < 60 * 2**20
    names = {B.wheel_name_version(Path(w))[0]: str(B.wheel_name_version(Path(w))[1]) for w in wheels}
    pins = B.pins()
    for name in map(B.canonicalize_name, B.ROOTS):  # at our pins
        assert names[name] == pins[name], name
    assert names["peft"] == pins["peft"]  # the machine's peft is of unknown version: ours is shipped
    for name in ("torch", "triton", "transformers", "accelerate", "vllm", "xformers", "torchao"):
        assert name not in names, name
    assert set(manifest["trimmed"]) == {"unsloth", "bitsandbytes"}
    with zipfile.ZipFile(bundle / "wheels" / next(w for w in wheels if w.startswith("bitsandbytes-"))) as archive:
        libs = [n for n in archive.namelist() if n.endswith(".so")]
    assert "bitsandbytes/libbitsandbytes_cuda130.so" in libs and not any("cuda12" in n for n in libs)
    run_sh = (bundle / "run.sh").read_text()
    assert "pip install --no-index --no-deps" in run_sh and "LAMAR_GPU_STRICT=1" in run_sh
    assert "tests/gpu/test_kernel_gpu.py tests/gpu/test_dft_gpu.py" in run_sh

    python = python312()
    if python is None:
        pytest.skip("no Python 3.12 here: the bundle's binary wheels are for the GPU machine's CPython 3.12")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run(pip + ["install", "--no-index", "--no-deps", "--find-links", str(bundle / "wheels"),
                                    *map(str, sorted((bundle / "wheels").glob("*.whl")))],
                             capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    listed = json.loads(subprocess.run(pip + ["list", "--format", "json"], capture_output=True, text=True,
                                       env=env, check=True).stdout)
    installed = {B.canonicalize_name(p["name"]): p["version"] for p in listed}
    for name, version in names.items():
        assert installed.get(name) == version, name
    # What the bundle's own check then finds missing in this bare venv is exactly what the GPU machine provides.
    check = subprocess.run([str(venv / "bin" / "python"), str(bundle / "check_installed.py")], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode != 0
    missing = {part.split(" is not installed")[0] for part in check.stderr.strip().removeprefix(
        "offline bundle: ").split("; ") if part.endswith("is not installed")}
    machine = B.read_machine_packages()
    assert missing and missing <= set(machine), sorted(missing - set(machine))
    assert {"torch", "transformers", "accelerate"} <= missing
    assert "does not satisfy" not in check.stderr  # every shipped wheel satisfies every shipped requirement
    import_check = subprocess.run([str(venv / "bin" / "python"), "-c", "import tyro, msgspec, pydantic, dill, fsspec"],
                                  capture_output=True, text=True, timeout=120)
    assert import_check.returncode == 0, import_check.stderr[-2000:]


def test_a_users_folder_is_refused_before_any_work_and_kept(tmp_path, capsys) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    assert B.main([str(folder), "--wheelhouse", str(tmp_path / "empty"), "--offline"]) == 2
    assert capsys.readouterr().err == (f"gpu_bundle: {folder}: exists and is not a bundle this command built "
                                       "(no bundle.json); give a new or empty folder\n")
    assert [p.name for p in folder.iterdir()] == ["precious.txt"]
    assert not (tmp_path / "empty").exists()  # refused before the wheelhouse was touched
