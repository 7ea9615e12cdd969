"""bench/device.sh --dry-run: every cell of the GPU benchmark runs once on the CPU at tiny size,
and the table has a row for each, with a result, not an error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The cells the device benchmark promises: dense and sparse, fp32 and bf16, eager and
# compiled, 224 to 1024x832 px with and without activation checkpointing, and the loader.
CELLS = {
    "dense fp32 224": dict(path="dense", compile="off", ckpt="off"),
    "sparse fp32 224": dict(path="sparse", compile="off", ckpt="off"),
    "dense bf16 224": dict(path="dense", compile="off", ckpt="off", precision="bf16"),
    "sparse bf16 224": dict(path="sparse", compile="off", ckpt="off", precision="bf16"),
    "dense bf16 384": dict(path="dense", compile="off", ckpt="off"),
    "sparse bf16 384": dict(path="sparse", compile="off", ckpt="off"),
    "dense bf16 512": dict(path="dense", compile="off", ckpt="off"),
    "sparse bf16 512": dict(path="sparse", compile="off", ckpt="off"),
    "dense bf16 1024x832": dict(path="dense", compile="off", ckpt="off"),
    "dense bf16 1024x832 ckpt": dict(path="dense", compile="off", ckpt="on"),
    "dense bf16 1024x768 ckpt": dict(path="dense", compile="off", ckpt="on"),
    "sparse bf16 1024x768": dict(path="sparse", compile="off", ckpt="off"),
    "sparse bf16 1024x768 ckpt": dict(path="sparse", compile="off", ckpt="on"),
    "loader 224": dict(path="loader, 8 workers"),
    "loader 1024x832": dict(path="loader, 8 workers"),
    "dense bf16 224 compiled": dict(path="dense", compile="aot_eager", ckpt="off"),
    "sparse bf16 224 compiled": dict(path="sparse", compile="aot_eager", ckpt="off"),
}


@pytest.mark.slow
def test_the_dry_run_fills_every_row_of_the_table(tmp_path):
    out = tmp_path / "device.jsonl"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/device.sh", "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    header, rule, *rows = [line for line in done.stdout.splitlines() if line.startswith("|")]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    table = {}
    for line in rows:
        cells = dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|"))))
        table[cells["cell"]] = cells
    assert list(table) == list(CELLS)
    for label, expected in CELLS.items():
        cells = table[label]
        assert cells["img/s"] and float(cells["img/s"].replace(",", "")) > 0, f"{label}: {cells['note']}"
        assert cells["path"].startswith(expected["path"]), label
        if "compile" in expected:
            assert (cells["compile"], cells["act. ckpt"]) == (expected["compile"], expected["ckpt"]), label
            assert float(cells["GFLOP/img"]) > 0 and float(cells["peak MB"].replace(",", "")) > 0, label
            # bf16 where the CPU can afford it (the 224 px eager cells), fp32 elsewhere
            assert cells["precision"] == expected.get("precision", "fp32"), label
    assert "Device: " in done.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["label"] for record in records] == list(CELLS)
    sizes = {record["label"]: record["config"]["img_size"] for record in records if record["benchmark"] == "pretrain"}
    assert sizes["dense bf16 1024x832"] != [sizes["dense bf16 1024x832"][0]] * 2  # a non-square image stays so
