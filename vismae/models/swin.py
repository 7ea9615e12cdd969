"""The Swin encoder: timm's SwinTransformer with one input channel, any image size the stages
halve evenly, and a learned mask token that replaces masked patch tokens before the first stage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn


@dataclass
class EncoderConfig:
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 4
    in_chans: int = 1
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    norm_eps: float = 1e-5  # the VIS-MAE reference format uses 1e-6
    always_partition: bool = False  # True reproduces the VIS-MAE reference (shift kept in the last stage)
    final_norm: bool = True  # the VIS-MAE reference has no final encoder norm

    def __post_init__(self):
        size = (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size
        self.img_size = tuple(int(s) for s in size)
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch-token grid (h, w) that the first stage sees."""
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def total_stride(self) -> int:
        """Pixels per token side in the last stage."""
        return self.patch_size * 2 ** (self.num_stages - 1)

    def validate(self) -> None:
        if len(self.img_size) != 2 or min(self.img_size) < 1:
            raise ValueError(f"encoder img_size must be (height, width) of positive ints, got {self.img_size}")
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"encoder depths {self.depths} and num_heads {self.num_heads} must be non-empty and of equal length"
            )
        for name in ("patch_size", "embed_dim", "window_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"encoder {name} must be positive, got {getattr(self, name)}")
        # Every stage must halve the map exactly, so that decoders and skip connections line up
        # with the image again (timm would silently pad odd maps).
        stride = self.total_stride
        if any(s % stride for s in self.img_size):
            raise ValueError(
                f"encoder img_size {self.img_size} must be divisible by patch_size x 2^(stages-1) = {stride}"
            )
        for stage, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if heads < 1 or dim % heads:
                raise ValueError(f"encoder stage {stage}: width {dim} is not divisible by num_heads {heads}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"encoder drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    def to_dict(self) -> dict:
        """JSON-safe: tuples become lists."""
        fields = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()}

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        check_config_keys(cls, data, "encoder")
        return cls(**data)


def check_config_keys(config_class: type, data: dict, what: str) -> None:
    """Refuse keys of ``data`` that are no field of the dataclass ``config_class``, naming them."""
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; expected some of {sorted(known)}")


class SwinEncoder(SwinTransformer):
    """timm's Swin without a classifier; state_dict keys are timm's plus ``mask_token``.

    Feature maps come back NCHW. ``forward_features_masked`` takes a ``token_mask`` (B x h x w bool
    over the patch grid, True = masked) and replaces those patch tokens by the mask token right
    after the patch embedding, so a masked patch's pixels never reach the stages.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            num_classes=0,
            global_pool="",
            embed_dim=config.embed_dim,
            depths=config.depths,
            num_heads=config.num_heads,
            window_size=config.window_size,
            always_partition=config.always_partition,
            mlp_ratio=config.mlp_ratio,
            drop_path_rate=config.drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=config.norm_eps),
        )
        self.config = config
        if not config.final_norm:
            self.norm = nn.Identity()
        # Always present, even when finetuning, so pretrained and finetuned checkpoints share keys.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, config.embed_dim))
        trunc_normal_(self.mask_token, std=0.02)

    def embed(self, x: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Patch tokens, NHWC, with masked positions replaced by the mask token."""
        tokens = self.patch_embed(x)
        if token_mask is None:
            return tokens
        if token_mask.shape != tokens.shape[:3]:
            expected = tuple(tokens.shape[:3])
            raise ValueError(f"token_mask must be B x h x w = {expected}, got {tuple(token_mask.shape)}")
        return torch.where(token_mask.bool().unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)

    def forward_features(self, x: Tensor) -> Tensor:
        """B x C_in x H x W -> B x num_features x H/stride x W/stride (after the final norm, if
        any). Channels first, unlike timm's NHWC: every head and decoder here reads NCHW maps."""
        return self.forward_features_masked(x, None)

    def forward_features_masked(self, x: Tensor, token_mask: Tensor | None) -> Tensor:
        """``forward_features`` with the patch tokens under ``token_mask`` (B x h x w, True =
        masked) replaced by the mask token; None masks nothing. The MAE's encoder pass."""
        tokens = self.layers(self.embed(x, token_mask))
        return self.norm(tokens).permute(0, 3, 1, 2).contiguous()

    # forward_intermediates and prune_intermediate_layers are timm's, untouched, so that timm's
    # feature API (features_only wrappers included) works on this encoder: one NCHW map per
    # stage; with norm=True the last one gets the final norm and equals forward_features.

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def set_input_size(
        self,
        img_size: tuple[int, int] | int | None = None,
        window_size: int | None = None,
        always_partition: bool | None = None,
    ) -> None:
        """Resize in place, keeping ``config`` in step. Windows keep their size unless given
        (timm alone would scale them with the image)."""
        changes = dict(img_size=img_size, window_size=window_size, always_partition=always_partition)
        # replace() validates the new shape before any module is touched
        config = dataclasses.replace(self.config, **{key: value for key, value in changes.items() if value is not None})
        super().set_input_size(
            img_size=config.img_size, window_size=config.window_size, always_partition=config.always_partition
        )
        self.config = config

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}
