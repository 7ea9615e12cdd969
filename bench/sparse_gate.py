"""Quality gate of the sparse pretraining path: at equal epochs, do the encoders it pretrains
probe as well as the dense path's? Prints one JSON line.

Two pretraining studies (`vismae study`, probe method only) on the same unlabelled pool and
labelled set, the same pretraining seeds and schedule, the sparse switch the only difference;
each encoder's frozen features get the linear probe at 100 % of the labels. The figure is the
test ROC AUC sparse minus dense, pooled over the seeds, with its paired patient-bootstrap
interval (both paths' runs resampled together), and the same per seed.

At 64 px the sparse path needs its masking unit to cover an attention window at every stage, so
both paths use the tiny model with 3 stages and 16 px units (docs/benchmarks.md).

    python bench/sparse_gate.py --out runs/gate --seeds 0 1 2 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine_info import cpu_name, package_versions  # bench/machine_info.py

from vismae.config import read_yaml
from vismae.experiments.label_efficiency.predictions import point_tables
from vismae.experiments.label_efficiency.report import collect_results, read_plan
from vismae.experiments.label_efficiency.study import run_study
from vismae.experiments.label_efficiency.study_config import load_study_config
from vismae.shipped_configs import shipped_config
from vismae.paired import compare_points

PATHS = ("dense", "sparse")
THREE_STAGES = ["model.mask_unit_px=16", "model.overrides.depths=[2,2,2]", "model.overrides.num_heads=[1,2,4]"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/sparse-gate", help="folder of the two studies (resumable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds, the same for both paths")
    parser.add_argument("--epochs", type=int, default=15, help="pretraining epochs of both paths")
    parser.add_argument("--labelled-patients", type=int, default=200, help="synthetic labelled patients")
    parser.add_argument("--pool-patients", type=int, default=400, help="synthetic pool patients per format")
    parser.add_argument("--n-boot", type=int, default=1000)
    return parser.parse_args(argv)


def study(args: argparse.Namespace, path: str, data: dict | None) -> Path:
    """One path's study; ``data`` (labelled, pool) given for the second, made by the first."""
    pretrain = [f"train.epochs={args.epochs}", *THREE_STAGES, f"model.sparse={str(path == 'sparse').lower()}"]
    overrides = [
        f"output_dir={Path(args.out) / path}",
        f"synthetic.labelled_patients={args.labelled_patients}",
        f"synthetic.pool_patients={args.pool_patients}",
        f"pretrain_seeds=[{','.join(map(str, args.seeds))}]",
        "pretrain_overrides=[" + ",".join(f"'{item}'" for item in pretrain) + "]",  # quoted: items hold lists
        "sweep_overrides=['fractions=[1.0]','seeds=[0]',validation=full]",
        "methods=[probe]",
        f"n_boot={args.n_boot}",
    ]
    if data:
        overrides += [f"labelled={data['labelled']}", f"pool=[{','.join(data['pool'])}]"]
    run_study(load_study_config(shipped_config("study", "synthetic.yaml"), overrides))
    return Path(args.out) / path


def pretrained_tables(folder: Path) -> dict[str, list]:
    """Each pretraining seed's probe predictions at 100 % of the labels, by init name."""
    sweep = folder / "probe"
    results = collect_results(sweep, read_plan(sweep))
    results = results[(results["fraction"] == 1.0) & results["init"].str.startswith("pretrained-")]
    return {init: point_tables(sweep, runs, "test", pool_folds=False) for init, runs in results.groupby("init")}


def entry(compared: dict, name: str) -> dict:
    return {key: round(float(compared[name][key]), 4) for key in ("value", "low", "high")}


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    dense = study(args, "dense", None)
    data_folder = dense / "data"
    formats = read_yaml(dense / "study.yaml")["synthetic"]["pool_formats"]  # the pool in the dense study's order
    data = {"labelled": str(data_folder / "labelled" / "cache" / "manifest.csv"),
            "pool": [str(data_folder / f"pool-{name}" / "cache" / "manifest.csv") for name in formats]}  # fmt: skip
    sparse = study(args, "sparse", data)
    runs = {"dense": pretrained_tables(dense), "sparse": pretrained_tables(sparse)}
    arms = {path: [table for tables in runs[path].values() for table in tables] for path in PATHS}
    pooled = compare_points("classify", "roc_auc", arms, {"difference": ("sparse", "dense")}, n_boot=args.n_boot)
    per_seed = []
    for init in sorted(runs["dense"]):
        pair = compare_points("classify", "roc_auc", {"sparse": runs["sparse"][init], "dense": runs["dense"][init]},
                              {"difference": ("sparse", "dense")}, n_boot=args.n_boot)  # fmt: skip
        per_seed.append({"seed": init, **{name: entry(pair, name) for name in ("dense", "sparse", "difference")}})
    difference = pooled["difference"]
    verdict = "sparse worse" if difference["high"] < 0 else "sparse better" if difference["low"] > 0 else "no difference shown"
    record = {
        "bench": "sparse_gate",
        "figure": "test ROC AUC of the linear probe (all stages) at 100 % of the labels, sparse minus dense, pooled over seeds",
        **{name: entry(pooled, name) for name in ("dense", "sparse", "difference")},
        "verdict": verdict,
        "per_seed": per_seed,
        "test_images": pooled["images"],
        "test_patients": pooled["patients"],
        "config": {"seeds": args.seeds, "epochs": args.epochs, "model": "tiny, 3 stages, 16 px units", "decoder": "mirror",
                   "labelled_patients": args.labelled_patients, "pool_patients_per_format": args.pool_patients},  # fmt: skip
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpu": cpu_name(), **package_versions("torch", "timm")},
    }
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
