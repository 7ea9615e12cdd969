"""Pretraining loader throughput: the training run's own dataset and DataLoader (16-bit PNGs of a
prepared cache, decoded and batched by worker processes) over a synthetic cache. Prints one JSON line.

    python bench/loader.py --size 1024x832 --workers 8 --batch 32

The cache is drawn by vismae.synthetic.cache into a temporary folder (or ``--cache``, kept and
reused). Worker start-up is timed apart: the figure is the steady rate over whole epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from pretrain import machine, parse_size  # bench/pretrain.py: the same machine record and size syntax

from vismae.config import load_pretrain_config
from vismae.engine.pretrain import build_dataset, build_loader
from vismae.synthetic.cache import CacheImage, write_synthetic_cache


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(224, 224), help="cache image size: 224 or 1024x832")
    parser.add_argument("--images", type=int, default=128, help="images in the synthetic cache")
    parser.add_argument("--bits", type=int, default=16, choices=(8, 16), help="PNG depth (prepare writes 16)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader worker processes (0: in the main process)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes over the cache")
    parser.add_argument("--augment", action="store_true", help="vertical flips and gamma jitter, as a config may ask")
    parser.add_argument("--cache", default=None, help="folder for the synthetic cache (kept; reused when it holds one)")
    parser.add_argument("--label", default=None, help="a name for this measurement, repeated in the JSON line")
    return parser.parse_args(argv)


def synthetic_manifest(folder: Path, images: int, size: tuple[int, int], bits: int) -> Path:
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    rows = [CacheImage(f"p{index // 2:05d}", view=("CC", "MLO")[index % 2]) for index in range(images)]
    return write_synthetic_cache(folder, rows, size=size, bits=bits, dataset="bench")


def measure(args: argparse.Namespace, folder: Path) -> dict:
    if args.workers == 0:
        # One thread, as torch gives each DataLoader worker: then --workers 0 costs what one worker
        # does. (Several threads stacking a small batch wait on each other on a busy machine.)
        torch.set_num_threads(1)
    started = time.perf_counter()
    manifest = synthetic_manifest(folder, args.images, args.size, args.bits)
    cache_s = time.perf_counter() - started
    overrides = [
        f"data.manifests=[{manifest}]",
        f"data.size=[{args.size[0]},{args.size[1]}]",
        f"data.num_workers={args.workers}",
        f"train.batch_size={args.batch}",
    ]
    if args.augment:
        overrides += ["data.vflip_prob=0.5", "data.intensity_jitter=0.1"]
    config = load_pretrain_config(None, overrides)
    dataset = build_dataset(config)
    loader, sampler = build_loader(dataset, config, processes=1, use_cuda=False)

    # Epoch 0's first batch pays for starting the workers (persistent: once per run).
    started = time.perf_counter()
    batches = iter(loader)
    next(batches)
    startup_s = time.perf_counter() - started
    for _ in batches:
        pass
    images = 0
    started, started_cpu = time.perf_counter(), time.process_time()
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        for batch in loader:
            images += batch["image"].shape[0]
    elapsed, cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    rate = images / elapsed
    return {
        "benchmark": "loader",
        "label": args.label,
        "images_per_s": round(rate, 2),
        # Workers decode in parallel; with fewer cores than workers this is a floor, not a rate.
        "images_per_s_per_worker": round(rate / max(args.workers, 1), 2),
        "megapixels_per_s": round(rate * args.size[0] * args.size[1] / 1e6, 2),
        # CPU seconds of this process per image: with --workers 0 the whole cost of loading one
        # image (steadier than the rate on a busy machine), with workers only the batches' hand-over.
        "main_process_cpu_s_per_image": round(cpu_s / images, 5),
        "worker_startup_s": round(startup_s, 3),
        "cache_build_s": round(cache_s, 2),
        "config": {
            "img_size": list(args.size),
            "images": len(dataset),
            "bits": args.bits,
            "workers": args.workers,
            "batch": args.batch,
            "epochs": args.epochs,
            "augment": args.augment,
        },
        "machine": machine(torch.device("cpu")),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.images < args.batch:
        raise SystemExit(f"--images {args.images} must be at least --batch {args.batch} (one full batch)")
    if args.cache:
        folder = Path(args.cache)
        folder.mkdir(parents=True, exist_ok=True)
        result = measure(args, folder)
    else:
        with tempfile.TemporaryDirectory(prefix="vismae-loader-") as temporary:
            result = measure(args, Path(temporary))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
