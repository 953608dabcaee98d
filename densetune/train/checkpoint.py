"""Training checkpoints: written atomically, found again for ``resume=auto``, pruned to the last K.

A checkpoint is a directory ``<output>/checkpoints/step_00000120/`` holding

- ``model.safetensors``: the trainable parameters (all of them for full fine-tuning, the adapters for LoRA),
- ``optimizer.pt``: AdamW state (moments and step counts),
- ``trainer.pt``: scheduler state, each rank's StatefulDataLoader state (with its batch sampler's) and each
  rank's RNG states (python, numpy, torch, cuda),
- ``config.yaml``: the resolved config the run used,
- ``state.json``: the :class:`ResumeState` sidecar, readable by a person (step, epoch, position, seed...).

It is written into a temporary directory beside its final place and moved there with one ``os.replace``,
so a run killed while saving leaves no half checkpoint under a ``step_*`` name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from densetune.errors import ConfigError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer.pt"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
_STEP_DIR = re.compile(r"^step_(\d+)$")

# Keys of trainer.pt.
SCHEDULER_KEY = "scheduler"
DATALOADER_KEY = "dataloader"  # list, one state per rank
RNG_KEY = "rng"  # list, one state per rank


@dataclass
class ResumeState:
    """Where a run stands: everything besides tensors that an exact resume needs.

    Attributes:
        step: optimizer steps completed.
        epoch: the epoch the next batch comes from.
        batches_in_epoch: micro-batches of ``epoch`` already consumed (per rank).
        samples_seen: queries trained on so far, all ranks together.
        tokens_seen: non-padding tokens (queries + documents) trained on so far, all ranks together.
        seed: the run's seed (data order, negatives and dropout depend on it).
        world_size: processes the run used; resuming with another count would change the data order.
        batch_size: queries per device per micro-batch.
        grad_accum_steps: micro-batches per optimizer step.
        total_steps: the planned number of optimizer steps.
        elapsed_s: training seconds so far (across restarts).
        last_loss: the last logged training loss, or None.
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    seed: int = 42
    world_size: int = 1
    batch_size: int = 0
    grad_accum_steps: int = 1
    total_steps: int = 0
    elapsed_s: float = 0.0
    last_loss: float | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ResumeState:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# Values that fix the data order: resuming with a different value could not continue where the run stopped.
DATA_ORDER_KEYS = ("seed", "world_size", "batch_size", "grad_accum_steps")


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root`` (``step_*`` directories with a sidecar), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and leftovers of interrupted saves); return the deleted."""
    root = Path(root)
    ckpts = list_checkpoints(root)
    doomed = ckpts[: max(0, len(ckpts) - keep)]
    if root.is_dir():
        doomed += [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _fsync_write(path: Path, write: Any) -> None:
    write(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    root: str | Path,
    state: ResumeState,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    config_yaml: str,
) -> Path:
    """Write a checkpoint atomically and return its directory.

    Args:
        root: the checkpoints directory (created if missing).
        state: the resume sidecar; its ``step`` names the directory.
        model_state: trainable tensors by parameter name (saved as safetensors).
        optimizer_state: ``optimizer.state_dict()`` (or the FQN-keyed full state under FSDP).
        trainer_state: scheduler, per-rank dataloader and RNG states (see the module docstring keys).
        config_yaml: the resolved config as YAML text.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, state.step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # safetensors refuses tensors sharing storage (tied weights): save each storage once.
    tensors, seen = {}, set()
    for name, t in model_state.items():
        t = t.detach().cpu()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        tensors[name] = t.clone().contiguous() if ptr in seen else t.contiguous()
        seen.add(ptr)
    _fsync_write(tmp / MODEL_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _fsync_write(tmp / OPTIMIZER_FILE, lambda p: torch.save(optimizer_state, p))
    _fsync_write(tmp / TRAINER_FILE, lambda p: torch.save(trainer_state, p))
    _fsync_write(tmp / CONFIG_FILE, lambda p: p.write_text(config_yaml, encoding="utf-8"))
    # The sidecar goes last: a directory without it is never taken for a complete checkpoint.
    _fsync_write(tmp / STATE_FILE, lambda p: p.write_text(state.to_json(), encoding="utf-8"))
    if final.exists():  # the same step saved again (e.g. a resumed run's final save): replace it
        old = root / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    return final


def resolve_resume(resume: str | None, root: str | Path) -> Path | None:
    """The checkpoint to resume from: None for a fresh run, the newest under ``root`` for ``auto``.

    Raises:
        ConfigError: ``resume`` names a directory that is not a complete checkpoint.
    """
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(
            "resume", f"{path} is not a complete checkpoint (no {STATE_FILE}); expected a step_* dir"
        )
    return path


def load_checkpoint(
    path: str | Path,
) -> tuple[ResumeState, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint: (resume state, model tensors, optimizer state, trainer state), all on CPU."""
    path = Path(path)
    state = ResumeState.from_json((path / STATE_FILE).read_text(encoding="utf-8"))
    model_state = load_file(str(path / MODEL_FILE), device="cpu")
    optimizer_state = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    trainer_state = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    return state, model_state, optimizer_state, trainer_state


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, every CUDA device) as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
