"""The decoder's input when the encoder ran on the visible tokens only (sparse MAE).

The decoders read a full B x C x h x w map of the last stage. With the dense encoder every
position holds an encoder output, masked ones included: their mask tokens went through the
encoder and read the visible tokens there. With the sparse encoder a masked position has no
output at all, so the map is rebuilt as in MAE: the visible features in place, a learned
mask token everywhere else. Mask tokens are only needed where a decoder must predict.

The masked positions must then learn about the image inside the decoder:

- the mirror decoder does so already: its Swin blocks attend across windows of the upsampled
  map, where mask tokens sit next to visible features;
- the light decoder predicts each token's pixels from that token alone, so every masked
  position would predict the same pixels from the mask token and the loss (masked pixels
  only) would not depend on the image: the encoder would get no gradient. One Swin block at
  the last stage's width and resolution runs first, with the window of the encoder (all of a
  7 x 7 map at 224 px), so that mask tokens read the visible features, as in MAE's decoder.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformerBlock
from torch import Tensor, nn

from vismae.models.sparse_swin import VisibleTokens
from vismae.models.swin import EncoderConfig


class LatentGrid(nn.Module):
    """Visible last-stage features -> the B x C x h x w map a decoder reads."""

    def __init__(self, config: EncoderConfig, decoder: str):
        super().__init__()
        dim = config.stage_dims[-1]
        self.mask_token = nn.Parameter(torch.zeros(dim))
        trunc_normal_(self.mask_token, std=0.02)
        self.mixer = None
        if decoder == "light":
            stride = config.total_stride
            self.mixer = SwinTransformerBlock(
                dim=dim,
                input_resolution=(config.img_size[0] // stride, config.img_size[1] // stride),
                num_heads=config.num_heads[-1],
                window_size=config.window_size,
                shift_size=0,
                mlp_ratio=config.mlp_ratio,
                norm_layer=partial(nn.LayerNorm, eps=config.norm_eps),
            )
            self.mixer.apply(_init_linear)

    def forward(self, visible: VisibleTokens) -> Tensor:
        grid = visible.to_grid(self.mask_token)  # B x h x w x C
        if self.mixer is not None:
            grid = self.mixer(grid)
        return grid.permute(0, 3, 1, 2).contiguous()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {"mask_token"}
        if self.mixer is not None:
            names.add("mixer.attn.relative_position_bias_table")
        return names


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
