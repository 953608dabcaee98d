"""Run ``densetune`` as a child process: in one process, or under ``torchrun`` with several (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_densetune(
    nproc: int, *args: str, check: bool = True, timeout: int = 240
) -> subprocess.CompletedProcess:
    """``python -m densetune ARGS`` (``nproc`` 1) or ``torchrun --nproc_per_node=NPROC -m densetune ARGS``, one
    thread per process; with ``check`` a non-zero exit fails the test showing the end of the output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "densetune"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd += ["-m", "densetune"]
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
