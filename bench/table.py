"""One Markdown table from the JSON lines of bench/pretrain.py and bench/loader.py (files or stdin).

    python bench/pretrain.py ... >> results.jsonl; python bench/loader.py ... >> results.jsonl
    python bench/table.py results.jsonl

A line may also be ``{"label": ..., "error": ...}`` for a measurement that failed or was skipped;
it gets its row too, so that a table always shows every cell that was asked for. Lines that are
not JSON objects (log output) are ignored.
"""

from __future__ import annotations

import argparse
import json
import sys

COLUMNS = ("cell", "path", "precision", "compile", "size", "act. ckpt", "batch", "img/s", "GFLOP/img", "MFU", "peak MB", "note")


def read_records(lines) -> list[dict]:
    records = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and ("benchmark" in record or "error" in record):
            records.append(record)
    return records


def _size(config: dict) -> str:
    height, width = config["img_size"]
    return str(height) if height == width else f"{height}x{width}"


def _number(value, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _rate(value) -> str:
    """A rate with its significant digits, from compile-bound 0.0123 to 12,345."""
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def row(record: dict) -> list[str]:
    label = record.get("label") or ""
    if "error" in record:
        return [label] + [""] * (len(COLUMNS) - 2) + [record["error"]]
    config = record["config"]
    if record["benchmark"] == "loader":
        note = f"{_rate(record['images_per_s_per_worker'])} img/s per worker"
        return [label, f"loader, {config['workers']} workers", "", "", _size(config), "", str(config["batch"]),
                _rate(record["images_per_s"]), "", "", "", note]  # fmt: skip
    path = ("sparse" if config["sparse"] else "dense") + f", {config['decoder']}"
    note = f"{config['preset']}, window {config['window_size']}, {config['mask_unit_px']} px units"
    if record.get("peak_source") and not record.get("mfu"):
        note += f"; {record['peak_source']}"
    mfu = record.get("mfu")
    return [
        label,
        path,
        config["precision"],
        str(config["compile"]) if config["compile"] else "off",
        _size(config),
        "on" if config["grad_checkpointing"] else "off",
        str(config["batch"]),
        _rate(record["images_per_s"]),
        _number(record["gflops_per_image"], 1),
        "" if mfu is None else f"{100 * mfu:.1f} %",
        _number(record["peak_memory_mb"], 0),
        note,
    ]


def machines(records: list[dict]) -> list[str]:
    """The devices the figures come from, each named once."""
    seen = []
    for record in records:
        machine = record.get("machine")
        if not machine:
            continue
        device = machine.get("gpu") or f"{machine['cpu']} ({machine['cores']} cores)"
        text = f"{device}; torch {machine['torch']}" + (f", CUDA {machine['cuda']}" if machine.get("cuda") else "")
        if text not in seen:
            seen.append(text)
    return seen


def markdown(records: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(record)) + " |" for record in records]
    devices = machines(records)
    if devices:
        lines += ["", "Device: " + "; ".join(devices)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="files of JSON lines (default: stdin)")
    args = parser.parse_args(argv)
    lines = []
    if args.files:
        for name in args.files:
            with open(name) as handle:
                lines += handle.readlines()
    else:
        lines = sys.stdin.readlines()
    records = read_records(lines)
    if not records:
        print("no benchmark records found", file=sys.stderr)
        return 1
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
