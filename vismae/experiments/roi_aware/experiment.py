"""The ROI paper's experiment end to end, beside what a clinic could deploy.

For each training seed, on one prepared cache and one encoder init:

1. comparative (paper 2.2.4): one classifier per view on all its benign/malignant images;
2. ROI-stratified (paper 2.2.3): one classifier per (view, ROI presence) group, small groups
   served by the configured rule; test images routed by their annotated ROI presence;
3. the annotation-only floor "ROI present => malignant";
4. deployable: a router trained on the training split predicts ROI presence and routes the
   test images into the classifiers of 2; with ``population: screening`` scored a second time
   with the normal (BI-RADS 1) test images added as negatives, which the paper leaves out.

Every model is one ``finetune`` call on train and val rows. Test images are scored afterwards
from blind rows (no label, no annotation); the annotated routes read ROI presence alone, and
truth is joined to the predictions last, to score them. Everything lands in
``output_dir/seed_<s>/`` and the report in ``output_dir/report/``; running again reuses every
finished model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from vismae import run_folder
from vismae.config import to_dict
from vismae.data.manifest import CACHE_COLUMNS, VIEW_NAMES, read_manifest, require_one_image_kind, view_names
from vismae.data.splits import carve_validation
from vismae.engine.accelerator import make_accelerator
from vismae.engine.finetune_config import FinetuneConfig, FinetuneData
from vismae.experiments.roi_aware.config import RoiAwareConfig
from vismae.experiments.roi_aware.layout import CONFIG_FILE, DATA_FILE, OUTCOME_FILE, PREDICTIONS_FILE, seed_dir
from vismae.experiments.roi_aware.models import ConstantModel, Engine, FinetuneEngine, score_routed, train_classifier
from vismae.experiments.roi_aware.report import build_report, composition
from vismae.experiments.roi_aware.router import Router, train_router
from vismae.experiments.roi_aware.rules import (
    NORMAL_LABEL,
    PROCEDURES,
    STRATA,
    GroupPlan,
    SizeRule,
    annotated_routes,
    annotation_only,
    blind,
    group_names,
    plan_groups,
)
from vismae.io import write_csv, write_json
from vismae.models.formats.vismae_export import SEEN_IN_PRETRAINING, images_seen_in_pretraining, seen_warning

PREDICTION_COLUMNS = ["procedure", "uses_test_annotations", "task", "image_id", "patient_id", "view_name",
                      "route", "model", "score", "decision", "target", "has_roi"]  # fmt: skip
# Keys that do not change any result: a run folder may be continued with other values.
# population only adds scoring: it trains nothing.
NEUTRAL_KEYS = ("output_dir", "seeds", "paper", "population", "finetune.data.num_workers", "finetune.eval.batch_size",
                "finetune.checkpoint.every_epochs", "finetune.checkpoint.keep")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The rows.


def experiment_frame(manifest: pd.DataFrame, data: FinetuneData) -> pd.DataFrame:
    """The benign/malignant rows (``data.negative`` / ``data.positive``) with ``view_name`` and
    a 0/1 ``target``; validation patients carved once from the training patients when the
    manifest has none, so that every model of a seed validates on the same patients."""
    missing = [column for column in CACHE_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"the manifest lacks {missing}: the experiment reads a prepared cache's manifest.csv")
    frame = manifest[manifest["label"].isin(data.negative + data.positive)]
    if frame.empty:
        raise ValueError(f"the manifest has no {data.negative + data.positive} images")
    require_one_image_kind(frame, "the ROI-aware experiment trains one model per view and ROI group")
    if not (frame["split"] == "test").any():
        raise ValueError(
            "the manifest has no test split; give one (e.g. with `vismae split`) so that every procedure is scored on the same images"
        )
    if not (frame["split"] == "val").any():
        frame = carve_validation(frame, data.val_fraction, seed=data.split_seed)
    return frame.assign(view_name=view_names(frame), target=frame["label"].isin(data.positive).astype(int)).reset_index(drop=True)


def screening_normals(manifest: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The normal (BI-RADS 1) test images, as negatives (``target`` 0), with ``view_name``: what
    ``population: screening`` adds to the deployable procedure's test scoring. Refused when
    there are none, or when they are of another image kind than the experiment's rows."""
    normals = manifest[(manifest["label"] == NORMAL_LABEL) & (manifest["split"] == "test")]
    if normals.empty:
        raise ValueError(
            f"population: screening: the manifest's test split holds no {NORMAL_LABEL} (BI-RADS 1) image to add; "
            "use population: paper"
        )
    require_one_image_kind(pd.concat([frame, normals]), "population: screening scores the normal test images with the same models")
    return normals.assign(view_name=view_names(normals), target=0).reset_index(drop=True)


def left_out_normals(manifest: pd.DataFrame) -> dict[str, int]:
    """Normal (BI-RADS 1) images per split of the manifest: what the paper's population leaves out."""
    normals = manifest[manifest["label"] == NORMAL_LABEL]
    return {str(split): int(count) for split, count in normals["split"].value_counts().sort_index().items()}


# ---------------------------------------------------------------------------------------------
# Training.


def train_group_models(
    engine: Engine, known: pd.DataFrame, plans: list[GroupPlan], init: str, recipe: FinetuneConfig, folder: Path
) -> dict:
    """The models the plan names: a classifier per group trained alone, one per pooled
    stratum, a constant per constant group."""
    models = {}
    for plan in plans:
        if plan.model in models:
            continue
        if plan.rule == "constant":
            models[plan.model] = ConstantModel(plan.model, plan.prevalence)
            continue
        rows = known[known["has_roi"] == plan.has_roi]
        if plan.rule == "own":
            rows = rows[rows["view_name"] == plan.view]
        print(f"  stratified {plan.model}: {int((rows['split'] == 'train').sum())} training images", flush=True)
        models[plan.model] = train_classifier(engine, rows, plan.model, init, recipe, folder / plan.model)
    return models


def train_models(engine: Engine, known: pd.DataFrame, config: RoiAwareConfig, recipe: FinetuneConfig, folder: Path):
    """Every model of one seed, from train and val rows only: (models by key, group plans, router)."""
    models = {}
    for view in VIEW_NAMES:
        rows = known[known["view_name"] == view]
        print(f"  comparative {view}: {int((rows['split'] == 'train').sum())} training images", flush=True)
        models[view] = train_classifier(engine, rows, view, config.init, recipe, folder / "comparative" / view)
    small = config.small_groups
    plans = plan_groups(known, small.rule, SizeRule(small.min_images, small.min_per_class, small.min_val_per_class))
    models.update(train_group_models(engine, known, plans, config.init, recipe, folder / "stratified"))
    print(f"  router ({config.router.kind})", flush=True)
    router = train_router(engine, known, config.router.kind, config.init, recipe, folder / "router")
    return models, plans, router


# ---------------------------------------------------------------------------------------------
# Prediction: test rows, routed and scored.


def _model_of(plans: list[GroupPlan]) -> dict[str, str]:
    return {plan.group: plan.model for plan in plans}


def predicted_routes(engine: Engine, router: Router, rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """The deployable routing of blind ``rows``: (each row's group, the router's outputs)."""
    routing = router.route(engine, rows)
    return group_names(rows, routing["roi_predicted"].to_numpy()), routing


def route_and_score(
    engine: Engine, models: dict, plans: list[GroupPlan], router: Router, test: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """Each procedure's predictions for the test rows (``image_id, model, score, decision,
    route``), not yet joined with any truth.

    Only ``blind(test)`` reaches the router and the models. The full rows are read twice, by
    the procedures defined by annotations: the annotated routes take view and ROI presence
    from them, the floor takes ROI presence; neither reads a label.
    """
    rows = blind(test)
    annotated = annotated_routes(test[["view_name", "has_roi"]])
    deployable, routing = predicted_routes(engine, router, rows)
    groups = {"comparative": rows["view_name"], "annotated": annotated, "deployable": deployable}
    # A view is a comparative model's key; a group goes to the model its plan names.
    model_of = _model_of(plans)
    routes = {name: group if name == "comparative" else group.map(model_of) for name, group in groups.items()}
    scored = score_routed(engine, models, rows, routes)
    tables = {name: table.assign(route=groups[name].to_numpy()) for name, table in scored.items()}
    floor = annotation_only(test[["image_id", "has_roi"]])
    tables["annotation_only"] = floor.assign(route=[STRATA[bool(value)] for value in test["has_roi"]])
    tables["router"] = pd.DataFrame(
        {"image_id": routing["image_id"], "model": "router", "score": routing["score"],
         "decision": routing["roi_predicted"].astype(int), "route": ""}
    )  # fmt: skip
    return tables


def score_screening(
    engine: Engine, models: dict, plans: list[GroupPlan], router: Router, deployable: pd.DataFrame, normals: pd.DataFrame
) -> pd.DataFrame:
    """The deployable procedure on the screening population: its predictions for the paper's
    test images (``deployable``, as they are) and the normal test images routed and scored the
    same way, from blind rows."""
    rows = blind(normals)
    groups, _ = predicted_routes(engine, router, rows)
    scored = score_routed(engine, models, rows, {"deployable": groups.map(_model_of(plans))})["deployable"]
    return pd.concat([deployable, scored.assign(route=groups.to_numpy())], ignore_index=True)


def with_truth(tables: dict[str, pd.DataFrame], test: pd.DataFrame) -> pd.DataFrame:
    """All procedures' predictions in one long table, each row joined with what it is scored
    against: the label (malignancy) or the annotated ROI presence (the router)."""
    truth = test.set_index("image_id")
    parts = []
    for name, table in tables.items():
        rows = truth.loc[table["image_id"]]
        target = rows["has_roi"] if PROCEDURES[name].task == "roi_presence" else rows["target"]
        parts.append(
            table.assign(
                procedure=name,
                uses_test_annotations=PROCEDURES[name].uses_test_annotations,
                task=PROCEDURES[name].task,
                patient_id=rows["patient_id"].to_numpy(),
                view_name=rows["view_name"].to_numpy(),
                target=target.astype(int).to_numpy(),
                has_roi=rows["has_roi"].astype(bool).to_numpy(),
            )
        )
    return pd.concat(parts, ignore_index=True)[PREDICTION_COLUMNS]


# ---------------------------------------------------------------------------------------------
# The experiment.


def run_seed(engine: Engine, frame: pd.DataFrame, config: RoiAwareConfig, seed: int, normals: pd.DataFrame | None = None) -> Path:
    """Train (or reuse) one seed's models and write its predictions and outcome; ``normals``
    (population screening): the normal test images the deployable procedure scores too."""
    folder = seed_dir(config.output_dir, seed)
    recipe = dataclasses.replace(config.finetune, train=dataclasses.replace(config.finetune.train, seed=seed))
    known, test = frame[frame["split"] != "test"], frame[frame["split"] == "test"]
    models, plans, router = train_models(engine, known, config, recipe, folder)
    tables = route_and_score(engine, models, plans, router, test)
    if normals is not None:
        tables["deployable_screening"] = score_screening(engine, models, plans, router, tables["deployable"], normals)
        test = pd.concat([test, normals], ignore_index=True)
    predictions = with_truth(tables, test)
    predictions.insert(0, "seed", seed)
    write_predictions(predictions, folder / PREDICTIONS_FILE)
    outcome = {
        "seed": seed,
        "groups": [plan.to_dict() for plan in plans],
        "router": router.to_dict(),
        "models": {key: model.to_dict() for key, model in models.items()},
    }
    write_json(folder / OUTCOME_FILE, outcome)
    return folder


def write_predictions(table: pd.DataFrame, path: Path) -> None:
    write_csv(path, table)


def check_run_folder(config: RoiAwareConfig, save: bool = True) -> None:
    """Refuse a run folder made with another experiment config; save this one there."""
    new = to_dict(config)
    run_folder.check_config(
        config.output_dir, new, neutral=NEUTRAL_KEYS, defaults=to_dict(RoiAwareConfig()), what="an experiment", file=CONFIG_FILE
    )
    if save:
        run_folder.save_config(config.output_dir, new, file=CONFIG_FILE)


def run_roi_aware(config: RoiAwareConfig, engine: Engine | None = None) -> Path:
    """The whole experiment for every seed, then the report; returns the report folder. The
    experiment holds its folder while it runs (each model's run holds its own inside)."""
    config = config.with_absolute_paths()
    settings = config.finetune
    accelerator = make_accelerator(settings.train.mixed_precision)  # its main process holds the folder
    with run_folder.hold(config.output_dir, accelerator):
        check_run_folder(config)
        manifest = read_manifest(config.manifest)
        frame = experiment_frame(manifest, settings.data)
        normals = screening_normals(manifest, frame) if config.population == "screening" else None
        scored = frame[frame["split"] == "test"]["image_id"].tolist() + ([] if normals is None else normals["image_id"].tolist())
        seen = images_seen_in_pretraining(config.init, scored)
        if seen:
            print(seen_warning(seen, len(scored), config.init), flush=True)
        data = {**composition(frame), "normal_left_out": left_out_normals(manifest), SEEN_IN_PRETRAINING: seen, "test_images": len(scored)}
        write_json(Path(config.output_dir) / DATA_FILE, data)
        engine = engine or FinetuneEngine(settings.eval.batch_size or settings.train.batch_size, settings.data.num_workers)
        for seed in config.seeds:
            print(f"seed {seed}:", flush=True)
            run_seed(engine, frame, config, seed, normals)
        return build_report(config)
