"""`vismae phantom`: write synthetic mammograms in a real dataset's on-disk format."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# Kept here rather than imported so that `vismae --help` does not load numpy, OpenCV and pydicom;
# tests check it matches vismae.synthetic.FORMATS.
FORMATS = ("vindr", "cdd-cesm", "cbis-ddsm")
REAL_ASPECT = 2800 / 3518  # columns per row of VinDr's most common image size
IMAGE_SUFFIXES = {".dicom", ".dcm", ".jpg"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write a synthetic dataset in VinDr-Mammo, CDD-CESM or CBIS-DDSM format",
        description=(
            "Write synthetic mammograms with label-dependent lesions, laid out exactly as a real "
            "dataset download, so that `vismae manifest` reads them as it reads the real data."
        ),
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="on-disk format to imitate")
    parser.add_argument("--out", required=True, type=Path, help="folder to create (absent or empty)")
    parser.add_argument("--n", type=int, default=8, metavar="N", help="number of patients (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    parser.add_argument(
        "--image-size",
        type=image_size,
        default=None,
        metavar="ROWSxCOLS",
        help="image size, e.g. 512x416 (the default) or just the rows, e.g. 1024",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a phantom already in --out")
    parser.set_defaults(func=run)


def image_size(text: str) -> tuple[int, int]:
    """Parse "ROWSxCOLS", or "ROWS" with the columns from the real images' aspect ratio."""
    parts = text.lower().split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers.append(2 * round(numbers[0] * REAL_ASPECT / 2))
    if len(numbers) != 2 or min(numbers) <= 0:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS such as 512x416, or ROWS, got {text!r}")
    return numbers[0], numbers[1]


def run(args: argparse.Namespace) -> int:
    from vismae.synthetic import DEFAULT_IMAGE_SIZE, make_phantom

    started = time.perf_counter()
    out = make_phantom(
        args.format,
        args.out,
        args.n,
        args.seed,
        image_size=args.image_size or DEFAULT_IMAGE_SIZE,
        overwrite=args.overwrite,
    )
    files = sum(1 for path in out.rglob("*") if path.suffix in IMAGE_SUFFIXES)
    print(
        f"wrote a {args.format} phantom: {args.n} patients, {files} image files, "
        f"in {time.perf_counter() - started:.1f} s -> {out}"
    )
    return 0
