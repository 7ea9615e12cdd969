"""The pretraining study's report: pretrained against random init at each label fraction, the
difference pooled over every pretraining run.

The pooled difference is the mean score of all pretrained runs (every pretraining seed, every
sweep seed) minus the mean of random init's runs, both on the same scored images, with a
patient-bootstrap interval in which every run is resampled together
(``vismae.paired``). It is the study's answer about the recipe; one
pretraining run's own difference (the sweeps' paired.csv) is an answer about that run, and the
runs of one recipe differ widely.

    STUDY/report/study.csv   per method and fraction: both means, their intervals, the pooled difference
    STUDY/report/study.md    the tables and what they show
    STUDY/report/study.png   score vs labelled fraction, pretrained (pooled) and random, per method
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from vismae.experiments.label_efficiency.predictions import point_tables  # noqa: E402
from vismae.experiments.label_efficiency.report import (  # noqa: E402
    PAIRED_FILE,
    REPORT_DIR,
    collect_results,
    flagged,
    percent,
    read_plan,
    signed,
)
from vismae.io import atomic_path, write_text  # noqa: E402
from vismae.metrics import at_chance, chance_level  # noqa: E402
from vismae.paired import compare_points  # noqa: E402

PRETRAINED = "pretrained"
BASELINE = "random"
COLUMNS = ["method", "metric", "fraction", "train_images", "pretrained_runs", "pretrained", "pretrained_low", "pretrained_high",
           "pretrained_at_chance", "random_runs", "random", "random_low", "random_high", "random_at_chance",
           "difference", "difference_low", "difference_high", "per_run"]  # fmt: skip
# The issue this study answers: do pretrained encoders beat random ones with few labels?
FEW_LABELS = 0.25


def is_pretrained(init: str) -> bool:
    return init.startswith(f"{PRETRAINED}-")


def method_rows(method: str, folder: Path, n_boot: int) -> list[dict]:
    """One row per fraction of one sweep: pooled pretrained vs random."""
    plan = read_plan(folder)
    results = collect_results(folder, plan)
    if results.empty:
        return []
    metric, split = plan["metrics"][0], plan["score_split"]
    pool_folds = split == "val" and any(fold is not None for fold in plan["folds"])
    per_init = pd.read_csv(folder / REPORT_DIR / PAIRED_FILE) if (folder / REPORT_DIR / PAIRED_FILE).is_file() else pd.DataFrame()
    rows = []
    for fraction in sorted(set(results["fraction"])):
        here = results[results["fraction"] == fraction]
        pretrained = point_tables(folder, here[here["init"].map(is_pretrained)], split, pool_folds)
        random = point_tables(folder, here[here["init"] == BASELINE], split, pool_folds)
        compared = compare_points(plan["task"], metric, {"pretrained": pretrained, "random": random},
                                  {"difference": ("pretrained", "random")}, n_boot=n_boot)  # fmt: skip
        if not compared:
            continue
        row = {"method": method, "metric": metric, "fraction": fraction, "train_images": here["train_images"].mean(),
               "per_run": per_run_differences(per_init, metric, fraction)}  # fmt: skip
        for arm in ("pretrained", "random", "difference"):
            entry = compared[arm]
            row.update({arm: entry["value"], f"{arm}_low": entry["low"], f"{arm}_high": entry["high"]})
            if arm != "difference":
                row.update({f"{arm}_runs": compared["runs"][arm], f"{arm}_at_chance": at_chance(entry, metric)})
        rows.append(row)
    return rows


def per_run_differences(paired: pd.DataFrame, metric: str, fraction: float) -> str:
    """Each pretraining run's own paired difference against random at ``fraction``."""
    if paired.empty:
        return ""
    part = paired[(paired["metric"] == metric) & (paired["fraction"] == fraction) & paired["init"].map(is_pretrained)]
    return "; ".join(f"{row['init']} {signed(row['versus_baseline'], row['versus_baseline_low'], row['versus_baseline_high'])}"
                     for _, row in part.sort_values("init").iterrows() if pd.notna(row["versus_baseline"]))  # fmt: skip


def verdict(rows: pd.DataFrame) -> str:
    """What the pooled differences show at few labels (at most FEW_LABELS of them)."""
    few = rows[rows["fraction"] <= FEW_LABELS]
    if few.empty:
        return f"no fraction at or below {percent(FEW_LABELS)} has finished runs"
    better = [percent(f) for f in few.loc[few["difference_low"] > 0, "fraction"]]
    worse = [percent(f) for f in few.loc[few["difference_high"] < 0, "fraction"]]
    parts = []
    if better:
        parts.append(f"pretrained beats random at {', '.join(better)} of the labels (pooled interval above zero)")
    if worse:
        parts.append(f"random beats pretrained at {', '.join(worse)} (pooled interval below zero)")
    level = len(few) - len(better) - len(worse)
    if level:
        parts.append(f"not distinguishable at {level} of the {len(few)} fractions up to {percent(FEW_LABELS)}")
    return "; ".join(parts)


def _mean(row: pd.Series, arm: str) -> str:
    text = f"{row[arm]:.3f} [{row[f'{arm}_low']:.3f}, {row[f'{arm}_high']:.3f}]"
    return f"{text}, at chance" if flagged(row[f"{arm}_at_chance"]) else text


def method_table(rows: pd.DataFrame) -> list[str]:
    metric = rows["metric"].iloc[0]
    lines = [f"| labels | pretrained, {metric} (runs) | random, {metric} (runs) | pretrained − random, pooled | each pretraining run − random |",
             "|---|---|---|---|---|"]  # fmt: skip
    for _, row in rows.iterrows():
        difference = signed(row["difference"], row["difference_low"], row["difference_high"])
        lines.append(f"| {percent(row['fraction'])} (~{row['train_images']:.0f} training images) | {_mean(row, 'pretrained')} "
                     f"({row['pretrained_runs']}) | {_mean(row, 'random')} ({row['random_runs']}) | **{difference}** | {row['per_run']} |")  # fmt: skip
    return lines


def plot(table: pd.DataFrame, path: Path) -> None:
    methods = list(dict.fromkeys(table["method"]))
    figure, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4.5), squeeze=False)
    for axis, method in zip(axes[0], methods):
        rows = table[table["method"] == method].sort_values("fraction")
        metric = rows["metric"].iloc[0]
        for arm, color in (("pretrained", "tab:blue"), ("random", "tab:orange")):
            runs = int(rows[f"{arm}_runs"].max())
            axis.plot(rows["fraction"], rows[arm], marker="o", color=color, label=f"{arm} (mean of {runs} runs)")
            axis.fill_between(rows["fraction"], rows[f"{arm}_low"], rows[f"{arm}_high"], color=color, alpha=0.18, linewidth=0)
        chance = chance_level(metric)
        if chance is not None:
            axis.axhline(chance, color="black", linestyle=":", linewidth=1, label=f"chance ({chance:g})")
        axis.set_xscale("log")
        axis.set_xticks(list(rows["fraction"]), [percent(f) for f in rows["fraction"]])
        axis.minorticks_off()
        axis.set_xlabel("labelled training patients")
        axis.set_ylabel(metric)
        axis.set_title(method)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle("Pretrained vs random init; band: 95 % patient-bootstrap interval of the mean", fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


def build_study_report(folder: Path, sweeps: dict[str, Path], n_boot: int = 1000) -> Path:
    """study.csv, study.md and study.png from the finished runs of each method's sweep."""
    folder = Path(folder)
    out = folder / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([row for method, sweep in sweeps.items() for row in method_rows(method, Path(sweep), n_boot)], columns=COLUMNS)
    with atomic_path(out / "study.csv") as temporary:
        table.to_csv(temporary, index=False)
    lines = [f"# Pretrained against random init: {folder.name}", "",
             "Each cell: the mean over runs on the scored images with its 95 % patient-bootstrap interval; the pooled "
             "difference resamples every run together, every pretraining run on one side, random init on the other. "
             "The last column is each pretraining run's own paired difference (its sweep's report/paired.csv).", ""]  # fmt: skip
    for method in sweeps:
        rows = table[table["method"] == method]
        lines += [f"## {method}", ""]
        if rows.empty:
            lines += ["No finished runs yet.", ""]
            continue
        lines += method_table(rows) + ["", f"At few labels: {verdict(rows)}.", f"Sweep report: {method}/report/summary.md", ""]
    if not table.empty:
        plot(table, out / "study.png")
        lines += ["![pretrained vs random](study.png)", ""]
    write_text(out / "study.md", "\n".join(lines))
    return out
