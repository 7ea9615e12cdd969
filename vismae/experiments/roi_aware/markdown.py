"""The ROI-aware report as markdown: the tables of ``roi_report``'s JSON, numbers at three
decimals with their 95 % intervals (or, where too many resamples left the metric undefined, why
the interval is not shown), procedures that read test annotations flagged in every row, the
population scored said in words, every number on test images the encoder was pretrained on
marked, every ROC AUC and PR AUC not shown better than chance marked "(at chance)", a headline
that says which models are at chance (and, when all are, that the report shows the machinery
only), and ROI-aware against plain only as far as a paired interval supports it."""

from __future__ import annotations

import math

from vismae.data.manifest import VIEW_NAMES
from vismae.experiments.roi_aware.rules import ANNOTATION_WARNING, NORMAL_LABEL, POPULATIONS
from vismae.metrics import CLASSIFICATION_METRICS, UNRELIABLE_UNDEFINED_SHARE, interval_problem, undefined_share
from vismae.models.formats.vismae_export import SEEN_IN_PRETRAINING, seen_mark, seen_warning

AT_CHANCE = "(at chance)"
METRIC_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1",
                 "f_sens_spec": "F(Se, Sp)", "accuracy": "Accuracy", "roc_auc": "ROC AUC", "pr_auc": "PR AUC"}  # fmt: skip


def fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def fmt_interval(entry: dict) -> str:
    """``0.930 (0.880-0.960)``: the value and its 95 % interval; ``1.000 (interval unreliable:
    undefined in 36 % of resamples)`` where it rests on too few patients of a class (the row's
    n and positives say how few); either followed by ``(at chance)`` where the entry is flagged
    so (a ranking metric not shown better than chance)."""
    if math.isnan(entry["value"]):
        return "n/a"
    if interval_problem(entry):
        text = f"{fmt(entry['value'])} (interval unreliable: undefined in {100 * undefined_share(entry):.0f} % of resamples)"
    else:
        text = f"{fmt(entry['value'])} ({fmt(entry['low'])}-{fmt(entry['high'])})"
    return text + (f" {AT_CHANCE}" if entry.get("at_chance") else "")


def fmt_spread(stats: dict) -> str:
    """``0.930 ± 0.010 (0.920-0.940)``: mean ± standard deviation (min-max) across seeds, and
    for a ranking metric in how many seeds it is at chance."""
    if math.isnan(stats["mean"]):
        return "n/a"
    return f"{fmt(stats['mean'])} ± {fmt(stats['std'])} ({fmt(stats['min'])}-{fmt(stats['max'])})" + seeds_chance_mark(stats)


def seeds_chance_mark(flags: dict) -> str:
    """`` (at chance)`` where a metric is at chance in every seed that scored it, `` (at chance
    in 1 of 2 seeds)`` where in some, nothing where in none (or for a metric without a chance
    level: no flags)."""
    count, seeds = flags.get("seeds_at_chance") or 0, flags.get("n") or 0
    if not count:
        return ""
    return f" {AT_CHANCE}" if count == seeds else f" (at chance in {count} of {seeds} seeds)"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _marked(title: str, mark: str) -> str:
    return f"{title} {mark}" if mark else title


def results_table(results: list[dict], mark: str = "") -> str:
    """``mark`` follows every procedure's title (the test images seen in pretraining)."""
    header = ["Seed", "Procedure", "Scope", "n", "Positives"] + [METRIC_TITLES[m] for m in CLASSIFICATION_METRICS]
    rows = [
        [row["seed"], _marked(row["title"], mark), row["scope"], row["n"], row["positives"]]
        + [fmt_interval(row["metrics"][m]) for m in CLASSIFICATION_METRICS]
        for row in results
    ]
    return _table(header, rows)


def summary_table(summary: list[dict], mark: str = "") -> str:
    header = ["Procedure", "Scope", "Seeds"] + [METRIC_TITLES[m] for m in CLASSIFICATION_METRICS]
    rows = [
        [_marked(row["title"], mark), row["scope"], len(row["seeds"])] + [fmt_spread(row["metrics"][m]) for m in CLASSIFICATION_METRICS]
        for row in summary
    ]
    return _table(header, rows)


def comparison_table(comparison: dict, mark: str = "") -> str:
    """The paper's rows and ours; ``mark`` follows our procedures' titles."""
    header = ["Source", "Procedure"] + [METRIC_TITLES[m] for m in CLASSIFICATION_METRICS]
    rows = []
    for entry in comparison["published"] + comparison["ours"]:
        metrics, chance = entry["metrics"], entry.get("chance") or {}
        ours = entry in comparison["ours"]
        cells = [fmt(metrics[m]) + seeds_chance_mark(chance.get(m, {})) if m in metrics else "not reported" for m in CLASSIFICATION_METRICS]
        rows.append([entry["source"], _marked(entry["title"], mark if ours else "")] + cells)
    return _table(header, rows)


def headline_lines(headline: dict | None) -> list[str]:
    """The first thing the report says: whether its models score above chance at all."""
    if not headline or not headline["procedures"]:
        return []
    if headline["every_model_at_chance"]:
        return [
            "**Headline: every model scores at chance on this data: this report shows the machinery only, not the method.** "
            "No model's merged ROC AUC is shown better than chance in any seed: each 95 % interval reaches down to 0.5 "
            "(or is unreliable). The annotation-only floor scores no pixels and is not counted here."
        ]
    at_chance = [entry for entry in headline["procedures"].values() if entry["seeds_at_chance"]]
    if not at_chance:
        return ["**Headline: every model's merged ROC AUC is above chance**: its 95 % interval lies above 0.5 in every seed."]
    named = "; ".join(entry["title"] + _which_seeds(entry) for entry in at_chance)
    return [
        f"**Headline: at chance on this data** (merged ROC AUC whose 95 % interval reaches down to 0.5, or is "
        f"unreliable): {named}. Every other merged ROC AUC of a model is above chance."
    ]


def _which_seeds(entry: dict) -> str:
    """Nothing where a procedure is at chance in all its seeds, else in which."""
    if entry["seeds_at_chance"] == entry["seeds"]:
        return ""
    seeds = ", ".join(str(seed) for seed in entry["seeds_at_chance"])
    return f" (seed{'s' if len(entry['seeds_at_chance']) > 1 else ''} {seeds} of {len(entry['seeds'])})"


DIFFERENCE_WORDS = {"higher": "ROI-aware higher", "lower": "ROI-aware lower",
                    "not distinguishable": "not distinguishable", "undefined": "undefined"}  # fmt: skip


def differences_table(differences: list[dict], mark: str = "") -> str:
    header = ["Seed", "ROI-aware", "Plain", "ROC AUC, ROI-aware minus plain", "On these data"]
    rows = [
        [row["seed"], _marked(row["title"], mark), _marked(row["baseline_title"], mark),
         fmt_difference(row), DIFFERENCE_WORDS[row["verdict"]]]
        for row in differences
    ]  # fmt: skip
    return _table(header, rows)


def differences_lines(differences: list[dict] | None, mark: str = "") -> list[str]:
    """ROI-aware against plain, as far as a paired interval supports a difference."""
    if not differences:
        return []
    return [
        "## ROI-aware against plain (merged test set)",
        "The merged ROC AUC of each ROI-aware procedure minus the plain (comparative) one's, on the same test "
        "images, with a paired patient-bootstrap 95 % interval (both procedures' scores resampled together). "
        "A difference is claimed only where that interval excludes 0; otherwise the two are not distinguishable "
        "on these data.",
        differences_table(differences, mark),
    ]


def fmt_difference(entry: dict) -> str:
    """``+0.042 (-0.031-0.120)``: a difference, signed, with its paired 95 % interval."""
    if math.isnan(entry["value"]):
        return "n/a"
    if interval_problem(entry):
        return f"{_signed(entry['value'])} (interval unreliable: undefined in {100 * undefined_share(entry):.0f} % of resamples)"
    return f"{_signed(entry['value'])} ({_signed(entry['low'])} to {_signed(entry['high'])})"


def _signed(value: float) -> str:
    return f"{round(value, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000" for a difference that rounds to none


def groups_table(groups: list[dict]) -> str:
    header = ["Group", "Training images", "Training malignant", "Validation images", "Validation malignant", "Served by", "Why"]
    rows = [
        [g["group"], g["train_images"], g["train_positives"], g["val_images"], g["val_positives"],
         g["model"] + (f" (constant {fmt(g['prevalence'])})" if g["rule"] == "constant" else ""), g["reason"] or "trained alone"]
        for g in groups
    ]  # fmt: skip
    return _table(header, rows)


def composition_lines(data: dict) -> list[str]:
    lines = []
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        part = data[split]
        with_roi, without = part["with_roi"], part["without_roi"]
        lines.append(
            f"- {split}: {part['images']} images of {part['patients']} patients, {part['malignant']} malignant; "
            f"with ROI {with_roi['images']} (P(malignant) = {fmt(with_roi['p_malignant'])}), "
            f"without ROI {without['images']} (P(malignant) = {fmt(without['p_malignant'])})"
        )
    return lines


def population_lines(experiment: dict, data: dict) -> list[str]:
    """Which test images the numbers are of, in words: the paper's population always, the
    screening population where the experiment scored it."""
    left_out = (data.get("normal_left_out") or {}).get("test")
    count = f" (here {left_out} test images)" if left_out is not None else ""
    lines = [
        f"Population: {POPULATIONS['paper']}{count}. A deployed model does not get to assume this: it reads every "
        "screening image, most of them normal, so these numbers are the paper's population's, not a screening "
        "programme's."
    ]
    if experiment.get("population") == "screening":
        lines.append(
            f"Screening population (population: screening): the deployable procedure is scored a second time on "
            f"{POPULATIONS['screening']}{f' ({left_out} added)' if left_out is not None else ''}; its rows stand beside "
            "the paper's population's. Its router and classifiers are the same models, trained on benign and "
            f"malignant images only; the {NORMAL_LABEL} images are only scored."
        )
    else:
        lines.append(f"(population: screening scores the deployable procedure with the {NORMAL_LABEL} test images added as negatives too.)")
    return lines


def seen_lines(experiment: dict, data: dict) -> tuple[list[str], str]:
    """(the warning, the mark of every number) where the encoder was pretrained on test images."""
    seen = data.get(SEEN_IN_PRETRAINING)
    if not seen:
        return [], ""
    warning = seen_warning(seen, data.get("test_images", seen), experiment["init"])
    return [f"{warning}. Every number below is marked {seen_mark(seen)}."], seen_mark(seen)


def router_lines(routers: dict) -> list[str]:
    def how(chosen_on: str) -> str:  # where it was chosen, or that the recipe fixed it
        return chosen_on if chosen_on.startswith("fixed") else f"chosen on {chosen_on}"

    return [
        f"- seed {seed}: {router['kind']}, ROI present where its score >= {router['threshold']:.4g} "
        f"(threshold {how(router['chosen_on'])})"
        for seed, router in routers.items()
    ]


def recipe_lines(recipe: dict | None) -> list[str]:
    """The recipe that trained every model, in words: what tells two runs of one dataset apart."""
    if not recipe:
        return []
    size = "the cache's" if recipe["size"] is None else f"{recipe['size']} px"
    return [
        f"Recipe **{recipe['name']}**: backbone {recipe['backbone']}, {recipe['loss']}, decision threshold "
        f"{recipe['threshold']}, peak lr {recipe['lr']:g}, {recipe['epochs']} epochs, input size {size}."
    ]


def markdown(report: dict) -> str:
    experiment = report["experiment"]
    results, summary = report["results"], report["summary"]
    recipe = experiment.get("recipe")  # reports written before recipes were named have none
    by_task = lambda rows, task: [row for row in rows if row["task"] == task]  # noqa: E731
    by_scope = lambda rows, scopes: [row for row in rows if row["scope"] in scopes]  # noqa: E731
    warning, mark = seen_lines(experiment, report["data"])
    parts = [
        "# ROI-aware benign/malignant classification" + (f": {recipe['name']} recipe" if recipe else ""),
        *headline_lines(report.get("headline")),
        *recipe_lines(recipe),
        f"Manifest `{experiment['manifest']}`, encoder `{experiment['init']}`, seeds {experiment['seeds']}, "
        f"router: {experiment['router']}, small groups: {experiment['small_groups']}.",
        f"Procedures marked [{ANNOTATION_WARNING}] route or score each test image by its annotated ROI: "
        "a deployed model never has that information. The deployable procedure routes by a model trained "
        "on the training split. Threshold metrics count each image's decision at the threshold of the model "
        "that scored it; AUCs rank the merged scores. Intervals: patient-level bootstrap, 95 %; where more than "
        f"{100 * UNRELIABLE_UNDEFINED_SHARE:g} % of the resamples left a metric undefined (too few malignant or benign "
        "patients), its interval is marked unreliable instead of given. A ROC AUC or PR AUC marked "
        f"{AT_CHANCE} is not shown better than chance: its 95 % interval reaches down to the chance level (ROC AUC "
        "0.5, PR AUC the share of positives) or is unreliable. F(Se, Sp) is the harmonic mean of sensitivity "
        "and specificity, the paper's F-score.",
        *population_lines(experiment, report["data"]),
        *warning,
        "## The data before any model",
        "\n".join(composition_lines(report["data"])),
    ]
    if report.get("paper"):
        comparison = report["paper"]
        published = comparison["published_test_set"]
        parts += [
            "## Beside the paper (merged test set)",
            f"{comparison['citation']}. Published test set (Table {published['table']}): {published['n']} images, "
            f"{published['positives']} malignant. The paper reports no intervals, no F1 and no AUC. "
            + comparison.get("f_score", "")
            + f" Its F-score stands in column {METRIC_TITLES['f_sens_spec']}, beside ours. Whether ROI-aware differs "
            "from plain on our data is not read off these columns but from the paired comparison below (ROI-aware "
            "against plain).",
            comparison_table(comparison, mark),
        ]
    for title, scopes in (("Merged test set", ("merged",)), ("Per view", VIEW_NAMES)):
        parts += [f"## {title}", results_table(by_scope(by_task(results, "malignancy"), scopes), mark)]
        if summary:
            parts += ["Across seeds, mean ± sd (min-max):", summary_table(by_scope(by_task(summary, "malignancy"), scopes), mark)]
        if title == "Merged test set":
            parts += differences_lines(report.get("differences"), mark)
    parts += [
        "## Router (ROI presence on the test set)",
        "\n".join(router_lines(report["routers"])),
        "Routing accuracy is the accuracy column; scored against the test annotations after routing.",
        results_table(by_task(results, "roi_presence"), mark),
    ]
    if summary:
        parts += ["Across seeds, mean ± sd (min-max):", summary_table(by_task(summary, "roi_presence"), mark)]
    parts += ["## Groups and the small-group rule", groups_table(report["groups"])]
    return "\n\n".join(parts) + "\n"
