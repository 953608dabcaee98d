"""Paths the commands read and write: one rule each, so every command reports and behaves alike.

- Inputs: :func:`check_input_file` says precisely what is wrong with a path that cannot be read as a file
  (missing, a directory, a FIFO, a device such as ``/dev/zero``, a symlink loop, a dangling symlink) instead
  of "not found" or a hang.
- Directories: :func:`walk_once` lists a directory tree following each real directory once, so a symlink
  to an ancestor (a loop) does not read the same files again and again.
- Outputs: :func:`check_output` refuses an output that exists unless ``--overwrite`` was given (one line
  naming the path and the flag); :func:`atomic_path` is where a final file is written before it is renamed
  into place, so an interrupted command never leaves a half file under the final name.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from densetune.errors import DataError, DensetuneError

OVERWRITE_FLAG = "--overwrite"


def _kind(mode: int) -> str | None:
    """What a non-regular file is, for messages; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def path_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be opened as a regular file, or None when it can (directories are a problem)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop (a link that leads back to itself)"
        if err.errno == errno.EACCES:
            return "permission denied"
        if path.is_symlink():
            return f"dangling symlink (points to {os.readlink(path)!r}, which does not exist)"
        return "not found"
    kind = _kind(st.st_mode)
    return f"is {kind}, not a regular file" if kind else None


def check_input_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path, or a DataError naming it and what is wrong (see :func:`path_problem`): ``run file
    not found``, ``is a FIFO (named pipe), not a regular file; expected a run file``."""
    problem = path_problem(path)
    if problem == "not found":
        raise DataError(f"{what} not found", path)
    if problem is not None:
        raise DataError(f"{problem}; expected a {what}", path)
    return Path(path)


def walk_once(directory: Path, keep: Callable[[Path], bool | None]) -> Iterator[Path]:
    """Paths under ``directory`` in sorted order, each real file or directory once.

    ``keep(child)`` decides for each entry (hidden ones are skipped): True yields it (a directory is not
    descended into), False skips it, None descends into a directory (a file is skipped). A directory or file
    already reached (through a symlink to an ancestor, a sibling or a file) is not read again, so a loop
    cannot multiply the data.
    """
    seen: set[tuple[int, int]] = set()

    def first_time(p: Path) -> bool:
        try:
            st = p.stat()
        except OSError:
            return True  # a broken entry: the reader says what is wrong with it
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return False
        seen.add(key)
        return True

    def visit(d: Path) -> Iterator[Path]:
        for child in sorted(d.iterdir()):
            if child.name.startswith("."):
                continue
            decision = keep(child)
            if decision and first_time(child):
                yield child
            elif decision is None and child.is_dir() and first_time(child):
                yield from visit(child)

    first_time(directory)
    yield from visit(directory)


def check_output(path: str | Path, overwrite: bool, flag: str = OVERWRITE_FLAG) -> Path:
    """The one rule for outputs: an existing output file (or a non-empty output directory) is refused
    unless ``overwrite``; an empty directory is fine.

    Raises:
        DensetuneError: ``PATH: exists; pass --overwrite to replace it``.
    """
    path = Path(path)
    if overwrite:
        return path
    if path.is_dir() and not path.is_symlink():
        if any(path.iterdir()):
            raise DensetuneError(
                f"{path}: directory exists and is not empty; pass {flag} to replace its outputs"
            )
    elif path.exists() or path.is_symlink():
        raise DensetuneError(f"{path}: exists; pass {flag} to replace it (or write to another path)")
    return path


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str = "the output") -> None:
    """The ``--overwrite`` flag every command that writes takes (same name and meaning everywhere)."""
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace {what} if it exists (default: refuse)"
    )


def tmp_path(path: Path) -> Path:
    """Where ``path`` is written before :func:`atomic_path` renames it into place."""
    return path.with_name(path.name + ".tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write to the yielded temporary path; on success it replaces ``path`` in one rename, on failure it is
    removed (the final name never holds a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path.write_text(text)`` that never leaves a half file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
