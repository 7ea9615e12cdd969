"""`prepare`: decode every image of a manifest once into the training cache.

Layout of a cache folder::

    prepare.json         the settings; a rerun with other settings is refused
    images/<name>.png    8- or 16-bit gray, all one size, breast at the left edge
    masks/<name>.png     uint8 0/255, only for images with an ROI
    records/<name>.<fingerprint>.json
                         per image: transform and ROI in cache coordinates (written last)
    failed/<name>.json   per image that could not be prepared: the reason
    manifest.csv         the cache manifest, rebuilt from records/ at the end of every run
    transforms.csv       per image: crop box, flip, scale and padding from the original image
                         to the cached one, a record of where each cached pixel came from
    prepare_report.csv   image_id, path, reason of every image that failed

Work is split per image and every output is written atomically with the record last, so a
killed run, a rerun and several machines sharing one folder (``shard=(i, n)``) all end in
the same cache: an image counts as done when its record, image (and mask) exist.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import pandas as pd
from tqdm import tqdm

from vismae.data import roi
from vismae.data.dicom import read_image
from vismae.data.manifest import new_frame, read_manifest, write_manifest
from vismae.data.preprocess import Preprocessing, Transform, preprocess
from vismae.io import atomic_path, write_json

FORMAT_VERSION = 1
REPORT_COLUMNS = ["image_id", "path", "reason"]


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that decides a cached file; saved as prepare.json."""

    preprocessing: Preprocessing
    point_radius: float = roi.DEFAULT_POINT_RADIUS
    allow_for_processing: bool = False

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["preprocessing"]["size"] = list(self.preprocessing.size)
        return {"format_version": FORMAT_VERSION, **values}


@dataclass
class PrepareSummary:
    """What one `prepare` run did, and the state of the whole cache after it."""

    total: int  # rows of the manifest
    in_shard: int  # rows this run was responsible for
    already_done: int
    prepared: int  # prepared by this run
    failed: int  # failed in this run
    cached: int  # rows in the cache manifest written at the end (all shards)
    reported: int  # rows in prepare_report.csv (all shards)
    pending: int  # rows neither cached nor failed yet (other shards still running)


def safe_name(image_id: str) -> str:
    """A file name for an image id; ids with other characters get a hash so none collide."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", image_id).lstrip(".") or "image"
    if cleaned == image_id and len(cleaned) <= 100:
        return cleaned
    return f"{cleaned[:100]}-{hashlib.sha1(image_id.encode()).hexdigest()[:10]}"


def in_shard(image_id: str, shard: tuple[int, int]) -> bool:
    """Deterministic, order-independent split of image ids into ``n`` disjoint shards."""
    index, count = shard
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:12], 16) % count == index


def parse_shard(text: str) -> tuple[int, int]:
    """'1/4' -> (1, 4); shards count from 0."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(match[1]), int(match[2])


def _fingerprint(row: dict) -> str:
    """What decides an image's record besides its pixels: laterality (a flip tie-break) and ROI.

    Mask files count by name only, so moving the raw data does not invalidate a cache.
    """
    shapes = [{**shape, "path": Path(shape["path"]).name} if shape["type"] == "mask" else shape for shape in row["roi"]]
    text = json.dumps([row["laterality"], shapes], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class _Paths:
    """Where one manifest row's outputs go."""

    image: Path
    mask: Path
    record: Path
    failure: Path
    has_roi: bool

    @classmethod
    def of(cls, out_dir: Path, row: dict) -> "_Paths":
        name = safe_name(row["image_id"])
        # The record's name carries the row's fingerprint: after a manifest edit (new ROIs),
        # the old record no longer counts and the image is prepared again.
        return cls(out_dir / "images" / f"{name}.png", out_dir / "masks" / f"{name}.png",
                   out_dir / "records" / f"{name}.{_fingerprint(row)}.json",
                   out_dir / "failed" / f"{name}.json", bool(row["roi"]))

    def done(self) -> bool:
        return self.record.is_file() and self.image.is_file() and (self.mask.is_file() or not self.has_roi)


def prepare_one(row: dict, out_dir: Path, settings: PrepareSettings) -> str | None:
    """Prepare one manifest row; return None on success, else the reason it failed.

    Any error of one image is caught, recorded in failed/ and returned: a corrupt file in a
    large dataset must not stop the others.
    """
    paths = _Paths.of(out_dir, row)
    try:
        image = read_image(row["path"], allow_for_processing=settings.allow_for_processing)
        pixels, transform = preprocess(image, row["laterality"], settings.preprocessing)
        mask_name = ""
        if row["roi"]:
            mask = roi.rasterize(row["roi"], image.shape[0], image.shape[1], settings.point_radius)
            _write_png(paths.mask, transform.apply_to_mask(mask))
            mask_name = paths.mask.relative_to(out_dir).as_posix()
        _write_png(paths.image, pixels)
        record = {
            "image_id": row["image_id"],
            "image": paths.image.relative_to(out_dir).as_posix(),
            "mask": mask_name,
            "transform": transform.as_dict(),
            "roi": roi.transform_shapes(row["roi"], transform, mask_name, settings.point_radius),
        }
        write_json(paths.record, record)
    except Exception as error:  # noqa: BLE001 - one bad image is reported, never fatal
        reason = f"{type(error).__name__}: {error}"
        write_json(paths.failure, {"image_id": row["image_id"], "path": row["path"], "reason": reason})
        return reason
    paths.failure.unlink(missing_ok=True)
    return None


def _write_png(path: Path, pixels) -> None:
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), pixels):
            raise OSError(f"{path}: OpenCV could not write the PNG")


def _worker_init() -> None:
    # One OpenCV thread per process: the processes already use every core.
    cv2.setNumThreads(1)


def check_settings(out_dir: Path, settings: PrepareSettings) -> None:
    """Save the settings in a new cache; refuse a cache made with other settings."""
    wanted = settings.as_dict()
    saved_path = out_dir / "prepare.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        differences = _differences(saved, wanted)
        if differences:
            raise ValueError(
                f"{out_dir} was prepared with other settings ({'; '.join(differences)}); "
                "use another output folder or the same settings"
            )
        return
    write_json(saved_path, wanted)


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(saved) | set(wanted)):
        old, new = saved.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key} was {old!r}, now {new!r}")
    return found


def prepare(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    size: int | tuple[int, int] = 384,
    bits: int = 16,
    workers: int | None = None,
    shard: tuple[int, int] = (0, 1),
    clahe_clip: float = 2.0,
    clahe_tiles: int = 8,
    point_radius: float = roi.DEFAULT_POINT_RADIUS,
    allow_for_processing: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare the rows of this shard that are not done yet, then rebuild the cache manifest."""
    out_dir = Path(out_dir)
    size = (size, size) if isinstance(size, int) else tuple(size)
    settings = PrepareSettings(
        Preprocessing(size=size, bits=bits, clahe_clip=clahe_clip, clahe_tiles=clahe_tiles),
        point_radius=point_radius,
        allow_for_processing=allow_for_processing,
    )
    parse_shard(f"{shard[0]}/{shard[1]}")  # validates
    frame = read_manifest(manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(out_dir, settings)

    rows = [row for row in _rows(frame) if in_shard(row["image_id"], shard)]
    todo = [row for row in rows if not _Paths.of(out_dir, row).done()]
    failures = _run(todo, out_dir, settings, workers or os.cpu_count() or 1, progress)
    cached, reported, pending = write_outputs(frame, out_dir)
    return PrepareSummary(
        total=len(frame), in_shard=len(rows), already_done=len(rows) - len(todo),
        prepared=len(todo) - failures, failed=failures, cached=cached, reported=reported, pending=pending,
    )


def _rows(frame: pd.DataFrame) -> list[dict]:
    return [
        {"image_id": image_id, "path": path, "laterality": laterality, "roi": shapes}
        for image_id, path, laterality, shapes in zip(frame["image_id"], frame["path"], frame["laterality"], frame["roi"])
    ]


def _run(rows: list[dict], out_dir: Path, settings: PrepareSettings, workers: int, progress: bool) -> int:
    """Prepare rows, in this process or a pool; return how many failed."""
    failures = 0
    bar = tqdm(total=len(rows), desc="prepare", unit="img", disable=not progress or not rows)
    if workers <= 1 or len(rows) <= 1:
        for row in rows:
            failures += prepare_one(row, out_dir, settings) is not None
            bar.update()
        bar.close()
        return failures
    # spawn, not fork: a child forked after OpenCV started its thread pool can deadlock.
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(rows)), mp_context=context, initializer=_worker_init)
    try:
        futures = [pool.submit(prepare_one, row, out_dir, settings) for row in rows]
        for future in concurrent.futures.as_completed(futures):
            failures += future.result() is not None
            bar.update()
    except concurrent.futures.process.BrokenProcessPool:
        raise RuntimeError(
            "a prepare worker died (a decoder crash or out of memory); finished images are "
            "kept, run the same command again to resume"
        ) from None
    finally:
        # On an interrupt, drop the queue instead of working through it; a rerun resumes.
        pool.shutdown(cancel_futures=True)
        bar.close()
    return failures


def write_outputs(frame: pd.DataFrame, out_dir: Path) -> tuple[int, int, int]:
    """Rebuild manifest.csv, transforms.csv and prepare_report.csv from all finished images.

    Returns (cached rows, reported failures, rows still pending).
    """
    cached_rows, transform_rows, report_rows = [], [], []
    for row in frame.to_dict("records"):
        paths = _Paths.of(out_dir, row)
        if paths.done():
            record = json.loads(paths.record.read_text())
            cached_rows.append({
                **row,
                "path": str(out_dir / record["image"]),
                "mask_path": str(out_dir / record["mask"]) if record["mask"] else "",
                "roi": [
                    {**shape, "path": str(out_dir / shape["path"])} if shape["type"] == "mask" else shape
                    for shape in record["roi"]
                ],
            })
            transform_rows.append({"image_id": row["image_id"], **record["transform"]})
        elif paths.failure.is_file():
            report_rows.append(json.loads(paths.failure.read_text()))
    cache_frame = new_frame(cached_rows) if cached_rows else new_frame([]).assign(mask_path=pd.Series(dtype=str))
    write_manifest(cache_frame, out_dir / "manifest.csv")
    transform_columns = ["image_id"] + [field.name for field in dataclasses.fields(Transform)]
    _write_csv(pd.DataFrame(transform_rows, columns=transform_columns), out_dir / "transforms.csv")
    _write_csv(pd.DataFrame(report_rows, columns=REPORT_COLUMNS), out_dir / "prepare_report.csv")
    pending = len(frame) - len(cached_rows) - len(report_rows)
    return len(cached_rows), len(report_rows), pending


def merge(manifest_path: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[int, int, int]:
    """Only rebuild the cache manifest and reports (after all shards finished)."""
    out_dir = Path(out_dir)
    if not (out_dir / "prepare.json").is_file():
        raise FileNotFoundError(f"{out_dir}: no prepare.json, nothing was prepared into this folder")
    return write_outputs(read_manifest(manifest_path), out_dir)


def read_transforms(out_dir: str | os.PathLike) -> dict[str, Transform]:
    """image_id -> Transform, from a cache's transforms.csv."""
    table = pd.read_csv(Path(out_dir) / "transforms.csv", dtype={"image_id": str}, keep_default_na=False)
    return {row["image_id"]: Transform.from_dict(row) for row in table.to_dict("records")}


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)
