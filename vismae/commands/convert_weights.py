"""`vismae convert-weights SRC DST`: any supported checkpoint -> our exported encoder."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-weights",
        help="convert a checkpoint (ours, VIS-MAE, Microsoft or timm Swin) into an exported encoder",
        description=(
            "Read SRC (an exported encoder, a pretraining run or checkpoint folder, a VIS-MAE / Swin-MAE "
            "checkpoint-N.pth, a Microsoft or timm Swin checkpoint, or random:<preset>), detect its format "
            "from its content, and write DST/encoder.safetensors + DST/encoder.json. What was mapped, "
            "dropped and missing goes to stderr; one JSON summary line to stdout."
        ),
    )
    parser.add_argument("src", help="checkpoint file or folder, or random:<preset>")
    parser.add_argument("dst", help="output folder for encoder.safetensors and encoder.json")
    parser.add_argument(
        "--img-size", type=_image_size, default=None, help="working size: N or HxW (default: the source's)"
    )
    parser.add_argument("--window-size", type=int, default=None, help="attention window (tables are resized)")
    parser.add_argument("--allow-missing", action="store_true", help="load what fits; leave the rest at init")
    parser.add_argument(
        "--fold-input-norm",
        action="store_true",
        help="fold the source's input normalization (ImageNet, VIS-MAE) into the patch embedding: raw [0, 1] input",
    )
    parser.add_argument("--force", action="store_true", help="replace an encoder already in DST")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae import __version__
    from vismae.models.formats.vismae_export import (
        ENCODER_CONFIG,
        PRETRAINING_IMAGES,
        export_encoder,
        pretraining_images,
        write_pretraining_images,
    )
    from vismae.models.weights import load_encoder_with_report

    destination = Path(args.dst)
    if (destination / ENCODER_CONFIG).exists() and not args.force:
        raise ValueError(f"{destination} already holds an exported encoder; pass --force to replace it")
    overrides = {"window_size": args.window_size} if args.window_size else {}
    encoder, report = load_encoder_with_report(
        args.src, args.img_size, args.allow_missing, verbose=False, fold_input_norm=args.fold_input_norm, **overrides
    )
    report.print(file=sys.stderr)
    source = {"producer": f"vismae {__version__} convert-weights", "from": str(args.src), "format": report.format}
    if report.file:
        source.update(file=report.file, sha256=_sha256(Path(report.file)))
    if report.notes:
        source["notes"] = report.notes
    # The images the source was pretrained on travel with it, so that finetuning from the
    # converted encoder can still tell which test images it has seen.
    seen = pretraining_images(args.src)
    if seen is not None:
        source["pretraining_images"] = len(seen)
    export_encoder(encoder, destination, source)
    if seen is not None:
        write_pretraining_images(destination, seen)
    else:  # a replaced export's list would describe other weights
        (destination / PRETRAINING_IMAGES).unlink(missing_ok=True)
    print(json.dumps({**report.summary(), "output": str(destination)}))
    return 0


def _image_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x")
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW of positive ints, got {text!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
