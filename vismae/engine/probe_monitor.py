"""The pretraining monitor: every few epochs, how well a linear probe and a kNN classifier read
the benign/malignant label from the encoder being trained, on a labelled cache's val split.

The reconstruction loss says how well the MAE paints; it does not say whether the encoder
learns anything a classifier can use. This says that, for a few seconds per check: the
labelled images are read once, embedded with the current weights in eval mode (under a forked
RNG, so that monitoring never changes the training), and both probes are fitted on train and
scored on val exactly as `vismae probe` does. The test split is never looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vismae.engine.probe import ProbeData, embed, load_images, parse_stages, probe_scores, rows_in, task_rows


@dataclass
class MonitorCheck:
    """One check's numbers, ready for TensorBoard and log.jsonl."""

    epoch: int
    linear_val_auc: float
    knn_val_auc: float
    linear_c: float
    knn_k: int

    def scalars(self) -> dict[str, float]:
        return {"monitor/linear_val_auc": self.linear_val_auc, "monitor/knn_val_auc": self.knn_val_auc}

    def record(self, step: int) -> dict:
        return {"step": step, "epoch": self.epoch, "monitor": {
            "linear_val_auc": self.linear_val_auc, "knn_val_auc": self.knn_val_auc,
            "linear_C": self.linear_c, "knn_k": self.knn_k,
        }}  # fmt: skip


class ProbeMonitor:
    """Reads ``manifest`` (a prepared, labelled cache) once; ``check(encoder, epoch)`` probes."""

    def __init__(self, manifest: str, image_size: tuple[int, int], stages: str = "all", data: ProbeData | None = None):
        from vismae.data.manifest import read_manifest

        frame = read_manifest(manifest)
        rows, _ = task_rows(frame, data)
        # Only what the probes are fitted and scored on: the test rows stay unread.
        self.rows = rows[rows["split"].isin(["train", "val"])].reset_index(drop=True)
        self.images = load_images(self.rows["path"].tolist(), image_size)
        self.stages = stages
        self.manifest = manifest
        rows_in(self.rows, self.rows)  # refuses a manifest that lists an image twice

    def check(self, encoder: torch.nn.Module, epoch: int) -> MonitorCheck:
        chosen = parse_stages(self.stages, encoder.config.num_stages)
        device = next(encoder.parameters()).device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            embeddings = embed(encoder, self.images, chosen)
        if not np.isfinite(embeddings).all():
            raise ValueError(f"monitor: the encoder gives non-finite features at epoch {epoch}")
        fitted = probe_scores(embeddings, self.rows, where=str(self.manifest))
        return MonitorCheck(
            epoch=epoch,
            linear_val_auc=float(fitted["linear"]["val_auc"]),
            knn_val_auc=float(fitted["knn"]["val_auc"]),
            linear_c=float(fitted["linear"]["C"]),
            knn_k=int(fitted["knn"]["k"]),
        )
