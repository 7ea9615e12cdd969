"""`vismae probe`: a frozen encoder's features, judged by a linear probe and a kNN classifier."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="embed a cache with a frozen encoder; score a linear probe and kNN on its test split",
        description=(
            "Embed every image of a prepared cache with a frozen encoder (each chosen stage's map "
            "pooled by mean and max), write embeddings.npz (image_id, embedding), fit a logistic "
            "regression and a kNN classifier on the train rows with their setting chosen on val "
            "(carved from train by patient when the cache has none), and write metrics.json with "
            "their test ROC AUC and PR AUC and patient-bootstrap intervals. A seconds-long check "
            "of what pretraining put into an encoder, before any finetuning."
        ),
    )
    parser.add_argument("--init", required=True, help="encoder: run folder, encoder.safetensors, any checkpoint load_encoder reads, or random:<preset>")
    parser.add_argument("--manifest", required=True, help="a prepared cache's manifest.csv")
    parser.add_argument("--out", required=True, help="folder for embeddings.npz and metrics.json")
    parser.add_argument(
        "--stages", default="all",
        help="which stages' maps to pool: all, last, or numbers like 0,3 (default: all; at small sizes the last map is a few positions that pool a small finding away)",
    )
    parser.add_argument("--negative", default="benign", help="comma-separated labels of class 0 (default: benign)")
    parser.add_argument("--positive", default="malignant", help="comma-separated labels of class 1 (default: malignant)")
    parser.add_argument("--size", type=int, default=None, help="input side in pixels (default: the cache's size)")
    parser.add_argument("--n-boot", type=int, default=1000, help="patient-bootstrap resamples (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed, and the draw of a random:<preset> encoder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vismae.engine.probe import ProbeData, run_probe, summary_lines

    data = ProbeData(negative=_labels(args.negative), positive=_labels(args.positive))
    summary = run_probe(args.init, args.manifest, args.out, stages=args.stages, data=data, size=args.size,
                        n_boot=args.n_boot, seed=args.seed)  # fmt: skip
    print("\n".join(summary_lines(summary)))
    print(f"-> {args.out}")
    return 0


def _labels(text: str) -> list[str]:
    return [label.strip() for label in text.split(",") if label.strip()]
