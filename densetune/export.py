"""Deployable export: a bi-encoder or cross-encoder folder to ONNX where sentence-transformers looks for it,
checked against torch; and ``densetune export``.

One job: ``MODEL`` (a densetune, sentence-transformers or transformers folder) -> ``OUT`` = a copy of the
folder plus ``onnx/model.onnx`` (fp32) and, with ``--quantize int8``, ``onnx/model_qint8.onnx`` (dynamic
int8 weights, onnxruntime's quantizer). The graph is the transformer only, with the inputs and outputs
Optimum's ORT models expect (``input_ids``, ``attention_mask``[, ``token_type_ids``] ->
``last_hidden_state`` for bi-encoders, ``logits`` for cross-encoders), so
``SentenceTransformer(OUT, backend="onnx")`` and ``CrossEncoder(OUT, backend="onnx")`` load it and apply the
folder's own pooling / normalisation / activation modules (``model_kwargs={"file_name":
"onnx/model_qint8.onnx"}`` picks the int8 file). Those loaders need ``optimum[onnxruntime]``; densetune
itself runs the files with onnxruntime alone (:func:`load_onnx_biencoder`, :class:`OnnxCrossEncoder`).

After writing, the export is checked: the fp32 graph must reproduce the torch model within ``1e-4``
(embeddings after densetune's pooling and normalisation, or reranker logits) on texts of varied lengths,
else the command fails. The int8 file's deviation is printed, not checked (quantisation changes scores).

Not exported: decoder (LLM) rerankers, which score the "Yes" token of a causal LM, and bi-encoders with
separate query and passage towers.
"""

from __future__ import annotations

import argparse
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from densetune.errors import DataError, DensetuneError

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
TOLERANCE = 1e-4  # fp32 ONNX vs torch, max absolute difference
OPSET = 17
QUANTIZE = ("int8",)
# texts of varied lengths (one long enough to be truncated by small models) for the export check
CHECK_TEXTS = (
    "what causes the seasons",
    "Hard negatives are passages that look relevant to a query but do not answer it.",
    "a",
    "Retrieval models map queries and passages into one vector space; " * 12,
)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DensetuneError(
            "ONNX export needs onnxruntime and onnx: pip install 'densetune[onnx]'"
        ) from None
    return onnxruntime


def model_kind(path: str | Path) -> str:
    """``bi-encoder`` or ``cross-encoder`` (:func:`densetune.models.loaders.model_kind`); what one ONNX graph
    cannot hold (separate query and passage towers, decoder LLM rerankers) is refused."""
    from densetune.models.loaders import CROSS_ENCODER
    from densetune.models.loaders import model_kind as folder_kind
    from densetune.models.loading import reranker_backbone

    path = Path(path)
    if (path / "query_encoder").is_dir():
        # one ONNX graph is one transformer: what sentence-transformers' backend="onnx" loads
        raise DensetuneError(f"{path}: models with separate query and passage towers are not exported yet")
    kind = folder_kind(path)
    if kind == CROSS_ENCODER and reranker_backbone(str(path)) == "decoder":
        raise DensetuneError(f"{path}: decoder (LLM) rerankers cannot be exported to ONNX yet")
    return kind


class _Graph(nn.Module):
    """The traced function: named tensors in, one tensor out (positional, as the ONNX exporter wants)."""

    def __init__(self, backbone: nn.Module, input_names: list[str], output: str):
        super().__init__()
        self.backbone, self.input_names, self.output = backbone, input_names, output

    def forward(self, *tensors):
        return getattr(self.backbone(**dict(zip(self.input_names, tensors))), self.output)


def _load_backbone(path: Path, kind: str) -> nn.Module:
    """The torch transformer in float32 with eager attention (its masking traces into plain ops)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if kind == "cross-encoder" else AutoModel
    try:
        model = cls.from_pretrained(str(path), attn_implementation="eager", dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise DensetuneError(f"{path}: could not load the model: {err}") from None
    return model.eval()


def _input_names(backbone: nn.Module, tokenizer) -> list[str]:
    import inspect

    takes = inspect.signature(backbone.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in takes]
    return [n for n in names if n in tokenizer.model_input_names or n == "attention_mask"]


def export_graph(backbone: nn.Module, tokenizer, kind: str, out_file: Path) -> list[str]:
    """Write ``backbone`` as ONNX (dynamic batch and sequence axes); returns the graph's input names."""
    _onnxruntime()
    output = "logits" if kind == "cross-encoder" else "last_hidden_state"
    names = _input_names(backbone, tokenizer)
    sample = tokenizer(
        ["an example input", "a second, longer example input"], padding=True, return_tensors="pt"
    )
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes[output] = {0: "batch_size"} if kind == "cross-encoder" else {0: "batch_size", 1: "sequence_length"}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer flags transformers' padding check (constant when there is no KV cache) and
        # opset-9 style indexing; export_onnx checks the result on other shapes instead of trusting them
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        try:
            torch.onnx.export(
                _Graph(backbone, names, output),
                tuple(sample[n] for n in names),
                str(out_file),
                input_names=names,
                output_names=[output],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic axes as given
            )
        except Exception as err:  # the exporter raises many types; the user needs one line
            raise DensetuneError(f"ONNX export of {type(backbone).__name__} failed: {err}") from None
    return names


def quantize_int8(fp32_file: Path, out_file: Path) -> None:
    """Dynamic int8 quantisation of the weights (activations quantised at run time), onnxruntime's."""
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_file), str(out_file), weight_type=QuantType.QInt8)


class OnnxBackbone(nn.Module):
    """An exported transformer run by onnxruntime behind the torch call a densetune model makes:
    ``backbone(input_ids=..., attention_mask=...)`` -> an object with ``last_hidden_state`` / ``logits``."""

    def __init__(self, onnx_file: str | Path, config: Any, *, threads: int | None = None):
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = self.session.get_outputs()[0].name
        self.config = config
        # the models ask for their device through their parameters; ONNX runs on the CPU
        self._anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_: Any):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {}
        for name in self.inputs:
            tensor = given[name] if given[name] is not None else torch.zeros_like(input_ids)
            feed[name] = tensor.detach().cpu().numpy().astype(np.int64)
        result = torch.from_numpy(self.session.run([self.output], feed)[0])
        return SimpleNamespace(**{self.output: result})


def load_onnx_biencoder(path: str | Path, file_name: str = f"{ONNX_DIR}/{FP32_FILE}", *, threads=None):
    """A :class:`densetune.models.biencoder.BiEncoder` whose transformer is ``path/file_name`` under
    onnxruntime (pooling, normalisation and prefixes from the folder, as torch loading reads them)."""
    from densetune.models.biencoder import BiEncoder

    model = BiEncoder.from_pretrained(str(path))
    model.encoder = OnnxBackbone(Path(path) / file_name, model.encoder.config, threads=threads)
    return model


def load_onnx_crossencoder(path: str | Path, file_name: str = f"{ONNX_DIR}/{FP32_FILE}", *, threads=None):
    """A :class:`densetune.models.crossencoder.CrossEncoder` whose transformer runs under onnxruntime."""
    from densetune.models.crossencoder import CrossEncoder

    model = CrossEncoder.from_pretrained(str(path))
    model.backbone = OnnxBackbone(Path(path) / file_name, model.backbone.config, threads=threads)
    return model


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how far each file is from torch (max absolute difference)."""

    kind: str
    out: Path
    files: list[Path] = field(default_factory=list)
    max_diff: dict[str, float] = field(default_factory=dict)


def _outputs(model, kind: str) -> np.ndarray:
    """Embeddings (bi-encoders) or logits (cross-encoders) of the check texts."""
    texts = list(CHECK_TEXTS)
    with torch.no_grad():
        if kind == "cross-encoder":
            return model.score_pairs(texts, texts[::-1], batch_size=2).numpy()
        return np.concatenate(
            [model.encode_texts(texts, is_query=q, batch_size=2).numpy() for q in (True, False)]
        )


def export_onnx(
    model: str | Path, out: str | Path, *, quantize: str | None = None, tolerance: float = TOLERANCE
) -> ExportResult:
    """Export a model folder to ONNX (module docstring) and check the fp32 file against torch.

    Args:
        model: a bi-encoder or (encoder) cross-encoder folder.
        out: output folder (the model folder is copied there first; may be ``model`` itself).
        quantize: None or ``int8`` (also write ``onnx/model_qint8.onnx``).
        tolerance: the largest absolute difference from torch the fp32 export may have.

    Raises:
        DensetuneError: onnxruntime missing, unsupported model, or an fp32 export off by more than
            ``tolerance``.
    """
    from densetune.models.biencoder import BiEncoder
    from densetune.models.crossencoder import CrossEncoder

    if quantize not in (None, *QUANTIZE):
        raise DensetuneError(f"unknown quantization {quantize!r}; expected one of {', '.join(QUANTIZE)}")
    _onnxruntime()
    model, out = Path(model), Path(out)
    if not model.is_dir():
        raise DataError("model folder not found", model)
    kind = model_kind(model)
    if out.resolve() != model.resolve():
        shutil.copytree(model, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ONNX_DIR))
    loader = CrossEncoder if kind == "cross-encoder" else BiEncoder
    torch_model = loader.from_pretrained(str(out)).to("cpu").eval()
    reference = _outputs(torch_model, kind)  # before tracing, from the model as users load it
    result = ExportResult(kind, out)
    fp32 = out / ONNX_DIR / FP32_FILE
    export_graph(_load_backbone(out, kind), torch_model.tokenizer, kind, fp32)
    result.files.append(fp32)
    files = {"fp32": fp32}
    if quantize == "int8":
        int8 = out / ONNX_DIR / INT8_FILE
        quantize_int8(fp32, int8)
        result.files.append(int8)
        files["int8"] = int8
    onnx_loader = load_onnx_crossencoder if kind == "cross-encoder" else load_onnx_biencoder
    for name, path in files.items():
        onnx_model = onnx_loader(out, str(path.relative_to(out)))
        result.max_diff[name] = float(np.abs(_outputs(onnx_model, kind) - reference).max())
    if result.max_diff["fp32"] > tolerance:
        raise DensetuneError(
            f"{fp32}: the ONNX export differs from torch by {result.max_diff['fp32']:.2e} "
            f"(more than {tolerance:g}); the model may use an operation the exporter does not trace faithfully"
        )
    return result


# ---------------------------------------------------------------------------------------------------------
# densetune export


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="bi-encoder or cross-encoder folder")
    parser.add_argument("--to", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    parser.add_argument("--quantize", choices=QUANTIZE, default=None, help="also write an int8 model")
    parser.add_argument("--out", required=True, help="output folder (a copy of MODEL plus onnx/)")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = export_onnx(args.model, args.out, quantize=args.quantize)
    for path in result.files:
        name = "int8" if path.name == INT8_FILE else "fp32"
        print(f"wrote {path} (max |onnx - torch| = {result.max_diff[name]:.2e})")
    cls = "CrossEncoder" if result.kind == "cross-encoder" else "SentenceTransformer"
    print(
        f"exported the {result.kind} in {time.perf_counter() - start:.1f}s; load it with "
        f'{cls}("{result.out}", backend="onnx") (needs optimum[onnxruntime])'
    )
    return 0
