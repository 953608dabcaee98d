"""Helpers for the FSDP tests: launch ``densetune train`` under torchrun on CPU, read logged metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def torchrun_train(config: Path, nproc: int = 2, timeout: int = 240) -> str:
    """Run ``torchrun --standalone --nproc_per_node=nproc -m densetune train CONFIG`` on CPU (gloo).

    One torch thread per process: two ranks on a small machine run far faster without spin-waiting.

    Returns:
        The launch's stdout (rank 0 prints the plan, the log lines and the summary).

    Raises:
        AssertionError: with the tail of both streams when the launch fails.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(
        [*cmd, "-m", "densetune", "train", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def logged(out_dir: Path, kind: str) -> dict[int, dict[str, Any]]:
    """``{step: metrics}`` of the ``kind`` ("train" or "eval") records of a run's metrics log."""
    from densetune.train.logging import METRICS_FILE

    records = {}
    for line in (out_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == kind:
            records[record["step"]] = record
    return records
