"""The pretraining epoch: masks, then the shared training step (``train_step``) per micro-batch.

Everything random in a step is a function of where the step is, so a resumed or a
distributed run repeats an uninterrupted single-process one: the batch comes from the
(seed, epoch) order, and the masks of a whole global batch are drawn from (seed, micro-batch)
on every process, each process keeping its own slice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from vismae.engine.train_step import LoopState, Session, epoch_loader, train_step


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


def train_one_epoch(session: Session, state: LoopState, after_step: Callable[[LoopState, StepRecord], None]) -> None:
    """Train from ``state`` to the end of its epoch or to the plan's stop step, whichever comes
    first; ``after_step`` runs after every optimizer step. ``state`` is advanced in place."""
    model, plan = session.model, session.plan
    model.train()
    record = StepRecord()
    for batch in epoch_loader(session, state):
        micro_batch = state.epoch * plan.batches_per_epoch + state.batch_in_epoch
        token_mask = draw_masks(session, micro_batch)
        loss, stepped = train_step(
            session,
            forward=partial(model, batch["image"], token_mask=token_mask),
            loss_of=lambda output: output.loss,
            step=state.step,
            epoch_label=state.epoch,
        )
        state.batch_in_epoch += 1
        state.images_seen += plan.global_batch
        record.loss_sum += loss
        record.micro_batches += 1
        record.corrupt_images += int(batch["corrupt"].sum())
        if stepped:
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
