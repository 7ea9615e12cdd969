"""The label-efficiency report, rebuilt from a sweep folder at any time, finished or partial:

    SWEEP/results.csv                   one row per finished run
    SWEEP/report/curves.csv             per metric, init and fraction: runs, mean, std, min, max
    SWEEP/report/label_efficiency.png   the curves: metric vs labelled fraction, one line per init
    SWEEP/report/labels_saved.csv       per metric and init: where it reaches the bar, and whether that is shown
    SWEEP/report/paired.csv             per metric, init and fraction: the mean's interval, at chance or not,
                                        and the paired differences against the baseline
    SWEEP/report/summary.md             the tables, the labels-saved lines, what is missing

Labels saved. The *bar* is the baseline init's (random init's) mean score with 100 % of the
labels. An init *reaches* the bar at the smallest fraction f from which on (at f and at every
larger fraction of the sweep) its mean score is at least the bar: a curve that touches the bar
by chance at 10 % and falls below it at 25 % has not reached it at 10 %. The labels saved are
1 - f. The *range* around f repeats the rule on the spread over seeds and folds: its low end
compares each fraction's best run with the baseline's worst full-data run, its high end each
fraction's worst run with the baseline's best, so from the high end on every run of the init
scores at least every full-data baseline run. It is a range over runs, not a confidence interval.

Labels saved are claimed only where the data show them (``vismae.paired``): at the fraction f where
the mean reaches the bar, the init must beat the baseline trained on the same f of the labels,
the patient-bootstrap interval of the paired difference above zero, and neither the init at f
nor the bar may be at chance (its interval reaching down to chance level). Otherwise the
summary says the inits are not distinguishable there, or that the bar is at chance, and names
the numbers. Every point of the curve whose interval reaches chance is marked "at chance".

Each run's own score has a patient-level bootstrap interval (results.csv: ``test_roc_auc_low``,
``_high`` and ``_undefined``, the resamples of ``test_n_boot`` in which the metric had no value).
A point of the curve counts the runs whose interval was unreliable (over 5 % of the resamples
undefined: too few positive or negative patients to score on), and the summary says so beside
the score instead of letting it pass for a measured one.

Labels used. A fraction is of the training and the validation patients (the sweep's
``validation: fraction``): validation labels choose each run's epoch and threshold, so the
labelled images a fraction uses are its training and validation images, and the tables count
both. A sweep that kept validation whole (``validation: full``, or scored on val) says so in the
summary and the plot: there a fraction's labels saved count the training labels only. A
validation subset so small that it holds one class leaves ROC AUC undefined there; the
finetuning engine then chooses the epoch by validation loss and leaves the threshold at its
default, and the summary counts and names such runs.

An init whose pretraining list (``pretraining_images.csv``) holds images the sweep scores on is
named in a warning, and its row of every table and its labels-saved line carry a mark.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from vismae.experiments.label_efficiency.config import plan_method  # noqa: E402
from vismae.experiments.label_efficiency.predictions import point_tables  # noqa: E402
from vismae.io import atomic_path, write_text  # noqa: E402
from vismae.metrics import UNRELIABLE_UNDEFINED_SHARE, at_chance, chance_level  # noqa: E402
from vismae.paired import PAIRED_METRICS, compare_points  # noqa: E402
from vismae.models.formats.vismae_export import SEEN_IN_PRETRAINING, seen_mark, seen_warning  # noqa: E402

PLAN_FILE = "plan.json"
RUNS_DIR = "runs"
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"
RESULTS_FILE = "results.csv"
REPORT_DIR = "report"
PLOT_FILE = "label_efficiency.png"
CURVES_FILE = "curves.csv"
SAVED_FILE = "labels_saved.csv"
SUMMARY_FILE = "summary.md"
PAIRED_FILE = "paired.csv"
PAIRED_N_BOOT = 1000
FULL = 1.0
SPREAD = "line: mean over seeds and folds; band: min to max over them"
# The labelled budget a curve point averages over its runs (results.csv of sweeps made before
# validation was counted lacks all but the first two).
BUDGET_COLUMNS = ["train_images", "train_patients", "val_images", "val_patients", "labels_used"]
CURVE_COLUMNS = ["metric", "split", "init", "fraction", "runs", "mean", "std", "min", "max", *BUDGET_COLUMNS,
                 "unreliable_runs", "one_class_val_runs"]  # fmt: skip
FULL_VALIDATION = "validation at 100 % of its labels at every fraction"
SAVED_COLUMNS = ["metric", "init", "bar", "bar_low", "bar_high", "bar_runs", "reached", "labels_saved", "range_low", "range_high",
                 "shown", "statement"]  # fmt: skip
PAIRED_COLUMNS = ["metric", "init", "fraction", "runs", "images", "patients", "mean", "low", "high", "chance", "at_chance",
                  "baseline_runs", "versus_baseline", "versus_baseline_low", "versus_baseline_high",
                  "versus_bar", "versus_bar_low", "versus_bar_high"]  # fmt: skip
# The module docstring's definition, as the report states it.
LABELS_SAVED_DEFINITION = (
    "the bar is the baseline's mean score with 100 % of the labels. An init reaches it at the smallest "
    "fraction f from which on (at f and every larger fraction) its mean score is at least the bar; it saves "
    "1 - f of the labels. The range repeats the rule with each fraction's best run against the baseline's "
    "worst full-data run (low end) and its worst run against the baseline's best (high end): a range over "
    "seeds and folds, not a confidence interval. The saving is claimed only where, at f, the init beats the "
    "baseline trained on the same fraction (paired patient-bootstrap difference, 95 % interval above zero) and "
    "neither it nor the bar is at chance."
)


def percent(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def seen_counts(plan: dict) -> dict[str, int]:
    """Per init, the scored images it was pretrained on, where above zero."""
    return {init: int(seen) for init, seen in (plan.get(SEEN_IN_PRETRAINING) or {}).items() if seen}


def init_label(init: str, plan: dict) -> str:
    """The init's name, marked where its encoder was pretrained on images the sweep scores on."""
    seen = seen_counts(plan).get(init)
    return f"{init} {seen_mark(seen)}" if seen else init


def validation_statement(plan: dict) -> str:
    """What validation was at each fraction; sweeps made before the choice existed kept it whole."""
    if plan.get("validation", "full") == "fraction":
        return ""
    note = plan.get("validation_note") or ("validation: full" if "validation" in plan else "a sweep made before validation shrank")
    return f"{FULL_VALIDATION} ({note})"


def runs_text(low: int, high: int | None = None) -> str:
    """"1 run", "3 runs", "2-3 runs"."""
    high = low if high is None else high
    return f"{low} run" if high == 1 else f"{low} runs" if low == high else f"{low}-{high} runs"


# ---------------------------------------------------------------------------------------------
# Results and curves.


def read_plan(folder: Path) -> dict:
    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {folder} a sweep folder (made by `vismae sweep`)?")
    return json.loads(path.read_text())


def collect_results(folder: Path, plan: dict) -> pd.DataFrame:
    """One row per finished run (its result.json), in the plan's order; runs the plan no longer
    names (an init or fraction dropped from the config) come last."""
    rows = [json.loads(path.read_text()) for path in sorted((Path(folder) / RUNS_DIR).glob(f"*/{RESULT_FILE}"))]
    if not rows:
        return pd.DataFrame(columns=["run", "fraction", "init", "seed", "fold", "train_images", "train_patients"])
    order = {name: index for index, name in enumerate(plan["runs"])}
    results = pd.DataFrame(rows)
    results["fold"] = results["fold"].astype("Int64")
    position = results["run"].map(order).fillna(len(order))
    return results.assign(_order=position).sort_values(["_order", "run"]).drop(columns="_order").reset_index(drop=True)


def unreliable_intervals(results: pd.DataFrame, column: str) -> pd.Series:
    """Per run: whether the bootstrap interval of ``column`` (``test_roc_auc``) was unreliable,
    i.e. undefined in more than 5 % of its resamples. False where results.csv does not say
    (runs finished before the count was kept)."""
    split = column.split("_", 1)[0]
    undefined, n_boot = f"{column}_undefined", f"{split}_n_boot"
    if undefined not in results.columns or n_boot not in results.columns:
        return pd.Series(False, index=results.index)
    share = pd.to_numeric(results[undefined], errors="coerce") / pd.to_numeric(results[n_boot], errors="coerce")
    return (share > UNRELIABLE_UNDEFINED_SHARE).fillna(False).astype(bool)


def one_class_validation(results: pd.DataFrame) -> pd.Series:
    """Per run: whether its validation rows held one class (so ROC AUC was undefined there and
    the engine fell back to selecting by loss and the default threshold). False where
    results.csv does not say."""
    if {"val_images", "val_positives"} <= set(results.columns):
        images, positives = (pd.to_numeric(results[column], errors="coerce") for column in ("val_images", "val_positives"))
        return ((positives == 0) | (positives == images)).fillna(False).astype(bool)
    if "threshold_rule" in results.columns:
        return (results["threshold_rule"] == "default").fillna(False).astype(bool)
    return pd.Series(False, index=results.index)


def aggregate(results: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (init, fraction): how many runs have ``column`` defined, its mean, std (n - 1), min
    and max over them, the mean labelled budget (training and validation images and patients,
    labels used), how many of the runs' intervals were unreliable (``unreliable_intervals``)
    and how many validated on one class (``one_class_validation``)."""
    defined = results.dropna(subset=[column]).assign(
        unreliable_runs=lambda rows: unreliable_intervals(rows, column), one_class_val_runs=one_class_validation
    )
    grouped = defined.groupby(["init", "fraction"], sort=False)
    table = grouped[column].agg(runs="count", mean="mean", std="std", min="min", max="max")
    budget = grouped[[name for name in BUDGET_COLUMNS if name in defined.columns]].mean()
    flagged = grouped[["unreliable_runs", "one_class_val_runs"]].sum().astype(int)
    table = table.join(budget).join(flagged)
    table = table.reset_index().sort_values(["init", "fraction"], kind="stable").reset_index(drop=True)
    return table.reindex(columns=["init", "fraction", "runs", "mean", "std", "min", "max", *BUDGET_COLUMNS,
                                  "unreliable_runs", "one_class_val_runs"])  # fmt: skip


def init_order(plan: dict, results: pd.DataFrame) -> list[str]:
    planned = list(plan["inits"])
    return planned + sorted(set(results["init"]) - set(planned))


def build_curves(results: pd.DataFrame, plan: dict) -> pd.DataFrame:
    """The data behind the plot: ``aggregate`` of every metric on the scored split."""
    split = plan["score_split"]
    parts = []
    for metric in plan["metrics"]:
        column = f"{split}_{metric}"
        if column in results.columns:
            parts.append(aggregate(results, column).assign(metric=metric, split=split))
    if not parts:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    table = pd.concat(parts, ignore_index=True)
    rank = {init: index for index, init in enumerate(init_order(plan, results))}
    table = table.assign(_rank=table["init"].map(rank)).sort_values(["metric", "_rank", "fraction"], kind="stable")
    return table[CURVE_COLUMNS].reset_index(drop=True)


def with_chance(curves: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """The curves with paired.csv's at_chance per point (empty where no comparison exists)."""
    flags = paired[["metric", "init", "fraction", "at_chance"]]
    return curves.drop(columns="at_chance", errors="ignore").merge(flags, on=["metric", "init", "fraction"], how="left")


# ---------------------------------------------------------------------------------------------
# Paired comparisons: is a point at chance, is an init distinguishable from the baseline.


def paired_table(folder: Path, plan: dict, results: pd.DataFrame, n_boot: int = PAIRED_N_BOOT) -> pd.DataFrame:
    """paired.csv: per metric that has a paired comparison, init and fraction, the interval of
    the mean score over the runs and whether it reaches chance; for every init but the baseline,
    the paired differences against the baseline at the same fraction and at 100 % (the bar)."""
    split, baseline = plan["score_split"], plan["baseline"]
    metrics = [metric for metric in plan["metrics"] if metric in PAIRED_METRICS.get(plan["task"], ())]
    if results.empty or not metrics:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    pool_folds = split == "val" and any(fold is not None for fold in plan["folds"])
    points = {key: point_tables(folder, runs, split, pool_folds) for key, runs in results.groupby(["init", "fraction"], sort=False)}
    rows = []
    for metric in metrics:
        for (init, fraction), own in points.items():
            arms, differences = {"point": own}, {}
            for name, at in (("versus_baseline", fraction), ("versus_bar", FULL)):
                if init != baseline and points.get((baseline, at)):
                    arms[name] = points[(baseline, at)]
                    differences[f"{name}_difference"] = ("point", name)
            compared = compare_points(plan["task"], metric, arms, differences, n_boot=n_boot)
            if not compared:
                continue
            point = compared["point"]
            row = {"metric": metric, "init": init, "fraction": fraction, "runs": compared["runs"]["point"], "images": compared["images"],
                   "patients": compared["patients"], "mean": point["value"], "low": point["low"], "high": point["high"],
                   "chance": chance_level(metric, point), "at_chance": at_chance(point, metric),
                   "baseline_runs": compared["runs"].get("versus_baseline")}  # fmt: skip
            for name in ("versus_baseline", "versus_bar"):
                difference = compared.get(f"{name}_difference")
                if difference:
                    row.update({name: difference["value"], f"{name}_low": difference["low"], f"{name}_high": difference["high"]})
            rows.append(row)
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def paired_row(paired: pd.DataFrame, metric: str, init: str, fraction: float) -> pd.Series | None:
    found = paired[(paired["metric"] == metric) & (paired["init"] == init) & (paired["fraction"] == fraction)]
    return None if found.empty else found.iloc[0]


def flagged(value) -> bool:
    """True for a true flag of a column that may also hold False, None or NaN."""
    return not pd.isna(value) and bool(value)


def signed(value: float, low: float, high: float) -> str:
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def with_interval(row: pd.Series) -> str:
    return f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"


# ---------------------------------------------------------------------------------------------
# Labels saved.


@dataclass
class Bar:
    """The baseline's full-data score: the mean over its runs, and their min and max."""

    init: str
    value: float
    low: float
    high: float
    runs: int


@dataclass
class Reach:
    init: str
    reached: float | None  # the mean reaches the bar from this fraction on; None: not reached
    range_low: float | None  # the best runs reach the baseline's worst from here on
    range_high: float | None  # the worst runs reach the baseline's best from here on

    @property
    def saved(self) -> float | None:
        return None if self.reached is None else 1.0 - self.reached

    def describe(self, bar: Bar) -> str:
        target = f"{bar.init}'s 100 % score"
        if self.range_low is None:
            return f"{self.init}: does not reach {target}, not even with its best runs"
        high = percent(self.range_high) if self.range_high is not None else "not reached by its worst runs"
        spread = f"range over runs {percent(self.range_low)} to {high}"
        if self.reached is None:
            return f"{self.init}: does not reach {target} on average ({spread})"
        return f"{self.init}: reaches {target} with {percent(self.reached)} of the labels, saving {percent(self.saved)} ({spread})"


def reached_from(fractions, scores, bar: float) -> float | None:
    """The smallest fraction from which on (it and every larger one) the score is >= ``bar``."""
    reached = None
    for fraction, score in sorted(zip(fractions, scores), reverse=True):
        if math.isnan(score) or score < bar:
            break
        reached = fraction
    return reached


def labels_saved(curve: pd.DataFrame, baseline: str, inits: list[str]) -> tuple[Bar | None, list[Reach]]:
    """The bar and each other init's reach on one metric's curve (columns init, fraction, mean,
    min, max). No bar (None, []) until a baseline run with 100 % of the labels has finished."""
    full = curve[(curve["init"] == baseline) & (curve["fraction"] == FULL)]
    if full.empty:
        return None, []
    full = full.iloc[0]
    bar = Bar(baseline, float(full["mean"]), float(full["min"]), float(full["max"]), int(full["runs"]))
    reaches = []
    for init in inits:
        part = curve[curve["init"] == init]
        if part.empty or init == baseline:
            continue
        fractions = part["fraction"].tolist()
        reaches.append(
            Reach(
                init,
                reached_from(fractions, part["mean"], bar.value),
                reached_from(fractions, part["max"], bar.low),
                reached_from(fractions, part["min"], bar.high),
            )
        )
    return bar, reaches


def judged(reach: Reach, bar: Bar, metric: str, paired: pd.DataFrame) -> tuple[bool, str]:
    """Whether the data show the labels saved that the means suggest, and the statement: the
    saving at the reached fraction f needs the bar and the init at f off chance, and the init
    at f better than the baseline trained on f, the paired difference's interval above zero."""
    described = reach.describe(bar)
    bar_row = paired_row(paired, metric, bar.init, FULL)
    if bar_row is not None and flagged(bar_row["at_chance"]):
        return False, (f"{reach.init}: no labels saved can be shown: the bar, {bar.init} at 100 %, scores at chance "
                       f"({with_interval(bar_row)})")  # fmt: skip
    if reach.reached is None:
        return False, described
    at = percent(reach.reached)
    row = paired_row(paired, metric, reach.init, reach.reached)
    if row is None or pd.isna(row["versus_baseline"]):
        return False, f"{described}; NOT SHOWN: no paired comparison at {at} (the runs' predictions.csv are missing)"
    if flagged(row["at_chance"]):
        return False, f"{reach.init}: scores at chance at {at} ({with_interval(row)}): no labels saved shown"
    difference = signed(row["versus_baseline"], row["versus_baseline_low"], row["versus_baseline_high"])
    if not row["versus_baseline_low"] > 0:
        return False, (f"{reach.init}: its mean reaches {bar.init}'s 100 % score at {at}, but at {at} it is not distinguishable "
                       f"from {bar.init} trained on the same labels (paired difference {difference}): no labels saved shown")  # fmt: skip
    against_bar = signed(row["versus_bar"], row["versus_bar_low"], row["versus_bar_high"])
    return True, f"{described}; at {at} it beats {bar.init} on the same labels by {difference} (paired), and {bar.init} at 100 % by {against_bar}"


def saved_table(curves: pd.DataFrame, plan: dict, inits: list[str], paired: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """labels_saved.csv, and per metric the bar and each init's (reach, shown, statement)."""
    rows, found = [], {}
    for metric in plan["metrics"]:
        bar, reaches = labels_saved(curves[curves["metric"] == metric], plan["baseline"], inits)
        judgements = [(reach, *judged(reach, bar, metric, paired)) for reach in reaches]
        found[metric] = (bar, judgements)
        for reach, shown, statement in judgements:
            rows.append({"metric": metric, "init": reach.init, "bar": bar.value, "bar_low": bar.low, "bar_high": bar.high,
                         "bar_runs": bar.runs, "reached": reach.reached, "labels_saved": reach.saved if shown else None,
                         "range_low": reach.range_low, "range_high": reach.range_high, "shown": shown,
                         "statement": statement})  # fmt: skip
    return pd.DataFrame(rows, columns=SAVED_COLUMNS), found


# ---------------------------------------------------------------------------------------------
# The plot.


def plot_curves(curves: pd.DataFrame, plan: dict, inits: list[str], bars: dict, path: Path, note: str = "") -> Path:
    """One panel per metric: mean score vs labelled fraction (log axis), one line per init, its
    min-max band over seeds and folds, the bar as a dashed line."""
    metrics = [metric for metric in plan["metrics"] if (curves["metric"] == metric).any()]
    figure, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fractions = sorted(set(curves["fraction"]) | set(plan["fractions"]))
    for axes_, metric in zip(axes[0], metrics):
        table = curves[curves["metric"] == metric]
        for index, init in enumerate(inits):
            part = table[table["init"] == init].sort_values("fraction")
            if part.empty:
                continue
            color = colors[index % len(colors)]
            runs = runs_text(int(part["runs"].min()), int(part["runs"].max()))
            axes_.plot(part["fraction"], part["mean"], marker="o", color=color, label=f"{init_label(init, plan)} ({runs} per point)")
            axes_.fill_between(part["fraction"], part["min"], part["max"], color=color, alpha=0.18, linewidth=0)
        chance = chance_level(metric)
        if chance is not None:
            axes_.axhline(chance, color="black", linestyle=":", linewidth=1, label=f"chance ({chance:g})")
        bar = bars.get(metric, (None, []))[0]
        if bar is not None:
            axes_.axhline(bar.value, color="grey", linestyle="--", linewidth=1, label=f"bar: {bar.init} at 100 % ({bar.value:.3f})")
        axes_.set_xscale("log")
        axes_.set_xticks(fractions, [percent(f) for f in fractions])
        axes_.minorticks_off()
        axes_.set_xlabel("labelled patients (training" + (")" if validation_statement(plan) else " and validation)"))
        axes_.set_ylabel(f"{metric} ({plan['score_split']})")
        axes_.grid(alpha=0.3)
        axes_.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"Label efficiency, {plan['task']}: {SPREAD}" + (f"\n{note}" if note else ""), fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------
# The summary.


def progress(folder: Path, plan: dict, results: pd.DataFrame) -> tuple[str, bool]:
    """(one line on how much of the plan has finished, whether the sweep is partial)."""
    finished = set(results["run"])
    planned = plan["runs"]
    failed = [name for name in planned if name not in finished and (Path(folder) / RUNS_DIR / name / ERROR_FILE).is_file()]
    missing = [name for name in planned if name not in finished]
    if not missing:
        return f"Complete: all {len(planned)} planned runs finished.", False
    line = f"PARTIAL: {len(planned) - len(missing)} of {len(planned)} planned runs finished"
    if failed:
        named = ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
        line += f"; {len(failed)} failed (their error.txt says why; a rerun redoes them: {named})"
    line += f"; {len(missing) - len(failed)} not run yet. Every number below uses the finished runs only."
    return line, True


def _cell(row) -> str:
    spread = f" ± {row['std']:.3f}" if row["runs"] > 1 else ""
    unreliable = int(row.get("unreliable_runs", 0) or 0)
    # The runs whose own interval rests on too few patients of a class: their scores are chance.
    warning = f"; UNRELIABLE interval in {unreliable}" if unreliable else ""
    one_class = int(row.get("one_class_val_runs", 0) or 0)
    warning += f"; ONE-CLASS validation in {one_class}" if one_class else ""
    warning += "; AT CHANCE" if flagged(row.get("at_chance")) else ""
    return f"{row['mean']:.3f}{spread} [{row['min']:.3f}, {row['max']:.3f}] ({row['runs']}{warning})"


def budget_text(train: float, val: float, used: float) -> str:
    """A fraction's labelled budget: "~40 labelled images: 32 train + 8 val"; the training
    images alone where results.csv does not count validation."""
    if math.isnan(used):
        return f"~{train:.0f} training images"
    return f"~{used:.0f} labelled images: {train:.0f} train + {val:.0f} val"


def metric_table(curve: pd.DataFrame, inits: list[str], plan: dict | None = None) -> str:
    """Markdown: one row per init, one column per fraction (with its labelled budget)."""
    fractions = sorted(set(curve["fraction"]))
    budget = curve.groupby("fraction")[["train_images", "val_images", "labels_used"]].mean()
    header = ["init"] + [f"{percent(f)} ({budget_text(*budget.loc[f])})" for f in fractions]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for init in inits:
        part = curve[curve["init"] == init].set_index("fraction")
        if part.empty:
            continue
        cells = [_cell(part.loc[f]) if f in part.index else "-" for f in fractions]
        lines.append("| " + " | ".join([init_label(init, plan or {})] + cells) + " |")
    return "\n".join(lines)


def scored_on(plan: dict, results: pd.DataFrame) -> str:
    split = plan["score_split"]
    named = ((f"{split}_n", "images"), (f"{split}_positives", "positives"), (f"{split}_with_roi", "with an ROI"))
    # Stated when every run was scored on the same images (always so for the test split).
    counts = [
        f"{results[column].iloc[0]:.0f} {name}" for column, name in named if column in results.columns and results[column].nunique() == 1
    ]
    where = f"the {split} split" + (f" ({', '.join(counts)})" if counts else "")
    if split == "val" and any(fold is not None for fold in plan["folds"]):
        where += ": each fold's held-out patients, which also chose the epoch, so the scores lean optimistic"
    return where


def fractions_statement(plan: dict) -> str:
    stratified = " and stratified by label" if plan.get("stratify", "label") == "label" else ""
    if validation_statement(plan):
        return (f"Fractions are of the training patients, drawn nested{stratified}; validation and test rows do not "
                "change with the fraction.")  # fmt: skip
    return (f"Fractions are of the training and of the validation patients, each drawn nested{stratified}; test rows "
            "do not change with the fraction. Labels used count training and validation images: validation labels "
            f"choose each run's {chosen_on_validation(plan)}.")  # fmt: skip


def chosen_on_validation(plan: dict) -> str:
    """What validation labels choose in a run: a finetuning run's epoch, a probe's regularization."""
    return "probe's regularization C and threshold" if plan_method(plan) == "probe" else "epoch and threshold"


def one_class_lines(plan: dict, results: pd.DataFrame) -> list[str]:
    """Where validation subsets held one class: how many runs, at which fractions, and what the
    engine did instead."""
    if plan.get("task") != "classify" or results.empty:
        return []
    flagged = results[one_class_validation(results)]
    if flagged.empty:
        return []
    fractions = ", ".join(percent(f) for f in sorted(set(flagged["fraction"])))
    return ["", f"ONE-CLASS VALIDATION: in {len(flagged)} of {len(results)} runs (at {fractions}) the validation rows held "
                "one class, so ROC AUC was undefined on them: the finetuning engine chose the epoch by validation loss "
                "and left the decision threshold at its default 0.5. Their threshold metrics (sensitivity, specificity, "
                "F1) rest on that default. In results.csv they are the runs whose val_positives is 0 or val_images."]  # fmt: skip


def _marked(text: str, init: str, plan: dict) -> str:
    seen = seen_counts(plan).get(init)
    return f"{text} {seen_mark(seen)}" if seen else text


def paired_lines(paired: pd.DataFrame, metric: str, plan: dict, inits: list[str]) -> list[str]:
    """The paired differences against the baseline, one row per init, one column per fraction;
    and the points at chance."""
    table = paired[paired["metric"] == metric]
    if table.empty:
        return []
    lines = []
    chance = table[table["at_chance"].map(flagged)]
    if not chance.empty:
        named = ", ".join(f"{init_label(row['init'], plan)} at {percent(row['fraction'])} ({with_interval(row)})" for _, row in chance.iterrows())
        lines += [f"AT CHANCE (the 95 % interval of the mean over runs reaches {metric} {chance['chance'].iloc[0]:.3f}): {named}.", ""]
    contenders = table[table["versus_baseline"].notna()]
    if contenders.empty:
        return lines
    fractions = sorted(set(contenders["fraction"]))
    lines += [f"Paired differences, mean {metric} minus {plan['baseline']}'s on the same images (patient bootstrap, 95 %):", "",
              "| init | against | " + " | ".join(percent(f) for f in fractions) + " |", "|---|---|" + "---|" * len(fractions)]  # fmt: skip
    for init in inits:
        part = contenders[contenders["init"] == init].set_index("fraction")
        if part.empty:
            continue
        for name, against in (("versus_baseline", f"{plan['baseline']}, same fraction"), ("versus_bar", f"{plan['baseline']}, 100 %")):
            cells = [signed(part.loc[f, name], part.loc[f, f"{name}_low"], part.loc[f, f"{name}_high"])
                     if f in part.index and pd.notna(part.loc[f, name]) else "-" for f in fractions]  # fmt: skip
            lines.append(f"| {init_label(init, plan)} | {against} | " + " | ".join(cells) + " |")
    return lines + [""]


def summary_markdown(folder: Path, plan: dict, results: pd.DataFrame, curves: pd.DataFrame, found: dict, inits: list[str],
                     paired: pd.DataFrame) -> str:  # fmt: skip
    status, _ = progress(folder, plan, results)
    folds = [fold for fold in plan["folds"] if fold is not None]
    lines = [
        f"# Label efficiency: {plan['task']}" + (", linear probe on the frozen encoders" if plan_method(plan) == "probe" else ""),
        "",
        status,
        "",
        f"Manifest {plan['manifest']}; inits {', '.join(f'{name} ({source})' for name, source in plan['inits'].items())}; "
        f"seeds {plan['seeds']}; {f'{len(folds)}-fold cross-validation' if folds else 'no cross-validation'}. "
        f"Scores on {scored_on(plan, results)}. {fractions_statement(plan)}",
        "",
        f"Cells: mean ± std [min, max] (runs) over seeds and folds. Plot: {PLOT_FILE} ({SPREAD}); its data: {CURVES_FILE}.",
    ]
    if validation_statement(plan):
        lines += ["", f"NOTE: {validation_statement(plan)}: every run chose its {chosen_on_validation(plan)} on all the validation "
                      "labels, so a fraction uses more labels than its share of the training patients, and the labels "
                      "saved count the training labels only."]  # fmt: skip
    for init, seen in seen_counts(plan).items():
        source = plan["inits"].get(init, init)
        lines += ["", seen_warning(seen, plan.get("scored_images", seen), source, f"images scored on ({plan['score_split']})")
                  + f". Every number of {init} is marked {seen_mark(seen)}."]  # fmt: skip
    lines += one_class_lines(plan, results)
    for metric in plan["metrics"]:
        curve = curves[curves["metric"] == metric]
        if curve.empty:
            continue
        lines += ["", f"## {metric}", "", metric_table(curve, inits, plan), ""]
        unreliable = int(curve["unreliable_runs"].sum()) if "unreliable_runs" in curve.columns else 0
        if unreliable:
            lines += [f"UNRELIABLE: in {unreliable} of {int(curve['runs'].sum())} runs the patient-level 95 % interval of "
                      f"{metric} was undefined in more than {100 * UNRELIABLE_UNDEFINED_SHARE:g} % of its resamples (too few "
                      f"positive or negative patients on {plan['score_split']}): those scores are not a measurement. "
                      f"results.csv has each run's {plan['score_split']}_{metric}_undefined.", ""]  # fmt: skip
        lines += paired_lines(paired, metric, plan, inits)
        bar, reaches = found.get(metric, (None, []))
        if bar is None:
            lines.append(f"Labels saved: no bar yet ({plan['baseline']} has no finished run with 100 % of the labels).")
            continue
        spread = f"range {bar.low:.3f} to {bar.high:.3f}, {runs_text(bar.runs)}"
        lines.append(_marked(f"Labels saved, against the bar {bar.init} at 100 %: {bar.value:.3f} ({spread}).", bar.init, plan))
        lines.append("")
        lines += [f"- {_marked(statement, reach.init, plan)}" for reach, _, statement in reaches] or ["- no other init to compare with the bar"]
    lines += ["", f"How labels saved are defined: {LABELS_SAVED_DEFINITION}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def build_report(folder: str | Path) -> Path:
    """results.csv and report/ from every finished run of the sweep in ``folder``."""
    folder = Path(folder)
    plan = read_plan(folder)
    results = collect_results(folder, plan)
    with atomic_path(folder / RESULTS_FILE) as temporary:
        results.to_csv(temporary, index=False)
    out = folder / REPORT_DIR
    out.mkdir(exist_ok=True)
    inits = init_order(plan, results)
    paired = paired_table(folder, plan, results)
    with atomic_path(out / PAIRED_FILE) as temporary:
        paired.to_csv(temporary, index=False)
    curves = with_chance(build_curves(results, plan), paired)
    with atomic_path(out / CURVES_FILE) as temporary:
        curves.to_csv(temporary, index=False)
    saved, found = saved_table(curves, plan, inits, paired)
    with atomic_path(out / SAVED_FILE) as temporary:
        saved.to_csv(temporary, index=False)
    _, partial = progress(folder, plan, results)
    if curves.empty:
        (out / PLOT_FILE).unlink(missing_ok=True)  # no finished run: no curve, and no stale one
    else:
        finished = len(set(plan["runs"]) & set(results["run"]))
        notes = [f"PARTIAL: {finished} of {len(plan['runs'])} planned runs finished" if partial else "", validation_statement(plan)]
        note = "; ".join(part for part in notes if part)
        plot_curves(curves, plan, inits, found, out / PLOT_FILE, note=note)
    write_text(out / SUMMARY_FILE, summary_markdown(folder, plan, results, curves, found, inits, paired))
    return out
