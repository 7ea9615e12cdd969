"""`vismae manifest --dataset folder` throughput: files per second over a folder of small
DICOMs with full-size mammography headers (tiny pixel data: only headers are read). Writes its
own files to a temporary folder, times the reader with a process pool, a thread pool and one
process, and the header parse with and without restricting it to the needed tags (pydicom's
specific_tags). Prints one JSON line.

    python bench/folder_manifest.py --files 20000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine  # bench/machine_info.py

# Only the standard library at the top: a process pool's spawned workers import this module
# again, and should pay for what the command's workers pay for (pydicom), nothing more.

MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
VIEWS = (("CC", "399162004", "cranio-caudal"), ("MLO", "399368009", "medio-lateral oblique"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000, help="DICOM files to write and read (default 20000)")
    parser.add_argument("--workers", type=int,
                        help="pool size (default: the reader's, cores + 4 threads; the cores for processes)")
    parser.add_argument("--parse-sample", type=int, default=2000,
                        help="files timed one by one to compare tag-restricted and full parsing")
    parser.add_argument("--folder", type=Path,
                        help="keep the files here instead of a temporary folder; reused when it holds --files files")
    return parser.parse_args(argv)


def code(value: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def mammography_header(index: int):
    """A header with what a clinical MG file carries: patient, study, equipment, exposure,
    display and coded-view modules and a block of vendor private data (about 5 kB)."""
    import numpy as np
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    from vismae.synthetic.dicom_writer import new_dataset, set_pixels

    patient = index // 4  # four views per woman
    ds = new_dataset(MAMMOGRAPHY, generate_uid(), f"1.2.826.0.1.3680043.10.99.{patient}", generate_uid())
    laterality = "LR"[index // 2 % 2]
    view, view_code, view_meaning = VIEWS[index % 2]
    ds.PatientName, ds.PatientID = f"Bench^Patient{patient}", f"BENCH{patient:08d}"
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19600101", "F", "060Y"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20200101"
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101010"
    ds.AccessionNumber, ds.StudyID, ds.StudyDescription = f"A{patient}", "1", "MAMMO SCREENING BILATERAL"
    ds.SeriesDescription, ds.ReferringPhysicianName = f"{laterality}{view}", "Ref^Doctor"
    ds.Modality, ds.PresentationIntentType, ds.ImageType = "MG", "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.Manufacturer, ds.ManufacturerModelName = "Bench Imaging", "Model 3000"
    ds.InstitutionName, ds.StationName, ds.DeviceSerialNumber = "Bench Hospital", "MAMMO1", "123456"
    ds.SoftwareVersions = ["AWS:MAMMO_1.2.3", "PXCM:1.4.0.7"]
    ds.BodyPartExamined, ds.ViewPosition = "BREAST", view
    ds.ImageLaterality, ds.PatientOrientation = laterality, ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.KVP, ds.ExposureTime, ds.XRayTubeCurrent, ds.Exposure = 29, 1200, 100, 120
    ds.AnodeTargetMaterial, ds.FilterMaterial = "MOLYBDENUM", "RHODIUM"
    ds.CompressionForce, ds.BodyPartThickness, ds.DistanceSourceToDetector = 120, 55, 660
    ds.PositionerPrimaryAngle, ds.DetectorType, ds.OrganDose, ds.EntranceDoseInmGy = 0, "DIRECT", 1.2, 5.4
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.07, 0.07]
    ds.WindowCenter, ds.WindowWidth = [2047, 1900], [4096, 3000]
    ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape, ds.BurnedInAnnotation, ds.BreastImplantPresent = "IDENTITY", "NO", "NO"
    ds.AnatomicRegionSequence = Sequence([code("76752008", "Breast")])
    ds.ViewCodeSequence = Sequence([code(view_code, view_meaning)])
    block = ds.private_block(0x0019, "BENCH VENDOR", create=True)
    for element in range(0x10, 0x30):
        block.add_new(element, "LO", f"vendor value {element:03d} " + "x" * 40)
    block.add_new(0x40, "OB", bytes(1024))
    set_pixels(ds, np.zeros((8, 8), dtype=np.uint16), bits_stored=12)
    return ds


def write_files(folder_path: Path, count: int) -> float:
    """``count`` files in one folder per woman, half of them without an extension; seconds taken."""
    from vismae.synthetic.dicom_writer import save

    start = time.perf_counter()
    for index in range(count):
        name = f"IM{index:06d}" + (".dcm" if index % 2 else "")
        save(mammography_header(index), folder_path / f"P{index // 4:06d}" / name)
    return time.perf_counter() - start


def time_read(root: Path, workers: int, pool: str) -> dict:
    from vismae.data.sources import folder

    start = time.perf_counter()
    paths = folder.list_files(root)
    results = folder.inspect_all(paths, workers=workers, pool=pool)
    seconds = time.perf_counter() - start
    kept = sum(reason is None for _, _, reason in results)
    return {"files_per_s": round(len(paths) / seconds, 1), "seconds": round(seconds, 2), "kept": kept}


def time_whole_reader(root: Path, workers: int) -> dict:
    """The reader end to end (walk, headers, pseudonyms, split), as the command runs it."""
    from vismae.data.sources import folder

    start = time.perf_counter()
    frame = folder.read(root, salt="bench", workers=workers)
    seconds = time.perf_counter() - start
    return {"files_per_s": round(len(frame) / seconds, 1), "seconds": round(seconds, 2), "images": len(frame)}


def time_parse(paths: list[str]) -> dict:
    """Median milliseconds per header read in this process, restricted to the reader's tags
    and whole; the two alternate file by file so that machine load hits both alike."""
    import numpy as np
    import pydicom

    from vismae.data.sources.mammo_header import TAGS

    seconds = {"specific_tags": [], "all_tags": []}
    for path in paths:
        for name, tags in (("specific_tags", TAGS), ("all_tags", None)):
            start = time.perf_counter()
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
            header.get("ViewPosition"), header.get("PatientID")  # values are converted on access
            seconds[name].append(time.perf_counter() - start)
    return {name: round(1000 * float(np.median(values)), 3) for name, values in seconds.items()}


def run(root: Path, args: argparse.Namespace) -> dict:
    from vismae.data.sources import folder

    existing = sum(len(names) for _, _, names in os.walk(root))
    # A --folder that holds this many files already (an earlier run) is read as it is.
    write_seconds = write_files(root, args.files) if existing != args.files else None
    sample = folder.list_files(root)[: args.parse_sample]
    parse_ms = time_parse(sample)
    cores = os.cpu_count() or 1
    threads, processes = args.workers or min(32, cores + 4), args.workers or cores
    pools = {
        f"{processes}_processes": time_read(root, processes, "process"),
        f"{threads}_threads": time_read(root, threads, "thread"),
        "one_process": time_read(root, 1, "thread"),
    }
    whole = time_whole_reader(root, threads)
    return {
        "bench": "folder_manifest",
        "files": args.files,
        "workers": f"{threads} threads",
        "files_per_s": whole["files_per_s"],
        "extrapolated_100k_files_s": round(100_000 / whole["files_per_s"], 1),
        "reader": whole,
        "headers_by_pool": pools,
        "parse_ms_per_header": parse_ms,
        "config": {
            "file_bytes": os.path.getsize(sample[0]),
            "write_seconds": round(write_seconds, 1) if write_seconds is not None else "reused",
            "page_cache": "warm (files just written)",
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "machine": machine("pydicom", "numpy"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.folder is not None:
        args.folder.mkdir(parents=True, exist_ok=True)
        record = run(args.folder, args)
    else:
        with tempfile.TemporaryDirectory() as temporary:
            record = run(Path(temporary), args)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
