"""Reliability drills for ``densetune train`` (issue 13): no run hands back the wrong model, a NaN model or a
half-written one.

Each test reproduces one failure with the tiny random BERT and a small inline file. The kill, corruption
and disk-full drills run ``densetune train`` as a real child process (``kill -9`` inside a checkpoint
write or the export, a small tmpfs for the disk); the rest call the CLI in-process, which is cheaper.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from train_helpers import make_inline_data, tiny_recipe, write_yaml

from densetune import cli
from densetune.train import checkpoint as ckpt
from densetune.train.rundir import LOCK_FILE, RUN_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]

# Runs this child: optionally patches one function so the process SIGKILLs itself at a chosen point, then
# runs the CLI. "checkpoint": after the optimizer file of the 2nd checkpoint; "export": after the model's
# config and weights are written, before the tokenizer and the rest.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from densetune import cli
    from densetune.train import checkpoint as ckpt
    from densetune.models import loading

    point, argv = sys.argv[1], sys.argv[2:]
    if point == "checkpoint":
        real, seen = ckpt._fsync_write, []
        def dying(path, write):
            real(path, write)
            if path.name == ckpt.OPTIMIZER_FILE:
                seen.append(path)
                if len(seen) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
        ckpt._fsync_write = dying
    elif point == "export":
        real_save = loading.save_backbone
        def dying_save(model, target):
            real_save(model, target)
            os.kill(os.getpid(), signal.SIGKILL)
        loading.save_backbone = dying_save
    sys.exit(cli.main(argv))
    """
)


def child(args: list[str], kill: str = "none", timeout: int = 300) -> subprocess.CompletedProcess:
    """``densetune ARGS`` in a fresh Python process (one torch thread), killed at ``kill`` if given."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD, kill, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(text: str) -> str:
    """The one ``error:`` line of a failed command (transformers' progress bars may share stderr)."""
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.fixture
def recipe(tiny_bert, tmp_path):
    """A 4-step run saving at steps 2 and 4 (keeping 3), in ``tmp/run``; returns (config path, out dir)."""
    data = make_inline_data(tmp_path / "train.jsonl", 16)
    out = tmp_path / "run"
    cfg = tiny_recipe(tiny_bert, data, out, train={"max_steps": 4, "save_every": 2, "keep_last": 3})
    return write_yaml(tmp_path / "cfg.yaml", cfg), out


def run_ids(out: Path) -> set[str]:
    return {
        ckpt.ResumeState.from_json((p / ckpt.STATE_FILE).read_text()).run_id
        for p in ckpt.list_checkpoints(out / "checkpoints")
    }


# -------------------------------------------------------------------------------- 1. a run owns its dir
def test_a_new_run_refuses_another_runs_outputs_overwrite_discards_them_auto_continues(recipe, capsys):
    cfg, out = recipe
    assert cli.main(["train", str(cfg)]) == 0
    first = json.loads((out / RUN_FILE).read_text())["run_id"]
    assert run_ids(out) == {first}
    metrics = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()

    # A fresh run in the same directory: refused, nothing touched (metrics.jsonl not truncated).
    assert cli.main(["train", str(cfg), "train.max_steps=2"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert (
        f"holds run {first}'s outputs" in line and "output.overwrite=true" in line and "resume=auto" in line
    )
    assert (out / "metrics.jsonl").read_bytes() == metrics
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000002", "step_00000004"]

    # --overwrite discards them: only the new run's checkpoints and records remain.
    assert cli.main(["train", str(cfg), "train.max_steps=2", "--overwrite"]) == 0
    assert "discarding" in capsys.readouterr().out
    second = json.loads((out / RUN_FILE).read_text())["run_id"]
    assert second != first and run_ids(out) == {second}
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000002"]
    assert max(json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()) == 2

    # resume=auto continues that run, under its id.
    assert cli.main(["train", str(cfg), "train.max_steps=4", "resume=auto"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert run_ids(out) == {second}
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")][-1] == "step_00000004"


# -------------------------------------------------------------------------------- 2. non-finite loss
def test_a_nan_loss_stops_the_run_naming_step_and_queries_and_nothing_is_saved(recipe, capsys):
    cfg, out = recipe
    args = ["optim.lr=1e30", "train.max_steps=6", "train.save_every=0", "output.save_model=true"]
    assert cli.main(["train", str(cfg), *args]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "non-finite loss or gradient norm at step" in line and "batch query ids: " in line
    assert "train.on_nonfinite=skip" in line
    assert not (out / "model").exists()
    assert ckpt.list_checkpoints(out / "checkpoints") == []


def flag_data(path: Path, huge_at: int, n: int = 16) -> Path:
    """FlagEmbedding rows with teacher scores; row ``huge_at`` has scores of +-1e308 (finite in float64)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            big = i == huge_at
            row = {
                "query": f"query number {i} about cells",
                "pos": [f"positive passage {i} on genes"],
                "neg": [f"negative passage {i}.{j} on bones" for j in range(3)],
                "pos_scores": [1e308 if big else 3.0],
                "neg_scores": [-1e308 if big else 0.5, 0.2, 0.1],
            }
            f.write(json.dumps(row) + "\n")
    return path


def test_overflowing_teacher_scores_stop_or_are_skipped_and_validate_flags_them(tiny_bert, tmp_path, capsys):
    import torch

    from densetune.models.biencoder import BiEncoder

    data = flag_data(tmp_path / "flag.jsonl", huge_at=5)
    out = tmp_path / "run"
    cfg = tiny_recipe(
        tiny_bert,
        data,
        out,
        train={"max_steps": 4, "save_every": 0, "log_every": 4},
        loss={"distillation": {"_target_": "densetune.losses.DistillationLoss"}},
        output={"dir": str(out), "tensorboard": False, "plot": False, "save_model": True},
    )
    cfg["data"]["selector"] = {"n_passages": 3, "positive": "first", "negative": "first"}
    cfg_path = write_yaml(tmp_path / "cfg.yaml", cfg)

    # validate names the file, line and field before any training
    assert cli.main(["validate", str(data)]) == 1
    report = capsys.readouterr().out
    assert f"{data}:6: pos_scores[0]: teacher score 1e+308 overflows the float32 loss" in report

    assert cli.main(["train", str(cfg_path)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "non-finite loss" in line and "flag.jsonl:5" in line  # the query id of row 6 (0-based 5)

    assert cli.main(["train", str(cfg_path), "train.on_nonfinite=skip", "--overwrite"]) == 0
    said = capsys.readouterr().out
    assert "update skipped" in said and "flag.jsonl:5" in said
    model = BiEncoder.from_pretrained(str(out / "model"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -------------------------------------------------------------------------------- 3. the directory lock
def test_a_second_process_on_the_same_output_dir_refuses_and_the_lock_dies_with_its_holder(recipe, capsys):
    cfg, out = recipe
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\ntime.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(["train", str(cfg)]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert f"in use by another densetune train (process {holder.pid})" in line
        assert not (out / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert cli.main(["train", str(cfg)]) == 0  # the kernel dropped the dead holder's lock


# -------------------------------------------------------------------------------- 4. damaged checkpoints
@pytest.mark.slow
def test_resume_auto_skips_damaged_checkpoints_and_an_explicit_damaged_one_is_an_error(recipe, capsys):
    cfg, out = recipe
    assert cli.main(["train", str(cfg), "train.max_steps=6"]) == 0  # step_2, step_4, step_6
    root = out / "checkpoints"
    step2, step4, step6 = ckpt.list_checkpoints(root)
    with open(step6 / ckpt.MODEL_FILE, "r+b") as f:  # 4 KB of 0xFF inside the weights
        f.seek(4096)
        f.write(b"\xff" * 4096)
    (step4 / ckpt.OPTIMIZER_FILE).unlink()
    capsys.readouterr()

    assert cli.main(["train", str(cfg), f"resume={step6}", "train.max_steps=8"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "step_00000006 is a damaged checkpoint: model.safetensors does not match the SHA-256" in line

    proc = child(["train", str(cfg), "resume=auto", "train.max_steps=8"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping damaged checkpoint {step6}: model.safetensors does not match" in proc.stdout
    assert f"skipping damaged checkpoint {step4}: optimizer.pt is missing" in proc.stdout
    assert f"resuming from {step2} at step 2" in proc.stdout
    newest = ckpt.latest_checkpoint(root)
    assert newest.name == "step_00000008" and ckpt.checkpoint_problem(newest) is None

    (newest / ckpt.STATE_FILE).write_text("{not json")
    assert "state.json is unreadable" in ckpt.checkpoint_problem(newest)


# -------------------------------------------------------------------------------- kill -9 drills
@pytest.mark.slow
def test_kill_inside_a_checkpoint_write_then_resume_auto_continues_from_the_last_good_one(recipe):
    cfg, out = recipe
    proc = child(["train", str(cfg)], kill="checkpoint")
    assert proc.returncode == -signal.SIGKILL
    root = out / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000002"]
    stale = list(root.glob(".tmp-step_00000004-*"))
    assert stale  # what the killed save left

    proc = child(["train", str(cfg), "resume=auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"removed {stale[0]}" in proc.stdout and "at step 2" in proc.stdout
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000002", "step_00000004"]
    assert not list(root.glob(".tmp-*"))


@pytest.mark.slow
def test_kill_during_the_export_leaves_no_model_folder_and_a_rerun_exports_it(recipe):
    from densetune.models.biencoder import BiEncoder

    cfg, out = recipe
    save = "output.save_model=true"
    proc = child(["train", str(cfg), save], kill="export")
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists()  # only a .tmp-model-* with config.json + weights
    partial = next(out.glob(".tmp-model-*"))
    assert (partial / "config.json").is_file() and not (partial / "tokenizer.json").exists()

    proc = child(["train", str(cfg), save, "resume=auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(out.glob(".tmp-*"))
    BiEncoder.from_pretrained(str(out / "model"))  # complete: loads


# -------------------------------------------------------------------------------- 5. incomplete folders
def test_loaders_refuse_an_incomplete_model_folder_in_one_line(tiny_bert, tmp_path, capsys):
    from densetune.errors import DataError
    from densetune.models.biencoder import BiEncoder
    from densetune.models.crossencoder import CrossEncoder

    def broken(name: str, damage) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_bert, folder)
        damage(folder)
        return folder

    cases = {
        "no config.json": broken("a", lambda f: (f / "config.json").unlink()),
        "no weights": broken("b", lambda f: (f / "model.safetensors").unlink()),
        "no tokenizer files": broken(
            "c",
            lambda f: [
                p.unlink() for p in f.iterdir() if p.name.startswith(("tokenizer", "vocab", "special"))
            ],
        ),
        "model.safetensors is truncated": broken(
            "d",
            lambda f: os.truncate(f / "model.safetensors", (f / "model.safetensors").stat().st_size - 100),
        ),
    }
    for what, folder in cases.items():
        for loader in (BiEncoder, CrossEncoder):
            with pytest.raises(DataError, match=f"^{folder}: incomplete model folder: {what}"):
                loader.from_pretrained(str(folder))
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"_id": "q1", "text": "cells"}\n')
    folder = cases["no tokenizer files"]
    assert (
        cli.main(["encode", "--model", str(folder), "--queries", str(queries), "--out", str(tmp_path / "e")])
        == 1
    )
    assert "incomplete model folder" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_the_real_minilm_folder_loads_and_a_copy_with_truncated_weights_is_refused(minilm_path, tmp_path):
    """The completeness check on a folder transformers wrote (no false alarm), then on a damaged copy."""
    from densetune.errors import DataError
    from densetune.models.biencoder import BiEncoder

    BiEncoder.from_pretrained(minilm_path)
    copy = tmp_path / "minilm"
    shutil.copytree(minilm_path, copy)
    weights = copy / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(DataError, match="incomplete model folder: model.safetensors is truncated"):
        BiEncoder.from_pretrained(str(copy))


# -------------------------------------------------------------------------------- 6. disk full
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 20 MB tmpfs (room for one tiny-BERT checkpoint of ~13 MB, not two); skipped where mounting is
    not allowed (not root, no CAP_SYS_ADMIN, a sandbox)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
            "test_disk_full_is_simulated_in_process covers the logic"
        )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_last_good_one_and_a_stale_tmp_never_blocks_resume(
    recipe, small_tmpfs
):
    cfg, _ = recipe
    out = small_tmpfs / "run"
    proc = child(["train", str(cfg), f"output.dir={out}"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert "disk full writing checkpoint step_00000004" in line and "needs about 1" in line
    assert "the last good checkpoint" in line and "step_00000002 is kept" in line
    root = out / "checkpoints"
    assert not list(root.glob(".tmp-*"))  # the partial checkpoint is gone
    (good,) = ckpt.list_checkpoints(root)
    assert ckpt.checkpoint_problem(good) is None

    # Space freed (bigger tmpfs), but a killed save's leftover fills most of it: resume removes it first.
    subprocess.run(["mount", "-o", "remount,size=40m", str(small_tmpfs)], check=True)
    stale = root / ".tmp-step_00000004-99999"
    stale.mkdir()
    (stale / ckpt.MODEL_FILE).write_bytes(b"\0" * (20 << 20))
    proc = child(["train", str(cfg), f"output.dir={out}", "resume=auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000002", "step_00000004"]


def test_disk_full_is_simulated_in_process(recipe, monkeypatch, capsys):
    """Where no tmpfs can be mounted: the torch.save of the 2nd checkpoint fails as a full disk does
    (ENOSPC after writing part of the file)."""
    import errno

    cfg, out = recipe
    real, calls = ckpt.torch.save, []

    def full_disk(obj, path):
        calls.append(path)
        if len(calls) == 3:  # optimizer.pt of step 4 (step 2 wrote optimizer.pt and trainer.pt)
            Path(path).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    assert cli.main(["train", str(cfg)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "disk full writing checkpoint step_00000004" in line and "step_00000002 is kept" in line
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000002"]


def test_disk_full_during_the_export_is_one_line_and_leaves_no_partial_model(recipe, monkeypatch, capsys):
    import errno

    from densetune.models import loading

    cfg, out = recipe
    real = loading.save_backbone

    def full_disk(model, target):
        real(model, target)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loading, "save_backbone", full_disk)
    assert cli.main(["train", str(cfg), "output.save_model=true"]) == 1
    assert "disk full exporting the model" in one_error_line(capsys.readouterr().err)
    assert not (out / "model").exists() and not list(out.glob(".tmp-*"))
    assert ckpt.checkpoint_problem(ckpt.latest_checkpoint(out / "checkpoints")) is None


# -------------------------------------------------------------------------------- 7. bad input, one line
def test_bad_train_inputs_are_one_line_errors_and_leave_no_empty_metrics_file(recipe, tmp_path, capsys):
    cfg, out = recipe
    cases = {
        "model.path: /no/such/model: no such directory": ["model.path=/no/such/model"],
        "output.dir: " + str(tmp_path / "a_file") + " is a file": [f"output.dir={tmp_path / 'a_file'}"],
        "optim.lr: expected a positive, finite number; got nan": ["optim.lr=.nan"],
    }
    (tmp_path / "a_file").write_text("x")
    for expected, overrides in cases.items():
        assert cli.main(["train", str(cfg), *overrides]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert expected in line, line
    assert not out.exists() or not (out / "metrics.jsonl").exists()

    # A run that fails after its logger exists (bad data) leaves no 0-byte metrics.jsonl behind.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos_doc": 3}\n')
    assert cli.main(["train", str(cfg), f"data.train=[{bad}]"]) == 1
    one_error_line(capsys.readouterr().err)
    assert not (out / "metrics.jsonl").exists()


# -------------------------------------------------------------------------------- the finite check's cost
def _watch_steps(device: str, no_sync: bool = False) -> object:
    """Steps 11-15 through a watch; step 13's loss is NaN, step 15's inf. With ``no_sync`` any host
    sync inside the steps raises (``torch.cuda.set_sync_debug_mode``)."""
    import torch

    from densetune.train.loop import _NonFiniteWatch

    watch = _NonFiniteWatch(torch.device(device), step=10)
    losses = [torch.tensor(x, device=device) for x in (1.0, 2.0, float("nan"), 1.0, float("inf"))]
    norm = torch.tensor(0.5, device=device)
    if no_sync:
        torch.cuda.set_sync_debug_mode("error")
    try:
        for step, loss in enumerate(losses, start=11):
            watch.note(step, [f"q{step}"])
            watch.observe(loss, norm)
    finally:
        if no_sync:
            torch.cuda.set_sync_debug_mode(0)
    return watch


def test_the_nonfinite_watch_reports_the_first_bad_step_once():
    watch = _watch_steps("cpu")
    assert watch.check(world_size=1) == (13, ["q13"])  # step 13 had the NaN; step 15's inf came later
    assert watch.check(world_size=1) is None  # forgotten after the check


def test_the_nonfinite_watch_costs_no_host_sync_per_step():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: torch.cuda.set_sync_debug_mode detects host syncs only on a GPU")
    watch = _watch_steps("cuda", no_sync=True)
    assert watch.check(world_size=1) == (13, ["q13"])
