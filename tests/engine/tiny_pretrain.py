"""The pretraining tests' run: the shipped tiny-test config (the tiny model at 64 px, a few
steps on the CPU) pointed at a cache and an output folder. The cache itself comes from the
`pretrain_cache` fixture (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from vismae.config import load_pretrain_config
from vismae.shipped_configs import shipped_config

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = shipped_config("pretrain", "tiny-test.yaml")


def tiny_overrides(manifest: Path, output_dir: Path, **extra) -> list[str]:
    """Overrides of the tiny-test config: where the data is and where the run goes, plus ``extra``."""
    values = {"output_dir": str(output_dir), "data.manifests": f"[{manifest}]", **extra}
    return [f"{key}={value}" for key, value in values.items()]


def tiny_config(manifest: Path, output_dir: Path, **extra):
    return load_pretrain_config(TINY_CONFIG, tiny_overrides(manifest, output_dir, **extra))
