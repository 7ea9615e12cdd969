"""Swin MAE pretraining on Accelerate: the wiring. ``run(config)`` builds the data, model and
optimizer, resumes the run folder if it holds a checkpoint, trains, and leaves behind:

    output_dir/
      config.yaml            the resolved config (compared on resume)
      checkpoints/step_*/    Accelerate states + trainer_state.json, the newest k kept
      tensorboard/           TensorBoard logs (Accelerate's tracker)
      log.jsonl              one record per logged step: step, epoch, loss, lr, images/s; and
                             with monitor.manifest, the probes' val AUC every few epochs
      recon/epoch_*.png      reconstruction grids; reconstruction.png is the last one
      encoder.safetensors    the exported encoder, with encoder.json
      pretraining_images.csv the image_id of every image pretrained on (data.splits of the
                             manifests): finetuning compares it with its test images
      metrics.json           summary and loss history
      .lock                  held while a run lives: a second launch into the folder is refused

The same code runs on the CPU, one GPU, several GPUs and several machines: Accelerate takes
the process layout from ``accelerate launch``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vismae import __version__, run_folder
from vismae.config import ConfigError, PretrainConfig, flatten, read_yaml, to_dict
from vismae.data.dataset import Augmentation, EpochShuffle, PretrainImages
from vismae.data.manifest import read_manifest
from vismae.engine import checkpoint
from vismae.engine.accelerator import make_accelerator
from vismae.engine.optim import build_optimizer, scaled_lr
from vismae.engine.pretrain_loop import StepRecord, Throughput, train_one_epoch
from vismae.engine.train_step import LoopState, NonFiniteLossError, Plan, Session
from vismae.engine.visualize import save_reconstruction_grid
from vismae.io import atomic_path, input_digest, write_json, write_text
from vismae.models.formats.vismae_export import ENCODER_WEIGHTS, export_encoder, pretraining_images, write_pretraining_images
from vismae.models.formats.vismae_run import write_mae_description
from vismae.models.mae import MAEConfig, SwinMAE
from vismae.models.presets import encoder_config

log = logging.getLogger(__name__)

# Keys that may differ from the saved config when a run is resumed: they only change how long
# it runs. The run folder itself may also have moved.
RUN_LENGTH_KEYS = ("train.epochs", "train.max_steps")
LOCATION_KEYS = ("output_dir",)
# Watching a run changes nothing in it.
MONITOR_KEYS = ("monitor",)


def run(config: PretrainConfig, *, allow_config_change: bool = False) -> Path:
    """Pretrain (or resume) into ``config.output_dir``; return the run folder. A folder that
    another live run holds is refused at once (``run_folder.FolderInUseError``)."""
    config = config.with_absolute_paths()
    run_dir = Path(config.output_dir)
    accelerator = make_accelerator(
        config.train.mixed_precision, config.train.grad_accum_steps, run_dir=run_dir, log_with="tensorboard"
    )
    if accelerator.device.type == "cpu":
        # The shifted-window attention mask leaves softmax weights near exp(-100): denormal
        # floats, which x86 CPUs handle many times slower. Flushing them to zero changes no
        # result that matters and makes a CPU step 5-12 % faster.
        torch.set_flush_denormal(True)
    try:
        with run_folder.hold(run_dir, accelerator):
            _pretrain(accelerator, config, run_dir, allow_config_change)
    finally:
        accelerator.end_training()
    return run_dir


# ---------------------------------------------------------------------------------------------
# Run folder and resume.


def check_saved_config(run_dir: Path, config: PretrainConfig, allow_config_change: bool) -> None:
    """Refuse to continue a run folder under a different config, run length aside."""
    run_folder.check_config(
        run_dir,
        to_dict(config),
        neutral=RUN_LENGTH_KEYS + LOCATION_KEYS + MONITOR_KEYS,
        defaults=to_dict(PretrainConfig()),
        remedy="only train.epochs and train.max_steps may change on resume: choose another output_dir, "
        "or pass --allow-config-change to continue anyway" + _test_split_hint(run_dir, config),
        allow_change=allow_config_change,
    )


def _test_split_hint(run_dir: Path, config: PretrainConfig) -> str:
    """For a run saved with test images in data.splits, resumed without them (the default
    leaves them out since pretraining sees no test image unless asked): how to continue it."""
    saved = run_dir / run_folder.CONFIG_FILE
    if not saved.is_file() or "test" in config.data.splits:
        return ""
    splits = (read_yaml(saved).get("data") or {}).get("splits") or []
    if "test" not in splits:
        return ""
    return (
        f". This run pretrained on data.splits {splits}; data.splits now defaults to [train, val] (no test image). "
        f"To continue it as it was, pass data.splits=[{','.join(splits)}]"
    )


def trim_log(path: Path, last_step: int) -> None:
    """Drop records of steps after the checkpoint being resumed: they will be trained again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    write_text(path, "".join(f"{line}\n" for line in kept))


def load_init_weights(model: SwinMAE, path: str, verbose: bool) -> None:
    """Start from ``path``: our exported encoder or run folder, a VIS-MAE / Swin-MAE reference
    checkpoint, or a Microsoft / timm Swin. The encoder always; the decoder too where the
    source has one of this structure. Weights that do not fit are refused."""
    from vismae.models.weights import load_mae_init

    load_mae_init(path, model, verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Building blocks.


def build_model(config: PretrainConfig) -> SwinMAE:
    model_config = config.model
    encoder = encoder_config(model_config.preset, config.data.image_size, **model_config.overrides)
    model = SwinMAE(
        MAEConfig(
            encoder=encoder,
            decoder=model_config.decoder,
            mask_unit_px=model_config.mask_unit_px,
            mask_ratio=model_config.mask_ratio,
            norm_pix_loss=model_config.norm_pix_loss,
            sparse=model_config.sparse,
        )
    )
    if model_config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def build_dataset(config: PretrainConfig) -> PretrainImages:
    data = config.data
    augmentation = Augmentation(vflip_prob=data.vflip_prob, intensity_jitter=data.intensity_jitter)
    return PretrainImages.from_manifests(data.manifests, data.splits, data.image_size, augmentation, seed=config.train.seed)


def pretraining_image_ids(config: PretrainConfig, paths: list[str]) -> list[str]:
    """The ``image_id`` of each cached image in ``paths`` (those the dataset kept), from the
    manifests' rows of ``data.splits``, in the dataset's order."""
    frame = pd.concat([read_manifest(path) for path in config.data.manifests], ignore_index=True)
    frame = frame[frame["split"].isin(config.data.splits)]
    image_of = dict(zip(frame["path"].astype(str), frame["image_id"].astype(str)))
    return list(dict.fromkeys(image_of[path] for path in paths))


def build_loader(dataset: PretrainImages, config: PretrainConfig, processes: int, use_cuda: bool):
    train = config.train
    sampler = EpochShuffle(len(dataset), train.batch_size * processes * train.grad_accum_steps, seed=train.seed)
    workers = config.data.num_workers
    loader = DataLoader(
        dataset,
        batch_size=train.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=use_cuda,
        persistent_workers=workers > 0,
        # Its own generator: otherwise every new iterator (each epoch, a resume) draws its worker
        # seed from the global RNG, and drop path after a resume would not repeat.
        generator=torch.Generator().manual_seed(train.seed),
    )
    return loader, sampler


def tensorboard_hparams(config: PretrainConfig, plan: Plan) -> dict:
    """TensorBoard accepts only scalars and strings as hyperparameters."""
    flat = flatten(to_dict(config))
    values = {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in flat.items()}
    return {**values, "effective_batch": plan.effective_batch, "peak_lr": plan.peak_lr}


# ---------------------------------------------------------------------------------------------
# The run.


class PretrainRun:
    """One session on a run folder: set up or resume, train, finish."""

    def __init__(self, accelerator: Accelerator, config: PretrainConfig, run_dir: Path, allow_config_change: bool):
        self.accelerator = accelerator
        self.config = config
        self.run_dir = run_dir
        self.allow_config_change = allow_config_change
        self.checkpoints = run_dir / "checkpoints"
        self.log_path = run_dir / "log.jsonl"
        self.last_saved_step = -1
        self.pending: list[StepRecord] = []  # steps since the last log record
        self.corrupt_images = 0
        self.session_images = 0
        self.monitor = None  # the probe monitor, on the main process when monitor.manifest is set

    # -- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        accelerator, config = self.accelerator, self.config
        check_saved_config(self.run_dir, config, self.allow_config_change)
        accelerator.wait_for_everyone()  # every process has read the saved config
        if accelerator.is_main_process:
            run_folder.remove_temporaries(self.checkpoints)
            run_folder.save_config(self.run_dir, to_dict(config))

        self.dataset = build_dataset(config)
        processes = accelerator.num_processes
        loader, sampler = build_loader(self.dataset, config, processes, accelerator.device.type == "cuda")

        # Identical initial weights on every process (DDP also broadcasts rank 0's).
        set_seed(config.train.seed)
        model = build_model(config)
        self.newest = run_folder.newest_checkpoint(self.checkpoints)
        if accelerator.is_main_process:
            self.record_images()
        if config.init and self.newest is None:  # a resume restores its own weights instead
            load_init_weights(model, config.init, verbose=accelerator.is_main_process)
        optimizer = build_optimizer(model, config.train.weight_decay, config.train.betas)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        # Different drop-path draws per process from here on.
        set_seed(config.train.seed, device_specific=True)

        train = config.train
        effective_batch = train.batch_size * processes * train.grad_accum_steps
        plan = Plan(
            batch_size=train.batch_size,
            processes=processes,
            grad_accum_steps=train.grad_accum_steps,
            batches_per_epoch=len(sampler) // (train.batch_size * processes),
            epochs=train.epochs,
            max_steps=train.max_steps,
            peak_lr=train.lr if train.lr is not None else scaled_lr(train.base_lr, effective_batch),
            min_lr=train.min_lr,
            warmup_epochs=train.warmup_epochs,
        )
        self.session = Session(accelerator, model, optimizer, loader, sampler, plan, train.seed, train.clip_grad)
        self.state = self.resume() if self.newest is not None else LoopState()
        if accelerator.is_main_process:
            trim_log(self.log_path, self.state.step)
            if config.monitor.manifest:
                from vismae.engine.probe_monitor import ProbeMonitor  # scikit-learn only when monitoring

                self.monitor = ProbeMonitor(config.monitor.manifest, config.data.image_size, config.monitor.stages)
        accelerator.init_trackers("pretrain", config=tensorboard_hparams(config, plan))
        accelerator.print(
            f"{len(self.dataset)} images, {processes} process(es) x batch {train.batch_size} x accumulation "
            f"{train.grad_accum_steps} = {plan.effective_batch} per step, lr {plan.peak_lr:.3g}, "
            f"{plan.steps_per_epoch} steps per epoch, schedule {plan.total_steps} steps, stopping at {plan.stop_step}"
        )

    def record_images(self) -> None:
        """Write pretraining_images.csv: what the encoder will have seen, which finetuning checks
        its test images against. It keeps the images the ``init`` weights were pretrained on
        (where they carry a list) and, on resume, those of the checkpoint (trained under another
        image list, when that was allowed)."""
        earlier = pretraining_images(self.config.init) or []
        if self.newest is not None:
            earlier += pretraining_images(self.run_dir) or []
        image_ids = list(dict.fromkeys(earlier + pretraining_image_ids(self.config, self.dataset.paths)))
        write_pretraining_images(self.run_dir, image_ids)
        self.pretraining_image_count = len(image_ids)

    def trainer_state(self) -> dict:
        plan = self.session.plan
        return {
            **self.state.to_dict(),
            "processes": plan.processes,
            "batch_size": plan.batch_size,
            "grad_accum_steps": plan.grad_accum_steps,
            "num_images": len(self.dataset),
            "images_digest": input_digest(self.dataset.paths),
        }

    def resume(self) -> LoopState:
        accelerator, plan = self.accelerator, self.session.plan
        saved = checkpoint.read_trainer_state(self.newest)
        if saved["images_digest"] != input_digest(self.dataset.paths) and not self.allow_config_change:
            raise ConfigError(
                f"{self.newest}: the checkpoint was trained on another image list ({saved['num_images']} images, "
                f"now {len(self.dataset)}); the data order cannot be resumed. Pass --allow-config-change to continue anyway."
            )
        accelerator.load_state(str(self.newest))
        state = LoopState.from_dict(saved)
        if saved["processes"] * saved["batch_size"] != plan.global_batch:
            # Another process layout: continue from the same point of the epoch, in images.
            log.warning(
                "resuming with %d process(es) x batch %d where the checkpoint used %d x %d: the run goes on, "
                "but not exactly as it would have",
                plan.processes, plan.batch_size, saved["processes"], saved["batch_size"],
            )
            images_done = state.batch_in_epoch * saved["processes"] * saved["batch_size"]
            batches = images_done // plan.global_batch
            state.batch_in_epoch = batches - batches % plan.grad_accum_steps
        self.last_saved_step = state.step
        accelerator.print(f"resumed from {self.newest} (step {state.step}, epoch {state.epoch})")
        return state

    # -- training ----------------------------------------------------------------------------

    def train(self) -> None:
        config, plan, state = self.config, self.session.plan, self.state
        self.throughput = Throughput()
        self.progress = tqdm(
            total=plan.stop_step,
            initial=state.step,
            unit="step",
            desc="pretrain",
            dynamic_ncols=True,
            disable=not self.accelerator.is_main_process,
        )
        self.started = time.perf_counter()
        try:
            while state.step < plan.stop_step:
                epoch = state.epoch
                train_one_epoch(self.session, state, self.after_step)
                if state.epoch > epoch:
                    self.after_epoch(state.epoch)
        except NonFiniteLossError as error:
            newest = run_folder.newest_checkpoint(self.checkpoints)
            kept = f"the newest checkpoint, {newest}, is kept" if newest else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"{error}; training stopped and {kept}. Lower train.base_lr, set train.clip_grad, or use bf16 "
                "instead of fp16, then resume with --allow-config-change."
            ) from None
        finally:
            self.progress.close()
        self.flush_log()

    def after_step(self, state: LoopState, record: StepRecord) -> None:
        plan, every = self.session.plan, self.config.checkpoint.every_steps
        self.pending.append(record)
        images = plan.effective_batch
        self.throughput.add(images)
        self.session_images += images
        self.corrupt_images += record.corrupt_images
        self.progress.update(1)
        if state.step % self.config.log.every_steps == 0:
            self.flush_log()
        if every and state.step % every == 0:
            self.save()

    def after_epoch(self, finished_epochs: int) -> None:
        every_checkpoint, every_recon = self.config.checkpoint.every_epochs, self.config.log.recon_every_epochs
        if every_checkpoint and finished_epochs % every_checkpoint == 0:
            self.save()
        if every_recon and finished_epochs % every_recon == 0:
            self.reconstruct(self.run_dir / "recon" / f"epoch_{finished_epochs:04d}.png")
        if self.monitor is not None and finished_epochs % self.config.monitor.every_epochs == 0:
            self.check_probes(finished_epochs)

    def check_probes(self, finished_epochs: int) -> None:
        """The monitor's probes on the current encoder (main process only): TensorBoard and log.jsonl."""
        encoder = self.accelerator.unwrap_model(self.session.model).encoder
        check = self.monitor.check(encoder, finished_epochs)
        self.accelerator.log(check.scalars(), step=self.state.step)
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(check.record(self.state.step)) + "\n")
        self.progress.write(
            f"epoch {finished_epochs}: probe val ROC AUC linear {check.linear_val_auc:.3f}, kNN {check.knn_val_auc:.3f}"
        )

    def flush_log(self) -> None:
        """One record for the steps since the last: mean loss, lr, throughput."""
        if not self.pending:
            return
        state, plan = self.state, self.session.plan
        loss = sum(record.loss for record in self.pending) / len(self.pending)
        record = {
            "step": state.step,
            "epoch": round(state.step / plan.steps_per_epoch, 4),
            "loss": loss,
            "lr": plan.lr(state.step - 1),  # the lr the last step used
            "images_per_s": round(self.throughput.read(), 2),
        }
        self.pending = []
        self.accelerator.log({f"train/{key}": value for key, value in record.items() if key != "step"}, step=state.step)
        if self.accelerator.is_main_process:
            with self.log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            self.progress.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}", img_s=record["images_per_s"])

    def save(self) -> None:
        if self.state.step == self.last_saved_step:
            return
        model = self.accelerator.unwrap_model(self.session.model)
        checkpoint.save_checkpoint(
            self.accelerator, self.checkpoints, self.state.step, self.trainer_state(), self.config.checkpoint.keep,
            describe=lambda folder: write_mae_description(model, folder),  # so loading it needs no config.yaml
        )
        self.last_saved_step = self.state.step

    def reconstruct(self, path: Path) -> None:
        """Reconstruction grid of a fixed set of images and masks, on the main process only."""
        accelerator = self.accelerator
        if not accelerator.is_main_process:
            return
        count = min(self.config.log.recon_images, len(self.dataset))
        indices = torch.linspace(0, len(self.dataset) - 1, count).round().long().tolist()
        images = torch.stack([self.dataset[index]["image"] for index in indices]).to(accelerator.device)
        model = accelerator.unwrap_model(self.session.model)
        generator = torch.Generator(device=accelerator.device).manual_seed(self.config.train.seed)
        # A separate RNG stream and eval mode: drawing a picture must not change the training.
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), accelerator.autocast():
            model.eval()
            output = model(images, generator=generator)
            model.train()
        title = f"step {self.state.step}, epoch {self.state.step / self.session.plan.steps_per_epoch:.1f}"
        save_reconstruction_grid(images, output.reconstruction, output.pixel_mask, path, title)

    # -- the end -----------------------------------------------------------------------------

    def finish(self) -> None:
        """Final checkpoint, then on the main process the picture, the export and the metrics."""
        accelerator = self.accelerator
        self.save()
        corrupt = int(accelerator.reduce(torch.tensor(self.corrupt_images, device=accelerator.device), "sum").item())
        if self.config.debug.rank_weights:
            self.save_rank_weights()
        if accelerator.is_main_process:
            self.reconstruct(self.run_dir / "reconstruction.png")
            model = accelerator.unwrap_model(self.session.model)
            export_encoder(model.encoder, self.run_dir, self.export_source())
            self.write_metrics(corrupt)
            accelerator.print(f"done: step {self.state.step}, encoder exported to {self.run_dir / ENCODER_WEIGHTS}")
        accelerator.wait_for_everyone()  # no process leaves before the outputs are written

    def write_metrics(self, corrupt_images: int) -> None:
        state, plan = self.state, self.session.plan
        elapsed = time.perf_counter() - self.started
        records = [json.loads(line) for line in self.log_path.read_text().splitlines()] if self.log_path.is_file() else []
        history = [record for record in records if "loss" in record]
        monitor = [record for record in records if "monitor" in record]
        write_json(
            self.run_dir / "metrics.json",
            {
                "status": "finished" if state.step >= plan.total_steps else "stopped at train.max_steps",
                "step": state.step,
                "total_steps": plan.total_steps,
                "epoch": round(state.step / plan.steps_per_epoch, 4),
                "images_seen": state.images_seen,
                "final_loss": history[-1]["loss"] if history else None,
                "processes": plan.processes,
                "effective_batch": plan.effective_batch,
                "peak_lr": plan.peak_lr,
                "session_seconds": round(elapsed, 2),
                "session_images_per_s": round(self.session_images / elapsed, 2) if elapsed > 0 else None,
                "images": len(self.dataset),
                "unreadable_images_skipped": len(self.dataset.skipped),
                "session_corrupt_images_replaced": corrupt_images,
                "history": [{"step": record["step"], "loss": record["loss"]} for record in history],
                **({"monitor": monitor} if monitor else {}),
            },
        )

    def export_source(self) -> dict:
        model = self.config.model
        return {
            "producer": f"vismae {__version__} pretrain",
            "run": self.run_dir.name,
            "step": self.state.step,
            "epochs": round(self.state.step / self.session.plan.steps_per_epoch, 4),
            "images_seen": self.state.images_seen,
            "preset": model.preset,
            "decoder": model.decoder,
            "mask_ratio": model.mask_ratio,
            "mask_unit_px": model.mask_unit_px,
            "pretraining_splits": list(self.config.data.splits),
            "pretraining_images": self.pretraining_image_count,  # with those its init had seen
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def save_rank_weights(self) -> None:
        accelerator = self.accelerator
        model = accelerator.unwrap_model(self.session.model)
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        with atomic_path(self.run_dir / "debug" / f"rank{accelerator.process_index}.safetensors") as temporary:
            save_file(tensors, str(temporary))


def _pretrain(accelerator: Accelerator, config: PretrainConfig, run_dir: Path, allow_config_change: bool) -> None:
    session = PretrainRun(accelerator, config, run_dir, allow_config_change)
    session.setup()
    session.train()
    session.finish()
