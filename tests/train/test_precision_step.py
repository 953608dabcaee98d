"""train.precision in the recipe: bf16 autocast runs the model's matrix products in bf16, the loss stays float32."""

from __future__ import annotations

import pytest
import torch
from train_helpers import make_inline_data, tiny_recipe

from densetune.train.config import from_dict, merge_defaults
from densetune.train.loop import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_step(tiny_bert, tmp_path, precision: str) -> tuple[torch.Tensor, set[torch.dtype], TrainRecipe]:
    data = make_inline_data(tmp_path / "train.jsonl", 8)
    cfg = tiny_recipe(tiny_bert, data, tmp_path / precision, train={"precision": precision, "max_steps": 1})
    recipe = TrainRecipe(from_dict(merge_defaults(cfg)))
    recipe.setup()
    seen: set[torch.dtype] = set()
    linears = [m for m in recipe.raw_model.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype)) for m in linears]
    batch = next(iter(recipe.loader))  # a typed Batch; its query ids ride along in batch.query_ids
    loss = recipe.step.backward(recipe.model, batch, scale=1.0)
    for hook in hooks:
        hook.remove()
    return loss, seen, recipe


def test_bf16_step_keeps_loss_and_gradients_float32(tiny_bert, tmp_path, capsys):
    loss, seen, recipe = _one_step(tiny_bert, tmp_path, "bf16")
    assert seen == {torch.bfloat16}  # the forward ran under bf16 autocast
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    grads = [p.grad for p in recipe.trainable if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)  # master weights and gradients stay fp32
    assert "precision bf16 autocast on cpu: asked for" in capsys.readouterr().out
    fp32_loss, fp32_seen, _ = _one_step(tiny_bert, tmp_path, "fp32")
    assert fp32_seen == {torch.float32}
    assert float(loss) == pytest.approx(float(fp32_loss), rel=0.05)  # same batch, same weights
