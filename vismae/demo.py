"""The demo pipeline: each stage writes into its own folder under the demo folder and is
skipped when its output is already there, so an interrupted demo continues where it stopped."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vismae.shipped_configs import shipped_config  # the demo's recipes: vismae/configs/*/demo*.yaml

# The datasets the demo synthesizes, read and prepares: VinDr-Mammo's DICOM layout and
# CDD-CESM's JPEG + spreadsheet layout, the two datasets of the ROI-aware paper.
DEMO_FORMATS = ("vindr", "cdd-cesm")


@dataclass
class DemoSettings:
    out: str | Path = "runs/demo"
    # Enough patients for the tiny classifier to find the lesions from random init (with fewer
    # than ~150 it memorizes the training images instead), in a few minutes on a CPU.
    patients: int = 200
    size: int = 64  # the cache's image side
    # The synthetic mammograms' own size: detail enough for caches up to about 128 px.
    phantom_size: tuple[int, int] = (256, 208)
    seed: int = 0
    workers: int | None = None


def _stage(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(started: float, where: Path) -> None:
    print(f"   -> {where} ({time.perf_counter() - started:.1f} s)", flush=True)


def synthesize(settings: DemoSettings, name: str) -> Path:
    from vismae.synthetic.datasets import phantom_dataset

    raw = Path(settings.out) / "raw" / name
    started = _stage(f"phantom: {settings.patients} synthetic patients in the {name} format")
    phantom_dataset(name, raw, settings.patients, settings.seed, settings.phantom_size)
    _done(started, raw)
    return raw


def read_manifest_of(settings: DemoSettings, name: str, raw: Path) -> Path:
    from vismae.synthetic.datasets import dataset_manifest

    started = _stage(f"manifest: read the {name} metadata")
    manifest = dataset_manifest(name, raw, Path(settings.out) / "manifests" / f"{name}.csv")
    _done(started, manifest)
    return manifest


def prepare_cache(settings: DemoSettings, name: str, manifest: Path) -> Path:
    from vismae.synthetic.datasets import prepared_cache

    started = _stage(f"prepare: decode, crop, flip, CLAHE and resize to {settings.size} px")
    cache = prepared_cache(manifest, Path(settings.out) / "cache" / name, settings.size, settings.workers)
    _done(started, cache)
    return cache


def summarize(cache: Path) -> None:
    from vismae.commands.summarize import format_summary
    from vismae.data.manifest import read_manifest
    from vismae.data.summary import summarize as count

    manifest = cache / "manifest.csv"
    print(format_summary(count(read_manifest(manifest)), str(manifest)))


def pretrain(settings: DemoSettings, caches: dict[str, Path]) -> Path:
    from vismae.config import load_pretrain_config
    from vismae.engine.pretrain import run

    started = _stage("pretrain: Swin MAE on the cached train and val images, labelled or not (test images held out)")
    manifests = ",".join(str(cache / "manifest.csv") for cache in caches.values())
    config = load_pretrain_config(
        shipped_config("pretrain", "demo.yaml"),
        [f"output_dir={Path(settings.out) / 'pretrain'}", f"data.manifests=[{manifests}]", f"data.size={settings.size}"],
    )
    run_dir = run(config)
    _done(started, run_dir)
    return run_dir


def finetune_both_inits(settings: DemoSettings, cache: Path, encoder: Path) -> dict[tuple[str, str], dict]:
    """A classifier and a segmenter, each from the demo's encoder and from random weights."""
    from vismae.engine.finetune import run
    from vismae.engine.finetune_config import load_finetune_config

    results = {}
    for task in ("classify", "segment"):
        for init_name, init in (("pretrained", str(encoder)), ("random", "random:tiny")):
            started = _stage(f"finetune: {task} from the {init_name} encoder")
            config = load_finetune_config(
                shipped_config("finetune", f"demo-{task}.yaml"),
                [
                    f"init={init}",
                    f"output_dir={Path(settings.out) / 'finetune' / f'{task}-{init_name}'}",
                    f"data.manifest={cache / 'manifest.csv'}",
                    f"data.size={settings.size}",
                ],
            )
            result = run(config)
            results[(task, init_name)] = result.metrics["test"]
            _done(started, result.run_dir)
    return results


def print_finetune_table(results: dict[tuple[str, str], dict]) -> None:
    from vismae.metrics import at_chance

    columns = {"classify": ("roc_auc", "pr_auc", "sensitivity", "specificity"), "segment": ("dice", "precision", "recall")}
    for task, names in columns.items():
        print(f"\n{task}: test metrics (95 % patient-bootstrap interval)")
        print(f"{'init':<12}" + "".join(f"{name:>24}" for name in names))
        for (row_task, init_name), metrics in results.items():
            if row_task != task:
                continue
            cells = []
            for name in names:
                value = metrics.get(name, {})
                cells.append(f"{value.get('value', float('nan')):.3f} [{value.get('low', float('nan')):.2f}, {value.get('high', float('nan')):.2f}]")
            chance = " (ROC AUC at chance)" if task == "classify" and at_chance(metrics.get("roc_auc", {}), "roc_auc") else ""
            print(f"{init_name:<12}" + "".join(f"{cell:>24}" for cell in cells) + chance)


def print_paired_difference(finetune_dir: Path) -> None:
    """The classifiers' ROC AUC, pretrained minus random, on the same test patients."""
    from vismae.experiments.label_efficiency.predictions import scored_predictions
    from vismae.paired import compare_points

    arms = {init: [scored_predictions(finetune_dir / f"classify-{init}", "test")] for init in ("pretrained", "random")}
    compared = compare_points("classify", "roc_auc", arms, {"difference": ("pretrained", "random")})
    difference = compared["difference"]
    verdict = "pretrained better" if difference["low"] > 0 else "random better" if difference["high"] < 0 else "not distinguishable"
    print(f"classify, pretrained minus random ROC AUC (paired patient bootstrap): {difference['value']:+.3f} "
          f"[{difference['low']:+.3f}, {difference['high']:+.3f}]: {verdict}")  # fmt: skip


def roi_aware(settings: DemoSettings, cache: Path, encoder: Path) -> Path:
    from vismae.experiments.roi_aware.experiment import run_roi_aware
    from vismae.experiments.roi_aware.config import load_roi_aware_config

    started = _stage("roi-aware: the ROI paper's procedures, and a deployable one")
    config = load_roi_aware_config(
        shipped_config("roi_aware", "demo.yaml"),
        [
            f"output_dir={Path(settings.out) / 'roi_aware'}",
            f"manifest={cache / 'manifest.csv'}",
            f"init={encoder}",
            f"finetune.data.size={settings.size}",
        ],
    )
    report = run_roi_aware(config)
    print((report / "results.md").read_text())
    _done(started, report)
    return report


def label_efficiency(settings: DemoSettings, cache: Path, encoder: Path) -> Path:
    from vismae.experiments.label_efficiency.study import run_sweeps
    from vismae.experiments.label_efficiency.study_config import load_study_config

    started = _stage("label efficiency: pretrained vs random init on 5-100 % of the labels, probed and finetuned, 3 seeds")
    folder = Path(settings.out) / "label_efficiency"
    config = load_study_config(shipped_config("study", "demo.yaml"), [f"output_dir={folder}"])
    config.validate()
    report = run_sweeps(config, str(cache / "manifest.csv"), {"pretrained-demo": str(encoder), "random": "random:tiny"}, folder)
    print((report / "study.md").read_text())
    _done(started, folder)
    return report


def run_demo(settings: DemoSettings) -> dict[str, Path]:
    out = Path(settings.out)
    caches = {}
    for name in DEMO_FORMATS:
        raw = synthesize(settings, name)
        manifest = read_manifest_of(settings, name, raw)
        caches[name] = prepare_cache(settings, name, manifest)
        summarize(caches[name])
    run_dir = pretrain(settings, caches)
    encoder = run_dir / "encoder.safetensors"
    print_finetune_table(finetune_both_inits(settings, caches["vindr"], encoder))
    print_paired_difference(out / "finetune")
    outputs = {
        **{f"cache {name}": cache for name, cache in caches.items()},
        "pretraining run (encoder, reconstructions)": run_dir,
        "finetuning runs": out / "finetune",
        "ROI-aware report": roi_aware(settings, caches["vindr"], encoder),
        "label efficiency (probe and finetuning sweeps, report)": label_efficiency(settings, caches["vindr"], encoder),
    }
    print(f"\nDemo outputs are in {out.resolve()}:")
    for what, where in outputs.items():
        print(f"  {what}: {where}")
    return outputs
