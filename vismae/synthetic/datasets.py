"""A synthetic dataset carried through the real pipeline: a phantom written in a real dataset's
layout, its manifest read by that dataset's reader, and a prepared cache. Each step writes into
its own folder and is skipped when its output is complete, so an interrupted caller (the demo,
the pretraining study) continues where it stopped."""

from __future__ import annotations

from pathlib import Path

from vismae.synthetic import make_phantom

COMPLETE = ".complete"
# Detail enough for caches up to about 128 px.
PHANTOM_SIZE = (256, 208)


def phantom_dataset(format: str, raw: Path, patients: int, seed: int, image_size=PHANTOM_SIZE) -> Path:
    """``patients`` synthetic patients in ``format``'s layout, in the folder ``raw``."""
    raw = Path(raw)
    if not (raw / COMPLETE).exists():
        make_phantom(format, raw, n_patients=patients, seed=seed, image_size=tuple(image_size), overwrite=True)
        (raw / COMPLETE).touch()
    return raw


def dataset_manifest(format: str, raw: Path, manifest: Path) -> Path:
    """The manifest that ``format``'s reader makes of ``raw``."""
    from vismae.data.manifest import write_manifest
    from vismae.data.sources import read_dataset

    manifest = Path(manifest)
    if not manifest.exists():
        write_manifest(read_dataset(format, raw), manifest)
    return manifest


def prepared_cache(manifest: Path, cache: Path, size: int, workers: int | None = None) -> Path:
    """The cache `vismae prepare` makes of ``manifest`` (finished images are kept)."""
    from vismae.data.cache import prepare

    # 8-bit like the ROI paper's JPEGs: OpenCV's 16-bit CLAHE over-equalizes small images.
    prepare(manifest, cache, size=size, bits=8, workers=workers, progress=False)
    return Path(cache)


def synthetic_cache(format: str, folder: Path, patients: int, seed: int, size: int, workers: int | None = None,
                    image_size=PHANTOM_SIZE) -> Path:  # fmt: skip
    """All three steps under ``folder`` (raw/, manifest.csv, cache/); the cache's manifest."""
    folder = Path(folder)
    raw = phantom_dataset(format, folder / "raw", patients, seed, image_size)
    manifest = dataset_manifest(format, raw, folder / "manifest.csv")
    return prepared_cache(manifest, folder / "cache", size, workers) / "manifest.csv"
