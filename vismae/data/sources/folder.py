"""A folder of DICOM files, as a PACS export or a hospital archive leaves it -> manifest.

Every file below the folder is looked at, whatever its name or extension; only its header is
read (no pixels), by a pool of threads. Screening mammograms are kept (see
``mammo_header``: MG, FOR PRESENTATION, CC or MLO, left or right); every other file is left
out, named with its reason in the report and counted in the summary, and the run goes on.

Images are grouped by PatientID and StudyInstanceUID, but no identifier is written:
``patient_id``, ``study_id`` and ``image_id`` are salted hashes of PatientID,
StudyInstanceUID and SOPInstanceUID (``pseudonyms``). ``path`` is the file's path as found,
so folder names that identify a patient carry into the manifest. Labels are ``unknown``;
patients are split 10:1 into train and test, seeded.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import multiprocessing
import os
from pathlib import Path

import pandas as pd

from vismae.data.manifest import new_frame
from vismae.data.sources.left_out import count_reasons, write_report
from vismae.data.sources.mammo_header import inspect
from vismae.data.sources.pseudonyms import choose_salt, pseudonym
from vismae.data.sources.tables import SourceError
from vismae.data.splits import train_test_by_patient

log = logging.getLogger(__name__)

# Below this many files one thread reads them all: a pool would gain nothing.
PARALLEL_FROM = 256


def read(
    root: Path,
    *,
    salt: str | None = None,
    salt_file: Path | None = None,
    report: Path | None = None,
    allow_for_processing: bool = False,
    workers: int | None = None,
    seed: int = 0,
    allow_missing: bool = False,  # noqa: ARG001  every file is found on disk: none can be missing
) -> pd.DataFrame:
    """``salt`` (else the one kept in ``salt_file``) keys the pseudonyms; ``report`` is the
    CSV that lists the files left out."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    salt = choose_salt(salt, salt_file)
    paths = list_files(root)
    results = inspect_all(paths, allow_for_processing, workers)
    rows, left_out = _rows(results, salt)
    if report is not None:
        write_report(report, left_out)
    listed = f"; listed in {report}" if report is not None and left_out else ""
    log.info(
        "%s: kept %d of %d files as mammograms; left out %s%s",
        root, len(rows), len(paths), count_reasons(left_out), listed,
    )
    if not rows:
        raise SourceError(
            f"{root}: no screening mammogram among {len(paths)} files (left out {count_reasons(left_out)})"
        )
    frame = new_frame(rows)
    frame["split"] = train_test_by_patient(frame["patient_id"], frame["label"], seed=seed)
    return frame


def list_files(root: Path) -> list[str]:
    """Every file below ``root``, in a fixed (sorted) order so that reruns agree."""
    found = []
    for folder, folders, names in os.walk(root):
        folders.sort()
        found.extend(os.path.join(folder, name) for name in sorted(names))
    return found


def inspect_all(paths: list[str], allow_for_processing: bool = False, workers: int | None = None,
                pool: str = "thread") -> list[tuple]:
    """``mammo_header.inspect`` of every path, in order, by a ``thread`` or ``process`` pool.

    Threads are the default: they overlap the file reads, which dominate on a cold disk or a
    network share, start at once, and measured faster than processes on a busy two-core
    machine (docs/benchmarks.md). Processes also parse side by side, which can pay on many
    idle cores; they need the caller's script to guard its entry point (``if __name__ ==
    "__main__"``), as every spawned pool does.
    """
    look = functools.partial(inspect, allow_for_processing=allow_for_processing)
    if len(paths) < PARALLEL_FROM or workers == 1:
        return [look(path) for path in paths]
    if pool == "thread":
        # The pool's own default (cores + 4, at most 32) keeps reads in flight on slow disks.
        executor = concurrent.futures.ThreadPoolExecutor(workers)
        chunksize = 1
    elif pool == "process":
        workers = workers or os.cpu_count() or 1
        # spawn, not fork: the caller may hold threads (torch, OpenCV) that a fork would copy
        # mid-lock; the workers import only pydicom.
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        # Big chunks: one round trip per few hundred files instead of one per file.
        chunksize = max(1, min(512, len(paths) // (workers * 4)))
    else:
        raise ValueError(f"pool must be 'thread' or 'process', got {pool!r}")
    with executor:
        return list(executor.map(look, paths, chunksize=chunksize))


def _rows(results: list[tuple], salt: str) -> tuple[list[dict], list[tuple[str, str]]]:
    rows, left_out = [], []
    first_path: dict[str, str] = {}
    without_patient = 0
    for path, fields, reason in results:
        if reason is not None:
            left_out.append((path, reason))
            continue
        image_id = pseudonym(salt, "image", fields["instance"])
        if image_id in first_path:
            # A copy of a file already kept; two rows of one image would break the manifest.
            left_out.append((path, f"same SOPInstanceUID as a file kept: {first_path[image_id]}"))
            continue
        first_path[image_id] = path
        if not fields["patient"]:
            without_patient += 1
        rows.append({
            "image_id": image_id,
            # Without a PatientID each study stands for its own patient.
            "patient_id": pseudonym(salt, "patient", fields["patient"] or fields["study"]),
            "study_id": pseudonym(salt, "study", fields["study"]),
            "dataset": "folder",
            "path": path,
            "view": fields["view"],
            "laterality": fields["laterality"],
            "label": "unknown",
            "birads": None,
            "has_roi": False,
            "roi": [],
            "split": "",
        })
    if without_patient:
        log.warning(
            "%d mammograms have no PatientID; each of their studies counts as its own patient, so "
            "one woman's studies may land on both sides of the split", without_patient,
        )
    return rows, left_out
