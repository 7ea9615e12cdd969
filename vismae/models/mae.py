"""SwinMAE: window-masked Swin encoder + decoder + reconstruction loss on the masked pixels."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vismae.models.decoders import DECODERS, build_decoder
from vismae.models.masking import pixel_mask, window_mask
from vismae.models.presets import encoder_config
from vismae.models.sparse_latent import LatentGrid
from vismae.models.sparse_swin import SparseSwinEncoder, check_sparse_masking
from vismae.models.swin import EncoderConfig, SwinEncoder, check_config_keys


@dataclass
class MAEConfig:
    encoder: EncoderConfig
    decoder: str = "mirror"  # "mirror" (VIS-MAE) | "light" (linear + pixel shuffle)
    mask_unit_px: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    # Encode the visible tokens only (sparse_swin): same weights, far less compute; needs
    # mask_unit_px a multiple of the last stage's stride (32 px for the presets).
    sparse: bool = False

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {sorted(DECODERS)}")
        if self.sparse:
            check_sparse_masking(self.encoder, self.mask_unit_px)
        patch = self.encoder.patch_size
        if self.mask_unit_px < patch or self.mask_unit_px % patch:
            raise ValueError(f"mask_unit_px {self.mask_unit_px} must be a multiple of the patch size {patch}")
        grid = self.encoder.grid_size
        if any(g % self.mask_unit for g in grid):
            raise ValueError(
                f"image size {self.encoder.img_size} is not divisible by the {self.mask_unit_px} px masking unit"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")

    @property
    def mask_unit(self) -> int:
        """Masking unit side in patch tokens."""
        return self.mask_unit_px // self.encoder.patch_size

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "encoder": self.encoder.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> MAEConfig:
        check_config_keys(cls, data, "MAE")
        if "encoder" not in data:
            raise ValueError("MAE config has no 'encoder' section")
        return cls(**{**data, "encoder": EncoderConfig.from_dict(data["encoder"])})


@dataclass
class MAEOutput:
    loss: Tensor  # scalar, mean squared error over masked pixels
    reconstruction: Tensor  # B x C x H x W in image space (un-normalized when norm_pix_loss)
    pixel_mask: Tensor  # B x 1 x H x W float, 1 = masked
    token_mask: Tensor  # B x h x w bool, True = masked


class SwinMAE(nn.Module):
    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        self.encoder = (SparseSwinEncoder if config.sparse else SwinEncoder)(config.encoder)
        self.decoder = build_decoder(config.decoder, config.encoder)
        # Sparse: the visible features and mask tokens make the decoder's input map (sparse_latent).
        self.latent_grid = LatentGrid(config.encoder, config.decoder) if config.sparse else None

    def forward(self, images: Tensor, token_mask: Tensor | None = None, generator=None) -> MAEOutput:
        """``images``: B x C x H x W in [0, 1]. Without ``token_mask`` one is drawn on the images' device."""
        if token_mask is None:
            token_mask = self.draw_mask(images.shape[0], images.device, generator)
        if self.config.sparse:
            latent = self.latent_grid(self.encoder.forward_visible(images, token_mask))
        else:
            latent = self.encoder.forward_features_masked(images, token_mask)
        prediction = self.decoder(latent).float()  # the loss is taken in fp32 under autocast
        return self.reconstruction_loss(images, prediction, token_mask)

    def draw_mask(self, batch_size: int, device=None, generator=None) -> Tensor:
        config = self.config
        return window_mask(
            batch_size, config.encoder.grid_size, config.mask_unit, config.mask_ratio, generator, device
        )

    def reconstruction_loss(self, images: Tensor, prediction: Tensor, token_mask: Tensor) -> MAEOutput:
        """Mean squared error over masked pixels only; with ``norm_pix_loss`` each target patch is
        normalized by its own mean and std, and the reconstruction is mapped back with them."""
        patch = self.config.encoder.patch_size
        target = images.float()
        masked = pixel_mask(token_mask, patch).to(target.dtype)
        reconstruction = prediction
        if self.config.norm_pix_loss:
            mean, std = patch_mean_std(target, patch)
            target = (target - mean) / std
            reconstruction = prediction * std + mean
        squared_error = (prediction - target).square() * masked
        n_masked_values = (masked.sum() * target.shape[1]).clamp_min(1)
        loss = squared_error.sum() / n_masked_values
        return MAEOutput(loss=loss, reconstruction=reconstruction, pixel_mask=masked, token_mask=token_mask)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names for timm's optimizer factory; 1-D parameters (norms, biases) it exempts by itself."""
        encoder = {f"encoder.{name}" for name in self.encoder.no_weight_decay()}
        decoder = {
            f"decoder.{name}" for name, _ in self.decoder.named_parameters() if "relative_position_bias_table" in name
        }
        return encoder | decoder

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass: less memory at high resolution."""
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)


def patch_mean_std(images: Tensor, patch: int, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Mean and std of every ``patch x patch`` patch (over its pixels and channels), broadcast
    back to the image layout. The variance is unbiased, as in MAE and VIS-MAE."""
    batch, channels, height, width = images.shape
    patches = images.reshape(batch, channels, height // patch, patch, width // patch, patch)
    mean = patches.mean(dim=(1, 3, 5), keepdim=True)
    std = (patches.var(dim=(1, 3, 5), keepdim=True) + eps).sqrt()
    return (
        mean.expand_as(patches).reshape(images.shape),
        std.expand_as(patches).reshape(images.shape),
    )


def build_mae(preset: str, img_size, decoder: str = "mirror", **overrides) -> SwinMAE:
    """``overrides`` may name MAEConfig fields (mask_ratio, ...) or EncoderConfig fields (window_size, ...)."""
    mae_fields = {field.name for field in dataclasses.fields(MAEConfig)} - {"encoder", "decoder"}
    mae_overrides = {key: value for key, value in overrides.items() if key in mae_fields}
    encoder_overrides = {key: value for key, value in overrides.items() if key not in mae_fields}
    encoder = encoder_config(preset, img_size, **encoder_overrides)
    return SwinMAE(MAEConfig(encoder=encoder, decoder=decoder, **mae_overrides))
