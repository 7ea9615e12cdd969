"""The ``random:<preset>`` encoder source: random weights in a named preset's architecture;
and ``random`` alone, the random init of a timm backbone named elsewhere (``model.backbone``).

This module imports nothing heavy, so that configs can tell a random init from a path to
weights (which they make absolute) without loading torch.
"""

from __future__ import annotations

import os

RANDOM_PREFIX = "random:"
RANDOM = "random"
# The backbone name meaning our Swin encoder, whose weights and architecture come from ``init``.
SWIN_BACKBONE = "swin"


def random_preset(source: str | os.PathLike) -> str | None:
    """The preset a ``random:<preset>`` source names, or None for a path to weights.

    ``random:`` with nothing after it gives ``""``, not None: it is a random init with a
    preset missing, which the encoder loader reports, not a file to look for.
    """
    text = str(source)
    return text.removeprefix(RANDOM_PREFIX) if text.startswith(RANDOM_PREFIX) else None


def is_random_init(source: str | os.PathLike) -> bool:
    """True for ``random`` and ``random:<anything>``: a random init, not a file to look for."""
    return str(source) == RANDOM or random_preset(source) is not None


def init_problem(init: str | os.PathLike, backbone: str) -> str | None:
    """Why ``init`` cannot start ``backbone`` (the config's ``model.backbone``), or None.

    The Swin encoder takes ``random:<preset>`` or weights; a timm backbone takes ``random``
    (or ``random:<its own name>``) or one weights file. Files are checked when loaded.
    """
    text = str(init)
    if backbone == SWIN_BACKBONE:
        if text == RANDOM:
            return "init: random needs a preset for the Swin encoder: random:<preset>, e.g. random:vismae"
        return None
    preset = random_preset(text)
    if preset not in (None, "", backbone):
        return (
            f"init: {text} names another architecture than model.backbone {backbone}; "
            f"use init: random (or random:{backbone}) or a timm checkpoint file (.safetensors or .pth)"
        )
    return None
