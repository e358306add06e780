"""Every command in the README names a real script and only flags that script accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache

import pytest

from utils.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[list[str]]:
    """python commands of the README's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            line = re.sub(r"^(\w+=\S+ )+", "", line)  # HF_TOKEN=... prefixes
            if line.startswith(("python ", "python3 ")) and " -m pip " not in line and "pytest" not in line:
                commands.append(shlex.split(line.replace("[", "").replace("]", "")))
    return commands


def script_of(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the part that runs the script, the rest) e.g. ['-m', 'ensemble.optimize'] / [..]; a first word that is not
    a flag is a command of ``utils.cli.parse_command`` (e.g. ``dynamic_threshold select``)."""
    target, rest = (argv[1:3], argv[3:]) if argv[1] == "-m" else (argv[1:2], argv[2:])
    if rest and not rest[0].startswith("-"):
        return [*target, rest[0]], rest[1:]
    return target, rest


@lru_cache(maxsize=None)
def help_text(target: tuple[str, ...]) -> str:
    result = subprocess.run([sys.executable, *target, "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{' '.join(target)} --help failed: {result.stderr[-2000:]}"
    return result.stdout


COMMANDS = readme_commands()


def test_readme_has_the_whole_pipeline():
    scripts = {tuple(script_of(c)[0]) for c in COMMANDS}
    for expected in (("utils/gt_to_tag.py",), ("scripts/train_dft.py",), ("scripts/train_grpo.py",),
                     ("scripts/inference.py",), ("-m", "ensemble.optimize"), ("evaluate/evaluate.py",),
                     ("-m", "pseudolabels.extract_unlabel"), ("-m", "pseudolabels.retrieve"),
                     ("-m", "pseudolabels.embedding"), ("baselines/train_bert.py",), ("scripts/push_to_hub.py",)):
        assert expected in scripts, expected


@pytest.mark.slow
@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:3]) for c in COMMANDS])
def test_readme_command_flags_exist(argv):
    target, rest = script_of(argv)
    text = help_text(tuple(target))
    for i, flag in enumerate(rest):
        if not flag.startswith("--"):
            continue
        if flag == "--config":  # the recipe named must exist too
            assert (REPO_ROOT / rest[i + 1]).is_file(), rest[i + 1]
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{flag} is not a flag of {' '.join(target)}"
