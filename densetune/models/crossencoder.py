"""CrossEncoder: a reranker that reads a (query, passage) pair and gives one relevance score.

API:
    CrossEncoder.from_pretrained(path, *, kind="auto", max_length=512, prompt_template=None, lora=None,
        gguf_file=None, num_labels=1, dtype=None, attn_implementation="sdpa",
        gradient_checkpointing=False) -> CrossEncoder
    model(batch) -> scores [B*n] float32          batch: input_ids, attention_mask (+ token_type_ids)
    model.tokenize_pairs(queries, passages, *, max_length=None) -> dict of [N, L] tensors
    model.collate(items) -> batch                 Groups or NeMo dicts -> tensors + labels + n_passages
    model.collator -> RerankerCollator            the same as a picklable collate_fn (no weights)
    model.score_pairs(queries, passages, batch_size=32, show_progress=False) -> CPU float32 [N]
    model.save_pretrained(dir, *, model_card=None)

Two kinds of reranker:

* ``encoder`` (BERT, MiniLM, XLM-R, ...): ``AutoModelForSequenceClassification`` with one output; the score
  is the raw logit. A pair is tokenised as a text pair, ``tokenizer(query, passage,
  truncation="longest_first", max_length=max_length)``, which is what ``sentence_transformers.CrossEncoder``
  does: a folder written by :meth:`CrossEncoder.save_pretrained` loads there and ``predict`` gives the same
  numbers (the saved activation is the identity, so ST returns logits too, not sigmoids). With
  ``prompt_template`` (e.g. NeMo Automodel's :data:`NEMO_RERANK_TEMPLATE`) each pair is instead formatted
  into one text, as NeMo's ``CrossEncoderCollator`` does; sentence-transformers has no such option, so a
  model trained that way only scores the same there when you format the text yourself.
  Initialising from a plain encoder (e.g. all-MiniLM-L6-v2) creates a fresh, random scoring head: a
  warning says so once per model path.
* ``decoder`` (an LLM: Gemma, Llama, Qwen, SmolLM2, ...): FlagEmbedding's LLM reranker
  (``FlagLLMReranker``, bge-reranker-v2-gemma). The input is
  ``[BOS] "A: {query}" "\\n" "B: {passage}" "\\n" {LLM_RERANK_PROMPT}`` where
  :data:`LLM_RERANK_PROMPT` is FlagEmbedding's default ``"Given a query A and a passage B, determine whether
  the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'."``; the
  query part is cut to ``3/4 * max_length`` tokens, the passage so that BOS + query + "\\n" + passage fit in
  ``max_length`` (the prompt comes on top, as in FlagEmbedding), and the score is the logit of the token
  ``"Yes"`` (first token of ``tokenizer("Yes")``) at the last position. Rows are padded on the left, and
  position ids are counted from each row's first real token, so a pair's score does not depend on what it
  is batched with. LoRA (``lora={...}``) goes through peft; :meth:`save_pretrained` merges it.
  A decoder folder saves as a plain transformers causal LM (loadable by FlagEmbedding's ``FlagLLMReranker``,
  which builds the same input); sentence-transformers' causal-LM cross-encoder uses a different input and
  score ("yes" - "no" logits), so it is not a drop-in there.

Training: :meth:`CrossEncoder.collate` turns groups ``[positive, neg_1, ..., neg_{n-1}]`` into ``n`` rows per
query (positive first), tokenised exactly as :meth:`score_pairs` does, so what is trained is what is scored;
:func:`densetune.losses.reranker.loss_step` runs the forward and
:class:`~densetune.losses.reranker.RerankerLoss` (listwise cross-entropy with target 0, optional
BCE, optional distillation from teacher scores through :class:`densetune.losses.DistillationLoss`). The
NeMo-style :class:`densetune.data.collators.CrossEncoderCollator` output is accepted as well (``labels``
[B] gives the number of queries); it formats pairs with a template, so use it with a model whose
``prompt_template`` is that template.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from densetune.data.batch import PairBatch, as_pair_batch
from densetune.models import loading
from densetune.models.inference import map_longest_first
from densetune.models.lora import apply_lora, unwrap_peft

__all__ = [
    "CONFIG_NAME",
    "LLM_RERANK_PROMPT",
    "NEMO_RERANK_TEMPLATE",
    "CrossEncoder",
    "CrossEncoderConfig",
    "RerankerCollator",
]

CONFIG_NAME = "densetune_crossencoder.json"
KINDS = ("auto", "encoder", "decoder")
# NeMo Automodel's CrossEncoderCollator default template.
NEMO_RERANK_TEMPLATE = "question:{query} \n \n passage:{passage}"
# FlagEmbedding's default instruction for LLM rerankers (FlagLLMReranker, bge-reranker-v2-gemma).
LLM_RERANK_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
# sentence-transformers reads the activation applied to logits from the saved config: identity = raw logits.
_ST_IDENTITY = "torch.nn.modules.linear.Identity"
# Encoder heads that a plain encoder checkpoint lacks (trained in full even under LoRA).
_HEAD_NAMES = ("classifier", "score", "pooler")
_warned_fresh_head: set[str] = set()


@dataclass
class CrossEncoderConfig:
    """Everything besides the weights that decides the scores; saved as ``densetune_crossencoder.json``.

    Attributes:
        kind: ``encoder`` or ``decoder`` (see the module docstring).
        max_length: token limit of a pair (decoders: before the instruction is appended).
        prompt_template: None (encoders: text pairs; decoders: FlagEmbedding's layout) or a template with
            ``{query}`` and ``{passage}`` that formats each pair into one text.
        llm_prompt: decoders: the instruction after the passage.
        yes_token: decoders: the token whose last-position logit is the score.
        base_model: where the weights came from (model card).
    """

    kind: str = "encoder"
    max_length: int = 512
    prompt_template: str | None = None
    llm_prompt: str = LLM_RERANK_PROMPT
    yes_token: str = "Yes"
    base_model: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("encoder", "decoder"):
            raise ValueError(f"kind must be 'encoder' or 'decoder', got {self.kind!r}")
        if not int(self.max_length) >= 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {self.max_length}")
        self.max_length = int(self.max_length)
        if self.prompt_template is not None and (
            "{query}" not in self.prompt_template or "{passage}" not in self.prompt_template
        ):
            raise ValueError(
                f"prompt_template must contain {{query}} and {{passage}}, got {self.prompt_template!r}; "
                "or pass None for text pairs"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrossEncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RerankerCollator:
    """Pairs and groups -> tensors, the one place that decides what a reranker reads.

    :meth:`CrossEncoder.score_pairs` and training batches both go through it, so what is trained is what is
    scored. It holds the tokenizer and the settings only (no weights): cheap to send to DataLoader workers.
    Get it as ``model.collator`` and pass it as the ``collate_fn``.

    Args:
        tokenizer: the model's tokenizer (decoders: already set to pad on the left).
        config: the model's :class:`CrossEncoderConfig`.
    """

    def __init__(self, tokenizer: Any, config: CrossEncoderConfig):
        self.tokenizer = tokenizer
        self.config = config

    def tokenize_pairs(
        self, queries: Sequence[str], passages: Sequence[str], *, max_length: int | None = None
    ) -> dict[str, Tensor]:
        """Token tensors [N, L] for N pairs, built as the module docstring describes for this kind.

        Raises:
            ValueError: ``queries`` and ``passages`` differ in length.
        """
        if len(queries) != len(passages):
            raise ValueError(
                f"got {len(queries)} queries and {len(passages)} passages; pairs need equal counts"
            )
        max_length = int(max_length or self.config.max_length)
        template = self.config.prompt_template
        if self.config.kind == "encoder":
            if template is not None:
                texts = [template.format(query=q, passage=p) for q, p in zip(queries, passages)]
                enc = self.tokenizer(
                    texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
                )
            else:
                enc = self.tokenizer(
                    list(queries),
                    list(passages),
                    truncation="longest_first",
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                )
            return dict(enc)
        return self._decoder_inputs(queries, passages, max_length)

    def _decoder_inputs(
        self, queries: Sequence[str], passages: Sequence[str], max_length: int
    ) -> dict[str, Tensor]:
        tok = self.tokenizer
        sep = tok("\n", add_special_tokens=False)["input_ids"]
        prompt = tok(self.config.llm_prompt, add_special_tokens=False)["input_ids"]
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        rows: list[list[int]] = []
        if self.config.prompt_template is not None:
            texts = [
                self.config.prompt_template.format(query=q, passage=p) for q, p in zip(queries, passages)
            ]
            body = tok(texts, add_special_tokens=False, truncation=True, max_length=max_length - len(bos))[
                "input_ids"
            ]
            rows = [bos + list(ids) + sep + prompt for ids in body]
        else:
            q_ids = tok([f"A: {q}" for q in queries], add_special_tokens=False, truncation=True,
                        max_length=max_length * 3 // 4)["input_ids"]  # fmt: skip
            p_ids = tok([f"B: {p}" for p in passages], add_special_tokens=False, truncation=True,
                        max_length=max_length)["input_ids"]  # fmt: skip
            for q, p in zip(q_ids, p_ids):
                first = bos + list(q)
                second = (sep + list(p))[: max(0, max_length - len(first))]  # FlagEmbedding: only_second
                rows.append(first + second + sep + prompt)
        return _pad_left(rows, tok.pad_token_id)

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        """A training batch from Groups (or NeMo / LLM-Embedder dicts): n rows per query, positive first.

        Returns:
            ``input_ids``, ``attention_mask`` (+ ``token_type_ids``) [B*n, L]; ``labels`` zeros [B] (the
            positive is column 0 of each group); ``n_passages`` n; ``teacher_scores`` [B, n] float32 when
            every group has scores: :meth:`collate_groups` as a dict.

        Raises:
            ValueError: an empty batch or groups of different sizes.
        """
        return self.collate_groups(items).to_dict()

    def collate_groups(self, items: Sequence[Any]) -> PairBatch:
        """The typed :class:`~densetune.data.batch.PairBatch` of the groups (see :meth:`__call__`)."""
        from densetune.data.collators import as_groups, teacher_scores
        from densetune.data.corpus import doc_text

        groups = as_groups(items)
        if not groups:
            raise ValueError("cannot collate an empty batch")
        sizes = sorted({len(g.docs) for g in groups})
        if len(sizes) != 1 or sizes[0] == 0:
            raise ValueError(
                f"every group of a batch needs the same number (>= 1) of documents, got sizes {sizes}"
            )
        n = sizes[0]
        queries = [g.query for g in groups for _ in g.docs]
        passages = [doc_text(d) for g in groups for d in g.docs]
        batch = PairBatch.from_mapping(self.tokenize_pairs(queries, passages))
        batch.labels = torch.zeros(len(groups), dtype=torch.long)
        batch.n_passages = n
        batch.teacher_scores = teacher_scores(groups, n)
        batch.query_ids = [g.query_id for g in groups]
        return batch


class CrossEncoder(nn.Module):
    """A reranker: one relevance score per (query, passage) pair.

    Args:
        backbone: ``AutoModelForSequenceClassification`` (encoder) or ``AutoModelForCausalLM`` (decoder), or
            a peft model around one.
        tokenizer: its fast tokenizer (decoders: padding on the left, a pad token set).
        config: a :class:`CrossEncoderConfig`.

    Build one with :meth:`from_pretrained`; the constructor is for backbones made in code (tests).
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: CrossEncoderConfig):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self._yes_id: int | None = None
        self._keeps_logits: bool | None = None
        if config.kind == "decoder":
            loading.set_padding(tokenizer, "left")  # the score is read at the last position
            ids = tokenizer(config.yes_token, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"the tokenizer gives no token for yes_token {config.yes_token!r}")
            self._yes_id = int(ids[0])
        self.collator = RerankerCollator(tokenizer, config)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def yes_token_id(self) -> int | None:
        """Decoders: the vocabulary id whose last-position logit is the score; None for encoders."""
        return self._yes_id

    def base_model(self) -> nn.Module:
        """The transformers model (unwrapped from peft)."""
        return unwrap_peft(self.backbone)

    # ------------------------------------------------------------------ inputs
    def tokenize_pairs(
        self, queries: Sequence[str], passages: Sequence[str], *, max_length: int | None = None
    ) -> dict[str, Tensor]:
        """Token tensors [N, L] for N pairs (see :meth:`RerankerCollator.tokenize_pairs`)."""
        return self.collator.tokenize_pairs(queries, passages, max_length=max_length)

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        """A training batch from Groups (see :meth:`RerankerCollator.__call__`)."""
        return self.collator(items)

    # ------------------------------------------------------------------ scoring
    def forward(self, batch: PairBatch | Mapping[str, Any]) -> Tensor:
        """Scores [N] (float32) of a tokenised batch of N pairs (a :class:`~densetune.data.batch.PairBatch`, or
        a dict with ``input_ids``, ``attention_mask``, optional ``token_type_ids``; other keys are ignored)."""
        batch = as_pair_batch(batch)
        input_ids, mask = batch.input_ids, batch.attention_mask
        if self.kind == "encoder":
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            if batch.token_type_ids is not None:
                inputs["token_type_ids"] = batch.token_type_ids
            logits = self.backbone(**inputs).logits  # [N, 1]
            return logits[:, 0].float()
        # Decoder: left padding puts every row's last real token at position -1. Position ids count from the
        # first real token, so the score of a pair is the same whatever it is padded to.
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": position_ids,
        }
        if self._keeps_logits is None:
            self._keeps_logits = "logits_to_keep" in inspect.signature(self.base_model().forward).parameters
        if self._keeps_logits:
            kwargs["logits_to_keep"] = 1  # the LM head on the last position only: [N, 1, V]
        logits = self.backbone(**kwargs, use_cache=False).logits
        return logits[:, -1, self._yes_id].float()

    @torch.no_grad()
    def score_pairs(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        batch_size: int = 32,
        show_progress: bool = False,
        *,
        max_length: int | None = None,
    ) -> Tensor:
        """Score N (query, passage) pairs without gradient, in eval mode, longest pairs first.

        Args:
            queries, passages: aligned texts (a query repeats for each of its passages).
            batch_size: pairs per forward pass.
            show_progress: a tqdm bar.
            max_length: token limit; default ``config.max_length``.

        Returns:
            CPU float32 tensor [N], in input order.
        """
        if isinstance(queries, str) or isinstance(passages, str):
            raise TypeError("score_pairs expects lists of strings, got a single string")
        if len(queries) != len(passages):
            raise ValueError(
                f"got {len(queries)} queries and {len(passages)} passages; pairs need equal counts"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.device

        def prepare(index: list[int]) -> dict[str, Tensor]:
            return self.tokenize_pairs(
                [queries[i] for i in index], [passages[i] for i in index], max_length=max_length
            )

        def run(enc: dict[str, Tensor]) -> Tensor:
            return self({k: v.to(device) for k, v in enc.items()})

        lengths = [len(q) + len(p) for q, p in zip(queries, passages)]
        out = torch.empty(len(lengths), dtype=torch.float32)
        return map_longest_first(
            self, lengths, batch_size, prepare, run, out, desc="score", show_progress=show_progress
        )

    # ------------------------------------------------------------------ training helpers
    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward (non-reentrant: composes with LoRA)."""
        loading.enable_gradient_checkpointing(self.backbone)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        kind: str = "auto",
        max_length: int | None = None,
        prompt_template: str | None = None,
        lora: Mapping[str, Any] | None = None,
        gguf_file: str | None = None,
        num_labels: int = 1,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str | None = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> CrossEncoder:
        """Load a reranker, or start one from a plain encoder / LLM.

        Args:
            path: a local folder (densetune, sentence-transformers or plain transformers) or a hub name
                available offline. For a GGUF checkpoint give its folder and ``gguf_file``.
            kind: ``auto`` (a densetune folder says; else causal-LM architectures and GGUF files are
                ``decoder``, everything else ``encoder``), ``encoder`` or ``decoder``.
            max_length: token limit of a pair; None: the saved value, else min(512, the model's limits).
            prompt_template: None (text pairs / FlagEmbedding layout) or a template with ``{query}`` and
                ``{passage}`` (e.g. :data:`NEMO_RERANK_TEMPLATE`); None keeps a saved template.
            lora: LoRA settings (``r``, ``alpha``, ``dropout``, ``target_modules``; densetune/models/lora.py),
                or None for full fine-tuning. For encoders the scoring head (and BERT's pooler) is trained in
                full alongside the adapters.
            gguf_file: a GGUF file inside ``path``; dequantised to float on load (slow: save once).
            num_labels: outputs of the encoder head; only 1 (a relevance logit) is supported.
            dtype: weights dtype (``"bfloat16"``, ``torch.float32``, ``"auto"``); None: float32.
            attn_implementation: ``sdpa`` (default), ``eager``, ...; falls back to eager when unsupported.
            gradient_checkpointing: recompute activations in backward.

        Raises:
            ValueError: invalid option values, naming the valid ones.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if num_labels != 1:
            raise ValueError(f"num_labels must be 1 (one relevance logit per pair), got {num_labels}")
        path = str(path)
        if not gguf_file:
            loading.refuse_incomplete_folder(path)  # before anything reads its config
        saved = _read_saved_config(path)
        if kind == "auto":
            kind = saved.get("kind") or ("decoder" if gguf_file else loading.reranker_backbone(path))
        tokenizer = loading.load_tokenizer(path, gguf_file)
        backbone = _load_backbone(
            path, kind=kind, gguf_file=gguf_file, dtype=dtype, attn_implementation=attn_implementation
        )
        config = CrossEncoderConfig(
            kind=kind,
            max_length=int(
                loading.first_set(
                    max_length,
                    saved.get("max_length"),
                    loading.default_max_length(tokenizer, backbone.config),
                )
            ),
            prompt_template=prompt_template if prompt_template is not None else saved.get("prompt_template"),
            llm_prompt=saved.get("llm_prompt", LLM_RERANK_PROMPT),
            yes_token=saved.get("yes_token", "Yes"),
            base_model=saved.get("base_model") or loading.source_name(path, gguf_file),
        )
        if kind == "decoder":
            loading.set_padding(tokenizer, "left")  # the score is read at the last position
        loading.configure_backbone(backbone, tokenizer)
        if gradient_checkpointing:
            loading.enable_gradient_checkpointing(backbone)
        if lora is not None:
            backbone = apply_lora(backbone, _lora_spec(backbone, lora, kind))
        return cls(backbone, tokenizer, config)

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self, save_dir: str | os.PathLike, *, model_card: Mapping[str, Any] | None = None
    ) -> None:
        """Write a folder that loads in densetune, plain transformers and (encoders) sentence-transformers.

        Contents: ``config.json`` + ``model.safetensors`` (LoRA merged in), the tokenizer (its
        ``model_max_length`` set to ``max_length``), ``densetune_crossencoder.json`` and a model card
        ``README.md`` (settings, usage, plus the sections of ``model_card``, e.g. data, loss,
        hyperparameters, metrics). Encoders also get ``config_sentence_transformers.json`` and
        ``config.json["sentence_transformers"]`` with the identity activation, so
        ``sentence_transformers.CrossEncoder(dir).predict(pairs)`` returns the same raw logits as
        :meth:`score_pairs`.
        """
        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.kind == "encoder":
            self.base_model().config.sentence_transformers = {"activation_fn": _ST_IDENTITY}
        loading.save_backbone(self.backbone, out)
        previous = self.tokenizer.model_max_length
        self.tokenizer.model_max_length = self.config.max_length
        self.tokenizer.init_kwargs["model_max_length"] = self.config.max_length
        try:
            self.tokenizer.save_pretrained(out)
        finally:
            self.tokenizer.model_max_length = previous
        loading.write_json(out / CONFIG_NAME, asdict(self.config))
        if self.kind == "encoder":
            loading.write_json(
                out / "config_sentence_transformers.json",
                {
                    "__version__": loading.st_versions(),
                    "activation_fn": _ST_IDENTITY,
                    "model_type": "CrossEncoder",
                    "prompts": {},
                    "default_prompt_name": None,
                },
            )
        (out / "README.md").write_text(self._model_card(model_card or {}), encoding="utf-8")

    def _model_card(self, extra: Mapping[str, Any]) -> str:
        cfg = self.config
        base = self.base_model()
        if cfg.kind == "encoder":
            pair_format = (
                "text pair `tokenizer(query, passage)` (as sentence-transformers)"
                if cfg.prompt_template is None
                else f"one text: {json.dumps(cfg.prompt_template)}"
            )
            score = "the classification head's single logit"
        else:
            pair_format = (
                "FlagEmbedding LLM reranker: `<bos>A: {query}\\nB: {passage}\\n{prompt}`"
                if cfg.prompt_template is None
                else f"`<bos>` + {json.dumps(cfg.prompt_template)} + `\\n{{prompt}}`"
            )
            score = f"logit of {cfg.yes_token!r} at the last position"
        settings: list[tuple[str, Any]] = [
            ("kind", f"{cfg.kind} ({type(base).__name__})"),
            ("input", pair_format),
            ("max tokens", cfg.max_length),
            ("score", f"{score} (raw, no sigmoid)"),
        ]
        if cfg.kind == "decoder":
            settings.append(("instruction", json.dumps(cfg.llm_prompt)))
        if cfg.kind == "encoder" and cfg.prompt_template is None:
            usage = [
                "from sentence_transformers import CrossEncoder",
                "model = CrossEncoder('PATH')",
                "scores = model.predict([('a question', 'a passage')])  # raw logits",
            ]
        else:
            usage = [
                "from densetune.models.crossencoder import CrossEncoder",
                "model = CrossEncoder.from_pretrained('PATH')",
                "scores = model.score_pairs(['a question'], ['a passage'])",
            ]
        return loading.render_model_card(
            base_model=cfg.base_model,
            library_name="sentence-transformers" if cfg.kind == "encoder" else "transformers",
            pipeline_tag="text-ranking",
            tags=["cross-encoder", "reranker", "densetune"],
            title=f"{Path(cfg.base_model).name or 'densetune reranker'} reranker trained with densetune",
            settings=settings,
            usage=usage,
            extra=extra,
        )


# ---------------------------------------------------------------------- helpers
def _read_saved_config(path: str) -> dict[str, Any]:
    file = os.path.join(path, CONFIG_NAME)
    return dict(loading.read_json(file)) if os.path.isfile(file) else {}


def _load_backbone(
    path: str, *, kind: str, gguf_file: str | None, dtype, attn_implementation: str | None
) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind == "encoder":
        loader, head = AutoModelForSequenceClassification, {"num_labels": 1}
    else:
        loader, head = AutoModelForCausalLM, {}
    model, info = loading.load_backbone(
        loader,
        path,
        dtype=dtype,
        default_dtype=torch.float32,  # as documented and as the bi-encoder: trainable weights in full precision
        gguf_file=gguf_file,
        attn_implementation=attn_implementation,
        **head,
    )
    mismatched = [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", ())]
    fresh = sorted({*info.get("missing_keys", ()), *mismatched})
    if kind == "encoder" and fresh and path not in _warned_fresh_head:
        _warned_fresh_head.add(path)
        warnings.warn(
            f"{path}: the reranker head is newly initialised ({', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''}): "
            "its scores are random until it is trained",
            UserWarning,
            stacklevel=3,
        )
    return model


def _pad_left(rows: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    length = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            input_ids[i, length - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, length - len(r) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def _lora_spec(backbone: nn.Module, lora: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """LoRA settings; for encoders the head (and pooler) are trained in full, not adapted."""
    spec = dict(lora)
    if kind != "encoder":
        return spec
    heads = [n for n in _HEAD_NAMES if any(name.split(".")[-1] == n for name, _ in backbone.named_modules())]
    spec.setdefault("modules_to_save", heads)
    if spec.get("target_modules", "all-linear") == "all-linear":
        spec["target_modules"] = [
            name
            for name, module in backbone.named_modules()
            if isinstance(module, nn.Linear) and not any(part in heads for part in name.split("."))
        ]
    return spec
