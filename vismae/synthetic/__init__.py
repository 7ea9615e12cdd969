"""Synthetic mammograms written in the real datasets' on-disk formats.

`make_phantom("vindr" | "cdd-cesm" | "cbis-ddsm", out, n_patients, seed)` writes a dataset that
the dataset readers read exactly as they read the real download: the same folders, file names,
file formats, CSV headers and quirks. Lesions depend on the label (malignant: irregular or
spiculated masses, fine clustered calcifications; benign: round or oval masses, coarse
calcifications; normal: none) and their annotations (boxes, VIA outlines, ROI masks) match the
drawn pixels. The same seed gives the same files.

Modules: `cohort` (who has what), `anatomy` and `lesions` (drawing), `render` (one view),
`vindr`, `cdd_cesm`, `cbis_ddsm` (the formats) with `vindr_profiles`, `via`, `film` and
`dicom_writer` (also the tests' and benchmarks' DICOM writer) as their helpers. Apart from
these, `cache` writes a small prepared cache of simple synthetic breasts directly, with no raw
dataset or `prepare` step, for tests and benchmarks.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from vismae.synthetic import cbis_ddsm, cdd_cesm, vindr

DEFAULT_IMAGE_SIZE = (512, 416)  # rows, columns: the aspect of VinDr's 3518 x 2800, small
MIN_IMAGE_SIDE = 96  # below this a calcification cluster is a pixel or two
WRITERS = {
    "vindr": (vindr.write_vindr, vindr.TOP_LEVEL),
    "cdd-cesm": (cdd_cesm.write_cdd_cesm, cdd_cesm.TOP_LEVEL),
    "cbis-ddsm": (cbis_ddsm.write_cbis_ddsm, cbis_ddsm.TOP_LEVEL),
}
FORMATS = tuple(WRITERS)


def make_phantom(
    format: str,
    out: str | os.PathLike,
    n_patients: int,
    seed: int = 0,
    *,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write a ``format`` phantom of ``n_patients`` patients into the folder ``out``; return it.

    The dataset is built in a hidden folder beside ``out`` and moved into place at the end, so
    an interrupted run leaves no half-written dataset. ``out`` must be absent or empty, unless
    ``overwrite`` is set and it holds a phantom (nothing but the names phantoms write), which
    is then replaced as a whole.
    """
    if format not in WRITERS:
        raise ValueError(f"unknown phantom format {format!r}; expected one of {', '.join(FORMATS)}")
    if int(n_patients) < 1:
        raise ValueError(f"a phantom needs at least one patient, got {n_patients}")
    rows, columns = (int(n) for n in image_size)
    if min(rows, columns) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"image_size {rows}x{columns} is too small; each side needs at least {MIN_IMAGE_SIDE} pixels"
        )
    out = Path(out).absolute()
    _check_target(out, overwrite)

    write, _ = WRITERS[format]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(out, "partial")
    try:
        write(staging, n_patients=int(n_patients), seed=int(seed), image_size=(rows, columns))
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    entries = sorted(entry.name for entry in out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ValueError(f"{out} is not empty; pass --overwrite to replace the phantom in it")
    phantom_names = {name for _, names in WRITERS.values() for name in names}
    foreign = [name for name in entries if name not in phantom_names]
    if foreign:
        raise ValueError(
            f"{out} holds files no phantom writes ({', '.join(foreign[:5])}); refusing to replace it"
        )


def _move_into_place(staging: Path, out: Path) -> None:
    """Swap the finished dataset in. An existing ``out`` (checked by `_check_target`) keeps its
    folder, so a shell sitting in it stays valid; only its entries are replaced."""
    if not out.exists():
        os.replace(staging, out)
        return
    retired = _sibling(out, "old")
    for entry in list(out.iterdir()):
        os.replace(entry, retired / entry.name)
    for entry in list(staging.iterdir()):
        os.replace(entry, out / entry.name)
    staging.rmdir()
    shutil.rmtree(retired, ignore_errors=True)


def _sibling(out: Path, purpose: str) -> Path:
    """A new hidden folder beside ``out`` (same file system, so moves are renames)."""
    folder = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.{purpose}"
    folder.mkdir()
    return folder


__all__ = ["DEFAULT_IMAGE_SIZE", "FORMATS", "make_phantom"]
