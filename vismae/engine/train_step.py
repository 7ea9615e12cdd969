"""What pretraining and finetuning share below their epochs: where training stands, its plan
(batches, steps, learning rate), and one training step with its guards.

A step, for one micro-batch: the forward pass under autocast, the loss averaged over all
processes and checked before backward (a NaN or infinite loss stops every process together,
before it reaches the weights), backward, and at the end of an optimizer step (every
``grad_accum_steps`` micro-batches) the learning rate for the global step, the optional
gradient clipping with its own check, and the optimizer step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from vismae.engine.optim import lr_at, set_lr


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite; training cannot go on from here."""


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint as JSON."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch under way
    batch_in_epoch: int = 0  # micro-batches of this epoch already trained on (each process)
    images_seen: int = 0  # over all processes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoopState:
        return cls(**{field.name: int(data[field.name]) for field in dataclasses.fields(cls)})


@dataclass
class Plan:
    """The run's arithmetic: batches, steps and the learning rate."""

    batch_size: int  # per process
    processes: int
    grad_accum_steps: int
    batches_per_epoch: int  # micro-batches per process per epoch
    epochs: int
    max_steps: int | None
    peak_lr: float
    min_lr: float
    warmup_epochs: float

    @property
    def global_batch(self) -> int:
        """Images in one micro-batch over all processes."""
        return self.batch_size * self.processes

    @property
    def effective_batch(self) -> int:
        """Images per optimizer step."""
        return self.global_batch * self.grad_accum_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch // self.grad_accum_steps

    @property
    def total_steps(self) -> int:
        """The schedule's length; ``max_steps`` only stops earlier."""
        return self.epochs * self.steps_per_epoch

    @property
    def stop_step(self) -> int:
        return self.total_steps if self.max_steps is None else min(self.total_steps, self.max_steps)

    def lr(self, step: int) -> float:
        return lr_at(
            step,
            peak_lr=self.peak_lr,
            warmup_steps=self.warmup_epochs * self.steps_per_epoch,
            total_steps=self.total_steps,
            min_lr=self.min_lr,
        )


@dataclass
class Session:
    """What the epoch loop needs, prepared by Accelerate."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any  # the prepared DataLoader
    sampler: Any  # its epoch sampler (EpochShuffle or BalancedEpochSampler)
    plan: Plan
    seed: int
    clip_grad: float | None


def epoch_loader(session: Session, state: LoopState):
    """The prepared loader for ``state.epoch``, skipping the micro-batches already done."""
    loader = session.loader
    if state.batch_in_epoch:
        loader = session.accelerator.skip_first_batches(loader, state.batch_in_epoch)
    # Accelerate passes its own epoch counter to the sampler when iteration starts; keep both equal.
    loader.set_epoch(state.epoch)
    session.sampler.set_epoch(state.epoch)
    return loader


class StepResult(NamedTuple):
    loss: float  # this micro-batch's loss, averaged over all processes
    stepped: bool  # whether the optimizer stepped (the last micro-batch of an accumulation)


def train_step(
    session: Session,
    forward: Callable[[], Any],
    loss_of: Callable[[Any], torch.Tensor],
    step: int,
    epoch_label: int,
    loss_name: str = "loss",
) -> StepResult:
    """Train on one micro-batch. ``forward()`` runs the model under autocast; ``loss_of``
    turns its output into the loss outside autocast. ``step`` is the optimizer steps taken so
    far (it sets the learning rate); ``epoch_label`` and ``loss_name`` word the error."""
    accelerator, model, optimizer = session.accelerator, session.model, session.optimizer
    with accelerator.accumulate(model):
        with accelerator.autocast():
            output = forward()
        loss = loss_of(output)
        # Every process sees the same mean, so all stop together on a bad value; checked
        # before backward so that the bad step never reaches the weights.
        value = accelerator.reduce(loss.detach().float(), reduction="mean").item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"the {loss_name} is {value} at step {step + 1} (epoch {epoch_label})")
        accelerator.backward(loss)
        stepped = accelerator.sync_gradients
        if stepped:
            set_lr(optimizer, session.plan.lr(step))
            if session.clip_grad is not None:
                norm = accelerator.clip_grad_norm_(model.parameters(), session.clip_grad)
                # fp16 overflows are the grad scaler's business: it skips those steps itself.
                if accelerator.scaler is None and not math.isfinite(float(norm)):
                    raise NonFiniteLossError(f"the gradient norm is {float(norm)} at step {step + 1}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return StepResult(value, stepped)
