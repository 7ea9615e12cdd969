"""`vismae predict`: a finetuned classifier (run folder, exported model or ROI-aware experiment)
applied to one's own mammograms: a folder of DICOM files or a manifest."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Predict every mammogram of --input with the model of --model and write into --out:
images.csv (probability and decision per image), breasts.csv (mean of each breast's views),
exams.csv (max of each exam's breasts), skipped.csv (files left out, and why), saliency/
(Grad-CAM maps on the original images), predict.json; with benign/malignant labels in the
input also metrics.json (image, breast and exam metrics with patient-level intervals) and
reliability.png.

--input is a folder of DICOM files (read as `vismae manifest --dataset folder` reads it), a
manifest of raw images, or a prepared cache's manifest.csv. Raw images are prepared exactly as
the model's training images were (the settings its training cache recorded).

--model is a finished finetuning run folder, a folder written by `vismae export-model`, or a
`vismae roi-aware` output folder (images routed as its deployable procedure routes them: the
router predicts ROI presence, the view and that prediction pick the classifier).
"""


def saliency_count(text: str) -> int | None:
    """'all' -> None (every image), 'none' -> 0, else a count."""
    if text == "all":
        return None
    if text == "none":
        return 0
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, 'all' or 'none', got {text!r}")
    return count


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="apply a finetuned classifier to a folder of DICOMs or a manifest",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--model", required=True, help="finetuning run folder, exported model folder or roi-aware output folder")
    parser.add_argument("--input", required=True, help="folder of DICOM files, raw manifest CSV or cache manifest.csv")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--num-workers", type=int, default=2, help="image loading processes of the model (default 2)")
    parser.add_argument("--workers", type=int, default=None, help="processes reading headers and preparing raw images (default: all cores)")
    parser.add_argument(
        "--saliency", type=saliency_count, default=64, metavar="K|all|none",
        help="Grad-CAM maps for the K images of highest probability (default 64), every image, or none",
    )  # fmt: skip
    parser.add_argument("--n-boot", type=int, default=1000, help="patient bootstrap resamples of the metrics' intervals (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--salt", help="DICOM folder: the secret keying the hashed ids (default: a one-off salt)")
    parser.add_argument("--salt-file", help="DICOM folder: file holding the salt, drawn there on first use; keep it private")
    parser.add_argument(
        "--roi-seed", type=int, default=None, help="roi-aware model: the training seed whose models predict (default: the first)"
    )
    parser.add_argument("--keep-prepared", action="store_true", help="keep the prepared images under OUT/prepared")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from vismae.engine.predict_images import PredictSettings, predict
    from vismae.experiments.roi_aware.deploy import is_roi_aware_folder, predict_routed

    if args.batch_size < 1 or args.num_workers < 0 or args.n_boot < 1:
        raise ValueError("--batch-size and --n-boot must be >= 1 and --num-workers >= 0")
    logging.basicConfig(level=logging.INFO, format="vismae predict: %(message)s")
    settings = PredictSettings(
        batch_size=args.batch_size, num_workers=args.num_workers, prepare_workers=args.workers,
        saliency=args.saliency, n_boot=args.n_boot, seed=args.seed, salt=args.salt, salt_file=args.salt_file,
        keep_prepared=args.keep_prepared, progress=not args.no_progress,
    )  # fmt: skip
    if is_roi_aware_folder(args.model):
        result = predict_routed(args.model, args.input, args.out, settings, seed=args.roi_seed)
    else:
        result = predict(args.model, args.input, args.out, settings)
    print("\n".join(summary_lines(result)))
    return 0


def summary_lines(result) -> list[str]:
    from vismae.metrics import value_with_interval

    counts = result.summary["counts"]
    lines = [
        f"predicted {counts['images']} images, {counts['breasts']} breasts, {counts['exams']} exams -> {result.out_dir}",
        f"skipped {counts['skipped']} files (see skipped.csv)" if counts["skipped"] else "skipped no file",
        f"saliency maps: {counts['saliency_maps']} in saliency/",
    ]
    if result.metrics is not None:
        for level in ("image", "breast", "exam"):
            report = result.metrics["levels"][level]
            names = [name for name in ("roc_auc", "sensitivity_at_90_specificity", "pf1", "ece") if isinstance(report.get(name), dict)]
            lines.append(f"  {level} (n={report['n']}): " + ", ".join(f"{name} {value_with_interval(report[name])}" for name in names))
    for note in result.summary.get("notes", []):
        lines.append(f"note: {note}")
    return lines
