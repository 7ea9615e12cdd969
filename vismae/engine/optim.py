"""Optimizer parameter groups and the learning rate as a function of the global step.

The lr is computed from the optimizer step count and written onto the param groups each
step, rather than kept in a scheduler object: a scheduler passed through Accelerate's
``prepare`` steps once per process, and a pure function resumes exactly from a step number.
"""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names that any submodule exempts from weight decay through its
    ``no_weight_decay()`` (timm's convention: tokens, position tables)."""
    names = set()
    for prefix, module in model.named_modules():
        exempt = getattr(module, "no_weight_decay", None)
        if callable(exempt):
            names |= {f"{prefix}.{name}" if prefix else name for name in exempt()}
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: no decay for 1-D parameters (norms, biases) and the names modules exempt,
    decay for the rest (timm's rule)."""
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay_names(model))


def build_optimizer(model: nn.Module, weight_decay: float, betas) -> torch.optim.AdamW:
    # lr is set on the groups before every step (see lr_at), so the initial value is a placeholder.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=0.0, betas=tuple(betas))


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule: ``base_lr`` is the lr for a batch of 256 images."""
    return base_lr * effective_batch / 256


def lr_at(step: float, *, peak_lr: float, warmup_steps: float, total_steps: float, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then half a cosine down to
    ``min_lr`` at ``total_steps`` (and ``min_lr`` after it). ``step`` counts optimizer steps
    already taken, as MAE does with its fractional epoch."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        # A group may carry a layer-decay factor (finetuning); pretraining groups have none.
        group["lr"] = lr * group.get("lr_scale", 1.0)
