"""The YAML configs shipped inside the package (vismae/configs/, which the repository also shows
as configs/ at its root). They are found through importlib.resources, so an installed wheel
finds them as well as a source checkout does."""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path

# Files extracted from a zipped install stay on disk until the interpreter exits.
_extracted = ExitStack()
atexit.register(_extracted.close)


def shipped_config(*parts: str) -> Path:
    """The path of a shipped config, e.g. ``shipped_config("pretrain", "demo.yaml")``, or of one
    of their folders, e.g. ``shipped_config("finetune")``."""
    resource = files("vismae").joinpath("configs", *parts)
    if isinstance(resource, Path) and resource.is_dir():
        return resource
    if not resource.is_file():
        folder = files("vismae").joinpath("configs", *parts[:-1])
        known = sorted(item.name for item in folder.iterdir()) if folder.is_dir() else []
        raise FileNotFoundError(f"no shipped config configs/{'/'.join(parts)}; that folder has: {', '.join(known) or 'nothing'}")
    if isinstance(resource, Path):
        return resource
    return _extracted.enter_context(as_file(resource))
