"""Which arithmetic a device runs models in: ``auto`` | ``bf16`` | ``fp32`` -> a :class:`Precision` with its reason.

``auto`` picks bf16 autocast where the device computes bfloat16 natively (CUDA GPUs with bf16 support; x86
CPUs with AVX512-BF16 or AMX-BF16, as torch's own CPU feature detection reports them) and fp32 elsewhere:
on a CPU without those instructions bf16 is emulated and slower than fp32. Only the model's forward runs
under autocast; losses, scores, softmax and stored embeddings stay float32 (their callers turn autocast off
or cast). Training (``train.precision``) and every inference command (``--precision``) resolve here.

Inference on a model a command loaded for itself goes one step further: under bf16 its weights are cast to
bf16 once (``owned=True`` in :func:`set_inference_precision`), which skips autocast's per-layer casts (about
1.8x faster than autocast on a CPU forward) and measured as close to fp32 on SciFact (docs/BENCHMARKS.md).
A model that is also being trained keeps float32 weights and runs under autocast.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "bf16", "fp32")

# The attribute of a model that the no-grad inference loop (models/inference.py) reads.
INFERENCE_ATTR = "inference_precision"

_announced: set[str] = set()


@dataclass(frozen=True)
class Precision:
    """The resolved choice: ``name`` (``bf16`` or ``fp32``) for ``device_type``, and why."""

    name: str
    device_type: str
    reason: str
    weights: bool = False  # bf16 weights (a model loaded for inference) instead of autocast

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the device, or nothing (fp32)."""
        import torch

        if self.bf16:
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __str__(self) -> str:
        mode = ("bf16 weights" if self.weights else "bf16 autocast") if self.bf16 else "fp32"
        return f"precision {mode} on {self.device_type}: {self.reason}"


def cpu_bf16_features() -> list[str]:
    """The CPU's native bf16 instruction sets among AVX512-BF16 and AMX-BF16, as torch detects them
    (``torch.cpu.get_capabilities``; a torch without it reports none)."""
    import torch

    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return []
    caps = get()
    return [
        label for key, label in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if caps.get(key)
    ]


def _cuda_bf16_native() -> bool:
    import torch

    try:  # torch >= 2.5 counts emulated bf16 (pre-Ampere GPUs) unless told not to
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively, and the reason in words."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        if _cuda_bf16_native():
            return True, f"{torch.cuda.get_device_name(device)} computes bf16 natively"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        features = cpu_bf16_features()
        if features and torch.backends.mkldnn.is_available():
            return True, f"the CPU has {' and '.join(features)} (native bf16 matrix arithmetic)"
        if features:
            return False, "torch was built without oneDNN, which CPU bf16 kernels need"
        if not hasattr(torch.cpu, "get_capabilities"):
            return False, f"torch {torch.__version__} cannot report CPU features"
        return False, "the CPU has neither AVX512-BF16 nor AMX-BF16: bf16 would be emulated, slower than fp32"
    return False, f"native bf16 is not detected on {device.type} devices"


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """``auto`` | ``bf16`` | ``fp32`` on ``device`` -> :class:`Precision` (``bf16`` means bf16 autocast).

    Raises:
        ValueError: ``requested`` is not one of :data:`PRECISIONS`.
    """
    import torch

    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    native, why = native_bf16(device)
    if requested == "auto":
        return Precision("bf16" if native else "fp32", device.type, f"auto: {why}")
    if requested == "bf16" and not native:
        return Precision("bf16", device.type, f"asked for ({why}; expect it to be slow)")
    return Precision(requested, device.type, "asked for")


def add_precision_argument(parser: Any) -> None:
    """``--precision {auto,bf16,fp32}`` (default auto) on a command's argparse parser or group."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="model arithmetic: auto (default) = bf16 where the device computes bf16 natively "
        "(CUDA with bf16, CPUs with AVX512-BF16 / AMX), fp32 elsewhere; outputs stay float32",
    )


def announce(precision: Precision, say: Any = None) -> None:
    """Print ``precision`` (with its reason) once per process; ``say`` replaces ``print``."""
    text = str(precision)
    if text in _announced:
        return
    _announced.add(text)
    (say or (lambda s: print(s, flush=True)))(text)


def set_inference_precision(model: Any, requested: str | None, *, owned: bool = False) -> Precision | None:
    """Resolve ``requested`` for the device ``model`` is on, announce it, and make the model's no-grad
    inference loop (``encode_texts`` / ``score_pairs``) run its forwards under it; None leaves the model
    as it is (fp32 unless the caller's own autocast is active).

    ``owned``: the model was loaded for inference only, so under bf16 its weights are cast to bf16 (in
    place) instead of running autocast; otherwise (a model that is also trained) they are left as they are.
    """
    import dataclasses

    import torch

    if requested is None:
        return None
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    precision = resolve_precision(requested, device)
    if precision.bf16 and owned:
        model.to(torch.bfloat16)
        precision = dataclasses.replace(precision, weights=True)
    else:
        setattr(model, INFERENCE_ATTR, precision)
    announce(precision)
    return precision
