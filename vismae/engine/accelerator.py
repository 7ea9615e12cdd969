"""The one Accelerator factory of pretraining, finetuning, the ROI-aware experiment and the
label-efficiency sweep: mixed precision only where it pays, gradient accumulation, and
TensorBoard logging into a run folder when asked."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, is_mps_available, is_npu_available, is_xpu_available, parse_flag_from_env

_noted: set[str] = set()  # precisions already explained in this process


def trains_on_cpu() -> bool:
    """Whether Accelerate will put this process on the CPU. Judged without creating
    Accelerate's state: a ``PartialState()`` made before the Accelerator would fix the process
    layout before the Accelerator reads ACCELERATE_USE_CPU, and CPU ranks launched with
    ``--multi_gpu`` would each run alone."""
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    return not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mps_available())


def make_accelerator(
    mixed_precision: str = "no",
    grad_accum_steps: int = 1,
    run_dir: str | Path | None = None,
    log_with: str | None = None,
) -> Accelerator:
    """An Accelerator for ``mixed_precision`` (no, bf16 or fp16), forced to fp32 on the CPU,
    accumulating gradients over ``grad_accum_steps`` micro-batches; with ``run_dir``, trackers
    (``log_with``, e.g. "tensorboard") log into ``run_dir/tensorboard``."""
    precision = mixed_precision
    if precision != "no" and trains_on_cpu():
        # Autocast on a CPU without bf16 units is many times slower than fp32, never faster.
        precision = "no"
    project = None
    if run_dir is not None:
        project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(Path(run_dir) / "tensorboard"))
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=grad_accum_steps,
        log_with=log_with,
        project_config=project,
    )
    if precision != mixed_precision and accelerator.is_main_process and mixed_precision not in _noted:
        _noted.add(mixed_precision)  # once per process: an experiment makes many accelerators
        print(f"note: train.mixed_precision={mixed_precision} is for GPUs; training in fp32 on the CPU")
    return accelerator
