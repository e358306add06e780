"""Atomic output files and one-line input errors, shared by every script."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO


COMMAND_LINE = "<command line>"  # the source an InputError names for a flag value or combination


class InputError(ValueError):
    """Bad user input. ``str()`` is one line naming the file, the record or line, the field and what was expected.

    A bad file is ``InputError(path, where, message)``; a bad flag value or combination (or a library call's
    arguments) is :meth:`flag`, so every such error reads ``<command line>: --flag: message``.
    """

    def __init__(self, path: str | os.PathLike[str], where: str, message: str) -> None:
        self.path = str(path)
        self.where = where
        self.message = message
        location = f"{self.path}: {where}" if where else self.path
        super().__init__(f"{location}: {message}")

    @classmethod
    def flag(cls, flag: str, message: str, value: Any = None) -> "InputError":
        """A bad flag value or flag combination: ``<command line>: --flag: message``; a ``value`` is said inside the
        message ("got 'vllm': ..."), so the flag is always the place named. ``flag`` is "" for the command line as a
        whole (argparse's own errors)."""
        if value is not None:
            message = f"got {value!r}: {message}"
        return cls(COMMAND_LINE, flag, message)


def _disk_errors() -> dict[int, str]:
    import errno

    return {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "no permission to write there",
            errno.EPERM: "no permission to write there", errno.EFBIG: "the file is too large for the file system"}


#: Write failures that are the environment's, not a bug: one line naming the output instead of a traceback.
_DISK_ERRORS = _disk_errors()


def disk_error(path: str | os.PathLike[str], err: OSError) -> BaseException:
    """A write failure of the environment (full disk, read-only file system) as a one-line InputError naming the file;
    any other OSError is returned unchanged (a bug to see in full)."""
    if err.errno in _DISK_ERRORS:
        return InputError(path, "", f"cannot write: {_DISK_ERRORS[err.errno]}")
    return err


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[TextIO]:
    """Open a temporary file beside ``path`` and move it into place only if the block succeeds.

    A killed or failing job therefore never leaves a half-written output behind.
    """
    target = check_output_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except (FileExistsError, NotADirectoryError, PermissionError):  # raced with another process
        check_output_path(path)
        raise
    except OSError as err:
        if err.errno in _DISK_ERRORS:
            raise InputError(target, "", f"cannot write this output: {_DISK_ERRORS[err.errno]}") from None
        raise
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
            raise InputError(target, "", f"cannot write this output: {_DISK_ERRORS[err.errno]}; nothing was "
                                         "written") from None
        raise


@contextlib.contextmanager
def atomic_files(paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> Iterator[list[TextIO]]:
    """Several outputs that belong together, replaced together: each is written to a temporary file beside it and
    all are moved into place only once every one is written (a failure leaves every earlier version)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_open(path, "w", **kwargs)) for path in paths]


def dump_json(handle: TextIO, data: Any, indent: int | None = 2) -> None:
    """JSON into an open text file: UTF-8 text, non-ASCII kept as is, a final newline."""
    json.dump(data, handle, indent=indent, ensure_ascii=False)
    handle.write("\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` exactly (no newline translation) and atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> None:
    """Dump JSON atomically (UTF-8, non-ASCII kept as is)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        dump_json(handle, data, indent)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (what caches and studies are keyed by: content, never names)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def reading_errors(path: str | os.PathLike[str], kind: str, prefix: str = "", utf8_hint: str = "") -> Iterator[None]:
    """Opening and decoding a ``kind`` text file (JSON, CSV, YAML): a missing file, a folder or bytes that are not
    UTF-8 become one-line InputErrors (``prefix`` names the flag, ``utf8_hint`` ends the decoding message)."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(path, "", f"{prefix}file not found") from None
    except IsADirectoryError:
        raise InputError(path, "", f"{prefix}expected a {kind} file, got a folder") from None
    except UnicodeDecodeError as err:
        raise InputError(path, f"byte {err.start}", f"{prefix}not UTF-8 text{utf8_hint}") from None
    except PermissionError:
        raise InputError(path, "", f"{prefix}cannot be read (no permission)") from None
    except RecursionError:
        raise InputError(path, "", f"{prefix}nested too deeply to read (expected a {kind} file of records)") from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """Load a JSON file, turning a syntax error into an InputError with line and column."""
    try:
        with reading_errors(path, "JSON", utf8_hint=" (expected a JSON file)"), open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise InputError(path, f"line {err.lineno} column {err.colno}", f"invalid JSON ({err.msg})") from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can span dozens of lines), else its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def checked_chunks(path: str | os.PathLike[str], chunks: Iterable[Any], what: str = "CSV") -> Iterator[Any]:
    """Chunks of a streamed table; a parser or decoding error in any of them (ValueError: pandas' ParserError,
    EmptyDataError and UnicodeDecodeError all are) becomes one InputError naming the row it came after."""
    rows = 0
    iterator = iter(chunks)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except ValueError as err:
            raise InputError(path, f"after row {rows}", f"not a readable {what} ({first_line(err)})") from None
        rows += len(chunk)
        yield chunk


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Refuse an output that cannot be written (a folder, a path through a file, no permission) before any work,
    without creating anything."""
    target = Path(path)
    if target.is_dir():
        raise InputError(target, "", "cannot write this output: it is a folder")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(target, "", "cannot write this output: a part of its folder path is a file")
    if not os.access(parent, os.W_OK):
        raise InputError(target, "", f"cannot write this output: no permission to write in {parent}")
    return target


def warn(message: str) -> None:
    """A one-line warning on stderr, for input the command accepts but the user should know about."""
    import sys

    print(f"warning: {message}", file=sys.stderr)


def report_input_error(err: BaseException) -> int:
    """Print a command-line error as the one line every script uses; return the exit code for bad input (2)."""
    import sys

    print(f"error: {err}", file=sys.stderr)
    return 2
