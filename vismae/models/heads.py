"""Task heads on the Swin encoder: a classifier (norm, pool, dropout, linear) and a Swin-UNet
segmenter whose up path takes a skip connection from every encoder stage.

Both wrappers keep the encoder under ``encoder.`` and describe their parameters the way timm
models do (``group_matcher``, ``no_weight_decay``), so timm's layer-wise lr decay applies to the
encoder's stages while the new head or decoder trains at the full rate."""

from __future__ import annotations

import re
from functools import partial

import torch
from timm.layers import LayerNorm2d, SelectAdaptivePool2d, calculate_drop_path_rates, trunc_normal_
from torch import Tensor, nn

from vismae.models.decoders import ExpandingStage
from vismae.models.swin import EncoderConfig, SwinEncoder

POOLS = ("avg", "max", "avgmax", "catavgmax")


class ClassificationHead(nn.Module):
    """B x C x h x w features -> B x num_classes logits: LayerNorm over channels, global pooling,
    dropout, linear. The norm is the head's own because VIS-MAE encoders have no final norm."""

    def __init__(self, in_features: int, num_classes: int = 2, pool: str = "avg", dropout: float = 0.0):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLS)}")
        self.norm = LayerNorm2d(in_features, eps=1e-6)
        self.pool = SelectAdaptivePool2d(pool_type=pool, flatten=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features * self.pool.feat_mult(), num_classes)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.norm(features))))


class _EncoderWrapper(nn.Module):
    """What both task models share: the encoder's parameter groups, renamed under ``encoder.``."""

    encoder: SwinEncoder

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        # Parameters no pattern matches (the head, the decoder) fall into the last group, which
        # layer decay leaves at the full learning rate.
        return _prefixed(self.encoder.group_matcher(coarse), "encoder.")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}


class StagePoolHead(nn.Module):
    """Every stage's NCHW map -> its mean and max over positions, concatenated -> BatchNorm
    without affine (the MAE linear probe's norm: features of very different scales made
    comparable) -> dropout -> linear. Early stages keep what a small finding looks like, which
    the last stage's few positions may have pooled away."""

    def __init__(self, stage_dims: tuple[int, ...], num_classes: int = 2, dropout: float = 0.0):
        super().__init__()
        features = 2 * sum(stage_dims)
        self.norm = nn.BatchNorm1d(features, affine=False)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, maps: list[Tensor]) -> Tensor:
        pooled = torch.cat([pool for stage in maps for pool in (stage.mean(dim=(2, 3)), stage.amax(dim=(2, 3)))], dim=1)
        return self.fc(self.drop(self.norm(pooled)))


HEAD_STAGES = ("last", "all")


class SwinClassifier(_EncoderWrapper):
    """``stages="last"``: the head reads the last stage's map (norm, pool, dropout, linear);
    ``"all"``: a ``StagePoolHead`` reads every stage's map, and ``pool`` does not apply."""

    def __init__(
        self, encoder: SwinEncoder, num_classes: int = 2, pool: str = "avg", dropout: float = 0.0, stages: str = "last"
    ):
        super().__init__()
        if stages not in HEAD_STAGES:
            raise ValueError(f"unknown head stages {stages!r}; choose one of {', '.join(HEAD_STAGES)}")
        self.encoder = encoder
        self.stages = stages
        if stages == "all":
            self.head = StagePoolHead(encoder.config.stage_dims, num_classes, dropout)
        else:
            self.head = ClassificationHead(encoder.num_features, num_classes, pool, dropout)

    def forward(self, images: Tensor) -> Tensor:
        if self.stages == "all":
            return self.head(self.encoder.forward_intermediates(images, norm=True, intermediates_only=True))
        return self.head(self.encoder.forward_features(images))


class SwinSegmenter(_EncoderWrapper):
    """Encoder stages -> U-Net decoder -> B x num_classes x H x W logits at the input size."""

    def __init__(self, encoder: SwinEncoder, num_classes: int = 2, decoder: str = "swin"):
        super().__init__()
        self.encoder = encoder
        self.decoder = build_segmentation_decoder(decoder, encoder.config, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        # timm's contract: one NCHW map per stage, the final norm on the last (as forward_features)
        return self.decoder(self.encoder.forward_intermediates(images, norm=True, intermediates_only=True))


class SkipExpandingStage(ExpandingStage):
    """Swin-UNet up stage: expand 2x, concatenate the encoder's map of this resolution, a linear
    layer back to the stage width, then Swin blocks. NHWC in and out."""

    def __init__(self, config: EncoderConfig, stage: int, drop_path: list[float], norm_layer):
        super().__init__(config, stage, drop_path, norm_layer)
        width = config.stage_dims[stage]
        self.fuse = nn.Linear(2 * width, width)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.fuse(torch.cat([self.upsample(x), skip], dim=-1))
        return self.blocks(x)


class PixelExpand(nn.Module):
    """The last patch expansion: each token becomes scale x scale pixels of the same width
    (linear, then a pixel layout), so logits come out at the input resolution. NHWC in, NCHW out."""

    def __init__(self, dim: int, scale: int, norm_layer):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * dim, bias=False)
        self.norm = norm_layer(dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        s = self.scale
        x = self.expand(x).reshape(batch, height, width, s, s, channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, channels)
        return self.norm(x).permute(0, 3, 1, 2)


class SwinUNetDecoder(nn.Module):
    """VIS-MAE's segmentation decoder: its MAE decoder's expanding Swin stages (same module
    layout, so those weights could seed it) plus skip connections from every encoder stage."""

    def __init__(self, config: EncoderConfig, num_classes: int = 2):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=config.norm_eps)
        drop_path = calculate_drop_path_rates(config.drop_path_rate, list(config.depths), stagewise=True)
        self.layers = nn.ModuleList([
            SkipExpandingStage(config, stage, drop_path[stage], norm_layer)
            for stage in reversed(range(config.num_stages - 1))
        ])
        self.norm = norm_layer(config.embed_dim)
        self.expand = PixelExpand(config.embed_dim, config.patch_size, norm_layer)
        self.classify = nn.Conv2d(config.embed_dim, num_classes, kernel_size=1)
        self.apply(_init_weights)

    def forward(self, maps: list[Tensor]) -> Tensor:
        x = maps[-1].permute(0, 2, 3, 1)
        for stage, skip in zip(self.layers, reversed(maps[:-1])):
            x = stage(x, skip.permute(0, 2, 3, 1))
        return self.classify(self.expand(self.norm(x)))


class ConvUNetDecoder(nn.Module):
    """A convolutional up path (MONAI's UNETR up blocks: transposed conv, skip concatenation,
    residual conv block), cheaper than Swin blocks at high resolution."""

    def __init__(self, config: EncoderConfig, num_classes: int = 2):
        from monai.networks.blocks import UnetrUpBlock  # MONAI takes seconds to import: only when used

        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=config.norm_eps)
        self.layers = nn.ModuleList([
            UnetrUpBlock(
                spatial_dims=2,
                in_channels=config.stage_dims[stage + 1],
                out_channels=config.stage_dims[stage],
                kernel_size=3,
                upsample_kernel_size=2,
                norm_name="instance",
                res_block=True,
            )
            for stage in reversed(range(config.num_stages - 1))
        ])
        self.expand = PixelExpand(config.embed_dim, config.patch_size, norm_layer)
        self.classify = nn.Conv2d(config.embed_dim, num_classes, kernel_size=1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        x = maps[-1]
        for stage, skip in zip(self.layers, reversed(maps[:-1])):
            x = stage(x, skip)
        return self.classify(self.expand(x.permute(0, 2, 3, 1)))


def build_segmentation_decoder(kind: str, config: EncoderConfig, num_classes: int = 2) -> nn.Module:
    decoders = {"swin": SwinUNetDecoder, "conv": ConvUNetDecoder}
    if kind not in decoders:
        raise ValueError(f"unknown segmentation decoder {kind!r}; choose one of {', '.join(decoders)}")
    return decoders[kind](config, num_classes)


def build_task_model(
    encoder: SwinEncoder,
    task: str,
    num_classes: int = 2,
    pool: str = "avg",
    dropout: float = 0.0,
    decoder: str = "swin",
    stages: str = "last",
) -> nn.Module:
    """The classifier (``task="classify"``, its head on the last or on every stage) or
    segmenter (``"segment"``) on ``encoder``."""
    if task == "classify":
        return SwinClassifier(encoder, num_classes, pool, dropout, stages)
    if task == "segment":
        return SwinSegmenter(encoder, num_classes, decoder)
    raise ValueError(f"unknown task {task!r}; expected classify or segment")


def _prefixed(matcher: dict, prefix: str) -> dict:
    """A timm group matcher whose anchored patterns apply to a submodule named ``prefix``."""

    def rename(pattern: str) -> str:
        return "^" + re.escape(prefix) + pattern[1:] if pattern.startswith("^") else re.escape(prefix) + pattern

    renamed = {}
    for group, spec in matcher.items():
        if isinstance(spec, str):
            renamed[group] = rename(spec)
        elif spec is None:
            renamed[group] = None
        else:
            renamed[group] = [(rename(pattern), ordinal) for pattern, ordinal in spec]
    return renamed


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
