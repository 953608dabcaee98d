"""GroupSelector: the seeds' selection rules (NeMo Automodel, LLM-Embedder), pools, determinism."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from densetune.data.groups import NEGATIVE_MODES, POSITIVE_MODES, GroupSelector
from densetune.data.records import Doc, Example
from densetune.data.seeds import derive_seed
from densetune.errors import ConfigError, DataError


def docs(*ids: str) -> list[Doc]:
    return [Doc(id=i, text=f"text of {i}") for i in ids]


def ids(group) -> list[str]:
    return [d.id for d in group.docs]


def example(pos=("p0",), neg=("n0", "n1", "n2"), pos_scores=None, neg_scores=None, **kw) -> Example:
    kw.setdefault("source", "train.jsonl:7")
    return Example(
        query_id="q1",
        query="what is bm25",
        positives=docs(*pos),
        negatives=docs(*neg),
        pos_scores=pos_scores,
        neg_scores=neg_scores,
        **kw,
    )


# -- NeMo Automodel semantics ------------------------------------------------------------------------


def test_cycle_takes_negatives_in_file_order_every_epoch():
    sel = GroupSelector(n_passages=3, negative="cycle")
    ex = example(neg=("n0", "n1", "n2", "n3"))
    for epoch in range(3):
        assert ids(sel.select(ex, epoch, 5)) == ["p0", "n0", "n1"]
    assert sel.stats["selected"] == 3 and sel.stats["wrapped"] == 0


def test_cycle_wraps_and_warns_once_per_corpus(caplog):
    sel = GroupSelector(n_passages=5, negative="cycle")
    with caplog.at_level(logging.WARNING, logger="densetune.data.groups"):
        a = sel.select(example(neg=("n0", "n1"), corpus_id="wiki"), 0, 0)
        sel.select(example(neg=("n0",), corpus_id="wiki"), 0, 1)
        sel.select(example(neg=("n0", "n1", "n2"), corpus_id="news"), 0, 2)
    assert ids(a) == ["p0", "n0", "n1", "n0", "n1"]
    assert sel.stats["wrapped"] == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert (
        "'wiki'" in warnings[0]
        and "train.jsonl:7 has 2 negative(s)" in warnings[0]
        and "needs 4" in warnings[0]
    )
    assert "'news'" in warnings[1]


def test_positive_first_and_cycle():
    ex = example(pos=("p0", "p1", "p2"))
    first = GroupSelector(n_passages=2, positive="first", negative="cycle")
    cycle = GroupSelector(n_passages=2, positive="cycle", negative="cycle")
    assert [first.select(ex, e, 0).docs[0].id for e in range(4)] == ["p0", "p0", "p0", "p0"]
    assert [cycle.select(ex, e, 0).docs[0].id for e in range(4)] == ["p0", "p1", "p2", "p0"]


def test_cycle_without_negatives_is_a_data_error_naming_record_and_field():
    sel = GroupSelector(n_passages=4, negative="cycle")
    with pytest.raises(DataError) as err:
        sel.select(example(neg=()), 0, 0)
    message = str(err.value)
    assert message.startswith("train.jsonl:7: neg_doc: ")
    assert "needs 3" in message and "n_passages=1" in message
    # No negatives wanted: nothing to complain about.
    assert ids(GroupSelector(n_passages=1, negative="cycle").select(example(neg=()), 0, 0)) == ["p0"]


def test_no_positive_is_a_data_error():
    with pytest.raises(DataError, match="train.jsonl:7: pos_doc: no positive"):
        GroupSelector(n_passages=2, negative="cycle").select(example(pos=()), 0, 0)


def test_eval_negative_size_replaces_n_minus_one():
    sel = GroupSelector(n_passages=5, negative="cycle", eval_negative_size=2)
    assert sel.group_size == 3
    assert ids(sel.select(example(), 0, 0)) == ["p0", "n0", "n1"]
    assert GroupSelector(n_passages=5, eval_negative_size=0).group_size == 1


def test_group_copies_example_fields():
    ex = example(
        task="nq",
        type="symmetric_sts",
        prompt="Retrieve passages",
        query_instruction="Q:",
        passage_instruction="P:",
    )
    g = GroupSelector(n_passages=2, negative="first").select(ex, 0, 0)
    assert (g.query, g.query_id, g.task, g.type, g.prompt) == (
        "what is bm25",
        "q1",
        "nq",
        "symmetric_sts",
        "Retrieve passages",
    )
    assert (g.query_instruction, g.passage_instruction) == ("Q:", "P:")
    assert g.scores is None


# -- LLM-Embedder semantics (seed-behaviours section 5) ---------------------------------------------------


def test_teacher_scores_min_and_margin_filter():
    ex = example(pos_scores=[0.4], neg_scores=[0.3, 0.2, 0.35])
    assert GroupSelector(n_passages=2, teacher_scores_min=0.5).select(ex, 0, 0) is None
    assert (
        GroupSelector(n_passages=2, teacher_scores_min=0.4).select(ex, 0, 0) is not None
    )  # max == min keeps
    sel = GroupSelector(n_passages=2, teacher_scores_margin=0.25)
    assert sel.select(ex, 0, 0) is None  # 0.4 - 0.2 < 0.25
    assert sel.stats == {**dict.fromkeys(sel.stats, 0), "filtered_margin": 1}
    assert GroupSelector(n_passages=2, teacher_scores_margin=0.2).select(ex, 0, 0) is not None
    both = GroupSelector(n_passages=2, teacher_scores_min=0.9, teacher_scores_margin=0.9)
    assert (
        both.select(ex, 0, 0) is None
        and both.stats["filtered_min"] == 1
        and both.stats["filtered_margin"] == 0
    )
    # Without scores the filters cannot apply: the row is kept and counted.
    unscored = GroupSelector(n_passages=2, teacher_scores_min=0.9)
    assert unscored.select(example(), 0, 0) is not None and unscored.stats["no_scores"] == 1


def test_teacher_positive_moves_a_winning_negative_out_of_negatives():
    ex = example(pos=("p0",), neg=("n0", "n1", "n2"), pos_scores=[0.2], neg_scores=[0.9, 0.1, 0.5])
    g = GroupSelector(n_passages=3, positive="teacher", negative="first").select(ex, 0, 0)
    assert ids(g) == ["n0", "n1", "n2"]
    assert g.scores == [0.9, 0.1, 0.5]
    # The positive that lost is not a negative either (as in the seed: unused positives are dropped).
    assert "p0" not in ids(g)


def test_teacher_positive_ties_go_to_positives_and_teacher_pos_uses_positive_scores():
    tie = example(pos=("p0",), neg=("n0", "n1"), pos_scores=[0.9], neg_scores=[0.9, 0.1])
    assert ids(GroupSelector(n_passages=3, positive="teacher", negative="first").select(tie, 0, 0)) == [
        "p0",
        "n0",
        "n1",
    ]
    ex = example(pos=("p0", "p1"), neg=("n0", "n1"), pos_scores=[0.1, 0.7], neg_scores=[0.95, 0.3])
    g = GroupSelector(n_passages=3, positive="teacher-pos", negative="first").select(ex, 0, 0)
    assert ids(g) == ["p1", "n0", "n1"] and g.scores == [0.7, 0.95, 0.3]


def test_teacher_modes_without_scores_fall_back_to_first():
    for mode in ("teacher", "teacher-pos"):
        sel = GroupSelector(n_passages=2, positive=mode, negative="first")
        assert ids(sel.select(example(pos=("p0", "p1")), 0, 0)) == ["p0", "n0"]
        assert sel.stats["no_scores"] == 1


def test_history_rows_use_history_as_scored_candidates():
    ex = Example(
        query_id="h",
        query="chunk",
        positives=docs("ignored"),
        history=docs("h0", "h1", "h2"),
        neg_scores=[0.3, 0.8, 0.1],
        source="chat.json:3",
    )
    g = GroupSelector(n_passages=3, positive="teacher", negative="first").select(ex, 0, 0)
    assert ids(g) == ["h1", "h0", "h2"] and g.scores == [0.8, 0.3, 0.1]
    with pytest.raises(
        DataError, match="chat.json:3: pos: .*history rows have no positives.*positive=.teacher."
    ):
        GroupSelector(n_passages=3, positive="first").select(ex, 0, 0)
    with pytest.raises(DataError, match="2 teacher scores for 3 history documents"):
        GroupSelector(n_passages=3, positive="teacher").select(
            Example("h", "c", history=docs("h0", "h1", "h2"), neg_scores=[0.1, 0.2]), 0, 0
        )


def test_first_negatives_and_tiling():
    sel = GroupSelector(n_passages=6, negative="first")
    assert ids(sel.select(example(neg=("a", "b")), 0, 0)) == ["p0", "a", "b", "a", "b", "a"]
    assert sel.stats["wrapped"] == 1
    assert ids(
        GroupSelector(n_passages=3, negative="first").select(example(neg=("a", "b", "c", "d")), 0, 0)
    ) == [
        "p0",
        "a",
        "b",
    ]


def test_teacher_plus_and_minus_rank_the_tiled_list_like_the_seed():
    # Tiled: a(.2) b(.9) a(.2) b(.9); stable sort keeps copies in tiled order.
    ex = example(neg=("a", "b"), pos_scores=[1.0], neg_scores=[0.2, 0.9])
    plus = GroupSelector(n_passages=4, negative="teacher+").select(ex, 0, 0)
    minus = GroupSelector(n_passages=4, negative="teacher-").select(ex, 0, 0)
    assert ids(plus) == ["p0", "b", "b", "a"] and plus.scores == [1.0, 0.9, 0.9, 0.2]
    assert ids(minus) == ["p0", "a", "a", "b"] and minus.scores == [1.0, 0.2, 0.2, 0.9]
    big = example(neg=("a", "b", "c", "d"), pos_scores=[1.0], neg_scores=[0.5, 0.1, 0.7, 0.3])
    assert ids(GroupSelector(n_passages=3, negative="teacher+").select(big, 0, 0)) == ["p0", "c", "a"]
    assert ids(GroupSelector(n_passages=3, negative="teacher-").select(big, 0, 0)) == ["p0", "b", "d"]


def test_teacher_negative_modes_without_scores_sample_at_random():
    sel = GroupSelector(n_passages=3, negative="teacher+")
    rnd = GroupSelector(n_passages=3, negative="random")
    ex = example(neg=tuple(f"n{i}" for i in range(10)))
    assert ids(sel.select(ex, 2, 9)) == ids(rnd.select(ex, 2, 9))
    assert sel.stats["no_scores"] == 1


def test_random_negatives_are_distinct_redrawn_per_epoch_and_deterministic():
    ex = example(neg=tuple(f"n{i}" for i in range(20)))
    sel = GroupSelector(n_passages=8, negative="random", seed=7)
    per_epoch = [ids(sel.select(ex, e, 3))[1:] for e in range(5)]
    assert all(len(set(negs)) == 7 for negs in per_epoch)
    assert len({tuple(n) for n in per_epoch}) > 1
    again = GroupSelector(n_passages=8, negative="random", seed=7)
    assert [ids(again.select(ex, e, 3))[1:] for e in range(5)] == per_epoch
    other_seed = GroupSelector(n_passages=8, negative="random", seed=8)
    assert [ids(other_seed.select(ex, e, 3))[1:] for e in range(5)] != per_epoch


def test_random_positive_is_redrawn_per_epoch():
    ex = example(pos=tuple(f"p{i}" for i in range(5)))
    sel = GroupSelector(n_passages=2, positive="random", negative="first")
    chosen = [sel.select(ex, e, 0).docs[0].id for e in range(30)]
    assert len(set(chosen)) > 1 and set(chosen) <= {f"p{i}" for i in range(5)}


def test_stable_distill_sorts_chosen_negatives_by_score_descending():
    ex = example(neg=("a", "b", "c", "d"), pos_scores=[0.9], neg_scores=[0.1, 0.5, 0.3, 0.5])
    g = GroupSelector(n_passages=5, negative="first", stable_distill=True).select(ex, 0, 0)
    assert ids(g) == ["p0", "b", "d", "c", "a"]  # ties (b, d) keep their order
    assert g.scores == [0.9, 0.5, 0.5, 0.3, 0.1]
    sel = GroupSelector(n_passages=3, negative="random", stable_distill=True)
    for e in range(5):
        scores = sel.select(ex, e, 1).scores[1:]
        assert scores == sorted(scores, reverse=True)


def test_llm_embedder_modes_drop_rows_without_negatives():
    sel = GroupSelector(n_passages=3, negative="random")
    assert sel.select(example(neg=()), 0, 0) is None
    assert sel.stats["no_negatives"] == 1 and sel.stats["selected"] == 0


def test_scores_must_match_documents():
    with pytest.raises(
        DataError, match=r"train.jsonl:7: pos_scores: 2 teacher scores for 1 documents in pos"
    ):
        GroupSelector(n_passages=2).select(example(pos_scores=[0.1, 0.2], neg_scores=[0.1] * 3), 0, 0)
    with pytest.raises(DataError, match="neg_scores: none teacher scores for 3 documents"):
        GroupSelector(n_passages=2).select(example(pos_scores=[0.1]), 0, 0)
    # Nothing to score on one side is fine.
    g = GroupSelector(n_passages=1).select(example(neg=(), pos_scores=[0.4]), 0, 0)
    assert g.scores == [0.4]


def test_copies_of_positives_are_removed_from_negatives():
    ex = example(pos=("p0", "p1"), neg=("n0", "p1", "n1", "p0"))
    sel = GroupSelector(n_passages=3, negative="cycle")
    assert ids(sel.select(ex, 0, 0)) == ["p0", "n0", "n1"]
    assert sel.stats["positive_in_negatives"] == 1
    # Inline documents without ids are compared by text.
    inline = Example("q", "x", positives=[Doc(text="same")], negatives=[Doc(text="same"), Doc(text="other")])
    assert [d.text for d in GroupSelector(n_passages=2, negative="first").select(inline, 0, 0).docs] == [
        "same",
        "other",
    ]


# -- pool: re-drawn from a larger mined pool --------------------------------------------------------------


def test_pool_uses_every_negative_before_any_repeats():
    pool = tuple(f"n{i:02d}" for i in range(50))
    ex = example(neg=pool)
    sel = GroupSelector(n_passages=8, negative="pool", seed=3)
    seen: list[str] = []
    for epoch in range(15):
        seen += ids(sel.select(ex, epoch, 11))[1:]
    # 7 per epoch: positions 0..49 are a permutation of the pool, then the same order repeats.
    assert sorted(seen[:50]) == sorted(pool)
    assert seen[50:100] == seen[:50]
    assert seen[:7] != list(pool[:7])  # permuted, not file order
    # Fixed per (seed, index): another selector agrees; another index uses another order.
    again = GroupSelector(n_passages=8, negative="pool", seed=3)
    assert ids(again.select(ex, 4, 11)) == ids(sel.select(ex, 4, 11))
    assert ids(sel.select(ex, 0, 12)) != ids(sel.select(ex, 0, 11))


def test_pool_smaller_than_group_wraps_and_empty_pool_is_an_error():
    sel = GroupSelector(n_passages=5, negative="pool")
    negs = ids(sel.select(example(neg=("a", "b", "c")), 0, 0))[1:]
    assert sorted(negs[:3]) == ["a", "b", "c"] and negs[3] == negs[0] and sel.stats["wrapped"] == 1
    with pytest.raises(DataError, match="neg_doc"):
        sel.select(example(neg=()), 0, 0)


# -- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key", "words"),
    [
        ({"positive": "best"}, "positive", "first, cycle, random, teacher, teacher-pos"),
        ({"negative": "hard"}, "negative", "cycle, pool, first, random, teacher+, teacher-"),
        ({"n_passages": 0}, "n_passages", "integer >= 1"),
        ({"n_passages": 2.5}, "n_passages", "integer >= 1"),
        ({"teacher_scores_margin": -0.1}, "teacher_scores_margin", ">= 0"),
        ({"teacher_scores_min": "high"}, "teacher_scores_min", "a number"),
        ({"eval_negative_size": -1}, "eval_negative_size", ">= 0"),
        ({"seed": "x"}, "seed", "integer"),
    ],
)
def test_constructor_rejects_bad_options_naming_valid_values(kwargs, key, words):
    with pytest.raises(ConfigError) as err:
        GroupSelector(**kwargs)
    assert err.value.key == key and words in str(err.value)
    assert isinstance(err.value, ValueError)


# -- determinism -----------------------------------------------------------------------------------------


def test_derive_seed_is_stable():
    # A pinned value: changing the derivation would silently change the groups of every resumed run.
    assert derive_seed(42, "select", 0, 0) == 13883013059145681285
    assert derive_seed(42, "select", 0, 1) != derive_seed(42, "select", 1, 0)
    assert derive_seed("1") != derive_seed(1)
    assert 0 <= derive_seed("x") < 2**64


def test_numpy_indices_select_like_plain_ints():
    np = pytest.importorskip("numpy")
    ex = example(pos=("p0", "p1", "p2"), neg=tuple(f"n{i}" for i in range(30)))
    sel = GroupSelector(n_passages=8, positive="random", negative="pool")
    expected = ids(sel.select(ex, 2, 17))
    assert ids(sel.select(ex, np.int64(2), np.int64(17))) == expected


_CHILD = """
import json
from densetune.data.groups import GroupSelector
from densetune.data.records import Doc, Example
ex = Example("q", "x", [Doc(f"p{i}") for i in range(4)], [Doc(f"n{i}") for i in range(30)])
out = []
for neg in ("random", "pool"):
    sel = GroupSelector(n_passages=8, positive="random", negative=neg, seed=5)
    out.append([[d.id for d in sel.select(ex, e, i).docs] for e in range(3) for i in range(3)])
print(json.dumps(out))
"""


def test_same_groups_in_another_process_with_another_hash_seed():
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(done.stdout))
    assert runs[0] == runs[1]


# -- properties ------------------------------------------------------------------------------------------


@st.composite
def selections(draw):
    n_pos = draw(st.integers(1, 4))
    n_neg = draw(st.integers(0, 10))
    # Negative ids may repeat a positive's id (a mined "negative" that is really a positive).
    neg_ids = draw(
        st.lists(st.sampled_from([f"n{i}" for i in range(12)] + ["p0", "p1"]), max_size=n_neg, unique=True)
    )
    scored = draw(st.booleans())
    score = st.floats(0, 1, allow_nan=False)
    ex = Example(
        query_id="q",
        query="x",
        positives=docs(*[f"p{i}" for i in range(n_pos)]),
        negatives=docs(*neg_ids),
        pos_scores=draw(st.lists(score, min_size=n_pos, max_size=n_pos)) if scored else None,
        neg_scores=draw(st.lists(score, min_size=len(neg_ids), max_size=len(neg_ids))) if scored else None,
    )
    kwargs = {
        "n_passages": draw(st.integers(1, 9)),
        "positive": draw(st.sampled_from(POSITIVE_MODES)),
        "negative": draw(st.sampled_from(NEGATIVE_MODES)),
        "stable_distill": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
    }
    return ex, kwargs, draw(st.integers(0, 50)), draw(st.integers(0, 10_000))


def teacher_choice(ex: Example, positive_ids: set[str]) -> str:
    """The seed's argmax over positives + negatives, first maximum winning (copies of positives excluded)."""
    candidates = list(zip([d.id for d in ex.positives], ex.pos_scores)) + [
        (d.id, s) for d, s in zip(ex.negatives, ex.neg_scores) if d.id not in positive_ids
    ]
    return max(candidates, key=lambda c: c[1])[0]


@settings(max_examples=200, deadline=None)
@given(selections())
def test_selection_properties(case):
    ex, kwargs, epoch, index = case
    sel = GroupSelector(**kwargs)
    positive_ids = {d.id for d in ex.positives}
    real_negatives = [d.id for d in ex.negatives if d.id not in positive_ids]
    k = kwargs["n_passages"] - 1
    teacher_pick = kwargs["positive"] == "teacher" and ex.pos_scores is not None
    expected_positive = teacher_choice(ex, positive_ids) if teacher_pick else None
    available = len(real_negatives) - (expected_positive in real_negatives)
    if k > 0 and available == 0:
        if kwargs["negative"] in ("cycle", "pool"):
            with pytest.raises(DataError):
                sel.select(ex, epoch, index)
        else:
            assert sel.select(ex, epoch, index) is None and sel.stats["no_negatives"] == 1
        return
    group = sel.select(ex, epoch, index)
    assert group is not None
    # Size n, positive first.
    assert len(group.docs) == kwargs["n_passages"]
    if teacher_pick:
        assert group.docs[0].id == expected_positive
    else:
        assert group.docs[0].id in positive_ids
    # Never a positive (or the chosen positive) among the negatives.
    negative_ids = [d.id for d in group.docs[1:]]
    assert not set(negative_ids) & (positive_ids | {group.docs[0].id})
    # Enough distinct negatives: no repeats.
    if available >= k:
        assert len(set(negative_ids)) == k
    # Scores travel with their documents (a positive's own score wins over a copy's).
    if ex.pos_scores is not None:
        score_of = dict(zip([d.id for d in ex.negatives], ex.neg_scores))
        score_of.update(zip([d.id for d in ex.positives], ex.pos_scores))
        assert group.scores == [score_of[d.id] for d in group.docs]
        if kwargs["stable_distill"]:
            assert group.scores[1:] == sorted(group.scores[1:], reverse=True)
    else:
        assert group.scores is None
    # Deterministic: a fresh selector (another worker, rank or resumed run) picks the same group.
    assert ids(GroupSelector(**kwargs).select(ex, epoch, index)) == ids(group)


# -- per-task settings (LLM-Embedder use_train_config), instructions, and the dataset's caps --------------


def test_task_settings_select_each_task_with_its_own_modes():
    sel = GroupSelector(
        n_passages=3,
        negative="first",
        task_settings={"chat": {"positive": "teacher"}, "qa": {"negative": "teacher-"}},
    )
    scored = {"pos_scores": [0.1], "neg_scores": [0.2, 0.9, 0.3]}
    # chat: the teacher's best document becomes the positive; negatives stay "first" (the selector's own).
    assert ids(sel.select(example(task="chat", **scored), 0, 0)) == ["n1", "n0", "n2"]
    # qa: positive "first" (own), negatives the lowest-scored.
    assert ids(sel.select(example(task="qa", **scored), 0, 0)) == ["p0", "n0", "n2"]
    # any other task: the selector's own settings.
    assert ids(sel.select(example(task="tool", **scored), 0, 0)) == ["p0", "n0", "n1"]
    assert sel.stats["selected"] == 3  # per-task selection counts into the selector's own stats
    assert (
        sel.settings_for("chat")["positive"] == "teacher" and sel.settings_for("tool")["positive"] == "first"
    )


def test_use_train_config_takes_task_config_and_explicit_settings_win():
    from densetune.data.tasks import TASK_CONFIG, train_config_selection

    sel = GroupSelector(8, use_train_config=True, task_settings={"lrlm": {"max_samples": 50}})
    for task, entry in TASK_CONFIG["llm-embedder"]["training"].items():
        settings = sel.settings_for(task)
        assert settings["positive"] == entry["select_positive"]
        assert settings["negative"] == entry["select_negative"]
        assert settings["teacher_scores_margin"] == entry["teacher_scores_margin"]
        assert settings["stable_distill"] == entry["stable_distill"]
    assert sel.max_samples_for("lrlm") == 50  # TASK_CONFIG says 10000; task_settings wins
    assert train_config_selection()["lrlm"]["max_samples"] == 10000
    assert sel.max_samples_for("qa") is None and sel.can_drop
    # Every task without settings is an error naming the task and the fix, not a silent default.
    with pytest.raises(ConfigError, match=r"task 'news'.*task_settings\.news \(may be \{\}\)"):
        sel.check_tasks(["qa", "news"])
    with pytest.raises(ConfigError, match="task 'news'"):
        sel.select(example(task="news"), 0, 0)
    GroupSelector(8, use_train_config=True, task_settings={"news": {}}).check_tasks(["qa", "news"])


def test_history_rows_of_a_teacher_task_pick_the_teacher_argmax():
    sel = GroupSelector(3, use_train_config=True)
    row = Example(
        query_id="c1",
        query="A: the beagle walks nicely now. B:",
        history=docs("h0", "h1", "h2", "h3"),
        negatives=docs("h0", "h1", "h2", "h3"),
        neg_scores=[0.2, 0.9, 0.1, 0.5],
        task="chat",
    )
    group = sel.select(row, 0, 0)
    assert group.docs[0].id == "h1" and group.scores[0] == 0.9


@pytest.mark.parametrize(
    ("kwargs", "key", "words"),
    [
        ({"task_settings": {"chat": {"positive": "best"}}}, "task_settings.chat.positive", "teacher-pos"),
        ({"task_settings": {"chat": {"postive": "teacher"}}}, "task_settings.chat", "valid: positive"),
        ({"task_settings": {"chat": "teacher"}}, "task_settings.chat", "a mapping"),
        ({"task_settings": {"lrlm": {"max_samples": 0}}}, "task_settings.lrlm.max_samples", ">= 1"),
        (
            {"task_settings": {"qa": {"stable_distill": "yes"}}},
            "task_settings.qa.stable_distill",
            "true or false",
        ),
        ({"use_train_config": "bge"}, "use_train_config", "llm-embedder"),
        ({"use_train_config": 1.5}, "use_train_config", "TASK_CONFIG name"),
        ({"instruction": "llm"}, "instruction", "llm-embedder, bge, e5, instructor"),
        ({"max_samples": -3}, "max_samples", ">= 1"),
    ],
)
def test_per_task_options_are_validated_naming_the_key(kwargs, key, words):
    with pytest.raises(ConfigError) as err:
        GroupSelector(8, **kwargs)
    assert err.value.key == key and words in str(err.value)


def test_prompt_prepends_task_instructions_without_separator():
    from densetune.data.prompts import Prompt
    from densetune.data.tasks import TASK_CONFIG

    sel = GroupSelector(3, negative="first", instruction="llm-embedder")
    prompt = Prompt(instruction=sel.instruction)
    ex = example(task="tool")
    ex.positives[0].title = "Calculator"
    group = prompt.instruct(sel.select(ex, 0, 0))
    inst = TASK_CONFIG["llm-embedder"]["instruction"]["tool"]
    assert group.query == inst["query"] + "what is bm25"
    assert [d.text for d in group.docs] == [
        inst["key"] + "Calculator text of p0",  # the title is rendered into the text, as doc_text does
        inst["key"] + "text of n0",
        inst["key"] + "text of n1",
    ]
    assert [d.id for d in group.docs] == ["p0", "n0", "n1"] and group.docs[0].title == ""
    with pytest.raises(ConfigError, match="no instruction for task 'news'"):
        prompt.check_tasks(["news"])
    plain = GroupSelector(3, negative="first")
    raw = plain.select(example(task="tool"), 0, 0)
    assert Prompt().instruct(raw) is raw


def _llm_rows(path, task: str, n: int, flat: tuple[int, ...] = ()) -> None:
    """n LLM-Embedder rows for ``task`` (its directory name); rows in ``flat`` get teacher scores within 0.05."""
    rows = []
    for i in range(n):
        scores = [0.5, 0.52, 0.51] if i in flat else [0.9, 0.2, 0.4]
        rows.append(
            {
                "query": f"{task} query {i}",
                "pos": [f"{task} pos {i}"],
                "neg": [f"{task} neg {i}.{j}" for j in range(2)],
                "teacher_scores": scores,
            }
        )
    path = path / task / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_dataset_caps_each_task_and_reports_per_task_counts(tmp_path, caplog):
    from densetune.data.dataset import RetrievalTrainDataset
    from densetune.data.store import load_examples

    _llm_rows(tmp_path, "lrlm", 12, flat=(0, 5))
    _llm_rows(tmp_path, "qa", 6)
    store = load_examples([tmp_path / "lrlm", tmp_path / "qa"], cache_dir=tmp_path / "cache")
    sel = GroupSelector(3, use_train_config=True, task_settings={"lrlm": {"max_samples": 7}})
    with caplog.at_level(logging.WARNING, logger="densetune.data"):
        dataset = RetrievalTrainDataset(store, sel)
    # lrlm: 2 flat rows fail teacher_scores_margin 0.1, then the last 7 of the 10 left are kept (seed order).
    assert dataset.task_report["lrlm"] == {
        "examples": 12,
        "kept": 7,
        "filtered_min": 0,
        "filtered_margin": 2,
        "no_negatives": 0,
        "capped": 3,
    }
    assert dataset.task_report["qa"]["kept"] == 6 and dataset.capped == {"lrlm": 3}
    assert dataset.report == {
        "examples": 18,
        "kept": 13,
        "filtered_min": 0,
        "filtered_margin": 2,
        "no_negatives": 0,
    }
    # The last 7 lrlm rows that passed the filter (rows 0 and 5 were dropped), then qa.
    assert [dataset[i].query for i in range(8)] == [f"lrlm query {i}" for i in (4, 6, 7, 8, 9, 10, 11)] + [
        "qa query 0"
    ]
    text = caplog.text
    assert "task 'lrlm': kept the last 7 of its 10 training groups and left out 3 (max_samples=7" in text
    assert "left out 2 of 18 training examples (filtered_margin: 2); by task: lrlm: filtered_margin 2" in text


def test_dataset_applies_instructions_after_resolving_documents(tmp_path):
    """Corpus-id documents have no text until resolved: the instruction must come after, not before."""
    from densetune.data.dataset import RetrievalTrainDataset
    from densetune.data.store import load_examples
    from densetune.data.tasks import TASK_CONFIG

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    store = load_examples(os.path.join(repo, "examples", "corpus_id", "train.json"), cache_dir=tmp_path)
    dataset = RetrievalTrainDataset(store, GroupSelector(2, negative="cycle", instruction="e5"))
    group = dataset[0]
    inst = TASK_CONFIG["e5"]["instruction"]["wiki"]
    assert group.query == inst["query"] + "When did the Berlin Wall fall?"
    assert all(d.text.startswith("passage: ") and len(d.text) > len("passage: ") + 10 for d in group.docs)
    with pytest.raises(ConfigError, match="no instruction for task 'wiki'"):
        RetrievalTrainDataset(store, GroupSelector(2, negative="cycle", instruction="llm-embedder"))
