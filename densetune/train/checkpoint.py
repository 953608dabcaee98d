"""Training checkpoints: written atomically, found again for ``resume=auto``, pruned to the last K.

A checkpoint is a directory ``<output>/checkpoints/step_00000120/`` holding

- ``model.safetensors``: the trainable parameters (all of them for full fine-tuning, the adapters for LoRA),
- ``optimizer.pt``: AdamW state (moments and step counts),
- ``trainer.pt``: scheduler state, each rank's StatefulDataLoader state (with its batch sampler's) and each
  rank's RNG states (python, numpy, torch, cuda),
- ``config.yaml``: the resolved config the run used,
- ``state.json``: the :class:`ResumeState` sidecar, readable by a person (step, epoch, position, seed...).

It is written into a temporary directory beside its final place and moved there with one ``os.replace``,
so a run killed while saving leaves no half checkpoint under a ``step_*`` name. ``state.json`` records the
run's id and each file's size and SHA-256 (:func:`verify_checkpoint`), so ``resume=auto`` skips a damaged
checkpoint for the newest intact one. A disk that fills up mid-save leaves no partial directory behind
(:class:`DiskFullError` says how much space the checkpoint needed).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
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

from densetune.errors import ConfigError, DensetuneError

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
        run_id: the id of the run that wrote the checkpoint (also in ``<output>/run.json``): a run only
            resumes or prunes checkpoints of its own.
        files: each checkpoint file's ``{"size": bytes, "sha256": hex}``, written last and checked on resume.
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
    run_id: str = ""
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

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


def prune_checkpoints(root: str | Path, keep: int, current: str | Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and leftovers of interrupted saves); return the deleted.

    With ``current`` (the checkpoint just written) that one is the newest: checkpoints of later steps are
    from a future this run abandoned (it resumed from an earlier one) and are deleted, so that
    ``resume=auto`` can never pick them.
    """
    root = Path(root)
    ckpts = list_checkpoints(root)
    doomed = []
    if current is not None:
        step = _step_of(Path(current))
        doomed = [p for p in ckpts if _step_of(p) > step]
        ckpts = [p for p in ckpts if _step_of(p) <= step]
    doomed += ckpts[: max(0, len(ckpts) - keep)]
    if root.is_dir():
        doomed += [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _step_of(path: Path) -> int:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else -1


class DiskFullError(DensetuneError):
    """The disk filled up while a checkpoint was written; the partial checkpoint is already removed."""


CHECKED_FILES = (MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE, CONFIG_FILE)


def _fsync_write(path: Path, write: Any) -> None:
    write(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def file_record(path: Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file (read in 8 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors inside ``obj`` (dicts, lists, tuples): what saving it will take, about."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


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
        state: the resume sidecar; its ``step`` names the directory (saved with ``files`` filled in).
        model_state: trainable tensors by parameter name (saved as safetensors).
        optimizer_state: ``optimizer.state_dict()`` (or the FQN-keyed full state under FSDP).
        trainer_state: scheduler, per-rank dataloader and RNG states (see the module docstring keys).
        config_yaml: the resolved config as YAML text.

    Raises:
        DiskFullError: the disk filled up; nothing of this checkpoint is left, older ones are untouched.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, state.step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    needed = _nbytes(model_state) + _nbytes(optimizer_state) + _nbytes(trainer_state) + len(config_yaml)
    try:
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
        files = {name: file_record(tmp / name) for name in CHECKED_FILES}
        sidecar = dataclasses.replace(state, files=files).to_json()
        # The sidecar goes last: a directory without it is never taken for a complete checkpoint.
        _fsync_write(tmp / STATE_FILE, lambda p: p.write_text(sidecar, encoding="utf-8"))
    except Exception as err:
        # torch.save reports a full disk as a RuntimeError without errno: judge by the space left too.
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free
        full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < needed
        if not full:
            raise
        last = latest_checkpoint(root)
        kept = f"the last good checkpoint {last} is kept" if last else "there is no earlier checkpoint"
        raise DiskFullError(
            f"disk full writing checkpoint {final.name} in {root}: it needs about {needed / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB are free there; the partial checkpoint was removed and {kept}. "
            "Free some space (or lower train.keep_last) and resume with resume=auto"
        ) from None
    if final.exists():  # the same step saved again (e.g. a resumed run's final save): replace it
        old = root / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    return final


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with the checkpoint at ``path`` (a missing, truncated or altered file), or None.

    Checkpoints written before sizes and hashes were recorded are checked for their files only.
    """
    path = Path(path)
    try:
        state = ResumeState.from_json((path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {STATE_FILE}"
    except (OSError, ValueError, TypeError) as err:
        return f"{STATE_FILE} is unreadable ({type(err).__name__}: {err})"
    for name in CHECKED_FILES:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        expected = state.files.get(name)
        if not expected:
            continue
        size = file.stat().st_size
        if size != expected.get("size"):
            return f"{name} is {size} bytes, {expected.get('size')} were written"
        if file_record(file)["sha256"] != expected.get("sha256"):
            return f"{name} does not match the SHA-256 recorded when it was written (corrupted)"
    return None


def resolve_resume(
    resume: str | None, root: str | Path, say: Any = print, run_id: str | None = None
) -> Path | None:
    """The checkpoint to resume from: None for a fresh run; for ``auto`` the newest intact one under
    ``root`` (of run ``run_id`` when given), saying which damaged or foreign ones it skipped.

    Raises:
        ConfigError: ``resume`` names a directory that is not a complete, intact checkpoint.
    """
    if resume is None:
        return None
    if resume == "auto":
        for path in reversed(list_checkpoints(root)):
            problem = checkpoint_problem(path)
            if problem:
                say(f"resume=auto: skipping damaged checkpoint {path}: {problem}")
                continue
            owner = ResumeState.from_json((path / STATE_FILE).read_text(encoding="utf-8")).run_id
            if run_id and owner and owner != run_id:
                say(
                    f"resume=auto: skipping {path}: written by run {owner}, not by this directory's run {run_id}"
                )
                continue
            return path
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(
            "resume", f"{path} is not a complete checkpoint (no {STATE_FILE}); expected a step_* dir"
        )
    problem = checkpoint_problem(path)
    if problem:
        raise ConfigError("resume", f"{path} is a damaged checkpoint: {problem}")
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
