"""A training run's claim on its output directory: an OS lock, the run's id, and another run's leftovers.

- The lock is a POSIX record lock (``fcntl.lockf``; forked DataLoader workers do not inherit it) on
  ``<output>/.densetune.lock``: the kernel drops it when the process ends, however it ends, so a killed run leaves no stale lock and a second run on the same directory refuses.
  It is held per process: a later recipe in the same process (a test, a notebook) takes it over.
- ``<output>/run.json`` names the run that owns the directory; each checkpoint's ``state.json`` carries
  the same id, so a run resumes and prunes only checkpoints of its own.
- A fresh run in a directory that holds another run's outputs refuses, unless ``output.overwrite`` asks
  for them to be discarded (``resume=auto`` continues that run instead).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from densetune.errors import ConfigError

LOCK_FILE = ".densetune.lock"
RUN_FILE = "run.json"
_HELD: dict[str, int] = {}  # directory -> this process's locked descriptor
# What a run writes into its directory (see OutputConfig.dir); only these are ever discarded.
RUN_OUTPUTS = (
    "checkpoints",
    "model",
    "metrics.jsonl",
    "tensorboard",
    "training_curve.png",
    "config.yaml",
    RUN_FILE,
)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class OutputDir:
    """The output directory of one run, locked while the run lives (call :meth:`lock` first).

    Args:
        path: ``output.dir``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._key = ""

    def lock(self) -> None:
        """Create the directory and take its lock; another live run holding it is a one-line error.

        Raises:
            ConfigError: ``output.dir`` is a file (or lies under one), or another process holds the lock.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError("output.dir", f"{self.path} is a file; expected a directory (or a new path)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(
                "output.dir", f"cannot create {self.path}: a part of the path is a file"
            ) from None
        self._key = str(self.path.resolve())
        if self._key in _HELD:  # this process holds it already (an earlier recipe that failed in setup)
            self._fd = _HELD[self._key]
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # a POSIX record lock, not flock: forked children (DataLoader workers) do not inherit it, so
            # workers outliving their run never keep its directory locked
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                "output.dir",
                f"{self.path} is in use by another densetune train (process {holder}); wait for it to end "
                "or choose another output.dir",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = _HELD[self._key] = fd

    def release(self) -> None:
        if self._fd is not None and _HELD.get(self._key) == self._fd:
            del _HELD[self._key]
            os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None

    def run_id(self) -> str | None:
        """The id in ``run.json``, or None (no file, or an unreadable one)."""
        try:
            return str(json.loads((self.path / RUN_FILE).read_text(encoding="utf-8"))["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_run_id(self, run_id: str) -> None:
        tmp = self.path / f".tmp-{RUN_FILE}"
        tmp.write_text(json.dumps({"run_id": run_id}) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / RUN_FILE)

    def previous_outputs(self) -> list[str]:
        """Names of a run's outputs already here: checkpoints, a model, a non-empty metrics log."""
        found = []
        ckpts = self.path / "checkpoints"
        if ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir()):
            found.append("checkpoints/")
        if (self.path / "model").exists():
            found.append("model/")
        metrics = self.path / "metrics.jsonl"
        if metrics.is_file() and metrics.stat().st_size > 0:
            found.append("metrics.jsonl")
        return found

    def discard_outputs(self) -> None:
        """Delete what an earlier run wrote here (only the names in RUN_OUTPUTS; other files stay)."""
        for name in RUN_OUTPUTS:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove what interrupted saves and exports left (``.tmp-*``): safe, as the lock is held."""
        stale = [p for p in self.path.glob(".tmp-*")]
        ckpts = self.path / "checkpoints"
        if ckpts.is_dir():
            stale += list(ckpts.glob(".tmp-*"))
        for p in stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return stale

    def claim_fresh(self, overwrite: bool, say: Any) -> None:
        """Before a fresh run: refuse another run's outputs, or discard them when ``overwrite``.

        Raises:
            ConfigError: outputs of another run are here and ``overwrite`` is false.
        """
        found = self.previous_outputs()
        if not found:
            return
        owner = self.run_id()
        what = f"run {owner}'s" if owner else "another run's"
        if not overwrite:
            raise ConfigError(
                "output.dir",
                f"{self.path} holds {what} outputs ({', '.join(found)}); continue that run with resume=auto, "
                "discard them with output.overwrite=true (densetune train --overwrite), or choose another "
                "output.dir",
            )
        say(f"output.overwrite=true: discarding {what} outputs in {self.path} ({', '.join(found)})")
        self.discard_outputs()
