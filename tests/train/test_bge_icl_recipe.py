"""The BGE-EN-ICL recipe end to end on the real SmolLM2-135M (configs/bge_icl_smollm2.yaml, examples/bge_icl).

One short run (3 steps, tiny lengths, batch 4, groups of 2-3) is shared by the tests below: what the model
is shown (ICL query layout, prompted symmetric passages, per-type group sizes, the no-in-batch mark), that
training moved the LoRA weights with a finite loss, and that the merged export embeds like the trained model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from densetune.data.prompts import LLM_SPECIAL_TOKENS
from densetune.models.biencoder import BiEncoder
from densetune.train.checks import check_components
from densetune.train.config import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "bge_icl_smollm2.yaml"
EXAMPLES = REPO / "examples" / "bge_icl"
GROUP_SIZES = {"retrieval": 3, "symmetric_sts": 2, "symmetric_clustering": 3, "symmetric_class": 3}
STEPS = 3


@pytest.fixture(scope="module")
def run(smollm2_dir, tmp_path_factory):
    """The recipe after setup, with the trainable weights before training, then trained and exported."""
    from densetune.train.loop import TrainRecipe

    out = tmp_path_factory.mktemp("bge_icl")
    sizes = "{" + ", ".join(f"{k}: {v}" for k, v in GROUP_SIZES.items()) + "}"
    cfg = load_config(
        CONFIG,
        [
            f"model.path={smollm2_dir}",  # the GGUF converted once by the fixture
            "model.gguf_file=null",
            "model.lora.r=8",
            f"data.train=[{EXAMPLES}]",
            f"data.cache_dir={out / 'cache'}",
            "data.selector.n_passages=3",
            "data.sampler.batch_size_by_task={sts: 4, clustering: 4, classification: 4}",
            "data.collator.query_max_len=80",
            "data.collator.passage_max_len=32",
            "data.collator.example_query_max_len=32",
            "data.collator.example_passage_max_len=8",
            f"data.collator.group_size_by_type={sizes}",
            "train.batch_size=4",
            f"train.max_steps={STEPS}",
            "train.device=cpu",
            "train.log_every=1",
            "train.progress_bar=false",
            "optim.warmup_steps=0",
            "optim.lr=1e-3",
            f"output.dir={out / 'run'}",
            "output.tensorboard=false",
            "output.plot=false",
        ],
    )
    assert check_components(cfg) == []
    # One thread: on a busy 2-core machine two threads spin-wait on each other (about 4x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    recipe = TrainRecipe(cfg)
    try:
        recipe.setup()
        before = {n: p.detach().clone() for n, p in recipe.raw_model.named_parameters() if p.requires_grad}
        recipe.train()
        summary = recipe.finish()
        yield recipe, before, summary
    finally:
        recipe.cleanup()
        torch.set_num_threads(threads)


def first_batch_of_each_type(recipe) -> dict[str, list]:
    """Groups of the first planned batch of every task type in epoch 0 (what the loop collates)."""
    recipe.sampler.set_epoch(0)
    recipe.dataset.set_epoch(0)
    found: dict[str, list] = {}
    for indices in recipe.sampler:
        groups = recipe.dataset.__getitems__(indices)
        found.setdefault(groups[0].type, groups)
    return found


def test_special_tokens_are_single_tokens(run):
    recipe, _, _ = run
    tok = recipe.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in LLM_SPECIAL_TOKENS]
    assert all(len(i) == 1 for i in ids), ids
    assert len(tok) == 49152 + 3 and min(i[0] for i in ids) >= 49152  # added, not split into pieces
    assert recipe.raw_model.encoder.get_input_embeddings().weight.shape[0] == len(tok)


def test_queries_have_the_icl_layout_with_examples_from_the_same_batch(run):
    recipe, _, _ = run
    collator = recipe.collator
    batches = first_batch_of_each_type(recipe)
    assert set(batches) == set(GROUP_SIZES)
    example_counts = []
    for kind, groups in batches.items():
        queries, _ = collator.texts(groups)
        prompt = groups[0].prompt
        head = f"<instruct>{prompt}\n<query>"
        for i, (group, text) in enumerate(zip(groups, queries)):
            *examples, final = text.split("\n\n")
            assert final == f"{head}{group.query}\n<response>", (kind, text)
            assert 0 <= len(examples) <= collator.max_examples
            example_counts.append(len(examples))
            for block in examples:
                # {prompted example query, cut}\n<response>{its answer, cut}: another group of this batch. The
                # answer is the positive, or for clustering rows with a label, the row's category.
                assert block.startswith(head) and block.count("\n<response>") == 1, block
                query_part, passage_part = block[len(head) :].split("\n<response>")
                labelled = "clustering" in kind
                owners = [
                    j
                    for j, other in enumerate(groups)
                    if other.query.startswith(query_part)
                    and (other.category if labelled and other.category else other.docs[0].text).startswith(
                        passage_part
                    )
                ]
                assert owners and i not in owners, (kind, block)
    assert max(example_counts) >= 1  # 0..5 examples per query: some queries got examples


def test_batches_the_loop_sees_are_these_texts(run):
    recipe, _, _ = run
    groups = first_batch_of_each_type(recipe)["retrieval"]
    queries, passages = recipe.collator.texts(groups)
    batch = recipe.collator(groups)
    eos = recipe.tokenizer.eos_token_id
    for side, texts in (("q", queries), ("d", passages)):
        ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        assert ids.shape[1] % 8 == 0 and mask[:, -1].eq(1).all()  # left padded: last column is real
        for row, m, text in zip(ids, mask, texts):
            real = row[m.bool()].tolist()
            expected = [t for t in recipe.tokenizer(text)["input_ids"] if t != eos]
            # The text's tokens (passages cut at passage_max_len; queries are built to fit), then one EOS.
            assert real[-1] == eos and real[:-1] == expected[: len(real) - 1]
            if side == "q":
                assert len(real) - 1 == len(expected)


def test_symmetric_passages_get_the_prompt_and_groups_their_type_size(run):
    recipe, _, _ = run
    for kind, groups in first_batch_of_each_type(recipe).items():
        size = GROUP_SIZES[kind]
        _, passages = recipe.collator.texts(groups)
        trimmed = recipe.collator.trim_groups(groups)
        docs = [d.text for g in trimmed for d in g.docs]
        assert all(len(g.docs) == size for g in trimmed) and len(passages) == len(groups) * size
        if kind in ("symmetric_sts", "symmetric_clustering"):
            head = f"<instruct>{groups[0].prompt}\n<query>"
            assert all(p.startswith(head) and p.endswith("\n<response>") for p in passages)
            assert all(d.startswith(p[len(head) : -len("\n<response>")]) for p, d in zip(passages, docs))
        else:  # retrieval and classification passages are raw
            assert passages == docs
        batch = recipe.collator(groups)
        assert batch["d_input_ids"].shape[0] == len(groups) * size
        assert batch["task"] == groups[0].task
        no_in_batch = kind in ("symmetric_clustering", "symmetric_class")
        assert batch.get("in_batch_negatives", True) is (not no_in_batch)


def test_training_changed_lora_with_a_finite_loss(run):
    recipe, before, summary = run
    assert summary["steps"] == STEPS and math.isfinite(summary["final_loss"])
    losses = [
        json.loads(line)["loss"]
        for line in (recipe.out_dir / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    after = dict(recipe.raw_model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora and all(n in recipe.trainable_names for n in lora)
    changed = [n for n in lora if not torch.equal(before[n], after[n].detach())]
    assert len(changed) == len(lora), sorted(set(lora) - set(changed))[:5]
    base = [n for n, p in after.items() if not p.requires_grad and "lora_" not in n]
    assert base  # the backbone stays frozen under LoRA


def test_merged_export_embeds_like_the_trained_model(run):
    recipe, _, summary = run
    model_dir = Path(summary["model"])
    reloaded = BiEncoder.from_pretrained(model_dir)
    groups = first_batch_of_each_type(recipe)["symmetric_sts"]
    queries, passages = recipe.collator.texts(groups)
    for texts, is_query in ((queries, True), (passages, False)):
        trained = recipe.raw_model.encode_texts(texts, is_query=is_query)
        torch.testing.assert_close(
            reloaded.encode_texts(texts, is_query=is_query), trained, atol=1e-4, rtol=0
        )
    tok = reloaded.tokenizer
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in LLM_SPECIAL_TOKENS)
