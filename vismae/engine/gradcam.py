"""Where a classifier looked: Grad-CAM on the last encoder stage, mapped back onto the
original mammogram, drawn beside it.

Grad-CAM (Selvaraju et al., 2017; MONAI's ``GradCAM``): the gradient of the malignant logit
with respect to the last encoder stage's feature map (as the classifier head normalizes it,
``head.norm``: B x C x h x w, 1/32 of the input side), averaged over positions, weights that
map's channels; their weighted sum, kept where positive, is the map. It is upsampled
bilinearly to the model's input and divided by its maximum: each map shows where, not how
much (the probability says that).

The input was cropped to the breast, flipped to the left edge, resized and padded
(``vismae.data.preprocess.Transform``). The map is carried back through the same steps in
reverse (``Transform.unmap_points`` gives the affine map from prepared to original pixels),
so it lies on the original, uncropped and unflipped image: padding and what was cropped away
get no heat.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from vismae.data.preprocess import Transform
from vismae.io import atomic_path

MALIGNANT = 1
METHOD = {
    "method": "Grad-CAM (Selvaraju et al., 2017), MONAI's GradCAM",
    "target_layer": "the last encoder stage's feature map (B x C x h x w): for the Swin classifier as its head "
    "normalizes it (head.norm), for a timm backbone as forward_features returns it",
    "score": "the malignancy log-odds, logit(malignant) - logit(benign): what the probability depends on",
    "normalization": "per image: the positive part divided by its maximum (peak: that maximum before division; "
    "0 where no position raises the log-odds, and then the map is empty)",
    "upsampling": "bilinear to the model input, then back through the recorded resize, flip and crop onto the original image",
    "layout": "left: the image; right: the map over it (jet colour map, stronger where warmer)",
}
DISPLAY_SIDE = 1024  # the longer side of a drawn image, in pixels (originals are often 3000+)


class LogOdds(torch.nn.Module):
    """A two-class classifier whose class 1 output is the log-odds z1 - z0. A softmax ignores
    what both logits share, so z1 alone carries an arbitrary offset; its gradient map would
    follow that offset too."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(images)
        log_odds = logits[:, 1] - logits[:, 0]
        return torch.stack([-log_odds, log_odds], dim=1)


class SplitAtFeatures(torch.nn.Module):
    """A timm classifier run as ``forward_head(forward_features(x))`` with a named no-op between
    the two, ``features``, where the last stage's map passes channels first (timm's Swin gives
    it channels last; it is turned for the hook and back)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.features = torch.nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.model.forward_features(images)
        if maps.ndim != 4:
            raise ValueError(f"{type(self.model).__name__} ends in tokens of shape {tuple(maps.shape)}, not a feature map; no saliency map")
        channels = getattr(self.model, "num_features", maps.shape[1])
        channels_last = maps.shape[-1] == channels and maps.shape[1] != channels
        if channels_last:
            return self.model.forward_head(self.features(maps.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return self.model.forward_head(self.features(maps))


def cam_target(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """(the module Grad-CAM runs, the name of its target layer) for our Swin classifier or a timm one."""
    if hasattr(model, "encoder") and hasattr(getattr(model, "head", None), "norm"):
        return LogOdds(model), "classifier.head.norm"
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return LogOdds(SplitAtFeatures(model)), "classifier.features"
    raise ValueError(f"no saliency map for a {type(model).__name__}: neither the Swin classifier nor a timm model")


class GradCam:
    """``GradCam(model)(images)``: (B x H x W maps in [0, 1], B peaks) for a batch of model
    inputs. The target layer is hooked once (MONAI keeps the hooks)."""

    def __init__(self, model: torch.nn.Module):
        from monai.visualize import GradCAM

        module, layer = cam_target(model)
        # MONAI's default post-processing rescales each map to (1, 0), inverted; normalize here instead.
        self.cam = GradCAM(nn_module=module, target_layers=layer, postprocessing=lambda maps: maps)

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.enable_grad():
            maps = self.cam(x=images, class_idx=MALIGNANT)
        maps = maps.detach().float().cpu().numpy()[:, 0]
        peak = maps.reshape(len(maps), -1).max(axis=1)
        normalized = np.where(peak[:, None, None] > 0, maps / np.maximum(peak, 1e-12)[:, None, None], 0.0)
        return normalized.astype(np.float32), peak.astype(float)


def prepared_to_original(transform: Transform, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The 2 x 3 affine map from prepared-image pixel indices to original pixel indices (times
    ``scale``, (x, y)), in OpenCV's convention (pixel centres at integers)."""
    origin, step_x, step_y = transform.unmap_points([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) * np.asarray(scale)
    matrix = np.stack([step_x - origin, step_y - origin, origin], axis=1)  # continuous coordinates
    # Continuous coordinates put pixel i's centre at i + 0.5: shift in, map, shift out.
    matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return matrix


def heat_on_original(heat: np.ndarray, transform: Transform, shape: tuple[int, int]) -> np.ndarray:
    """A map over the model's input -> the same map over the original image drawn at ``shape``
    (rows, columns; the original's size or a scaled copy of it)."""
    prepared = cv2.resize(heat, (transform.out_width, transform.out_height), interpolation=cv2.INTER_LINEAR)
    width, height = transform.resized_size
    content = np.zeros_like(prepared)
    content[:height, :width] = prepared[:height, :width]  # the padding came from no original pixel
    scale = (shape[1] / transform.source_width, shape[0] / transform.source_height)
    matrix = prepared_to_original(transform, scale)
    return cv2.warpAffine(content, matrix, (shape[1], shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def display_copy(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """A [0, 1] image as 8-bit gray, shrunk so that its longer side is at most ``side``."""
    factor = min(1.0, side / max(image.shape))
    if factor < 1.0:
        size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
        image = cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def side_by_side(gray: np.ndarray, heat: np.ndarray, caption: str = "", strength: float = 0.5) -> np.ndarray:
    """BGR: the gray image, then the same image with the heat map blended in where it is warm,
    separated by a thin white line, under a caption bar."""
    image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    colours = cv2.applyColorMap(np.rint(np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (strength * np.clip(heat, 0, 1))[..., None]
    overlay = np.rint(image * (1 - weight) + colours * weight).astype(np.uint8)
    separator = np.full((gray.shape[0], 4, 3), 255, np.uint8)
    panel = np.concatenate([image, separator, overlay], axis=1)
    if caption:
        bar = np.zeros((28, panel.shape[1], 3), np.uint8)
        cv2.putText(bar, caption, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        panel = np.concatenate([bar, panel], axis=0)
    return panel


def write_png(path: Path, pixels: np.ndarray) -> Path:
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), pixels):
            raise OSError(f"{path}: OpenCV could not write the PNG")
    return path
