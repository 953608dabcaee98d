"""CrossEncoder: encoder (text pairs, as sentence-transformers) and decoder (FlagEmbedding LLM reranker) inputs,
scores, losses, LoRA and save/load; tiny random models for the unit tests, the real MiniLM for the slow ones."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import save_tiny_bert, save_tiny_llama

from densetune.data.records import Doc, Group
from densetune.losses.reranker import RerankerLoss, loss_step
from densetune.models.crossencoder import (
    LLM_RERANK_PROMPT,
    NEMO_RERANK_TEMPLATE,
    CrossEncoder,
)

QUERIES = ["what causes cancer", "does sleep help memory", "insulin and diet"]
PASSAGES = [
    "Tumour growth is driven by mutations in genes that control cell division. " * 3,
    "Sleep consolidates memory",
    "Insulin resistance falls with a low sugar diet and exercise, in a trial of 300 adults.",
]


def make_tiny_encoder(out: Path, tokenizer_dir: str, *, head: bool = True) -> str:
    """2-layer hidden-32 random BERT (seeded) with the MiniLM tokenizer; ``head=False``: no reranker head."""
    return save_tiny_bert(out, tokenizer_dir, num_labels=1, head="classifier" if head else "pooler")


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, minilm_path) -> str:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_ce"), minilm_path)


@pytest.fixture(scope="module")
def tiny_encoder(tiny_encoder_dir) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_encoder_dir, max_length=64)


@pytest.fixture(scope="module")
def tiny_decoder_dir(tmp_path_factory, smollm2_dir) -> str:
    """A 2-layer hidden-32 random Llama with the SmolLM2 tokenizer."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("tiny_llama"),
        smollm2_dir,
        max_positions=256,
        causal_lm=True,
        pad_token=False,
        tie_word_embeddings=True,
    )


def groups(n: int = 3, scores: bool = False) -> list[Group]:
    out = []
    for i, q in enumerate(QUERIES):
        docs = [Doc(id=f"p{i}", text=PASSAGES[i])] + [
            Doc(id=f"n{i}{j}", text=PASSAGES[(i + j) % len(PASSAGES)] + f" extra {j}") for j in range(1, n)
        ]
        out.append(
            Group(
                query=q,
                query_id=f"q{i}",
                docs=docs,
                scores=[float(n - j) for j in range(n)] if scores else None,
            )
        )
    return out


# -- encoder inputs ----------------------------------------------------------------------------------------


def test_encoder_tokenises_text_pairs_like_sentence_transformers(tiny_encoder):
    enc = tiny_encoder.tokenize_pairs(QUERIES, PASSAGES)
    ref = tiny_encoder.tokenizer(
        QUERIES, PASSAGES, truncation="longest_first", max_length=64, padding=True, return_tensors="pt"
    )
    assert torch.equal(enc["input_ids"], ref["input_ids"])
    assert torch.equal(enc["token_type_ids"], ref["token_type_ids"]) and enc["token_type_ids"].max() == 1
    assert enc["input_ids"].shape[1] <= 64
    with pytest.raises(ValueError, match="equal counts"):
        tiny_encoder.tokenize_pairs(QUERIES, PASSAGES[:2])


def test_template_collate_equals_nemo_cross_encoder_collator(tiny_encoder_dir):
    from densetune.data.collators import CrossEncoderCollator

    model = CrossEncoder.from_pretrained(
        tiny_encoder_dir, max_length=48, prompt_template=NEMO_RERANK_TEMPLATE
    )
    ours = model.collate(groups(3))
    nemo = CrossEncoderCollator(48, model.tokenizer)(groups(3))
    assert torch.equal(ours["input_ids"], nemo["input_ids"])
    assert torch.equal(ours["labels"], nemo["labels"])
    with pytest.raises(ValueError, match=r"\{query\}"):
        CrossEncoder.from_pretrained(tiny_encoder_dir, prompt_template="{query} only")


def test_collate_groups_positive_first_with_teacher_scores(tiny_encoder):
    batch = tiny_encoder.collate(groups(3, scores=True))
    assert batch["input_ids"].shape[0] == 9 and batch["n_passages"] == 3
    assert batch["labels"].tolist() == [0, 0, 0]
    assert batch["teacher_scores"].tolist() == [[3.0, 2.0, 1.0]] * 3
    first_row = tiny_encoder.tokenize_pairs([QUERIES[0]], [PASSAGES[0]])["input_ids"][0]
    assert batch["input_ids"][0, : len(first_row)].tolist() == first_row.tolist()  # positive first
    import pickle

    collator = pickle.loads(pickle.dumps(tiny_encoder.collator))  # a DataLoader worker's copy: no weights
    assert torch.equal(collator(groups(3, scores=True))["input_ids"], batch["input_ids"])
    nemo_dicts = [{"question": "q", "doc_text": ["a", "b"]}, {"question": "r", "doc_text": ["c", "d", "e"]}]
    with pytest.raises(ValueError, match="same number"):
        tiny_encoder.collate(nemo_dicts)


# -- scores ------------------------------------------------------------------------------------------------


def test_score_pairs_is_batch_independent_and_in_input_order(tiny_encoder):
    tiny_encoder.train()
    all_at_once = tiny_encoder.score_pairs(QUERIES, PASSAGES, batch_size=3)
    one_by_one = torch.cat(
        [tiny_encoder.score_pairs([q], [p], batch_size=1) for q, p in zip(QUERIES, PASSAGES)]
    )
    assert tiny_encoder.training  # restored
    assert all_at_once.dtype == torch.float32 and not all_at_once.requires_grad
    torch.testing.assert_close(all_at_once, one_by_one, atol=1e-5, rtol=0)
    with torch.no_grad():
        tiny_encoder.eval()
        direct = tiny_encoder(tiny_encoder.tokenize_pairs(QUERIES[1:2], PASSAGES[1:2]))
        tiny_encoder.train()
    torch.testing.assert_close(direct, all_at_once[1:2], atol=1e-5, rtol=0)


def test_plain_encoder_warns_once_about_a_fresh_head(tmp_path, minilm_path):
    path = make_tiny_encoder(tmp_path / "plain", minilm_path, head=False)
    with pytest.warns(UserWarning, match="newly initialised"):
        CrossEncoder.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        CrossEncoder.from_pretrained(path)  # once per path


def test_from_pretrained_rejects_bad_options(tiny_encoder_dir):
    with pytest.raises(ValueError, match="kind must be one of auto, encoder, decoder"):
        CrossEncoder.from_pretrained(tiny_encoder_dir, kind="bi")
    with pytest.raises(ValueError, match="num_labels must be 1"):
        CrossEncoder.from_pretrained(tiny_encoder_dir, num_labels=2)


# -- losses ------------------------------------------------------------------------------------------------


def test_reranker_loss_terms_match_their_definitions():
    from densetune.losses import DistillationLoss

    torch.manual_seed(0)
    scores = torch.randn(6)  # B=2, n=3
    teacher = torch.tensor([[2.0, 1.0, -1.0], [0.5, 0.7, 0.1]])
    grouped = scores.view(2, 3)
    listwise = F.cross_entropy(grouped, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(RerankerLoss()(scores, n_passages=3), listwise)
    torch.testing.assert_close(
        RerankerLoss(temperature=0.5)(scores, n_passages=3),
        F.cross_entropy(grouped / 0.5, torch.zeros(2, dtype=torch.long)),
    )
    labels = torch.tensor([1.0, 0, 0, 1, 0, 0])
    bce = F.binary_cross_entropy_with_logits(scores, labels)
    torch.testing.assert_close(RerankerLoss(listwise_weight=0, bce_weight=1)(scores, n_passages=3), bce)
    for kind in ("margin_mse", "kl"):
        ref = DistillationLoss(kind, teacher_temperature=1.0, student_temperature=1.0)(grouped, teacher)
        got = RerankerLoss(listwise_weight=0, distillation=kind)(scores, n_passages=3, teacher_scores=teacher)
        torch.testing.assert_close(got, ref)
    mixed = RerankerLoss(distillation="margin_mse", distill_weight=0.5)(
        scores, n_passages=3, teacher_scores=teacher
    )
    torch.testing.assert_close(mixed, listwise + 0.5 * DistillationLoss("margin_mse")(grouped, teacher))
    # without teacher scores the distillation term is skipped, unless it is the only one
    torch.testing.assert_close(RerankerLoss(distillation="kl")(scores, n_passages=3), listwise)
    with pytest.raises(ValueError, match="no teacher_scores"):
        RerankerLoss(listwise_weight=0, distillation="kl")(scores, n_passages=3)
    with pytest.raises(ValueError, match="one of kl"):
        RerankerLoss(distillation="mse")
    with pytest.raises(ValueError, match=r"n_passages=4"):
        RerankerLoss()(scores, n_passages=4)


def test_reranker_loss_config_targets_old_and_new_resolve():
    """Configs saved before the losses moved to densetune.losses name the cross-encoder module; both load."""
    from densetune.config import instantiate
    from densetune.losses import RerankerLoss as moved

    assert moved is RerankerLoss
    for target in ("densetune.losses.RerankerLoss", "densetune.models.crossencoder.RerankerLoss"):
        loss = instantiate({"_target_": target, "bce_weight": 0.5}, "loss.reranker")
        assert isinstance(loss, RerankerLoss) and loss.bce_weight == 0.5
        assert "bce_weight=0.5" in repr(loss)


def test_loss_step_reads_both_collators(tiny_encoder):
    from densetune.data.collators import CrossEncoderCollator

    ours = tiny_encoder.collate(groups(3, scores=True))
    loss = loss_step(tiny_encoder, ours, {"distillation": "margin_mse", "_target_": "ignored"})
    loss.backward()
    assert loss.ndim == 0 and any(p.grad is not None for p in tiny_encoder.parameters())
    tiny_encoder.zero_grad()
    nemo = CrossEncoderCollator(64, tiny_encoder.tokenizer)(groups(3))  # labels [B] -> n = rows / B
    assert loss_step(tiny_encoder, nemo).ndim == 0
    with pytest.raises(ValueError, match="valid keys"):
        loss_step(tiny_encoder, ours, {"margin": 1})


# -- decoder (FlagEmbedding LLM reranker) ------------------------------------------------------------------


def test_decoder_input_is_flagembedding_layout(tiny_decoder_dir):
    model = CrossEncoder.from_pretrained(tiny_decoder_dir, max_length=32)
    assert model.kind == "decoder" and model.tokenizer.padding_side == "left"
    tok = model.tokenizer
    assert model.yes_token_id == tok("Yes", add_special_tokens=False)["input_ids"][0]
    enc = model.tokenize_pairs(["sleep?", QUERIES[0]], ["sleep consolidates memory", PASSAGES[0]])
    short = enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()
    expected = f"A: sleep?\nB: sleep consolidates memory\n{LLM_RERANK_PROMPT}"
    assert short[0] == tok.bos_token_id and tok.decode(short[1:]) == expected
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][:, -1].all()  # left padding
    prompt_len = len(tok("\n" + LLM_RERANK_PROMPT, add_special_tokens=False)["input_ids"])
    long = enc["input_ids"][1][enc["attention_mask"][1].bool()].tolist()
    assert len(long) - prompt_len == 32  # BOS + query + "\n" + passage cut to max_length, prompt on top
    assert tok.decode(long[1:]).startswith(f"A: {QUERIES[0]}\nB: Tumour")


def test_decoder_score_is_yes_logit_at_the_last_token_whatever_the_padding(tiny_decoder_dir):
    model = CrossEncoder.from_pretrained(tiny_decoder_dir, max_length=48)
    batched = model.score_pairs(QUERIES, PASSAGES, batch_size=3)
    enc = model.tokenize_pairs(QUERIES[1:2], PASSAGES[1:2])  # one row: no padding
    with torch.no_grad():
        logits = model.base_model()(input_ids=enc["input_ids"]).logits
    torch.testing.assert_close(batched[1], logits[0, -1, model.yes_token_id], atol=1e-5, rtol=0)
    singles = torch.cat([model.score_pairs([q], [p]) for q, p in zip(QUERIES, PASSAGES)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)


def test_decoder_lora_trains_adapters_and_saves_merged(tiny_decoder_dir, tmp_path):
    model = CrossEncoder.from_pretrained(
        tiny_decoder_dir, max_length=48, lora={"r": 4, "alpha": 8, "dropout": 0.0}
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = model.collate(groups(3, scores=True))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(2):
        loss = loss_step(model, batch, {"distillation": "kl", "listwise_weight": 0.5})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    before = model.score_pairs(QUERIES, PASSAGES)
    model.save_pretrained(tmp_path / "llm_reranker")
    saved = json.loads((tmp_path / "llm_reranker" / "densetune_crossencoder.json").read_text())
    assert saved["kind"] == "decoder" and saved["max_length"] == 48
    assert not (tmp_path / "llm_reranker" / "adapter_config.json").exists()  # merged, plain transformers
    reloaded = CrossEncoder.from_pretrained(tmp_path / "llm_reranker")
    assert reloaded.kind == "decoder" and reloaded.tokenizer.padding_side == "left"
    torch.testing.assert_close(reloaded.score_pairs(QUERIES, PASSAGES), before, atol=1e-5, rtol=0)


# -- the real MiniLM ---------------------------------------------------------------------------------------

SCIFACT_LIKE = [
    (
        "0-dimensional biomaterials show inductive properties.",
        "Nanoparticles of hydroxyapatite induce bone formation in osteoblast cultures without growth factors.",
        [
            "The mitochondrial genome encodes 13 proteins of the respiratory chain.",
            "Vaccination rates fell in 2019.",
        ],
    ),
    (
        "Insulin resistance increases the risk of type 2 diabetes.",
        "In a cohort of 5,000 adults, insulin resistance predicted incident type 2 diabetes over ten years.",
        ["Sleep deprivation impairs hippocampal memory consolidation.", "Statins lower LDL cholesterol."],
    ),
    (
        "Aspirin reduces the risk of colorectal cancer.",
        "Daily aspirin use for five years lowered colorectal cancer incidence in randomised trials.",
        ["Malaria parasites invade red blood cells.", "Exercise improves muscle insulin sensitivity."],
    ),
    (
        "BRCA1 mutations raise breast cancer risk.",
        "Carriers of BRCA1 mutations have a lifetime breast cancer risk of about 70 percent.",
        ["Antibiotic resistance spreads by plasmid transfer.", "The heart rate falls during deep sleep."],
    ),
]


@pytest.mark.slow
def test_minilm_reranker_trains_and_matches_sentence_transformers_after_save(
    minilm_path, tmp_path, monkeypatch
):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from densetune.models import crossencoder

    # warned once per path and process: an earlier test may have loaded this model already
    monkeypatch.setattr(crossencoder, "_warned_fresh_head", set())
    with pytest.warns(UserWarning, match="newly initialised"):
        model = CrossEncoder.from_pretrained(minilm_path, max_length=128)
    assert model.kind == "encoder"
    batch = model.collate([{"question": q, "doc_text": [pos, *negs]} for q, pos, negs in SCIFACT_LIKE])
    loss_cfg = {"listwise_weight": 1.0, "bce_weight": 0.5}

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return loss_step(model, batch, loss_cfg).item()

    start = eval_loss()
    # The word embeddings are half of MiniLM's weights; freezing them keeps the test cheap on 2 CPU cores.
    model.base_model().bert.embeddings.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    torch.manual_seed(0)
    model.train()
    for _ in range(3):
        loss_step(model, batch, loss_cfg).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert eval_loss() < start

    pairs = [(q, d) for q, pos, negs in SCIFACT_LIKE for d in (pos, *negs)]
    ours = model.score_pairs([q for q, _ in pairs], [d for _, d in pairs], batch_size=4)
    out = tmp_path / "minilm-reranker"
    model.save_pretrained(out, model_card={"loss": {"listwise_weight": 1.0, "bce_weight": 0.5}})
    assert (
        "## Loss" in (out / "README.md").read_text()
        and "sentence_transformers" in (out / "README.md").read_text()
    )
    st = STCrossEncoder(str(out), device="cpu")
    theirs = torch.as_tensor(st.predict(pairs, batch_size=5))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    reloaded = CrossEncoder.from_pretrained(out)
    assert reloaded.config.max_length == 128
    torch.testing.assert_close(
        reloaded.score_pairs([q for q, _ in pairs], [d for _, d in pairs]), ours, atol=1e-5, rtol=0
    )
