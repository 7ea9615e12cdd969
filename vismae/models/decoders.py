"""MAE decoders: the last encoder stage's map (B x C x h x w) -> a prediction in image layout
(B x in_chans x H x W). Pixel targets are compared with it directly, no patchify step."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import calculate_drop_path_rates, trunc_normal_
from timm.models._manipulate import checkpoint_seq
from timm.models.swin_transformer import SwinTransformerBlock
from torch import Tensor, nn

from vismae.models.swin import EncoderConfig


class PatchExpanding(nn.Module):
    """The inverse of patch merging, NHWC: a linear C -> 2C, then each token's channels are
    spread over 2 x 2 tokens of C/2 channels, then LayerNorm."""

    def __init__(self, dim: int, norm_layer):
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = norm_layer(dim // 2)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        # Channels are ordered (row, column, C), the layout VIS-MAE checkpoints were trained with.
        x = self.expand(x).reshape(batch, height, width, 2, 2, channels // 2)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, channels // 2)
        return self.norm(x)


class ExpandingStage(nn.Module):
    """Mirror of a timm Swin stage: timm merges patches at the start of a stage, so this stage
    expands at its start, then runs timm Swin blocks at the doubled resolution."""

    def __init__(self, config: EncoderConfig, stage: int, drop_path: list[float], norm_layer):
        super().__init__()
        dim = config.stage_dims[stage]
        resolution = tuple(g // 2**stage for g in config.grid_size)
        self.upsample = PatchExpanding(2 * dim, norm_layer)
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(
                dim=dim,
                input_resolution=resolution,
                num_heads=config.num_heads[stage],
                window_size=config.window_size,
                shift_size=0 if index % 2 == 0 else config.window_size // 2,
                always_partition=config.always_partition,
                mlp_ratio=config.mlp_ratio,
                drop_path=drop_path[index],
                norm_layer=norm_layer,
            )
            for index in range(config.depths[stage])
        ])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.upsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MirrorDecoder(nn.Module):
    """VIS-MAE's decoder: the encoder's stages in reverse, without skip connections, up to the
    patch grid; then a linear layer predicts each patch's pixels."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=config.norm_eps)
        drop_path = calculate_drop_path_rates(config.drop_path_rate, list(config.depths), stagewise=True)
        self.patch_size = config.patch_size
        self.in_chans = config.in_chans
        self.layers = nn.Sequential(*[
            ExpandingStage(config, stage, drop_path[stage], norm_layer)
            for stage in reversed(range(config.num_stages - 1))
        ])
        self.norm = norm_layer(config.embed_dim)
        self.pred = nn.Linear(config.embed_dim, config.patch_size**2 * config.in_chans)
        self.apply(_init_weights)

    def forward(self, latent: Tensor) -> Tensor:
        tokens = self.norm(self.layers(latent.permute(0, 2, 3, 1)))
        batch, height, width, _ = tokens.shape
        patch, channels = self.patch_size, self.in_chans
        # Each token predicts its patch as (row, column, channel), then patches are laid out as an image.
        pixels = self.pred(tokens).reshape(batch, height, width, patch, patch, channels)
        return pixels.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height * patch, width * patch)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable


class LightDecoder(nn.Module):
    """A cheap baseline: one linear layer predicts every pixel under a last-stage token, and a
    pixel shuffle lays them out."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        stride = config.total_stride
        self.pred = nn.Conv2d(config.stage_dims[-1], stride**2 * config.in_chans, kernel_size=1)
        self.shuffle = nn.PixelShuffle(stride)
        self.apply(_init_weights)

    def forward(self, latent: Tensor) -> Tensor:
        return self.shuffle(self.pred(latent))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass  # nothing worth recomputing


DECODERS = {"mirror": MirrorDecoder, "light": LightDecoder}


def build_decoder(name: str, config: EncoderConfig) -> nn.Module:
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[name](config)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
