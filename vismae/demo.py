"""The demo pipeline: each stage writes into its own folder under the demo folder and is
skipped when its output is already there, so an interrupted demo continues where it stopped."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

# The datasets the demo synthesizes, read and prepares: VinDr-Mammo's DICOM layout and
# CDD-CESM's JPEG + spreadsheet layout, the two datasets of the ROI-aware paper.
DEMO_FORMATS = ("vindr", "cdd-cesm")


@dataclass
class DemoSettings:
    out: str | Path = "runs/demo"
    patients: int = 48
    size: int = 128
    seed: int = 0
    workers: int | None = None


def _stage(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(started: float, where: Path) -> None:
    print(f"   -> {where} ({time.perf_counter() - started:.1f} s)", flush=True)


def synthesize(settings: DemoSettings, name: str) -> Path:
    from vismae.data.phantom import make_phantom

    raw = Path(settings.out) / "raw" / name
    started = _stage(f"phantom: {settings.patients} synthetic patients in the {name} format")
    if not (raw / ".complete").exists():
        make_phantom(name, raw, n_patients=settings.patients, seed=settings.seed, overwrite=True)
        (raw / ".complete").touch()
    _done(started, raw)
    return raw


def read_manifest_of(settings: DemoSettings, name: str, raw: Path) -> Path:
    from vismae.data.manifest import write_manifest
    from vismae.data.sources import read_dataset

    manifest = Path(settings.out) / "manifests" / f"{name}.csv"
    started = _stage(f"manifest: read the {name} metadata")
    if not manifest.exists():
        write_manifest(read_dataset(name, raw), manifest)
    _done(started, manifest)
    return manifest


def prepare_cache(settings: DemoSettings, name: str, manifest: Path) -> Path:
    from vismae.data.cache import prepare

    cache = Path(settings.out) / "cache" / name
    started = _stage(f"prepare: decode, crop, flip, CLAHE and resize to {settings.size} px")
    # 8-bit like the ROI paper's JPEGs: OpenCV's 16-bit CLAHE over-equalizes small images.
    prepare(manifest, cache, size=settings.size, bits=8, workers=settings.workers, progress=False)
    _done(started, cache)
    return cache


def summarize(cache: Path) -> None:
    from vismae.commands.summarize import format_summary
    from vismae.data.manifest import read_manifest
    from vismae.data.summary import summarize as count

    manifest = cache / "manifest.csv"
    print(format_summary(count(read_manifest(manifest)), str(manifest)))


def run_demo(settings: DemoSettings) -> dict[str, Path]:
    out = Path(settings.out)
    caches = {}
    for name in DEMO_FORMATS:
        raw = synthesize(settings, name)
        manifest = read_manifest_of(settings, name, raw)
        caches[name] = prepare_cache(settings, name, manifest)
        summarize(caches[name])
    print(f"\nDemo outputs are in {out.resolve()}:")
    for name, cache in caches.items():
        print(f"  {name}: raw data {out / 'raw' / name}, cache {cache}")
    return caches
