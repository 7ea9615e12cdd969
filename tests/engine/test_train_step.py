"""The training step shared by pretraining and finetuning: a non-finite loss or gradient norm
stops training before the weights change, accumulation steps the optimizer every k-th
micro-batch, and the learning rate follows the global step."""

import pytest
import torch
from accelerate import Accelerator

from vismae.engine.train_step import NonFiniteLossError, Plan, Session, train_step


def session(grad_accum_steps: int = 1, clip_grad: float | None = None) -> Session:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=grad_accum_steps)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    plan = Plan(batch_size=2, processes=1, grad_accum_steps=grad_accum_steps, batches_per_epoch=8, epochs=1,
                max_steps=None, peak_lr=0.5, min_lr=0.0, warmup_epochs=0.0)  # fmt: skip
    return Session(accelerator, model, optimizer, None, None, plan, seed=0, clip_grad=clip_grad)


def weights(session: Session) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in session.model.parameters()]


def step(session: Session, inputs: torch.Tensor, scale: float = 1.0, step: int = 0):
    return train_step(
        session,
        forward=lambda: session.model(inputs),
        loss_of=lambda output: (output**2).mean() * scale,
        step=step,
        epoch_label=1,
        loss_name="training loss",
    )


def test_a_step_trains_and_reports_the_loss():
    run = session()
    before, inputs = weights(run), torch.ones(2, 3)
    loss, stepped = step(run, inputs)
    assert stepped and loss == pytest.approx(float((before[0] @ inputs.T + before[1]).pow(2).mean()))
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.5)  # the cosine's start at step 0
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(run)))


def test_a_non_finite_loss_stops_before_the_weights_change():
    run = session()
    before = weights(run)
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step 5 \(epoch 1\)"):
        step(run, torch.ones(2, 3), scale=float("nan"), step=4)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(run)))
    assert all(parameter.grad is None for parameter in run.model.parameters())  # no backward either


def test_a_non_finite_gradient_norm_stops_before_the_weights_change():
    run = session(clip_grad=1.0)
    before = weights(run)
    # A finite loss whose gradient overflows: the clipping's norm check must catch it.
    run.model.weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteLossError, match="the gradient norm is inf at step 1"):
        step(run, torch.ones(2, 3))
    assert all(torch.equal(a, b) for a, b in zip(before, weights(run)))


def test_accumulation_steps_the_optimizer_every_k_micro_batches():
    run = session(grad_accum_steps=2)
    before = weights(run)
    assert step(run, torch.ones(2, 3)).stepped is False
    assert all(torch.equal(a, b) for a, b in zip(before, weights(run)))
    assert step(run, torch.ones(2, 3)).stepped is True
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(run)))
