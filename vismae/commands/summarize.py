"""`vismae summarize`: the counts the papers report about a manifest."""

from __future__ import annotations

import json
from pathlib import Path

HEADINGS = {"with_roi": "with ROI", "without_roi": "without ROI"}
TITLES = {
    "by_split": "Images by label and split (ROI paper, Tables 1 and 3)",
    "by_roi": "Images by label and ROI presence (ROI paper, Tables 2 and 4)",
    "by_view": "Images by label and view",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "summarize",
        help="count images by split, ROI presence and view",
        description="Count a manifest's images and patients by split, ROI presence and view and label, "
        "in the layout of the ROI paper's tables.",
    )
    parser.add_argument("manifest", type=Path, help="a manifest CSV")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


def _format_table(title: str, table: dict) -> list[str]:
    """A plain-text table; the normal/unknown/all rows only when they add something."""
    rows = [row for row in table if row not in ("normal", "unknown", "all")]
    extra = [row for row in ("normal", "unknown") if table[row]["total"]]
    if extra:
        rows += extra + ["all"]
    columns = list(next(iter(table.values())))
    # A split column nobody uses (often val) is noise.
    columns = [c for c in columns if c == "total" or any(table[row][c] for row in table)]
    headings = [HEADINGS.get(c, c) for c in columns]
    width = max(9, *(len(heading) for heading in headings))
    lines = [title, " " * 10 + "".join(f"{heading:>{width + 1}}" for heading in headings)]
    for row in rows:
        lines.append(f"{row:<10}" + "".join(f"{table[row][c]:>{width + 1}}" for c in columns))
    return lines


def format_summary(summary: dict, source: str) -> str:
    datasets = ", ".join(f"{name} {n}" for name, n in summary["datasets"].items())
    patients = ", ".join(f"{split} {n}" for split, n in summary["patients_by_split"].items() if n)
    lines = [
        f"{source}: {summary['images']} images, {summary['patients']} patients ({patients}), "
        f"{summary['studies']} studies; datasets: {datasets}; image kinds: "
        + ", ".join(f"{kind} {n}" for kind, n in summary.get("image_kinds", {}).items()),
    ]
    for key, title in TITLES.items():
        lines += [""] + _format_table(title, summary[key])
    return "\n".join(lines)


def run(args) -> int:
    from vismae.data.manifest import read_manifest
    from vismae.data.summary import summarize

    summary = summarize(read_manifest(args.manifest))
    print(json.dumps(summary) if args.json else format_summary(summary, str(args.manifest)))
    return 0
