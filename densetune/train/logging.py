"""Training metrics out to a person and to files: console (+ progress bar), ``metrics.jsonl``, TensorBoard, a PNG.

Only the main process (rank 0) writes; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"


class MetricsLogger:
    """Writes each record to ``<dir>/metrics.jsonl``, TensorBoard (when installed) and, for train
    records, the progress bar's postfix.

    Args:
        out_dir: the run's output directory.
        enabled: False on ranks other than 0: nothing is written or printed.
        tensorboard: also write TensorBoard scalars under ``<dir>/tensorboard`` when the package is present.
        progress_bar: draw a tqdm bar for training steps.
        resume_step: on resume, records after this step (written by the interrupted run after its last
            checkpoint) are dropped from ``metrics.jsonl`` so the file reads as one run; ``dropped`` counts
            them (the recipe says so). ``metrics.jsonl`` is created with the first record, so a run that
            fails before logging anything leaves no empty file behind.

    Example:
        >>> log = MetricsLogger("runs/x", tensorboard=False, progress_bar=False)
        >>> log.log(10, {"loss": 0.52, "lr": 1e-5}, kind="train")
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        progress_bar: bool = True,
        resume_step: int | None = None,
    ):
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS_FILE
        self._bar: Any = None
        self._tb: Any = None
        self._file: Any = None
        self.dropped = 0
        self._use_bar = progress_bar
        self.tensorboard_note = ""
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)  # a fresh run's own file (the recipe refuses another run's)
        else:
            records = read_metrics(self.path)
            kept = [r for r in records if r.get("step", 0) <= resume_step]
            self.dropped = len(records) - len(kept)
            if self.dropped:
                self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step)
            except ImportError:
                self.tensorboard_note = "TensorBoard not installed: logging to metrics.jsonl and the console"

    def start_progress(self, total: int, initial: int = 0) -> None:
        """Open the training progress bar (steps)."""
        if self.enabled and self._use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def end_progress(self) -> None:
        """Close the progress bar (later lines print plainly)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        """Record ``metrics`` at ``step``; ``kind`` is ``train`` or ``eval`` (TensorBoard prefix, JSONL field)."""
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **_plain(metrics)}
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        if kind == "train" and self._bar is not None:
            self._bar.set_postfix({k: _short(v) for k, v in metrics.items() if k in _BAR_KEYS}, refresh=False)
        elif kind != "train" or self._bar is None:
            self.print(f"[{kind} step {step}] " + "  ".join(f"{k} {_short(v)}" for k, v in metrics.items()))

    def print(self, text: str) -> None:
        """Print a line for a person without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.end_progress()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


_BAR_KEYS = ("loss", "lr", "grad_norm", "samples_per_s")


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if hasattr(v, "item") else v) for k, v in metrics.items()}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (an empty list when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Draw training loss (and learning rate) and every eval metric against steps into one PNG.

    Returns:
        The PNG path, or None when there is nothing to plot or matplotlib is missing.
    """
    records = read_metrics(metrics_path)
    train = [r for r in records if r["kind"] == "train" and "loss" in r]
    evals = [r for r in records if r["kind"] == "eval"]
    if not train and not evals:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    eval_keys = sorted(
        {k for r in evals for k, v in r.items() if k not in ("step", "kind", "time") and _num(v)}
    )
    fig, axes = plt.subplots(1, 2 if eval_keys else 1, figsize=(12 if eval_keys else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", color="tab:blue")
    if any("loss" in r for r in evals):
        pts = [(r["step"], r["loss"]) for r in evals if "loss" in r]
        ax.plot(*zip(*pts), "o-", label="dev loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if eval_keys:
        ax2 = axes[0][1]
        for k in eval_keys:
            if k == "loss":
                continue
            pts = [(r["step"], r[k]) for r in evals if _num(r.get(k))]
            ax2.plot(*zip(*pts), "o-", label=k)
        ax2.set_xlabel("optimizer step")
        ax2.set_title("evaluation")
        ax2.grid(alpha=0.3)
        ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
