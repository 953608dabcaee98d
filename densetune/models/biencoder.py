"""BiEncoder: a Hugging Face backbone (or two) + pooling + optional L2 normalisation -> embeddings.

API:
    BiEncoder.from_pretrained(name_or_path, *, pooling=None, normalize=None, shared=True,
        gradient_checkpointing=False, attn_implementation="sdpa", dtype=None, gguf_file=None,
        query_prefix=None, passage_prefix=None, lora=None, bidirectional=None, add_eos=None,
        special_tokens=None, max_query_len=None, max_passage_len=None) -> BiEncoder
    model(batch) -> (q [B, H] | None, p [B*n, H] | None)      batch: a data.batch.Batch (q_input_ids,
                          q_attention_mask, d_input_ids, d_attention_mask, + *_token_type_ids) or a dict of them
    model.encode(input_ids, attention_mask, *, is_query, token_type_ids=None) -> [N, H]
    model.encode_texts(texts, *, is_query, batch_size=64, max_length=None, device=None,
                       show_progress=False) -> CPU float32 [N, H], input order
    model.prompt -> data.prompts.Prompt                       the prefix rule; training collates with it too
    model.tokenize(texts, *, is_query, max_length=None) -> BatchEncoding
    model.save_pretrained(dir, *, model_card=None)
    model.tokenizer, model.config (BiEncoderConfig), model.embedding_dim

Embeddings are float32 whatever the backbone's dtype (pooling accumulates in float32; the loss needs it).

Settings resolve in this order: the argument, else ``densetune_config.json`` of a folder densetune saved,
else the sentence-transformers files of the folder (``1_Pooling/config.json``, ``modules.json``'s
Normalize, ``sentence_bert_config.json``'s max_seq_length, prompts of
``config_sentence_transformers.json``), else the architecture's default: ``mean`` pooling for encoders;
for decoder-only LLMs ``last`` pooling with EOS appended and left padding (BGE-EN-ICL, NV-Embed style).

Decoder LLM embedders:
  * EOS: the tokenizer's post-processor is set to append EOS, so every user of ``model.tokenizer`` (the
    collators, sentence-transformers after export) gets it, and truncation keeps it.
  * special tokens (e.g. :data:`ICL_SPECIAL_TOKENS`) are added to the tokenizer and the input embeddings
    resized; with LoRA their embedding rows are trained (peft ``trainable_token_indices``).
  * bidirectional attention: ``config.is_causal = False`` (transformers >= 5 then builds a bidirectional
    mask in ``create_causal_mask``) and ``is_causal = False`` on every attention module (so SDPA's and
    FlashAttention's causal shortcut is not taken). The flag is saved in config.json, so the exported
    model is bidirectional in plain transformers and sentence-transformers too.

Prefixes: :attr:`BiEncoder.prompt` (a :class:`~densetune.data.prompts.Prompt` built from the config) is the one
place a text gets its prefix: text = ``prefix + " " + text`` when the prefix is non-empty (NeMo's rule); a
prompt read from a sentence-transformers folder is prepended as is (``prefix_separator=""``). Encoding uses
it, ``densetune train`` collates with it, and the saved folder's sentence-transformers prompts ``query`` /
``document`` are its :meth:`~densetune.data.prompts.Prompt.to_sentence_transformers`.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densetune.data.batch import Batch, as_batch
from densetune.data.prompts import Prompt
from densetune.models import loading
from densetune.models.inference import map_longest_first
from densetune.models.lora import apply_lora, unwrap_peft
from densetune.models.pooling import (
    from_sentence_transformers,
    pool,
    resolve_pooling,
    to_sentence_transformers,
)

CONFIG_NAME = "densetune_config.json"
ICL_SPECIAL_TOKENS = ("<instruct>", "<query>", "<response>")
QUERY_TOWER, PASSAGE_TOWER = "query_encoder", "passage_encoder"
_DEFAULT_MAX_LEN = 512
_DEFAULT_NORMALIZE = True  # when neither the caller nor the folder says


@dataclass
class BiEncoderConfig:
    """Everything besides the backbone weights that decides the embeddings; saved as densetune_config.json."""

    pooling: str = "mean"
    normalize: bool = True
    shared: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    prefix_separator: str = " "
    add_eos: bool = False
    padding_side: str = "right"
    bidirectional: bool = False
    max_query_len: int = _DEFAULT_MAX_LEN
    max_passage_len: int = _DEFAULT_MAX_LEN
    special_tokens: list[str] = field(default_factory=list)
    base_model: str = ""
    # the dims a Matryoshka loss trained (largest first; densetune/models/matryoshka.py), [] for none
    matryoshka_dims: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.pooling = resolve_pooling(self.pooling)
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        for name in ("max_query_len", "max_passage_len"):
            if not int(getattr(self, name)) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class BiEncoder(nn.Module):
    """Query and passage encoders (one shared backbone by default) producing pooled embeddings.

    Args:
        encoder: the backbone (a transformers ``PreTrainedModel``, possibly a peft model) for queries, and
            for passages too when ``passage_encoder`` is None.
        tokenizer: its (fast) tokenizer, already set up (padding side, EOS, special tokens).
        config: a :class:`BiEncoderConfig`.
        passage_encoder: a separate passage tower, or None.

    Use :meth:`from_pretrained` to build one from a folder or hub name; the constructor is for
    backbones built in code (tests, custom models).
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        config: BiEncoderConfig | None = None,
        passage_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.config = config or BiEncoderConfig()
        self.config.shared = passage_encoder is None
        self.encoder = encoder
        self.passage_encoder = passage_encoder
        self.tokenizer = tokenizer
        for tower in self.towers().values():
            pooler = getattr(unwrap_peft(tower), "pooler", None)
            if isinstance(pooler, nn.Module):
                # BERT's pooler output is unused by embedding pooling: frozen, it holds no gradient that DDP
                # would wait for (and it stays as loaded, so the export is complete).
                pooler.requires_grad_(False)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embedding_dim(self) -> int:
        return int(unwrap_peft(self.encoder).config.hidden_size)

    def towers(self) -> dict[str, nn.Module]:
        """{"query_encoder": ..., "passage_encoder": ...}; one entry when the backbone is shared."""
        if self.passage_encoder is None:
            return {QUERY_TOWER: self.encoder}
        return {QUERY_TOWER: self.encoder, PASSAGE_TOWER: self.passage_encoder}

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        is_query: bool,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Token ids [N, L] -> embeddings [N, H] (float32, L2-normalised when ``config.normalize``)."""
        encoder = self.encoder if (is_query or self.passage_encoder is None) else self.passage_encoder
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and _takes_token_type_ids(unwrap_peft(encoder)):
            inputs["token_type_ids"] = token_type_ids
        hidden = encoder(**inputs).last_hidden_state  # [N, L, H]
        embeddings = pool(hidden, attention_mask, self.config.pooling).float()  # [N, H]
        if self.config.normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        return embeddings

    def forward(self, batch: Batch | Mapping[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """Embed a collated batch: ``(q [B, H], p [B*n, H])``; a side whose ids are absent gives None.

        ``batch`` is a :class:`~densetune.data.batch.Batch` or a seed collator's dict of the same names.
        Queries are encoded before passages (gradient caching replays this order).
        """
        batch = as_batch(batch)
        q = self._encode_side(batch.side("q_"), is_query=True) if batch.q_input_ids is not None else None
        p = self._encode_side(batch.side("d_"), is_query=False) if batch.d_input_ids is not None else None
        return q, p

    def _encode_side(self, inputs: Mapping[str, Tensor], *, is_query: bool) -> Tensor:
        """:meth:`encode` of one side's ``input_ids``, ``attention_mask`` (+ ``token_type_ids``)."""
        return self.encode(
            inputs["input_ids"],
            inputs["attention_mask"],
            is_query=is_query,
            token_type_ids=inputs.get("token_type_ids"),
        )

    @property
    def prompt(self) -> Prompt:
        """The model's :class:`~densetune.data.prompts.Prompt`: its prefixes and their separator (config)."""
        cfg = self.config
        return Prompt(cfg.query_prefix, cfg.passage_prefix, separator=cfg.prefix_separator)

    def tokenize(self, texts: Sequence[str], *, is_query: bool, max_length: int | None = None):
        """Prefixed, truncated, padded token tensors for ``texts`` (EOS appended by the tokenizer when set)."""
        if max_length is None:
            max_length = self.config.max_query_len if is_query else self.config.max_passage_len
        prompt = self.prompt
        format_text = prompt.query if is_query else prompt.passage
        return self.tokenizer(
            [format_text(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode_texts(
        self,
        texts: Sequence[str],
        *,
        is_query: bool,
        batch_size: int = 64,
        max_length: int | None = None,
        device: torch.device | str | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        """Embed raw texts for retrieval, without gradient and in eval mode.

        Texts are processed longest first (by characters) so each batch pads little; the result is in
        input order.

        Args:
            texts: the texts (prefixes are applied here).
            is_query: queries or passages (prefix, max length, tower).
            batch_size: texts per forward pass.
            max_length: token limit; default ``config.max_query_len`` / ``max_passage_len``.
            device: move the model there first (it stays there); default: where the model is.
            show_progress: a tqdm bar.

        Returns:
            CPU float32 tensor [len(texts), H].
        """
        if isinstance(texts, str):
            raise TypeError("encode_texts expects a list of strings, got a single string")
        if device is not None:
            self.to(device)
        device = self.device

        def prepare(index: list[int]) -> dict[str, Tensor]:
            return self.tokenize([texts[i] for i in index], is_query=is_query, max_length=max_length)

        def run(encoded: dict[str, Tensor]) -> Tensor:
            return self._encode_side({k: v.to(device) for k, v in encoded.items()}, is_query=is_query)

        out = torch.empty(len(texts), self.embedding_dim, dtype=torch.float32)
        return map_longest_first(
            self,
            [len(t) for t in texts],
            batch_size,
            prepare,
            run,
            out,
            desc="encode",
            show_progress=show_progress,
        )

    @property
    def inference_max_len(self) -> int:
        """The one token limit a saved folder keeps for queries and passages: the larger of the two."""
        return max(int(self.config.max_query_len), int(self.config.max_passage_len))

    # ------------------------------------------------------------------ training helpers
    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward (non-reentrant, so it composes with LoRA and grad caching)."""
        for tower in self.towers().values():
            loading.enable_gradient_checkpointing(tower)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        shared: bool = True,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = "sdpa",
        dtype: str | torch.dtype | None = None,
        gguf_file: str | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        lora: Mapping[str, Any] | None = None,
        bidirectional: bool | None = None,
        add_eos: bool | None = None,
        special_tokens: Sequence[str] | None = None,
        max_query_len: int | None = None,
        max_passage_len: int | None = None,
    ) -> BiEncoder:
        """Load a backbone and tokenizer and set them up as an embedder.

        Args:
            name_or_path: a local folder (plain transformers, sentence-transformers, or saved by densetune)
                or a hub name available offline. For a GGUF file give its folder and ``gguf_file``.
            pooling: ``mean`` | ``cls`` | ``last`` | ``weighted_mean`` (aliases accepted); None: see the
                module docstring.
            normalize: L2-normalise embeddings; None: from the folder, else True.
            shared: one backbone for queries and passages; False loads a second copy for passages.
            gradient_checkpointing: recompute activations in backward.
            attn_implementation: ``sdpa`` (default), ``eager``, ``flash_attention_2``...; if the architecture
                does not support it, eager is used.
            dtype: backbone dtype (``"bfloat16"``, ``torch.float32``, ``"auto"``); None: float32.
            gguf_file: file name of a GGUF checkpoint inside ``name_or_path``; dequantised to float on load
                (slow for large files: save the result with :meth:`save_pretrained` once).
            query_prefix, passage_prefix: static prefixes (NeMo ``query: `` / ``passage: `` style).
            lora: LoRA settings (``r``, ``alpha``, ``dropout``, ``target_modules``; see
                densetune/models/lora.py), or None for full fine-tuning.
            bidirectional: non-causal attention for decoder backbones (default False).
            add_eos: append EOS to every text; None: True for decoder-only backbones with last pooling.
            special_tokens: tokens to add to the vocabulary (e.g. :data:`ICL_SPECIAL_TOKENS`).
            max_query_len, max_passage_len: token limits for :meth:`tokenize` / :meth:`encode_texts`;
                None: from the folder, else min(tokenizer limit, position embeddings, 512).

        Raises:
            ValueError: for invalid option values, naming the valid ones.
        """
        import transformers

        path = str(name_or_path)
        saved = _read_folder_settings(path)
        tokenizer = loading.load_tokenizer(path, gguf_file)
        separate_saved = not saved.get("shared", True)
        query_path = os.path.join(path, QUERY_TOWER) if separate_saved else path
        encoder = _load_backbone(
            query_path, gguf_file=gguf_file, attn_implementation=attn_implementation, dtype=dtype
        )

        settings = _resolve_settings(
            saved,
            tokenizer,
            encoder.config,
            base_model=loading.source_name(path, gguf_file),
            pooling=pooling,
            normalize=normalize,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
            add_eos=add_eos,
            bidirectional=bidirectional,
            special_tokens=special_tokens,
            max_query_len=max_query_len,
            max_passage_len=max_passage_len,
        )
        if settings.bidirectional and int(transformers.__version__.split(".")[0]) < 5:
            raise ValueError(
                f"bidirectional=True needs transformers >= 5 (config.is_causal); found {transformers.__version__}"
            )
        if settings.bidirectional and not loading.is_decoder_only(encoder.config):
            raise ValueError(
                "bidirectional=True applies to decoder-only backbones; "
                f"{type(encoder).__name__} already attends both ways"
            )

        added_token_ids = _setup_tokenizer(tokenizer, settings)
        towers = [encoder]
        if not shared or separate_saved:
            passage_path = os.path.join(path, PASSAGE_TOWER) if separate_saved else path
            towers.append(
                _load_backbone(
                    passage_path, gguf_file=gguf_file, attn_implementation=attn_implementation, dtype=dtype
                )
            )
        prepared = []
        for tower in towers:
            _prepare_backbone(tower, tokenizer, settings)
            if gradient_checkpointing:
                loading.enable_gradient_checkpointing(tower)
            if lora is not None:
                # Rows of tokens added now start untrained: let LoRA train them (only those rows).
                tower = apply_lora(tower, lora, trainable_token_ids=added_token_ids or None)
            prepared.append(tower)
        return cls(
            prepared[0], tokenizer, settings, passage_encoder=prepared[1] if len(prepared) > 1 else None
        )

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self, save_dir: str | os.PathLike, *, model_card: Mapping[str, Any] | None = None
    ) -> None:
        """Write a folder that loads in plain transformers, sentence-transformers and densetune.

        Contents: the backbone (``config.json``, ``model.safetensors``; LoRA adapters merged in), the
        tokenizer, ``densetune_config.json``, sentence-transformers metadata (``modules.json``,
        ``sentence_bert_config.json``, ``1_Pooling/config.json``, ``2_Normalize/`` when normalising,
        ``config_sentence_transformers.json`` with prompts ``query`` / ``document``) and a model card
        ``README.md`` (base model, pooling, dimensions, plus the sections of ``model_card``: e.g. data,
        loss, hyperparameters, metrics).

        With separate towers the backbones go to ``query_encoder/`` and ``passage_encoder/``; that layout
        loads in densetune and (each tower) in transformers, not as one sentence-transformers model.
        """
        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, tower in self.towers().items():
            loading.save_backbone(tower, out if self.passage_encoder is None else out / name)
        self.tokenizer.save_pretrained(out)
        saved = asdict(self.config)
        # sentence-transformers has one token limit for queries and passages; the folder keeps one too, so
        # densetune and sentence-transformers truncate a query alike (the longer limit: nothing cut that
        # either side was configured to read)
        saved["max_query_len"] = saved["max_passage_len"] = self.inference_max_len
        loading.write_json(out / CONFIG_NAME, saved)
        if self.passage_encoder is None:
            self._write_sentence_transformers_files(out)
        (out / "README.md").write_text(self._model_card(model_card or {}), encoding="utf-8")

    def _write_sentence_transformers_files(self, out: Path) -> None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.config.normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
            (out / "2_Normalize").mkdir(exist_ok=True)
        loading.write_json(out / "modules.json", modules)
        loading.write_json(
            out / "sentence_bert_config.json",
            {"max_seq_length": self.inference_max_len, "do_lower_case": False},
        )
        st_mode = to_sentence_transformers(self.config.pooling)
        pooling = {"word_embedding_dimension": self.embedding_dim}
        for key, mode in (
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_max_tokens", "max"),
            ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
            ("pooling_mode_weightedmean_tokens", "weightedmean"),
            ("pooling_mode_lasttoken", "lasttoken"),
        ):
            pooling[key] = mode == st_mode
        (out / "1_Pooling").mkdir(exist_ok=True)
        loading.write_json(out / "1_Pooling" / "config.json", pooling)
        loading.write_json(
            out / "config_sentence_transformers.json",
            {
                "__version__": loading.st_versions(),
                "prompts": self.prompt.to_sentence_transformers(),
                "default_prompt_name": None,
                "similarity_fn_name": "cosine" if self.config.normalize else "dot",
            },
        )

    def _model_card(self, extra: Mapping[str, Any]) -> str:
        cfg = self.config
        prompts = self.prompt.to_sentence_transformers()
        backbone = unwrap_peft(self.encoder)
        settings: list[tuple[str, Any]] = [
            ("architecture", f"{type(backbone).__name__} ({backbone.config.model_type})"),
            ("embedding dimensions", self.embedding_dim),
            ("pooling", cfg.pooling),
            ("normalized", cfg.normalize),
            ("similarity", "cosine" if cfg.normalize else "dot product"),
            ("towers", "shared" if self.passage_encoder is None else "separate query / passage"),
            (
                "max tokens",
                f"{self.inference_max_len} for queries and passages alike, in densetune and in "
                "sentence-transformers (max_seq_length); longer texts are truncated",
            ),
            ("query prefix", json.dumps(prompts["query"])),
            ("passage prefix", json.dumps(prompts["document"])),
        ]
        if cfg.add_eos:
            settings.append(("EOS appended", True))
        if cfg.bidirectional:
            settings.append(("attention", "bidirectional"))
        if cfg.special_tokens:
            settings.append(("added tokens", ", ".join(cfg.special_tokens)))
        usage = [
            "from sentence_transformers import SentenceTransformer",
            "model = SentenceTransformer('PATH')",
            "q = model.encode(['a question'], prompt_name='query')",
            "d = model.encode(['a passage'], prompt_name='document')",
        ]
        tags = ["sentence-transformers", "feature-extraction", "densetune"]
        if cfg.matryoshka_dims:
            dims = ", ".join(map(str, cfg.matryoshka_dims))
            settings.append(
                (
                    "Matryoshka dimensions",
                    f"{dims}: trained to be cut to any of these (`densetune encode --dim K`, "
                    "`SentenceTransformer(path, truncate_dim=K)`)",
                )
            )
            tags.append("matryoshka")
            small = cfg.matryoshka_dims[-1]
            usage += [
                f"# the first {small} dimensions alone (a Matryoshka dimension); sentence-transformers cuts "
                "after normalising,",
                "# so normalise again for unit vectors (cosine similarity ranks alike either way)",
                f"small = SentenceTransformer('PATH', truncate_dim={small})",
                "q = small.encode(['a question'], prompt_name='query', normalize_embeddings=True)",
            ]
        return loading.render_model_card(
            base_model=cfg.base_model,
            library_name="sentence-transformers",
            pipeline_tag="sentence-similarity",
            tags=tags,
            title="densetune bi-encoder",
            settings=settings,
            # separate towers do not load as one sentence-transformers model
            usage=usage if self.passage_encoder is None else None,
            extra=extra,
        )


# ---------------------------------------------------------------------- helpers
def _takes_token_type_ids(model: nn.Module) -> bool:
    """Whether the backbone's forward names ``token_type_ids`` (BERT does; Llama would pass it on blindly)."""
    cached = getattr(model, "_densetune_takes_token_type_ids", None)
    if cached is None:
        cached = "token_type_ids" in inspect.signature(model.forward).parameters
        model._densetune_takes_token_type_ids = cached
    return cached


def folder_normalizes(path: str) -> bool:
    """Whether :meth:`BiEncoder.from_pretrained` on this folder (no ``normalize`` argument) normalises its
    embeddings, read from the folder's settings without loading the model."""
    return bool(loading.first_set(_read_folder_settings(path).get("normalize"), _DEFAULT_NORMALIZE))


def _read_folder_settings(path: str) -> dict[str, Any]:
    """densetune_config.json, else what the sentence-transformers files say; {} for anything else."""
    if not os.path.isdir(path):
        return {}
    own = os.path.join(path, CONFIG_NAME)
    if os.path.isfile(own):
        return dict(loading.read_json(own))
    settings: dict[str, Any] = {}
    modules_file = os.path.join(path, "modules.json")
    if not os.path.isfile(modules_file):
        return settings
    for module in loading.read_json(modules_file):
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            settings["pooling"] = from_sentence_transformers(
                loading.read_json(os.path.join(path, module["path"], "config.json"))
            )
        elif kind.endswith("Normalize"):
            settings["normalize"] = True
        elif not kind.endswith("Transformer"):
            warnings.warn(
                f"{path}: sentence-transformers module {kind} ({module.get('path')}) is not part of densetune's "
                "BiEncoder (transformer + pooling + normalize); its embeddings will differ from "
                "SentenceTransformer's",
                stacklevel=3,
            )
    settings.setdefault("normalize", False)
    st_config = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(st_config):
        max_len = loading.read_json(st_config).get("max_seq_length")
        if max_len:
            settings["max_query_len"] = settings["max_passage_len"] = int(max_len)
    prompts_file = os.path.join(path, "config_sentence_transformers.json")
    if os.path.isfile(prompts_file):
        prompts = loading.read_json(prompts_file).get("prompts") or {}
        settings["query_prefix"] = prompts.get("query", "")
        settings["passage_prefix"] = next(
            (prompts[k] for k in ("document", "passage", "doc") if k in prompts), ""
        )
        settings["prefix_separator"] = ""  # sentence-transformers prepends prompts verbatim
    return settings


def _resolve_settings(
    saved: Mapping[str, Any], tokenizer, backbone_config, *, base_model: str, **explicit
) -> BiEncoderConfig:
    """Each setting from the argument (not None), else the folder (``saved``), else the architecture default."""
    decoder_only = loading.is_decoder_only(backbone_config)

    def pick(key: str, default: Any) -> Any:
        return loading.first_set(explicit.get(key), saved.get(key), default)

    pooling = resolve_pooling(pick("pooling", "last" if decoder_only else "mean"))
    max_len = loading.default_max_length(tokenizer, backbone_config, _DEFAULT_MAX_LEN)
    explicit_prefix = explicit.get("query_prefix") is not None or explicit.get("passage_prefix") is not None
    return BiEncoderConfig(
        pooling=pooling,
        normalize=bool(pick("normalize", _DEFAULT_NORMALIZE)),
        query_prefix=pick("query_prefix", ""),
        passage_prefix=pick("passage_prefix", ""),
        # prefixes given here follow NeMo's "prefix text" rule; prompts read from a folder keep theirs
        prefix_separator=" " if explicit_prefix else saved.get("prefix_separator", " "),
        add_eos=bool(pick("add_eos", decoder_only and pooling == "last")),
        padding_side=saved.get("padding_side", "left" if decoder_only else tokenizer.padding_side),
        bidirectional=bool(pick("bidirectional", False)),
        max_query_len=int(pick("max_query_len", max_len)),
        max_passage_len=int(pick("max_passage_len", max_len)),
        special_tokens=list(
            dict.fromkeys([*saved.get("special_tokens", []), *(explicit.get("special_tokens") or [])])
        ),
        base_model=saved.get("base_model") or base_model,
        matryoshka_dims=[int(d) for d in saved.get("matryoshka_dims") or []],
    )


def _load_backbone(path: str, *, gguf_file: str | None, attn_implementation: str | None, dtype) -> nn.Module:
    from transformers import AutoModel

    model, _ = loading.load_backbone(
        AutoModel,
        path,
        dtype=dtype,
        # master weights for training; transformers 5 would keep the file's dtype
        default_dtype=torch.float32,
        gguf_file=gguf_file,
        attn_implementation=attn_implementation,
    )
    return model


def _setup_tokenizer(tokenizer, settings: BiEncoderConfig) -> list[int]:
    """Pad token, padding side, special tokens, EOS. Returns the ids of tokens added to the vocabulary now."""
    loading.set_padding(tokenizer, settings.padding_side)
    size_before = len(tokenizer)
    if settings.special_tokens:
        tokenizer.add_tokens(list(settings.special_tokens), special_tokens=True)
    if settings.add_eos:
        _append_eos(tokenizer)
    return [i for i in tokenizer.convert_tokens_to_ids(list(settings.special_tokens)) if i >= size_before]


def _append_eos(tokenizer) -> None:
    """Make the tokenizer append EOS to every sequence (truncation then keeps room for it)."""
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is None:
        raise ValueError("add_eos=True but the tokenizer has no EOS token")
    probe = tokenizer("a")["input_ids"]
    if probe and probe[-1] == eos_id:
        return  # already appends it
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("add_eos=True needs a fast tokenizer (its post-processor appends EOS)")
    from tokenizers import processors

    bos = tokenizer.bos_token
    adds_bos = bos is not None and probe[:1] == [tokenizer.bos_token_id]
    single = f"{bos} $A {eos}" if adds_bos else f"$A {eos}"
    pair = f"{bos} $A {eos} $B:1 {eos}:1" if adds_bos else f"$A {eos} $B:1 {eos}:1"
    special = [(eos, eos_id)] + ([(bos, tokenizer.bos_token_id)] if adds_bos else [])
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    if tokenizer("a")["input_ids"][-1] != eos_id:
        raise ValueError(f"could not make {type(tokenizer).__name__} append EOS")


def _prepare_backbone(model: nn.Module, tokenizer, settings: BiEncoderConfig) -> None:
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    loading.configure_backbone(model, tokenizer)
    if settings.bidirectional:
        model.config.is_causal = False
        for module in model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
