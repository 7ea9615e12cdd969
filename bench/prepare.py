"""`prepare` throughput per worker process on a full-size mammogram DICOM, uncompressed and
JPEG 2000 lossless. Writes its own files to a temporary folder. Prints one JSON line.

    python bench/prepare.py --size 384 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from machine_info import machine  # bench/machine_info.py
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from vismae.data.cache import PrepareSettings, prepare_one
from vismae.data.dicom import read_image
from vismae.data.preprocess import Preprocessing, parse_size
from vismae.synthetic.dicom_writer import write_dicom

HEIGHT, WIDTH = 3518, 2800  # the most common VinDr-Mammo size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(384, 384), help="N or HxW (default 384)")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed images per format")
    parser.add_argument("--opencv-threads", type=int, default=1, help="as in a prepare worker (default 1)")
    return parser.parse_args(argv)


def synthetic_mammogram(seed: int = 0) -> np.ndarray:
    """12-bit stored values: air, a half-ellipse breast with texture and detector noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH].astype(np.float32)
    breast = (xx / 2000) ** 2 + ((yy - HEIGHT / 2) / 1500) ** 2 <= 1
    texture = cv2.GaussianBlur(rng.normal(0, 1, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 12)
    noise = rng.normal(0, 20, (HEIGHT, WIDTH)).astype(np.float32)  # keeps compression honest
    values = np.where(breast, 1500 + 1200 * (1 - xx / 2000) + 4000 * texture + noise, 60)
    return np.clip(values, 0, 4095).astype(np.uint16)


def time_format(path: Path, out_dir: Path, settings: PrepareSettings, repeats: int) -> dict:
    row = {"image_id": path.stem, "path": str(path), "laterality": "L",
           "roi": [{"type": "box", "xmin": 800, "ymin": 1500, "xmax": 1000, "ymax": 1700}]}
    if prepare_one(row, out_dir, settings) is not None:  # warm-up, and a failure is loud
        raise RuntimeError(f"{path}: could not be prepared")
    decode, total, cpu = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        read_image(path)
        decode.append(time.perf_counter() - start)
        start, start_cpu = time.perf_counter(), time.process_time()
        prepare_one(row, out_dir, settings)
        total.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    seconds = float(np.median(total))
    return {
        "images_per_second": round(1 / seconds, 3),
        "seconds_per_image": round(seconds, 4),
        # CPU time of this process: wall time minus waiting for a busy machine.
        "cpu_seconds_per_image": round(float(np.median(cpu)), 4),
        "decode_seconds": round(float(np.median(decode)), 4),
        "file_mb": round(path.stat().st_size / 1e6, 2),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    cv2.setNumThreads(args.opencv_threads)
    settings = PrepareSettings(Preprocessing(size=args.size, bits=args.bits))
    stored = synthetic_mammogram()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name, syntax in (("uncompressed", ExplicitVRLittleEndian), ("jpeg2000", JPEG2000Lossless)):
            path = folder / f"{name}.dcm"
            write_dicom(path, stored, bits_stored=12, transfer_syntax=syntax, WindowCenter=2100, WindowWidth=3000)
            results[name] = time_format(path, folder / "cache", settings, args.repeats)
    record = {
        "bench": "prepare",
        "images_per_second_per_process": {name: result["images_per_second"] for name, result in results.items()},
        "detail": results,
        "config": {
            "source": f"{HEIGHT}x{WIDTH} 12-bit MONOCHROME2 DICOM with window",
            "size": list(args.size), "bits": args.bits, "clahe_clip": settings.preprocessing.clahe_clip,
            "clahe_tiles": settings.preprocessing.clahe_tiles, "repeats": args.repeats,
            "opencv_threads": args.opencv_threads, "statistic": "median",
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "machine": machine("torch", "pydicom", "pylibjpeg-openjpeg", "opencv-python-headless", "numpy"),
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
