"""The LLM-Embedder multi-task recipe end to end (configs/llm_embedder.yaml on examples/llm_embedder, real MiniLM).

One short run is shared by the tests below: one epoch over the first rows of every task's example file, in
same-task batches of 4 groups of 4 (one step per task). They check what each task's groups hold (its TASK_CONFIG
selection modes and instructions), that every batch is single-task, that each task's loss used its own
weights, temperature and kind (recomputed from the recorded embeddings), and that training moved the model
and the export loads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from densetune.data.tasks import TASK_CONFIG
from densetune.losses import ContrastiveLoss, DistillationLoss, RetrievalObjective
from densetune.models.biencoder import BiEncoder
from densetune.train.config import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "llm_embedder.yaml"
EXAMPLES = REPO / "examples" / "llm_embedder"
TASKS = ("chat", "convsearch", "icl", "lrlm", "qa", "tool")
INSTRUCTIONS = TASK_CONFIG["llm-embedder"]["instruction"]
N_PASSAGES = 4
# Rows copied from each example file: one batch of 4 per task (lrlm loses a row to its teacher-score margin).
ROWS = {"lrlm": 5}
DEFAULT_ROWS = 4
NO_TASK = (
    "batches reached the loss without their task: BiEncoderCollator must put 'task' in same-task batches"
)


def _copy_examples(target: Path) -> dict[str, int]:
    """The first rows of each task's file under ``target/<task>/train.jsonl``; returns lrlm's flat rows."""
    flat = 0
    for task in TASKS:
        lines = (EXAMPLES / task / "train.jsonl").read_text(encoding="utf-8").splitlines()
        lines = lines[: ROWS.get(task, DEFAULT_ROWS)]
        (target / task).mkdir(parents=True)
        (target / task / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if task == "lrlm":
            spans = [max(s) - min(s) for s in (json.loads(line)["teacher_scores"] for line in lines)]
            flat = sum(span < 0.1 for span in spans)
    return {"lrlm_flat": flat}


@pytest.fixture(scope="module")
def run(minilm_path, tmp_path_factory):
    """The recipe trained for one epoch on a copy of the example data; every objective call recorded."""
    from densetune.train.loop import TrainRecipe

    tmp = tmp_path_factory.mktemp("llm_embedder")
    data = tmp / "data"
    counts = _copy_examples(data)
    out = tmp / "out"
    cfg = load_config(
        CONFIG,
        [
            f"model.path={minilm_path}",
            "model.pooling=mean",  # MiniLM's own pooling (the shipped recipe's LLM-Embedder uses cls)
            f"data.train=[{data}]",
            f"data.cache_dir={tmp / 'cache'}",
            f"data.selector.n_passages={N_PASSAGES}",
            "data.collator.q_max_len=48",
            "data.collator.p_max_len=48",
            "train.batch_size=4",
            "train.device=cpu",
            "train.precision=fp32",
            "train.log_every=1",
            "train.save_every=0",
            "train.progress_bar=false",
            "optim.lr=3e-5",
            "optim.warmup_ratio=0",
            "optim.scheduler=constant",
            f"output.dir={out}",
            "output.tensorboard=false",
            "output.plot=false",
        ],
    )
    calls: list[dict] = []
    forward = RetrievalObjective.forward

    def recording(self, q, p, **kwargs):
        loss = forward(self, q, p, **kwargs)
        calls.append({"q": q.detach().clone(), "p": p.detach().clone(), "loss": loss.detach(), **kwargs})
        return loss

    recipe = TrainRecipe(cfg)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RetrievalObjective, "forward", recording)
        try:
            recipe.setup()
            recipe.train()
            summary = recipe.finish()
        finally:
            recipe.cleanup()
    objective = next(m for m in _modules(recipe) if isinstance(m, RetrievalObjective))
    return SimpleNamespace(
        recipe=recipe,
        calls=calls,
        summary=summary,
        out=out,
        objective=objective,
        lrlm_flat=counts["lrlm_flat"],
    )


def _modules(recipe) -> list:
    """Every attribute of the recipe, one level down too (the objective's home may move between refactors)."""
    found = []
    for value in vars(recipe).values():
        found.append(value)
        found.extend(getattr(value, "__dict__", {}).values())
    return found


def _strip(text: str, prefix: str) -> str:
    assert text.startswith(prefix), (prefix, text[:80])
    return text[len(prefix) :]


def test_every_batch_comes_from_one_task_and_all_tasks_train(run):
    dataset, sampler = run.recipe.dataset, run.recipe.sampler
    tasks = dataset.tasks()
    sampler.set_epoch(0)
    batches = list(sampler)
    assert batches and all(len({tasks[i] for i in batch}) == 1 for batch in batches)
    assert {tasks[batch[0]] for batch in batches} == set(TASKS)
    # The task reached the loss with every batch (the collator passes it), so per-task settings applied.
    assert len(run.calls) == len(batches)
    assert {call.get("task") for call in run.calls} == set(TASKS), NO_TASK


def test_each_task_selects_with_its_train_config_modes(run):
    dataset = run.recipe.dataset
    report = dataset.task_report
    # lrlm: teacher_scores_margin 0.1 drops the rows whose teacher scores are flat; nothing else is dropped.
    assert run.lrlm_flat > 0 and report["lrlm"]["filtered_margin"] == run.lrlm_flat
    assert report["lrlm"]["kept"] == ROWS["lrlm"] - run.lrlm_flat
    assert all(report[t]["kept"] == report[t]["examples"] for t in TASKS if t != "lrlm")
    dataset.set_epoch(0)
    random_positive = 0
    for i in range(len(dataset)):
        group = dataset[i]
        example = dataset.store[dataset.store_index(i)]
        key = INSTRUCTIONS[group.task]["key"]
        docs = [_strip(d.text, key) for d in group.docs]
        assert len(docs) == N_PASSAGES
        if group.task in ("chat", "lrlm"):
            # History rows: the positive is the history entry the teacher scores highest.
            scores = example.neg_scores
            assert docs[0] == example.history[scores.index(max(scores))].text
            assert group.scores[0] == max(scores)
        elif group.task in ("qa", "convsearch", "tool"):
            assert docs[0] == example.positives[0].text  # select_positive: first
        else:  # icl: a random positive, and negatives only from the negatives
            assert docs[0] in {d.text for d in example.positives}
            random_positive += docs[0] != example.positives[0].text
        if group.task in ("qa", "icl"):  # stable_distill: negatives by teacher score, highest first
            assert group.scores[1:] == sorted(group.scores[1:], reverse=True)
        if group.task in ("convsearch", "tool"):
            assert group.scores is None
    assert random_positive > 0


def test_instructions_are_prefixed_exactly_as_task_config_says(run):
    dataset, collator = run.recipe.dataset, run.recipe.collator
    seen = set()
    for i in range(len(dataset)):
        group = dataset[i]
        if group.task in seen:
            continue
        seen.add(group.task)
        example = dataset.store[dataset.store_index(i)]
        instruction = INSTRUCTIONS[group.task]
        queries, docs, n = collator.texts([group])  # the strings the model sees
        assert queries == [instruction["query"] + example.query]
        assert n == N_PASSAGES and all(d.startswith(instruction["key"]) for d in docs)
        candidates = {d.text for d in example.positives + example.negatives + example.history}
        assert all(d[len(instruction["key"]) :] in candidates for d in docs)
    assert seen == set(TASKS)


def test_loss_settings_follow_task_config(run):
    """The YAML's task_weights say what TASK_CONFIG says (use_train_config), task by task."""
    objective = run.objective
    reference = RetrievalObjective(objective.contrastive, objective.distillation, use_train_config=True)
    for task in TASKS:
        assert objective.settings_for(task) == reference.settings_for(task), task
    assert objective.settings_for("chat")["teacher_temperature"] == 0.1


def _call(run, task: str) -> dict:
    call = next((c for c in run.calls if c.get("task") == task), None)
    assert call is not None, NO_TASK
    return call


def test_each_task_loss_uses_its_weights_temperature_and_kind(run):
    n = N_PASSAGES
    contrastive = ContrastiveLoss(temperature=0.01)

    # chat: KL distillation only, teacher scores sharpened by teacher_temperature 0.1.
    chat = _call(run, "chat")
    own = torch.einsum("bh,bnh->bn", chat["q"], chat["p"].view(chat["q"].shape[0], n, -1))
    expected = DistillationLoss("kl", teacher_temperature=0.1, student_temperature=0.01)(
        own, chat["teacher_scores"]
    )
    at_default = DistillationLoss("kl", teacher_temperature=1.0, student_temperature=0.01)(
        own, chat["teacher_scores"]
    )
    torch.testing.assert_close(chat["loss"], expected, rtol=1e-5, atol=1e-6)
    assert not math.isclose(expected.item(), at_default.item(), rel_tol=1e-3)

    # qa: the listwise stable_distill loss over every passage of the batch, no contrastive term.
    qa = _call(run, "qa")
    scores = qa["q"] @ qa["p"].T
    starts = torch.arange(qa["q"].shape[0]) * n
    listwise = DistillationLoss("stable_distill", teacher_temperature=1.0, student_temperature=0.01)
    torch.testing.assert_close(
        qa["loss"], listwise(scores, qa["teacher_scores"], group_start=starts), rtol=1e-5, atol=1e-6
    )

    # convsearch: contrastive only (cosine / 0.01, in-batch negatives, duplicates masked), weight 1.
    conv = _call(run, "convsearch")
    assert "teacher_scores" not in conv
    expected = contrastive(conv["q"], conv["p"], n_passages=n, passage_doc_ids=conv.get("passage_doc_ids"))
    torch.testing.assert_close(conv["loss"], expected, rtol=1e-5, atol=1e-6)


def test_training_moved_the_model_and_the_export_loads(run, minilm_path):
    assert all(torch.isfinite(c["loss"]) for c in run.calls)
    losses = [
        json.loads(line)["loss"]
        for line in (run.out / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert losses and all(math.isfinite(v) for v in losses)
    exported = BiEncoder.from_pretrained(str(run.summary["model"]))
    base = BiEncoder.from_pretrained(minilm_path)
    texts = [INSTRUCTIONS["qa"]["query"] + "How do I reverse a list in Python?"]
    with torch.no_grad():
        moved = (
            (exported.encode_texts(texts, is_query=True) - base.encode_texts(texts, is_query=True))
            .abs()
            .max()
        )
    assert float(moved) > 1e-4
