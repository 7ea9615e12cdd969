"""The pretraining epoch: masks, forward, backward, optimizer step, the non-finite guard.

Everything random in a step is a function of where the step is, so a resumed or a
distributed run repeats an uninterrupted single-process one: the batch comes from the
(seed, epoch) order, and the masks of a whole global batch are drawn from (seed, micro-batch)
on every process, each process keeping its own slice.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
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

    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: object  # the prepared DataLoader
    sampler: object  # its EpochShuffle
    plan: Plan
    seed: int
    clip_grad: float | None


@dataclass
class StepRecord:
    """Sums over the micro-batches of one optimizer step (losses already averaged over processes)."""

    loss_sum: float = 0.0
    micro_batches: int = 0
    corrupt_images: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.micro_batches)


def mask_seed(seed: int, micro_batch: int) -> int:
    return int(np.random.SeedSequence([seed, micro_batch]).generate_state(1)[0])


def draw_masks(session: Session, micro_batch: int) -> torch.Tensor:
    """This process's slice of the global batch's token masks."""
    accelerator, plan = session.accelerator, session.plan
    generator = torch.Generator(device=accelerator.device).manual_seed(mask_seed(session.seed, micro_batch))
    model = accelerator.unwrap_model(session.model)
    masks = model.draw_mask(plan.global_batch, accelerator.device, generator)
    start = accelerator.process_index * plan.batch_size
    return masks[start : start + plan.batch_size]


def epoch_loader(session: Session, state: LoopState):
    """The prepared loader for ``state.epoch``, skipping the micro-batches already done."""
    loader = session.loader
    if state.batch_in_epoch:
        loader = session.accelerator.skip_first_batches(loader, state.batch_in_epoch)
    # Accelerate passes its own epoch counter to the sampler when iteration starts; keep both equal.
    loader.set_epoch(state.epoch)
    session.sampler.set_epoch(state.epoch)
    return loader


def train_one_epoch(session: Session, state: LoopState, after_step: Callable[[LoopState, StepRecord], None]) -> None:
    """Train from ``state`` to the end of its epoch or to the plan's stop step, whichever comes
    first; ``after_step`` runs after every optimizer step. ``state`` is advanced in place."""
    accelerator, model, optimizer, plan = session.accelerator, session.model, session.optimizer, session.plan
    model.train()
    record = StepRecord()
    for batch in epoch_loader(session, state):
        micro_batch = state.epoch * plan.batches_per_epoch + state.batch_in_epoch
        token_mask = draw_masks(session, micro_batch)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                output = model(batch["image"], token_mask=token_mask)
            # Every process sees the same mean, so all stop together on a bad value; checked
            # before backward so that the bad step never reaches the weights.
            loss = accelerator.reduce(output.loss.detach().float(), reduction="mean").item()
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"the loss is {loss} at step {state.step + 1} (epoch {state.epoch})")
            accelerator.backward(output.loss)
            if accelerator.sync_gradients:
                set_lr(optimizer, plan.lr(state.step))
                if session.clip_grad is not None:
                    norm = accelerator.clip_grad_norm_(model.parameters(), session.clip_grad)
                    # fp16 overflows are the grad scaler's business: it skips those steps itself.
                    if accelerator.scaler is None and not math.isfinite(float(norm)):
                        raise NonFiniteLossError(f"the gradient norm is {float(norm)} at step {state.step + 1}")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += 1
        state.images_seen += plan.global_batch
        record.loss_sum += loss
        record.micro_batches += 1
        record.corrupt_images += int(batch["corrupt"].sum())
        if accelerator.sync_gradients:
            state.step += 1
            after_step(state, record)
            record = StepRecord()
            if state.step >= plan.stop_step:
                break
    if state.batch_in_epoch >= plan.batches_per_epoch:
        state.epoch += 1
        state.batch_in_epoch = 0


class Throughput:
    """Images per second between two reads (over all processes)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.images = 0

    def add(self, images: int) -> None:
        self.images += images

    def read(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.start, 1e-9)
        self.start, self.images = now, 0
        return rate
