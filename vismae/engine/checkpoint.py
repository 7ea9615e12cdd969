"""Training checkpoints through Accelerate: saved atomically, loaded on resume.

A checkpoint is Accelerate's ``save_state`` folder (model as safetensors, optimizer, grad
scaler, every process's RNG state) plus ``trainer_state.json`` (where the loop stands). It is
written as ``.tmp-step_XXXXXXX`` and renamed to ``step_XXXXXXX`` only when complete, so a run
killed while saving leaves the previous checkpoint as the newest; ``vismae.run_folder`` names,
lists and prunes them. All processes must see the same run folder (a shared file system on
several machines), as Accelerate's ``load_state`` needs anyway.

The exported encoder that finetuning reads is written by ``vismae.models.formats.vismae_export``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from vismae.io import write_json
from vismae.run_folder import STATE_FILE, checkpoint_name, prune_checkpoints, temporary_checkpoint


def read_trainer_state(checkpoint: str | os.PathLike) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def save_checkpoint(
    accelerator,
    folder: str | os.PathLike,
    step: int,
    trainer_state: dict,
    keep: int,
    describe: Callable[[Path], None] | None = None,
) -> Path:
    """Save the full training state at optimizer step ``step``; every process must call this.
    ``describe(folder)``, on the main process, adds files of its own (a model description)
    before the checkpoint is marked complete."""
    folder = Path(folder)
    final = folder / checkpoint_name(step)
    temporary = temporary_checkpoint(folder, step)
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    # Our own folder names instead of Accelerate's automatic naming: no iteration counter to
    # keep in step with after a resume, and the step is in the name.
    accelerator.save_state(output_dir=str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if describe is not None:
            describe(temporary)
        write_json(temporary / STATE_FILE, trainer_state)  # last: the checkpoint is complete
        if final.exists():  # the same step saved by an earlier, interrupted session
            shutil.rmtree(final)
        os.replace(temporary, final)
        prune_checkpoints(folder, keep)
    accelerator.wait_for_everyone()
    return final
