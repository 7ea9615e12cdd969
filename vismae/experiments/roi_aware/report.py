"""The ROI-aware report: every procedure's test metrics, merged and per view, with patient-level
95 % intervals, beside the paper's published numbers; as markdown, CSV, JSON and a ROC plot.

Built from the experiment folder alone (each seed's predictions.csv and outcome.json and the
folder's data.json), so it can be rebuilt at any time without training.

The population scored is the paper's, benign and malignant test images only (normal, BI-RADS 1,
images left out); with ``population: screening`` the deployable procedure is scored a second
time with the normal test images as negatives, and its rows stand beside the paper's.

Threshold metrics (sensitivity, specificity, F1, the paper's F-score ``f_sens_spec``, accuracy)
count each image's decision, made at the threshold of the model that scored it; ranking metrics (ROC AUC, PR AUC) rank the
scores themselves, pooled across the models a procedure merges, as the paper merges them.

A ranking metric whose 95 % interval reaches down to its chance level (ROC AUC 0.5, PR AUC the
share of positives), or whose interval is unreliable, is flagged ``at_chance``; the report's
headline says which models are at chance, and when all are, that it shows the machinery only.
One procedure is called better than another only where a paired interval of the difference
(the same test patients resampled for both) excludes 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pandas as pd

from vismae.data.manifest import VIEW_NAMES
from vismae.engine.finetune_config import fixed_threshold
from vismae.paired import compare_points
from vismae.experiments.roi_aware import paper_numbers
from vismae.experiments.roi_aware.config import RoiAwareConfig
from vismae.experiments.roi_aware.layout import DATA_FILE, OUTCOME_FILE, PREDICTIONS_FILE, REPORT_DIR, seed_dir
from vismae.experiments.roi_aware.markdown import markdown
from vismae.experiments.roi_aware.rules import PROCEDURES, procedure_label, procedures_for
from vismae.io import atomic_path, write_json, write_text
from vismae.metrics import CLASSIFICATION_METRICS, at_chance, interval_problem, metrics_with_ci, summarize_folds

THRESHOLD_METRICS = ("sensitivity", "specificity", "f1", "f_sens_spec", "accuracy")
RANKING_METRICS = ("roc_auc", "pr_auc")
SCOPES = ("merged",) + VIEW_NAMES
BOOTSTRAP_SEED = 0
# Scores no pixels (ROI annotated => malignant): the floor the models must beat, not a model, so
# the headline's "every model at chance" leaves it out.
MODEL_FREE = ("annotation_only",)
# Each ROI-aware procedure and the plain one it is set against: the paper's comparison, and the
# deployable procedure's.
COMPARED = (("annotated", "comparative"), ("deployable", "comparative"))
BALANCE_WORDS = {
    "weighted_loss": "class-weighted cross-entropy",
    "sampler": "cross-entropy, classes drawn equally often",
    "none": "plain cross-entropy",
}


# ---------------------------------------------------------------------------------------------
# What the data say before any model: the composition of the splits.


def composition(frame: pd.DataFrame) -> dict:
    """Images and malignant images per split and ROI presence, and P(malignant | ROI presence):
    how much the annotations alone tell about the label."""
    out = {}
    for split, rows in frame.groupby("split"):
        part = {"images": len(rows), "malignant": int(rows["target"].sum()), "patients": int(rows["patient_id"].nunique())}
        for has_roi, name in ((True, "with_roi"), (False, "without_roi")):
            stratum = rows[rows["has_roi"] == has_roi]
            malignant = int(stratum["target"].sum())
            part[name] = {
                "images": len(stratum),
                "malignant": malignant,
                "p_malignant": malignant / len(stratum) if len(stratum) else math.nan,
            }
        out[str(split)] = part
    return out


# ---------------------------------------------------------------------------------------------
# Metrics.


def scored_metrics(table: pd.DataFrame, n_boot: int) -> dict:
    """Metrics of one procedure's predictions: threshold metrics from ``decision``, ranking
    metrics from ``score``, each with a patient-level bootstrap 95 % interval. Both use the
    same patient resamples (same patients, same seed)."""
    target, patients = table["target"].to_numpy(), table["patient_id"].to_numpy()
    decided = metrics_with_ci(target, table["decision"].to_numpy(dtype=float), patients, 0.5, n_boot, BOOTSTRAP_SEED)
    ranked = metrics_with_ci(target, table["score"].to_numpy(dtype=float), patients, 0.5, n_boot, BOOTSTRAP_SEED)
    metrics = {name: _interval(decided[name]) for name in THRESHOLD_METRICS}
    metrics.update({name: _with_chance(_interval(ranked[name]), name) for name in RANKING_METRICS})
    counts = {key: decided[key] for key in ("n", "positives", "negatives", "patients")}
    return {**counts, "metrics": metrics}


# What an interval rests on, kept with it: the resamples where its metric was undefined, how
# many there were, and the positives and negatives of the data (vismae.metrics.interval_problem).
INTERVAL_BASIS = ("undefined", "n_boot", "n_positive", "n_negative")


def _interval(entry: dict) -> dict:
    interval = {"value": float(entry["value"]), "low": float(entry["low"]), "high": float(entry["high"])}
    return {**interval, **{key: int(entry[key]) for key in INTERVAL_BASIS}}


def _with_chance(entry: dict, metric: str) -> dict:
    """``entry`` with ``at_chance``: whether its score is not shown better than chance
    (vismae.metrics.at_chance); None where the metric is undefined on these data (one class)."""
    return {**entry, "at_chance": None if math.isnan(entry["value"]) else at_chance(entry, metric)}


def result_rows(predictions: pd.DataFrame, n_boot: int) -> list[dict]:
    """One entry per seed, procedure and scope (merged, then each view)."""
    rows = []
    for seed, procedure in itertools.product(sorted(predictions["seed"].unique()), PROCEDURES):
        table = predictions[(predictions["seed"] == seed) & (predictions["procedure"] == procedure)]
        for scope in SCOPES:
            part = table if scope == "merged" else table[table["view_name"] == scope]
            if part.empty:
                continue
            rows.append({"seed": int(seed), **_described(procedure), "scope": scope, **scored_metrics(part, n_boot)})
    return rows


def _described(procedure: str) -> dict:
    """What every result entry says of its procedure, beside the numbers."""
    return {
        "procedure": procedure,
        "title": procedure_label(procedure),
        "uses_test_annotations": PROCEDURES[procedure].uses_test_annotations,
        "task": PROCEDURES[procedure].task,
        "population": PROCEDURES[procedure].population,
    }


def seed_summary(results: list[dict]) -> list[dict]:
    """Mean, standard deviation, min and max of each metric across seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["procedure"], row["scope"]), []).append(row)
    summary = []
    for (procedure, scope), rows in groups.items():
        stats = summarize_folds([row["metrics"] for row in rows])
        chance = seeds_at_chance([row["metrics"] for row in rows])
        summary.append(
            {
                **_described(procedure),
                "scope": scope,
                "seeds": [row["seed"] for row in rows],
                "metrics": {name: {**stats[name], **chance.get(name, {})} for name in CLASSIFICATION_METRICS if name in stats},
            }
        )
    return summary


def seeds_at_chance(seed_metrics: list[dict]) -> dict:
    """Per ranking metric, across one procedure's seeds: ``seeds_at_chance`` (how many are at
    chance), ``n`` (how many have a score) and ``at_chance`` (all of them; None when none has a
    score). A mean across seeds has no interval of its own: these say what the seeds did."""
    out = {}
    for name in RANKING_METRICS:
        flags = [metrics[name]["at_chance"] for metrics in seed_metrics if metrics[name]["at_chance"] is not None]
        out[name] = {"at_chance": all(flags) if flags else None, "seeds_at_chance": sum(flags), "n": len(flags)}
    return out


def _chance_part(stats: dict) -> dict:
    """What ``seeds_at_chance`` added to a metric's statistics across seeds."""
    return {key: stats[key] for key in ("at_chance", "seeds_at_chance", "n")}


def chance_headline(results: list[dict]) -> dict:
    """The report's headline: for every model scoring malignancy, the seeds in which its merged
    ROC AUC is at chance (an undefined one counts: it is not shown better either), and whether
    that is every model in every seed."""
    procedures: dict[str, dict] = {}
    for row in results:
        if row["scope"] != "merged" or row["task"] != "malignancy" or row["procedure"] in MODEL_FREE:
            continue
        entry = procedures.setdefault(row["procedure"], {"title": row["title"], "seeds": [], "seeds_at_chance": []})
        entry["seeds"].append(row["seed"])
        if row["metrics"]["roc_auc"]["at_chance"] is not False:
            entry["seeds_at_chance"].append(row["seed"])
    every = bool(procedures) and all(entry["seeds_at_chance"] == entry["seeds"] for entry in procedures.values())
    return {"metric": "roc_auc", "scope": "merged", "procedures": procedures, "every_model_at_chance": every}


# ---------------------------------------------------------------------------------------------
# ROI-aware against plain: a difference is claimed only where a paired interval supports it.


def paired_differences(predictions: pd.DataFrame, n_boot: int) -> list[dict]:
    """Per seed, the merged ROC AUC of each ROI-aware procedure minus the plain one's, on the
    same test images, with a paired patient-bootstrap 95 % interval (the sweeps' rule,
    vismae.paired): both procedures' scores are resampled
    together, so which patients happen to be hard cancels out. Two separate intervals that
    overlap say neither "same" nor "different"; this interval does."""
    out = []
    for seed, (aware, plain) in itertools.product(sorted(predictions["seed"].unique()), COMPARED):
        table = predictions[predictions["seed"] == seed]
        ours, theirs = (table[table["procedure"] == name].rename(columns={"score": "probability"}) for name in (aware, plain))
        if ours.empty or theirs.empty:
            continue
        if set(ours["image_id"]) != set(theirs["image_id"]):
            raise ValueError(
                f"seed {seed}: procedures {aware} and {plain} scored different test images "
                f"({len(ours)} and {len(theirs)}); a paired comparison needs the same images"
            )
        compared = compare_points("classify", "roc_auc", {aware: [ours], plain: [theirs]}, {"difference": (aware, plain)},
                                  n_boot=n_boot, seed=BOOTSTRAP_SEED)  # fmt: skip
        counts = {"n_positive": int(ours["target"].sum()), "n_negative": int((ours["target"] == 0).sum())}
        entry = _interval({**compared["difference"], **counts})
        out.append(
            {"seed": int(seed), "metric": "roc_auc", "procedure": aware, "title": procedure_label(aware),
             "baseline": plain, "baseline_title": procedure_label(plain), **entry, "verdict": difference_verdict(entry)}
        )  # fmt: skip
    return out


def difference_verdict(entry: dict) -> str:
    """What a paired difference (ROI-aware minus plain) supports: "higher" or "lower" only where
    its 95 % interval excludes 0; otherwise "not distinguishable"."""
    if math.isnan(entry["value"]):
        return "undefined"
    if interval_problem(entry):
        return "not distinguishable"
    if entry["low"] > 0:
        return "higher"
    if entry["high"] < 0:
        return "lower"
    return "not distinguishable"


def flat_row(row: dict) -> dict:
    """A result entry as one CSV row: ``metric``, ``metric_low``, ``metric_high`` and
    ``metric_undefined`` (resamples without a value) columns; the positives and negatives the
    intervals rest on are the row's own columns."""
    flat = {key: value for key, value in row.items() if key != "metrics"}
    for name, entry in row["metrics"].items():
        for part in ("value", "low", "high", "undefined"):
            flat[name if part == "value" else f"{name}_{part}"] = entry.get(part)
        if "at_chance" in entry:  # the ranking metrics
            flat[f"{name}_at_chance"] = entry["at_chance"]
    return flat


# ---------------------------------------------------------------------------------------------
# Beside the paper.


def paper_comparison(dataset: str | None, results: list[dict], summary: list[dict], recipe: str = "") -> dict | None:
    """The paper's tables for the dataset, and ours on the merged test set (the mean across
    seeds when there are several) for the procedures they correspond to. The paper's F-score
    stands in ``f_sens_spec`` (the harmonic mean of sensitivity and specificity), the metric it
    is; the paper reports no F1."""
    if dataset is None:
        return None
    test_set = paper_numbers.TEST_SETS[dataset]
    published = []
    for table in paper_numbers.published_for(dataset):
        for column, procedure in (("comparative", "comparative"), ("stratified", "annotated")):
            numbers = getattr(table, column)
            published.append(
                {
                    "source": f"paper, {table.source}",
                    "table": table.table,
                    "model": table.model,
                    "procedure": procedure,
                    "title": procedure_label(procedure),
                    "uses_test_annotations": PROCEDURES[procedure].uses_test_annotations,
                    "metrics": dict(numbers),
                }
            )
    several = len({row["seed"] for row in results}) > 1
    ours = []
    for name in ("comparative", "annotated", "annotation_only", "deployable"):
        if several:
            entry = next((row for row in summary if row["procedure"] == name and row["scope"] == "merged"), None)
            metrics = {metric: stats["mean"] for metric, stats in entry["metrics"].items()} if entry else None
            chance = {metric: _chance_part(entry["metrics"][metric]) for metric in RANKING_METRICS} if entry else None
        else:
            entry = next((row for row in results if row["procedure"] == name and row["scope"] == "merged"), None)
            metrics = {metric: value["value"] for metric, value in entry["metrics"].items()} if entry else None
            chance = seeds_at_chance([entry["metrics"]]) if entry else None
        if metrics is not None:
            ours.append(
                {"source": "ours" + (f", {recipe} recipe" if recipe else "") + (" (mean across seeds)" if several else ""),
                 "procedure": name, "title": procedure_label(name),
                 "uses_test_annotations": PROCEDURES[name].uses_test_annotations, "metrics": metrics, "chance": chance}
            )  # fmt: skip
    return {
        "dataset": dataset,
        "citation": paper_numbers.CITATION,
        "f_score": paper_numbers.F_SCORE_DEFINITION,
        "published_test_set": {"table": test_set.table, "n": test_set.n, "positives": test_set.positives},
        "published": published,
        "ours": ours,
    }


# ---------------------------------------------------------------------------------------------
# The report.


def load_predictions(config: RoiAwareConfig) -> tuple[pd.DataFrame, list[dict]]:
    tables, outcomes = [], []
    for seed in config.seeds:
        folder = seed_dir(config.output_dir, seed)
        if not (folder / PREDICTIONS_FILE).is_file():
            raise FileNotFoundError(f"{folder / PREDICTIONS_FILE}: no predictions for seed {seed}; run the experiment first")
        tables.append(pd.read_csv(folder / PREDICTIONS_FILE, dtype={"image_id": str, "patient_id": str}))
        outcomes.append(json.loads((folder / OUTCOME_FILE).read_text()))
    return pd.concat(tables, ignore_index=True), outcomes


def build_report(config: RoiAwareConfig) -> Path:
    """Write report/{results.md, results.csv, results.json, roc.png} (and summary.csv with
    several seeds, paper_comparison.csv with a paper dataset); return the folder."""
    from vismae.experiments.roi_aware.plot import plot_roc

    out = Path(config.output_dir)
    predictions, outcomes = load_predictions(config)
    # A folder scored for another population before: report this config's procedures only.
    predictions = predictions[predictions["procedure"].isin(procedures_for(config.population))]
    # Every row names its recipe, so the CSVs of two runs concatenate into one comparison.
    results = [{"recipe": config.recipe, **row} for row in result_rows(predictions, config.finetune.eval.n_boot)]
    summary = [{"recipe": config.recipe, **row} for row in seed_summary(results)] if len(config.seeds) > 1 else []
    report = {
        "experiment": {
            "manifest": config.manifest,
            "init": config.init,
            "recipe": recipe_description(config),
            "seeds": list(config.seeds),
            "router": config.router.kind,
            "population": config.population,
            "small_groups": dataclasses.asdict(config.small_groups),
            "n_boot": config.finetune.eval.n_boot,
        },
        "procedures": {name: {"title": procedure_label(name), "uses_test_annotations": PROCEDURES[name].uses_test_annotations,
                              "task": PROCEDURES[name].task, "population": PROCEDURES[name].population}
                       for name in procedures_for(config.population)},  # fmt: skip
        "data": json.loads((out / DATA_FILE).read_text()),
        "groups": outcomes[0]["groups"],  # the plan depends on the data alone: the same for every seed
        "routers": {str(outcome["seed"]): outcome["router"] for outcome in outcomes},
        "results": results,
        "summary": summary,
        "headline": chance_headline(results),
        "differences": paired_differences(predictions, config.finetune.eval.n_boot),
        "paper": paper_comparison(config.paper, results, summary, config.recipe),
    }
    folder = out / REPORT_DIR
    write_json(folder / "results.json", json_safe(report))
    write_csv(pd.DataFrame([flat_row(row) for row in results]), folder / "results.csv")
    if summary:
        flat = pd.DataFrame([_flat_summary(row, metric) for row in summary for metric in row["metrics"]])
        # A count, empty for the threshold metrics: not a float.
        write_csv(flat.astype({"seeds_at_chance": "Int64"}), folder / "summary.csv")
    if report["paper"]:
        entries = report["paper"]["published"] + report["paper"]["ours"]
        flat = [{**_without(entry, "metrics", "chance"), **entry["metrics"], **_chance_columns(entry)} for entry in entries]
        write_csv(pd.DataFrame(flat), folder / "paper_comparison.csv")
    write_text(folder / "results.md", markdown(report))
    plot_roc(predictions, folder / "roc.png")
    return folder


def recipe_description(config: RoiAwareConfig) -> dict:
    """The recipe's name and the settings that tell recipes apart: what the loss balances,
    where the decision threshold comes from, the optimizer's peak lr, epochs, input size."""
    recipe = config.finetune
    fixed = fixed_threshold(recipe.eval.threshold_rule)
    return {
        "name": config.recipe,
        "backbone": recipe.model.backbone,
        "loss": BALANCE_WORDS[recipe.train.balance],
        "threshold": f"fixed at {fixed:g}" if fixed is not None else f"{recipe.eval.threshold_rule}, chosen on validation",
        "lr": recipe.train.lr,
        "epochs": recipe.train.epochs,
        "size": recipe.data.size,
    }


def json_safe(value):
    """``value`` with every NaN (an undefined metric) as None, so the file is strict JSON: null."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _chance_columns(entry: dict) -> dict:
    """``roc_auc_at_chance`` and ``pr_auc_at_chance`` of one of our comparison rows (at chance in
    every seed); none for the paper's rows, which report no AUC."""
    return {f"{metric}_at_chance": flags["at_chance"] for metric, flags in (entry.get("chance") or {}).items()}


def _flat_summary(row: dict, metric: str) -> dict:
    return {**_without(row, "metrics", "seeds"), "seeds": len(row["seeds"]), "metric": metric, **row["metrics"][metric]}


def _without(entry: dict, *keys: str) -> dict:
    return {key: value for key, value in entry.items() if key not in keys}


def write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)

