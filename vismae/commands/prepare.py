"""`vismae prepare`: decode a manifest's images once into the training cache."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="decode, window, crop, flip, CLAHE and resize images into a training cache",
        description=(
            "Decode every image of MANIFEST once into OUT: images/*.png, masks/*.png, the cache "
            "manifest.csv, transforms.csv (crop/flip/scale per image) and prepare_report.csv "
            "(files that could not be prepared). Rerunning the same command resumes."
        ),
    )
    parser.add_argument("manifest", help="manifest CSV (from `vismae manifest`)")
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument("--size", default="384", help="N (square) or HxW, e.g. 512x416 (default 384)")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=16, help="PNG bit depth (default 16)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: all cores)")
    parser.add_argument("--shard", default="0/1",
                        help="i/n: prepare only shard i of n (from 0); shards can share --out")
    parser.add_argument("--clahe-clip", type=float, default=2.0, help="CLAHE clip limit; 0 turns CLAHE off (default 2)")
    parser.add_argument("--clahe-tiles", type=int, default=8, help="CLAHE tiles per side (default 8)")
    parser.add_argument("--point-radius", type=float, default=20.0,
                        help="radius in original pixels of the disk drawn for a point ROI (default 20)")
    parser.add_argument("--allow-for-processing", action="store_true",
                        help="accept DICOMs marked FOR PROCESSING (raw detector data) instead of skipping them")
    parser.add_argument("--merge-only", action="store_true",
                        help="only rebuild manifest.csv and the reports from finished images (after all shards)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae.data import cache
    from vismae.data.preprocess import parse_size

    out = args.out
    if args.merge_only:
        cached, reported, pending = cache.merge(args.manifest, out)
    else:
        summary = cache.prepare(
            args.manifest,
            out,
            size=parse_size(args.size),
            bits=args.bits,
            workers=args.workers,
            shard=cache.parse_shard(args.shard),
            clahe_clip=args.clahe_clip,
            clahe_tiles=args.clahe_tiles,
            point_radius=args.point_radius,
            allow_for_processing=args.allow_for_processing,
            progress=not args.no_progress,
        )
        print(
            f"prepare: shard {args.shard}: {summary.in_shard} of {summary.total} images, "
            f"{summary.already_done} already done, {summary.prepared} prepared now, "
            f"{summary.failed} failed"
        )
        cached, reported, pending = summary.cached, summary.reported, summary.pending
    print(f"prepare: cache manifest {os.path.join(out, 'manifest.csv')} lists {cached} images")
    if reported:
        print(f"prepare: {reported} images skipped, reasons in {os.path.join(out, 'prepare_report.csv')}")
    if pending:
        print(f"prepare: {pending} images not prepared yet (other shards, or run again)")
    return 0
