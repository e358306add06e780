"""utils/cli.py and the argument dataclasses of utils/configs: every flag of every command says what it does and
shows its published default in --help; ``command [flags]`` commands list their commands and refuse others."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect

import pytest

from utils.cli import LamarParser, parse_command
from utils.configs.baseline import BaselineArguments
from utils.configs.evaluation import BootstrapArguments, CompareArguments
from utils.configs.pipeline import (
    DemoArguments, EmbeddingArguments, ExploreArguments, InferenceArguments, OptimizeArguments, PushArguments,
    RetrieveArguments, SelectArguments, ThresholdArguments,
)
from utils.configs.training import DFTScriptArguments, LamarGRPOConfig
from utils.fileio import InputError
from utils.paths import REPO_ROOT

CONFIG_MODULES = ("utils.configs.pipeline", "utils.configs.training", "utils.configs.evaluation",
                  "utils.configs.baseline")
ENTRY_FOLDERS = ("scripts", "evaluate", "pseudolabels", "ensemble", "baselines", "dataset", "utils")


def argument_classes() -> list[type]:
    return [cls for name in CONFIG_MODULES for cls in vars(importlib.import_module(name)).values()
            if inspect.isclass(cls) and dataclasses.is_dataclass(cls) and cls.__module__ == name]


def parsed_classes(path) -> set[str]:
    """Class names a command hands to parse_args / parse_command (directly or through a COMMANDS table)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("parse_args", "parse_command"):
            names.update(a.id for a in node.args if isinstance(a, ast.Name) and a.id[:1].isupper() and a.id != "COMMANDS")
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMANDS" for t in node.targets):
            names.update(v.id for v in node.value.values if isinstance(v, ast.Name))
    return names


@pytest.mark.parametrize("cls", argument_classes(), ids=lambda c: c.__name__)
def test_every_flag_has_help_and_shows_its_default(cls):
    parser = LamarParser([cls])
    formatter = parser._get_formatter()
    silent = [action.dest for action in parser._actions
              if action.dest != "help" and not (action.help or "").strip()]
    assert silent == [], f"{cls.__name__}: flags without help text"
    no_default = [action.dest for action in parser._actions
                  if action.dest != "help" and "%(default)" not in formatter._get_help_string(action)]
    assert no_default == [], f"{cls.__name__}: flags whose --help does not show the default"


def placeholder(f: dataclasses.Field) -> object:
    """A value for a flag without a default (file names, mostly): a list of one file or one file."""
    return ["a.json"] if "list" in str(f.type) else "a.json"


@pytest.mark.parametrize("cls", argument_classes(), ids=lambda c: c.__name__)
def test_published_defaults_pass_each_dataclass_check(cls):
    """The checks in __post_init__ run for every parse (HfArgumentParser builds from the defaults too): the defaults
    themselves must pass them."""
    required = {f.name: placeholder(f) for f in dataclasses.fields(cls)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    built = cls(**required)
    assert all(getattr(built, name) == value for name, value in required.items())


def test_every_command_parses_argument_classes_of_utils_configs():
    known = {cls.__name__ for cls in argument_classes()}
    commands = {}
    for folder in ENTRY_FOLDERS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            found = parsed_classes(path)
            if found:
                commands[str(path.relative_to(REPO_ROOT))] = found
    assert len(commands) >= 18, sorted(commands)
    foreign = {path: sorted(found - known) for path, found in commands.items() if found - known}
    assert foreign == {}


def test_dft_loss_is_one_flag():
    """--loss picks the loss; TRL's loss_type is set from it, never a second flag that could disagree."""
    from utils.configs.training import DFTConfig, DFTScriptArguments

    options = LamarParser([DFTScriptArguments, DFTConfig]).known_options()
    assert "loss" in options and "loss_type" not in options
    with pytest.raises(InputError, match=r"<command line>: --loss_type: unknown option"):
        LamarParser([DFTScriptArguments, DFTConfig]).parse(["--loss_type", "nll"])


COMMANDS = {"explore": ExploreArguments, "select": SelectArguments}


def test_parse_command_picks_the_dataclass_of_the_first_word():
    command, args = parse_command(COMMANDS, ["select", "--threshold", "0.2"], prog="dynamic_threshold.py")
    assert command == "select" and isinstance(args, SelectArguments) and args.threshold == 0.2


@pytest.mark.parametrize("argv, where", [([], ""), (["frobnicate"], "frobnicate: "), (["--threshold", "1"], "--threshold: ")])
def test_parse_command_refuses_a_missing_or_unknown_command(argv, where):
    with pytest.raises(InputError) as err:
        parse_command(COMMANDS, argv, prog="dynamic_threshold.py")
    assert str(err.value) == (f"<command line>: {where}expected a command, one of explore, select "
                              "(add --help after it)")


def test_parse_command_help_lists_each_command_with_its_summary(capsys):
    with pytest.raises(SystemExit) as done:
        parse_command(COMMANDS, ["--help"], prog="dynamic_threshold.py")
    assert done.value.code == 0
    assert capsys.readouterr().out.splitlines() == [
        "usage: dynamic_threshold.py {explore,select} [flags]  (add --help after a command)", "",
        "  explore    does low entropy mean good output, and what would each quantile keep?",
        "  select     keep the low-entropy pool outputs and mix them into the train CSV."]


@pytest.mark.parametrize("make, message", [
    (lambda: RetrieveArguments(per_note=0),
     "<command line>: --per_note: expected a positive number, got 0"),
    (lambda: EmbeddingArguments(sources=["pool", "notes"]),
     "<command line>: --sources: unknown source(s) notes; expected pool and/or meddec"),
    (lambda: ExploreArguments(quantiles=[0.1, 1.5]),
     "<command line>: --quantiles: expected a quantile between 0 and 1, got 1.5"),
    (lambda: SelectArguments(min_spans=-1), "<command line>: --min_spans: expected 0 or more, got -1"),
    (lambda: OptimizeArguments(predictions=["a.json"], cv=1),
     "<command line>: --cv: K needs K >= 2 (or 0 for none), got 1"),
    (lambda: InferenceArguments(backend="transformers", temperature=0.7),
     "<command line>: --temperature: the transformers fallback decodes greedily only (temperature 0)"),
    (lambda: InferenceArguments(input=["a.csv", "b.csv"], output=["o.csv"]),
     "<command line>: --output: expected one output per --input (2), got 1"),
    (lambda: InferenceArguments(input=["a.csv", "b.csv"], output=["o.csv", "./o.csv"]),
     "<command line>: --output: two inputs would write the same output file"),
    (lambda: InferenceArguments(vllm_kwargs="[1]"),
     "<command line>: --vllm_kwargs: expected a JSON object, e.g. '{\"enforce_eager\": true}'"),
    (lambda: InferenceArguments(copy_constraint=True, vllm_kwargs='{"speculative_config": {"method": "ngram"}}'),
     "<command line>: --copy_constraint: copy-constrained decoding does not support speculative decoding "
     "(speculative_config)"),
    (lambda: InferenceArguments(num_shards=2, merge=True, shard_index=0),
     "<command line>: --merge: merges every shard: leave out --shard_index"),
    (lambda: InferenceArguments(data_parallel_size=2, backend="transformers", device="cuda:1"),
     "<command line>: --device: got 'cuda:1': each shard process sees only its own GPU: use --device cuda"),
    (lambda: EmbeddingArguments(device="cpu", devices=["cpu", "cpu"]),
     "<command line>: --devices: give --device (one process) or --devices (one process each), not both"),
    (lambda: ThresholdArguments(t_pair=1.5), "<command line>: --t_pair: expected a number in [0, 1], got 1.5"),
    (lambda: PushArguments(folder="out", repo_id="me/model", adapter="lora"),
     "<command line>: --adapter: merging needs --base_model as well"),
    (lambda: CompareArguments(bootstrap=0), "<command line>: --bootstrap: expected a number of resamples >= 1, got 0"),
    (lambda: BootstrapArguments(bootstrap=-1),
     "<command line>: --bootstrap: expected a number of resamples >= 0, got -1"),
    (lambda: BootstrapArguments(confidence=1.0),
     "<command line>: --confidence: expected a level strictly between 0 and 1, got 1.0"),
    (lambda: BaselineArguments(window=4), "<command line>: --window: expected at least 8 tokens, got 4"),
    (lambda: DFTScriptArguments(backend="hf", dft_route="kernel"),
     "<command line>: --dft_route: got 'kernel': our Triton kernel is reached through Unsloth's loss: needs --backend "
     "unsloth (the hf backend trains DFT on TRL's fused head)"),
    (lambda: DemoArguments(extra_heldout=-4), "<command line>: --extra_heldout: expected a number of notes >= 0, got -4"),
    (lambda: LamarGRPOConfig(output_dir="o", num_generations=1),
     "<command line>: --num_generations: GRPO compares generations within a group, so at least 2 are needed, got 1"),
])
def test_argument_dataclasses_refuse_values_that_cannot_work_when_built(make, message):
    """The checks live in __post_init__: a command line and a library call with the dataclass fail alike."""
    with pytest.raises(InputError) as err:
        make()
    assert str(err.value) == message


def test_a_dataclass_check_reaches_the_command_line_unwrapped():
    with pytest.raises(InputError) as err:
        LamarParser([EmbeddingArguments]).parse(["--sources", "pool", "notes"])
    assert str(err.value) == "<command line>: --sources: unknown source(s) notes; expected pool and/or meddec"
