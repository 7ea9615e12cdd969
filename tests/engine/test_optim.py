"""Learning rate from the global step, and which parameters get weight decay."""

import math

import pytest
import torch

from vismae.engine.optim import build_optimizer, lr_at, no_weight_decay_names, param_groups, scaled_lr, set_lr
from vismae.engine.train_step import Plan
from vismae.models.mae import build_mae


def test_linear_scaling_rule():
    assert scaled_lr(4e-4, 640) == pytest.approx(1e-3)
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (5, 0.5e-3),  # halfway through warmup
        (10, 1e-3),  # peak
        (55, 1e-5 + (1e-3 - 1e-5) * 0.5),  # halfway through the cosine
        (100, 1e-5),  # the end
        (150, 1e-5),  # past the end: stays at min_lr
    ],
)
def test_lr_at_known_steps(step, expected):
    assert lr_at(step, peak_lr=1e-3, warmup_steps=10, total_steps=100, min_lr=1e-5) == pytest.approx(expected)


def test_lr_follows_a_cosine_after_warmup():
    quarter = lr_at(10 + 90 / 4, peak_lr=1.0, warmup_steps=10, total_steps=100)
    assert quarter == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_lr_without_warmup_starts_at_the_peak():
    assert lr_at(0, peak_lr=2e-3, warmup_steps=0, total_steps=10) == pytest.approx(2e-3)


def test_plan_counts_steps_in_optimizer_steps_and_max_steps_only_stops():
    plan = Plan(
        batch_size=8, processes=4, grad_accum_steps=2, batches_per_epoch=10, epochs=20, max_steps=7,
        peak_lr=1e-3, min_lr=0.0, warmup_epochs=2,
    )
    assert plan.global_batch == 32 and plan.effective_batch == 64
    assert plan.steps_per_epoch == 5
    assert plan.total_steps == 100 and plan.stop_step == 7
    assert plan.lr(5) == pytest.approx(0.5e-3)  # warmup is 2 epochs = 10 steps, whatever max_steps is


@pytest.fixture(scope="module")
def model():
    return build_mae("tiny", 64)


def names_in_group(model, group) -> set[str]:
    ids = {id(param) for param in group["params"]}
    return {name for name, param in model.named_parameters() if id(param) in ids}


def test_norms_biases_tokens_and_position_tables_get_no_weight_decay(model):
    groups = param_groups(model, weight_decay=0.05)
    no_decay = names_in_group(model, next(g for g in groups if g["weight_decay"] == 0.0))
    decay = names_in_group(model, next(g for g in groups if g["weight_decay"] == 0.05))
    assert "encoder.mask_token" in no_decay
    assert "encoder.patch_embed.norm.weight" in no_decay
    assert "encoder.layers.0.blocks.0.norm1.weight" in no_decay
    assert "encoder.layers.0.blocks.0.attn.qkv.bias" in no_decay
    assert "encoder.layers.0.blocks.0.attn.relative_position_bias_table" in no_decay
    assert any(name.startswith("decoder.") and "relative_position_bias_table" in name for name in no_decay)
    assert "encoder.layers.0.blocks.0.attn.qkv.weight" in decay
    assert "encoder.patch_embed.proj.weight" in decay
    assert all(param.ndim >= 2 for name, param in model.named_parameters() if name in decay)
    assert no_decay | decay == {name for name, _ in model.named_parameters()}
    assert not no_decay & decay


def test_no_weight_decay_names_are_full_parameter_names(model):
    names = no_weight_decay_names(model)
    parameters = dict(model.named_parameters())
    assert "encoder.mask_token" in names
    assert all(name in parameters for name in names if "relative_position_bias_table" in name or "token" in name)


def test_set_lr_writes_every_group(model):
    optimizer = build_optimizer(model, 0.05, (0.9, 0.95))
    set_lr(optimizer, 3e-4)
    assert [group["lr"] for group in optimizer.param_groups] == [3e-4, 3e-4]
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    assert isinstance(optimizer, torch.optim.AdamW)
