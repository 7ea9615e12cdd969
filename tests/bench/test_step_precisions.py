"""The training step in the forms a GPU runs it, checked on the CPU at tiny size: under bf16
autocast (dense and sparse encoders: dtype mismatches show up here as on a GPU, though the CPU
trains in fp32 by default) and through torch.compile."""

from functools import partial

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from vismae.engine.train_step import Plan, Session, train_step
from vismae.models.mae import build_mae


def tiny_mae(sparse: bool):
    torch.manual_seed(0)
    # 32 px units: the smallest the sparse encoder takes (patch 4 x 2^3); no drop path, so that
    # two runs of one step draw nothing at random.
    return build_mae("tiny", 64, sparse=sparse, mask_unit_px=32, drop_path_rate=0.0)


def session(model, mixed_precision: str = "no") -> Session:
    # Accelerator straight, not make_accelerator: that one trains in fp32 on a CPU on purpose.
    accelerator = Accelerator(cpu=True, mixed_precision=mixed_precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    plan = Plan(batch_size=2, processes=1, grad_accum_steps=1, batches_per_epoch=1, epochs=1,
                max_steps=None, peak_lr=1e-3, min_lr=0.0, warmup_epochs=0.0)  # fmt: skip
    return Session(accelerator, model, optimizer, None, None, plan, seed=0, clip_grad=1.0)


def one_step(run: Session, forward_model, images, token_mask):
    return train_step(run, forward=partial(forward_model, images, token_mask=token_mask),
                      loss_of=lambda output: output.loss, step=0, epoch_label=0)  # fmt: skip


def batch(model):
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    return images, model.draw_mask(2, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_a_bf16_autocast_step_trains_in_bf16_and_keeps_fp32_weights(sparse):
    model = tiny_mae(sparse)
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    matmul_dtypes = set()
    for module in model.encoder.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda module, inputs, output: matmul_dtypes.add(output.dtype))
    run = session(model, "bf16")
    images, token_mask = batch(model)
    loss, stepped = one_step(run, run.model, images, token_mask)
    assert matmul_dtypes == {torch.bfloat16}  # autocast reached every encoder matmul
    assert stepped and 0 < loss < 10
    changed = [name for name, value in model.named_parameters() if not torch.equal(value, before[name])]
    assert all(value.dtype == torch.float32 for value in model.parameters())
    assert any(name.startswith("encoder.") for name in changed) and any(name.startswith("decoder.") for name in changed)


@pytest.mark.slow
def test_a_compiled_step_matches_the_eager_one():
    # backend="aot_eager" traces the model through Dynamo and AOTAutograd (graph capture, the
    # backward graph, the functionalized optimizer inputs) but runs the captured graphs with
    # eager kernels: Inductor's default C++ code generation takes minutes on a small CPU, for a
    # check of the same graph capture. bench/device.sh runs Inductor on a GPU.
    eager_model, compiled_model = tiny_mae(False), tiny_mae(False)
    images, token_mask = batch(eager_model)
    eager = session(eager_model)
    eager_loss, _ = one_step(eager, eager.model, images, token_mask)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    compiled = session(compiled_model)
    try:
        compiled_loss, stepped = one_step(compiled, torch.compile(compiled.model, backend="aot_eager"), images, token_mask)
    finally:
        torch._dynamo.reset()
    assert stepped and compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    for (name, a), b in zip(eager_model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{name} differs after the compiled step")
