"""The deployable procedure of a finished ROI-aware experiment applied to new mammograms:
``vismae predict --model <roi-aware output folder>``.

As in the experiment's test scoring: the router predicts each image's ROI presence from its
pixels (no annotation is read), the image's view and that prediction name its group, and the
group's model scores it (its own classifier, the pooled stratum's, or a constant) and decides
at that model's own threshold. Images are prepared once, as the experiment's cache was, and
every model reads the same prepared images.

A breast's or exam's probability is the mean, then the max, as for one model; its decision is
positive when any of its images' is, since each image was decided at its own model's threshold.
Metrics of labelled inputs are the threshold-free ones for the same reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from vismae.data.manifest import view_names
from vismae.engine.deployable import read_deployable
from vismae.engine.inference import ModelRunner, choose_device_note
from vismae.engine.predict_images import (
    PredictResult,
    PredictSettings,
    draw_saliency,
    finish,
    image_table,
    saliency_rows,
    skipped_table,
)
from vismae.engine.predict_inputs import read_input
from vismae.experiments.roi_aware.layout import CONFIG_FILE, OUTCOME_FILE
from vismae.experiments.roi_aware.rules import group_names

SEED_PREFIX = "seed_"


def seed_folders(folder: str | Path) -> list[Path]:
    """The seed folders of an experiment folder that hold a finished seed (outcome.json)."""
    folder = Path(folder)
    found = [path for path in folder.glob(f"{SEED_PREFIX}*") if (path / OUTCOME_FILE).is_file()]
    return sorted(found, key=lambda path: int(path.name[len(SEED_PREFIX):]) if path.name[len(SEED_PREFIX):].isdigit() else 0)


def is_roi_aware_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and bool(seed_folders(folder))


def local_run(seed_dir: Path, saved: str) -> Path:
    """A model's run folder as the outcome saved it, or the same place under ``seed_dir`` when
    the experiment folder has moved since."""
    path = Path(saved)
    if path.is_dir():
        return path
    parts = path.parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index].startswith(SEED_PREFIX):
            moved = seed_dir.joinpath(*parts[index + 1:])
            if moved.is_dir():
                return moved
    raise FileNotFoundError(f"{saved}: the model's run folder is missing (looked under {seed_dir} too)")


def predict_routed(folder: str | Path, source: str | Path, out_dir: str | Path, settings: PredictSettings | None = None,
                   seed: int | None = None) -> PredictResult:  # fmt: skip
    """Every image of ``source`` routed and scored by the seed ``seed`` (default: the first) of
    the ROI-aware experiment in ``folder``, into ``out_dir``."""
    settings = settings or PredictSettings()
    folder = Path(folder).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    seeds = seed_folders(folder)
    if not seeds:
        raise FileNotFoundError(f"{folder}: no finished seed ({SEED_PREFIX}<s>/{OUTCOME_FILE}); is the experiment finished?")
    seed_dir = seeds[0] if seed is None else folder / f"{SEED_PREFIX}{seed}"
    if not (seed_dir / OUTCOME_FILE).is_file():
        raise FileNotFoundError(f"{seed_dir / OUTCOME_FILE}: no such file; finished seeds: {[p.name for p in seeds]}")
    outcome = json.loads((seed_dir / OUTCOME_FILE).read_text())

    router_info = outcome["router"]
    router = read_deployable(local_run(seed_dir, router_info["run_dir"]))
    model_of = {plan["group"]: plan["model"] for plan in outcome["groups"]}
    # The models the groups name (the comparative per-view models play no part in this procedure).
    models = {key: outcome["models"][key] for key in dict.fromkeys(model_of.values())}
    deployables = {key: read_deployable(local_run(seed_dir, entry["run_dir"])) for key, entry in models.items() if "run_dir" in entry}
    preprocessing = router.preprocessing
    for key, deployable in deployables.items():
        if deployable.preprocessing != preprocessing:
            raise ValueError(f"model {key} ({deployable.folder}) was trained on images prepared otherwise than the router's")

    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = read_input(source, preprocessing, out_dir, salt=settings.salt, salt_file=settings.salt_file,
                          workers=settings.prepare_workers, progress=settings.progress)  # fmt: skip
    router_runner = ModelRunner(router, settings.batch_size, settings.num_workers, settings.progress)
    routed = router_runner.score(prepared.rows, "route")
    table = routed.table
    score_column = "probability" if router.task == "classify" else "predicted_area_fraction"
    router_score = table[score_column].to_numpy(dtype=float)
    rows = table.drop(columns=[score_column]).assign(view_name=view_names(table))
    groups = group_names(rows, router_score >= float(router_info["threshold"]))
    keys = groups.map(model_of)

    parts, runners = [], {}
    for key in dict.fromkeys(keys):
        members = rows[(keys == key).to_numpy()]
        if "constant" in models[key]:
            prevalence = float(models[key]["constant"])
            parts.append(members.assign(probability=prevalence, decision=int(prevalence >= 0.5), model=key))
            continue
        runners[key] = ModelRunner(deployables[key], settings.batch_size, settings.num_workers, settings.progress)
        scored = runners[key].score(members, f"predict {key}").table.set_index(members.index)
        threshold = float(models[key]["threshold"])
        parts.append(scored.assign(decision=(scored["probability"] >= threshold).astype(int), model=key))
    scored_rows = pd.concat(parts).loc[rows.index] if parts else rows.assign(probability=np.nan, decision=0, model="")
    # The labels' classes are the classifiers' (a segmenter router has none).
    reference = next(iter(deployables.values()), router)
    images = image_table(scored_rows, prepared, reference, threshold=None)
    images.insert(images.columns.get_loc("probability") + 1, "decision", scored_rows["decision"].to_numpy())
    images = images.assign(route=groups.to_numpy(), model=scored_rows["model"].to_numpy(), router_score=router_score)

    # Saliency for the images of highest probability overall, each drawn by the model that scored it.
    drawn, failed = [], []
    chosen = saliency_rows(scored_rows[scored_rows["model"].isin(runners)], settings.saliency)
    for key, runner in runners.items():
        members = chosen[chosen["model"] == key]
        if len(members):
            more_drawn, more_failed = draw_saliency(runner, members, prepared, images, out_dir / "saliency")
            drawn += more_drawn
            failed += more_failed
    fitted = {
        "thresholds": None,
        "note": "each image is decided by the model its route names, at that model's own threshold",
        "temperature": None,
    }
    summary = {
        "model": {"folder": str(folder), "source": "roi-aware", "seed": seed_dir.name, "procedure": "deployable",
                  "router": {"kind": router_info["kind"], "threshold": router_info["threshold"]}},  # fmt: skip
        "routes": {str(group): int(n) for group, n in groups.value_counts().sort_index().items()},
        "models_used": {str(key): int(n) for key, n in keys.value_counts().sort_index().items()},
        "models": {key: {name: value for name, value in entry.items() if name != "run_dir"} for key, entry in models.items()},
        "device": choose_device_note(router_runner),
        "preprocessing": preprocessing,
        "notes": [
            "breast and exam decisions are positive where any of their images' decisions is (each image is decided at "
            "its own model's threshold); their metrics are the threshold-free ones",
            *router.notes,
        ],
    }
    return finish(out_dir, source, prepared, images, None, skipped_table(prepared, routed.unreadable),
                  (drawn, failed), fitted, settings, summary)  # fmt: skip
