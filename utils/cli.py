"""The one command-line convention of every entry point.

Options are dataclass fields (``utils.configs``) parsed by TRL's ``TrlParser``: every field is a flag with the
published default, ``--config recipe.yaml`` sets any of them from a YAML file, and flags given on the command
line win over the file. What this module adds is the error behaviour users need: a missing or malformed config
file, an unknown key or flag, or a value of the wrong type is ONE line naming the file or flag, the key and what
was expected (exit code 2), never a traceback, and recipe values are converted by the same type as the flag
(YAML reads ``2e-4`` as a string; the flag's float conversion applies to it).
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from typing import Any, Callable, Iterable, Sequence

from utils.fileio import InputError, reading_errors, report_input_error
from utils.guards import check_input_files, check_options

CONFIG_HELP = ("--config FILE  a YAML recipe (e.g. recipes/*.yaml) setting any of the options above by name; "
               "flags given on the command line win over it")


def _trl_parser_class():
    from trl import TrlParser

    return TrlParser


def _closest(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def read_config_file(path: str) -> dict[str, Any]:
    """A recipe: a YAML mapping of option names to values; any problem is a one-line InputError."""
    import yaml

    check_input_files([("--config", path)])  # a pipe would block the parser forever
    try:
        with reading_errors(path, "YAML", prefix="--config: "), open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise InputError(path, where, f"invalid YAML ({getattr(err, 'problem', None) or err})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InputError(path, "top level", f"expected a mapping of option: value, got a {type(config).__name__}")
    return config


def _recipe_value(convert: Any, value: Any) -> Any:
    """One recipe value as the flag's type would give it: strings go through the flag's conversion; YAML numbers and
    booleans must already be of the flag's kind (``2.5`` or ``.inf`` is no integer, ``true`` no number)."""
    if convert is None or value is None:
        return value
    if isinstance(value, str):
        return convert(value)
    kind = getattr(convert, "__name__", "")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError("not an integer")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("not a number")
        return float(value)
    if kind == "string_to_bool" and not isinstance(value, bool):
        raise ValueError("not true or false")
    return value


class LamarParser(_trl_parser_class()):
    """TrlParser whose recipe and flag problems are one-line :class:`InputError` s."""

    @staticmethod
    def _parse_dataclass_field(parser: Any, field: Any) -> None:
        """Every dataclass field is a flag, except one marked ``{"flag": False}``: a value another flag sets (e.g.
        ``DFTConfig.loss_type``, from ``--loss``), which a second flag could only contradict."""
        if field.metadata.get("flag") is False:
            return
        _trl_parser_class()._parse_dataclass_field(parser, field)

    def known_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for action in self._actions:  # the first action of a dest is ``--name``; ``--no_name`` follows it
            if action.dest != "help":
                options.setdefault(action.dest, action)
        return options

    def _convert(self, path: str, key: str, value: Any, action: Any) -> Any:
        """A recipe value converted like the flag's own value (so ``2e-4`` becomes a float), choices checked."""
        import argparse

        convert = action.type
        try:
            if action.nargs in ("+", "*") and isinstance(value, (list, tuple)):
                value = [_recipe_value(convert, v) for v in value]
            else:
                value = _recipe_value(convert, value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            expected = getattr(convert, "__name__", "a valid value")
            expected = "true or false" if expected == "string_to_bool" else expected
            raise InputError(path, f"key '{key}'", f"expected {expected}, got {value!r} ({err})") from None
        if action.choices is not None:
            values = value if isinstance(value, list) else [value]
            bad = [v for v in values if v not in action.choices]
            if bad:
                raise InputError(path, f"key '{key}'", f"expected one of {', '.join(map(str, action.choices))}, "
                                                       f"got {bad[0]!r}")
        return value

    def apply_config(self, path: str) -> None:
        """Set defaults from a recipe; unknown keys are an error naming the closest known option. A recipe sets
        options only (no environment variables: a recipe must not be able to run code or redirect an upload)."""
        config = read_config_file(path)
        known = self.known_options()
        for key, value in config.items():
            if key not in known:
                raise InputError(path, f"key '{key}'", f"unknown option{_closest(str(key), known)}")
            action = known[key]
            action.default = self._convert(path, key, value, action)
            action.required = False

    def field_defaults(self) -> dict[str, Any]:
        """Each option's default as its dataclass declares it (a recipe changes the parser's defaults, not these)."""
        import dataclasses

        defaults: dict[str, Any] = {}
        for dtype in self.dataclass_types:
            for f in dataclasses.fields(dtype):
                if f.default is not dataclasses.MISSING:
                    defaults.setdefault(f.name, f.default)
                elif f.default_factory is not dataclasses.MISSING:
                    defaults.setdefault(f.name, f.default_factory())
        return defaults

    def error(self, message: str) -> None:  # argparse's own errors (unknown flag, bad value, missing flag)
        raise InputError.flag("", message)

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        args = list(sys.argv[1:] if argv is None else argv)
        if "--config" in args:
            index = args.index("--config")
            if index + 1 >= len(args):
                raise InputError.flag("--config", "expected a YAML file path after --config")
            self.apply_config(args[index + 1])
            del args[index : index + 2]
        namespace, remaining = self.parse_known_args(args=args)
        if remaining:
            flag = next((a for a in remaining if a.startswith("-")), remaining[0])
            raise InputError.flag(flag, f"unknown option{_closest(flag.lstrip('-'), self.known_options())}")
        check_options(vars(namespace), self.field_defaults())
        outputs = []
        for dtype in self.dataclass_types:
            import dataclasses

            keys = {f.name for f in dataclasses.fields(dtype) if f.init}
            try:
                outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in keys}))
            except InputError:  # a dataclass's own one-line check (utils.configs)
                raise
            except (TypeError, ValueError) as err:  # a dataclass's own validation (e.g. TrainingArguments)
                raise InputError.flag("", f"invalid options: {err}") from None
        return tuple(outputs)


def parse_args(*dataclass_types: type, argv: Sequence[str] | None = None, prog: str | None = None,
               description: str | None = None) -> tuple[Any, ...]:
    """Instances of ``dataclass_types`` from flags and an optional ``--config`` recipe (flags win)."""
    return LamarParser(list(dataclass_types), prog=prog, description=description, epilog=CONFIG_HELP).parse(argv)


def parse_command(commands: dict[str, type], argv: Sequence[str] | None = None,
                  prog: str | None = None) -> tuple[str, Any]:
    """``command [flags]``: the first word picks one of ``commands`` (name -> dataclass), whose flags follow as
    everywhere else; ``--help`` alone lists the commands (exit 0, as argparse's own help)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        lines = [f"usage: {prog or 'command'} {{{','.join(commands)}}} [flags]  (add --help after a command)", ""]
        for name, dtype in commands.items():
            summary = (dtype.__doc__ or "").strip().splitlines()[0]
            lines.append(f"  {name:<10} {summary.split('``: ', 1)[-1]}")  # the docstring's "``command``: " cut off
        print("\n".join(lines))
        raise SystemExit(0)
    if not args or args[0] not in commands:
        raise InputError.flag(args[0] if args else "",
                              f"expected a command, one of {', '.join(commands)} (add --help after it)")
    command = args[0]
    (options,) = parse_args(commands[command], argv=args[1:], prog=f"{prog} {command}" if prog else command)
    return command, options


def run_cli(body: Callable[[], int | None], extra_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body; input problems print the project's one-line error and return exit code 2."""
    try:
        return body() or 0
    except (InputError, *extra_errors) as err:
        return report_input_error(err)
    except BrokenPipeError:  # `command | head`: the reader left; stop quietly like any Unix filter
        return quiet_broken_pipe()


def quiet_broken_pipe() -> int:
    """Point stdout at /dev/null (so Python's exit flush cannot fail again) and return the shell's code for a
    process ended by SIGPIPE (128 + 13)."""
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141
