"""Losses against hand-computed values on small tensors: temperature, in-batch columns, masking, distillation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densetune.losses import (
    ContrastiveLoss,
    DistillationLoss,
    RetrievalObjective,
    contrastive_loss_from_scores,
    false_negative_mask,
    loss_inputs,
)


def _ce(row: list[float], target: int) -> float:
    """-log softmax(row)[target], by hand."""
    return -row[target] + math.log(sum(math.exp(v) for v in row))


# Two queries, n=2 passages each, H=2; unnormalised so the numbers stay readable.
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.3]])
# Q @ P.T: row 0 = [0.9, 0.5, 0.2, 0.6]; row 1 = [0.1, 0.5, 0.8, 0.3]; targets 0 and 2.


def test_in_batch_loss_matches_hand_computation():
    loss = ContrastiveLoss(temperature=0.5)(Q, P, n_passages=2)
    row0 = [v / 0.5 for v in (0.9, 0.5, 0.2, 0.6)]
    row1 = [v / 0.5 for v in (0.1, 0.5, 0.8, 0.3)]
    assert loss.item() == pytest.approx((_ce(row0, 0) + _ce(row1, 2)) / 2, rel=1e-5)


def test_own_group_only_without_in_batch_negatives():
    loss = ContrastiveLoss(temperature=0.1, in_batch_negatives=False)(Q, P, n_passages=2)
    expected = (_ce([9.0, 5.0], 0) + _ce([8.0, 3.0], 0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_temperature_divides_scores():
    scores = Q @ P.T
    targets = torch.tensor([0, 2])
    for temperature in (0.02, 0.05, 1.0):
        loss = ContrastiveLoss(temperature=temperature)(Q, P, n_passages=2)
        torch.testing.assert_close(loss, F.cross_entropy(scores / temperature, targets))


def test_false_negative_masking_removes_the_duplicate_column():
    # Query 1's hard negative (column 3) is query 0's positive document (id 10): not a negative for query 0.
    ids = torch.tensor([10, 11, 12, 10])
    loss = ContrastiveLoss(temperature=0.5)(Q, P, n_passages=2, passage_doc_ids=ids)
    row0 = [v / 0.5 for v in (0.9, 0.5, 0.2)]  # column 3 removed
    row1 = [v / 0.5 for v in (0.1, 0.5, 0.8, 0.3)]  # query 1's positive (12) has no duplicate
    assert loss.item() == pytest.approx((_ce(row0, 0) + _ce(row1, 2)) / 2, rel=1e-5)
    unmasked = ContrastiveLoss(temperature=0.5, mask_false_negatives=False)(
        Q, P, n_passages=2, passage_doc_ids=ids
    )
    assert unmasked.item() > loss.item()


def test_false_negative_masking_in_own_group():
    ids = torch.tensor([10, 10, 12, 13])  # query 0's negative is a copy of its positive
    loss = ContrastiveLoss(temperature=0.1, in_batch_negatives=False)(Q, P, n_passages=2, passage_doc_ids=ids)
    assert loss.item() == pytest.approx((0.0 + _ce([8.0, 3.0], 0)) / 2, abs=1e-6)


def test_sibling_positives_are_masked():
    ids = torch.tensor([10, 11, 12, 13])
    siblings = torch.tensor([[11, -1], [-1, -1]])  # doc 11 is another positive of query 0
    loss = ContrastiveLoss(temperature=0.5)(
        Q, P, n_passages=2, passage_doc_ids=ids, positive_doc_ids=siblings
    )
    row0 = [v / 0.5 for v in (0.9, 0.2, 0.6)]
    row1 = [v / 0.5 for v in (0.1, 0.5, 0.8, 0.3)]
    assert loss.item() == pytest.approx((_ce(row0, 0) + _ce(row1, 2)) / 2, rel=1e-5)


def test_false_negative_mask_never_masks_the_target():
    ids = torch.tensor([7, 7, 7, 7])
    mask = false_negative_mask(ids, torch.tensor([0, 2]))
    assert mask.tolist() == [[False, True, True, True], [True, True, False, True]]


def test_margin_mask_drops_columns_scoring_above_the_positive():
    # Query 1: positive 0.8; column 1 (0.5) and 3 (0.3) stay; query 0: positive 0.9, nothing above 0.9 - 0.35.
    loss = ContrastiveLoss(temperature=0.5, margin_mask=-0.35)(Q, P, n_passages=2)
    row0 = [v / 0.5 for v in (0.9, 0.5, 0.2)]  # 0.6 > 0.9 - 0.35 = 0.55: removed
    row1 = [v / 0.5 for v in (0.1, 0.8, 0.3)]  # 0.5 > 0.45: removed
    assert loss.item() == pytest.approx((_ce(row0, 0) + _ce(row1, 1)) / 2, rel=1e-5)
    # margin 0: only columns above the positive leave, and here none does.
    torch.testing.assert_close(
        ContrastiveLoss(temperature=0.5, margin_mask=0.0)(Q, P, n_passages=2),
        ContrastiveLoss(temperature=0.5)(Q, P, n_passages=2),
    )


def test_compute_loss_from_scores_alone():
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    exclude = torch.tensor([[False, True, False]])
    out = contrastive_loss_from_scores(scores, torch.tensor([0]), exclude, temperature=1.0)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(_ce([2.0, 0.0], 0), rel=1e-5)


def test_gradients_flow_and_cross_device_is_identity_in_one_process():
    q = Q.clone().requires_grad_(True)
    p = P.clone().requires_grad_(True)
    ContrastiveLoss(temperature=0.05, cross_device=True)(q, p, n_passages=2).backward()
    assert q.grad.abs().sum() > 0 and p.grad.abs().sum() > 0
    torch.testing.assert_close(
        ContrastiveLoss(cross_device=True)(Q, P, n_passages=2), ContrastiveLoss()(Q, P, n_passages=2)
    )


def test_scores_stay_float32_under_autocast():
    q, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(12, 8), dim=-1)
    reference = ContrastiveLoss(temperature=0.02)(q, p, n_passages=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = ContrastiveLoss(temperature=0.02)(q, p, n_passages=3)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, reference)


def test_contrastive_validation():
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss(temperature=0)
    with pytest.raises(ValueError, match="n_passages"):
        ContrastiveLoss()(Q, P, n_passages=3)
    with pytest.raises(ValueError, match="passage_doc_ids"):
        ContrastiveLoss()(Q, P, n_passages=2, passage_doc_ids=torch.tensor([1, 2]))


# -- distillation -------------------------------------------------------------------------------------------


def test_kl_matches_hand_computation():
    student = torch.tensor([[0.2, 0.1]])
    teacher = torch.tensor([[2.0, 0.0]])
    loss = DistillationLoss("kl", teacher_temperature=1.0, student_temperature=0.1)(student, teacher)
    t = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    s = [math.exp(2) / (math.exp(2) + math.exp(1)), math.exp(1) / (math.exp(2) + math.exp(1))]
    expected = sum(ti * math.log(ti / si) for ti, si in zip(t, s))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # zero when the student's distribution equals the teacher's
    assert DistillationLoss("kl", student_temperature=1.0)(teacher, teacher).item() == pytest.approx(
        0.0, abs=1e-7
    )


def test_margin_mse_matches_hand_computation():
    student = torch.tensor([[0.9, 0.5, 0.1]])
    teacher = torch.tensor([[5.0, 4.0, 1.0]])
    loss = DistillationLoss("margin_mse")(student, teacher)
    expected = ((0.4 - 1.0) ** 2 + (0.8 - 4.0) ** 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _flag_stable_distill(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FlagEmbedding's listwise loss as written there: the data already in teacher order, own group only."""
    targets = F.softmax(teacher, dim=-1)
    labels = torch.zeros(scores.shape[0], dtype=torch.long)
    mask = torch.zeros_like(scores)
    loss = 0
    for i in range(scores.shape[1]):
        step = F.cross_entropy(scores + mask, labels + i, reduction="none")
        loss = loss + torch.mean(targets[:, i] * step)
        mask = torch.scatter(mask, 1, (labels + i).unsqueeze(-1), torch.finfo(scores.dtype).min)
    return loss


def test_stable_distill_matches_flagembedding_and_ignores_input_order():
    torch.manual_seed(0)
    student = torch.randn(3, 4)
    teacher = torch.sort(torch.randn(3, 4), dim=1, descending=True).values  # pre-sorted as the seed expects
    loss_fn = DistillationLoss("stable_distill", teacher_temperature=1.0, student_temperature=1.0)
    torch.testing.assert_close(loss_fn(student, teacher), _flag_stable_distill(student, teacher))
    perm = torch.tensor([0, 3, 1, 2])  # negatives shuffled: sorting by teacher score restores the order
    torch.testing.assert_close(loss_fn(student[:, perm], teacher[:, perm]), loss_fn(student, teacher))


def test_stable_distill_with_in_batch_columns():
    torch.manual_seed(1)
    student = torch.randn(2, 6)  # 2 queries x (2 groups of 3)
    teacher = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    loss_fn = DistillationLoss("stable_distill", student_temperature=1.0)
    in_batch = loss_fn(student, teacher, group_start=torch.tensor([0, 3]))
    own = loss_fn(torch.stack([student[0, :3], student[1, 3:]]), teacher)
    assert in_batch.item() > own.item()  # the other group's columns compete too


def test_distillation_validation():
    with pytest.raises(ValueError, match="kl, stable_distill, margin_mse"):
        DistillationLoss("mse")
    with pytest.raises(ValueError, match="student_temperature"):
        DistillationLoss("kl", student_temperature=0)
    with pytest.raises(ValueError, match="group_start"):
        DistillationLoss("kl")(torch.zeros(2, 6), torch.zeros(2, 3))


# -- objective and batch plumbing ------------------------------------------------------------------------


def test_objective_weights_tasks_and_missing_teacher_scores():
    contrastive = ContrastiveLoss(temperature=0.5)
    distill = DistillationLoss("kl", student_temperature=0.5)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    objective = RetrievalObjective(
        contrastive,
        distill,
        contrastive_weight=0.2,
        distill_weight=1.0,
        task_weights={"chat": {"contrastive_weight": 0.0}},
    )
    c = contrastive(Q, P, n_passages=2)
    own = torch.stack([Q[0] @ P[:2].T, Q[1] @ P[2:].T])
    d = distill(own, teacher)
    torch.testing.assert_close(objective(Q, P, n_passages=2, teacher_scores=teacher), 0.2 * c + d)
    torch.testing.assert_close(objective(Q, P, n_passages=2, teacher_scores=teacher, task="chat"), d)
    torch.testing.assert_close(objective(Q, P, n_passages=2), 0.2 * c)  # no teacher scores: no distillation
    with pytest.raises(ValueError, match="teacher_scores"):
        objective(Q, P, n_passages=2, task="chat")
    with pytest.raises(ValueError, match="unknown keys"):
        RetrievalObjective(contrastive, task_weights={"qa": {"temperature": 1.0}})
    with pytest.raises(ValueError, match="needs"):
        RetrievalObjective()


def test_loss_inputs_reads_the_batch():
    batch = {
        "q_input_ids": torch.zeros(2, 5, dtype=torch.long),
        "d_input_ids": torch.zeros(6, 7, dtype=torch.long),
        "passage_doc_ids": torch.arange(6),
        "teacher_scores": None,
        "task": ["qa", "qa"],
    }
    kwargs = loss_inputs(batch)
    assert kwargs["n_passages"] == 3 and kwargs["task"] == "qa" and "teacher_scores" not in kwargs
    assert torch.equal(kwargs["passage_doc_ids"], torch.arange(6))
    with pytest.raises(ValueError, match="multiple"):
        loss_inputs({"q_input_ids": torch.zeros(4, 1), "d_input_ids": torch.zeros(6, 1)})


# -- batch-level in-batch switch, per-task temperatures and kinds, TASK_CONFIG defaults ------------------


def test_batch_can_switch_in_batch_negatives_off_and_on():
    own_only = (_ce([9.0, 5.0], 0) + _ce([8.0, 3.0], 0)) / 2  # temperature 0.1, each query vs its own group
    in_batch = (_ce([9.0, 5.0, 2.0, 6.0], 0) + _ce([1.0, 5.0, 8.0, 3.0], 2)) / 2
    with_negatives = ContrastiveLoss(temperature=0.1)
    assert with_negatives(Q, P, n_passages=2).item() == pytest.approx(in_batch, rel=1e-5)
    assert with_negatives(Q, P, n_passages=2, in_batch_negatives=False).item() == pytest.approx(
        own_only, rel=1e-5
    )
    without = ContrastiveLoss(temperature=0.1, in_batch_negatives=False)
    assert without(Q, P, n_passages=2, in_batch_negatives=True).item() == pytest.approx(in_batch, rel=1e-5)
    assert without(Q, P, n_passages=2, in_batch_negatives=None).item() == pytest.approx(own_only, rel=1e-5)
    # Through the objective and loss_inputs, as the training loop calls it.
    batch = {"q_input_ids": torch.zeros(2, 3), "d_input_ids": torch.zeros(4, 3), "in_batch_negatives": False}
    objective = RetrievalObjective(with_negatives)
    assert objective(Q, P, **loss_inputs(batch)).item() == pytest.approx(own_only, rel=1e-5)


def test_loss_inputs_reads_the_in_batch_switch():
    batch = {"q_input_ids": torch.zeros(2, 3), "d_input_ids": torch.zeros(4, 3)}
    assert "in_batch_negatives" not in loss_inputs(batch)
    assert loss_inputs({**batch, "in_batch_negatives": False})["in_batch_negatives"] is False
    assert loss_inputs({**batch, "in_batch_negatives": torch.tensor(True)})["in_batch_negatives"] is True
    with pytest.raises(ValueError, match="in_batch_negatives"):
        loss_inputs({**batch, "in_batch_negatives": "not in-batch"})


def _kl(student: list[float], teacher: list[float], t_teacher: float, t_student: float) -> float:
    """KL(softmax(teacher / t) || softmax(student / t')) by hand."""
    p = [math.exp(v / t_teacher) for v in teacher]
    p = [v / sum(p) for v in p]
    log_z = math.log(sum(math.exp(v / t_student) for v in student))
    return sum(pi * (math.log(pi) - (s / t_student - log_z)) for pi, s in zip(p, student))


def test_per_task_teacher_and_student_temperatures():
    teacher = torch.tensor([[1.0, 0.8], [0.2, 0.6]])
    objective = RetrievalObjective(
        ContrastiveLoss(temperature=0.5),
        DistillationLoss("kl", teacher_temperature=1.0, student_temperature=0.5),
        task_weights={
            "chat": {"contrastive_weight": 0, "teacher_temperature": 0.1},
            "lrlm": {"contrastive_weight": 0, "student_temperature": 0.2},
        },
    )
    own = [[0.9, 0.5], [0.8, 0.3]]  # Q @ each query's own group
    for task, t_teacher, t_student in (("chat", 0.1, 0.5), ("lrlm", 1.0, 0.2)):
        expected = sum(_kl(s, t, t_teacher, t_student) for s, t in zip(own, teacher.tolist())) / 2
        loss = objective(Q, P, n_passages=2, teacher_scores=teacher, task=task)
        assert loss.item() == pytest.approx(expected, rel=1e-5), task
    assert objective.settings_for("chat")["teacher_temperature"] == 0.1
    assert objective.settings_for("qa")["teacher_temperature"] == 1.0  # no entry: the loss's own setting


def test_per_task_stable_distill_scores_against_the_whole_batch():
    teacher = torch.tensor([[1.0, 0.2], [0.4, 0.9]])
    listwise = DistillationLoss("stable_distill", teacher_temperature=1.0, student_temperature=0.5)
    objective = RetrievalObjective(
        ContrastiveLoss(temperature=0.5),
        DistillationLoss("kl", student_temperature=0.5),
        task_weights={"qa": {"contrastive_weight": 0, "distill_kind": "stable_distill"}},
    )
    in_batch = listwise(
        Q @ P.T, teacher, group_start=torch.tensor([0, 2])
    )  # LLM-Embedder: other groups compete
    torch.testing.assert_close(objective(Q, P, n_passages=2, teacher_scores=teacher, task="qa"), in_batch)
    own = listwise(torch.stack([Q[0] @ P[:2].T, Q[1] @ P[2:].T]), teacher)
    qa_own = objective(Q, P, n_passages=2, teacher_scores=teacher, task="qa", in_batch_negatives=False)
    torch.testing.assert_close(qa_own, own)
    assert in_batch.item() > own.item()


def test_use_train_config_reads_task_config_and_task_weights_override_it():
    from densetune.data.tasks import TASK_CONFIG
    from densetune.losses import train_config_loss

    contrastive, distill = ContrastiveLoss(0.01), DistillationLoss("kl", 1.0, 0.01)
    objective = RetrievalObjective(
        contrastive,
        distill,
        contrastive_weight=0.2,
        use_train_config=True,
        task_weights={"chat": {"teacher_temperature": 0.5}},
    )
    for task, entry in TASK_CONFIG["llm-embedder"]["training"].items():
        settings = objective.settings_for(task)
        assert settings["contrastive_weight"] == entry.get("contrastive_weight", 0.2), task
        assert settings["distill_weight"] == entry.get("distill_weight", 1.0), task
        assert settings["distill_kind"] == ("stable_distill" if entry["stable_distill"] else "kl"), task
    assert (
        objective.settings_for("chat")["teacher_temperature"] == 0.5
    )  # explicit wins over TASK_CONFIG's 0.1
    assert objective.settings_for("lrlm")["teacher_temperature"] == 0.1
    assert train_config_loss()["qa"] == {"contrastive_weight": 0, "distill_kind": "stable_distill"}
    # Without a distillation loss TASK_CONFIG's temperatures have nothing to apply to; the weights still do.
    contrastive_only = RetrievalObjective(contrastive, use_train_config="llm-embedder")
    assert contrastive_only.task_weights["chat"] == {"contrastive_weight": 0, "distill_weight": 1.0}


@pytest.mark.parametrize(
    ("task_weights", "key", "words"),
    [
        ({"chat": {"teacher_temperature": 0}}, "task_weights.chat.teacher_temperature", "> 0"),
        ({"chat": {"student_temperature": "hot"}}, "task_weights.chat.student_temperature", "a number"),
        ({"chat": {"distill_weight": -1}}, "task_weights.chat.distill_weight", ">= 0"),
        (
            {"chat": {"distill_kind": "mse"}},
            "task_weights.chat.distill_kind",
            "kl, stable_distill, margin_mse",
        ),
        ({"chat": {"temperature": 0.1}}, "task_weights.chat", "teacher_temperature"),
        ({"chat": 0.5}, "task_weights.chat", "a mapping"),
    ],
)
def test_per_task_loss_settings_are_validated_naming_the_key(task_weights, key, words):
    from densetune.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        RetrievalObjective(ContrastiveLoss(), DistillationLoss(), task_weights=task_weights)
    assert err.value.key == key and words in str(err.value)


def test_per_task_distillation_setting_without_a_distillation_loss_is_an_error():
    from densetune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"task_weights\.chat\.teacher_temperature: .*loss\.distillation"):
        RetrievalObjective(ContrastiveLoss(), task_weights={"chat": {"teacher_temperature": 0.1}})
    with pytest.raises(ConfigError, match="use_train_config"):
        RetrievalObjective(ContrastiveLoss(), use_train_config="e5")


def test_batches_without_a_task_warn_once_when_tasks_have_settings(caplog):
    objective = RetrievalObjective(ContrastiveLoss(0.5), task_weights={"chat": {"contrastive_weight": 2.0}})
    with caplog.at_level("WARNING", logger="densetune.losses"):
        objective(Q, P, n_passages=2)
        objective(Q, P, n_passages=2)
    assert caplog.text.count("came without a task") == 1


def test_sbert_scope_scores_all_positives_and_only_own_hard_negatives():
    # classic NeMo SBERT: query 0 sees positives [0.9 (own), 0.2 (q1's)] + its negative 0.5, not q1's 0.6
    loss = ContrastiveLoss(temperature=0.5, in_batch_scope="positives")(Q, P, n_passages=2)
    row0 = [v / 0.5 for v in (0.9, 0.5, 0.2)]
    row1 = [v / 0.5 for v in (0.1, 0.8, 0.3)]
    assert loss.item() == pytest.approx((_ce(row0, 0) + _ce(row1, 1)) / 2, rel=1e-5)
    # without in-batch negatives the scope changes nothing; with one passage per query it is plain in-batch
    own = ContrastiveLoss(temperature=0.5, in_batch_negatives=False, in_batch_scope="positives")
    assert own(Q, P, n_passages=2).item() == pytest.approx(
        ContrastiveLoss(temperature=0.5, in_batch_negatives=False)(Q, P, n_passages=2).item()
    )
    pairs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert ContrastiveLoss(in_batch_scope="positives")(Q, pairs, n_passages=1).item() == pytest.approx(
        ContrastiveLoss()(Q, pairs, n_passages=1).item()
    )
    assert ContrastiveLoss(in_batch_scope="positives").get_config_dict()["in_batch_scope"] == "positives"
    with pytest.raises(ValueError, match="in_batch_scope must be one of all, positives"):
        ContrastiveLoss(in_batch_scope="negatives")
