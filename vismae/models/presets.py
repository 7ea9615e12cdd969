"""Named encoder shapes. The image size is not part of a preset: pass it when building."""

from __future__ import annotations

from vismae.models.swin import EncoderConfig

PRESETS: dict[str, dict] = {
    # VIS-MAE: Swin-T widths with the same depth in every stage.
    "vismae": dict(embed_dim=96, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=7),
    # The VIS-MAE reference code's exact encoder, for loading checkpoints trained with it.
    "vismae-reference": dict(
        embed_dim=96,
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        norm_eps=1e-6,
        always_partition=True,
        final_norm=False,
    ),
    "swin-t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin-s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin-b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7),
    # For tests and demos: 64 px gives stage maps 16, 8, 4, 2 and windows of 4 (shifted in stage 0).
    "tiny": dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4),
}


def encoder_config(preset: str, img_size: int | tuple[int, int], **overrides) -> EncoderConfig:
    """The preset's encoder at ``img_size``; ``overrides`` replace any EncoderConfig field."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return EncoderConfig.from_dict({**PRESETS[preset], "img_size": img_size, **overrides})
