"""The benchmark scripts' pieces, run in-process at tiny sizes: the table formatter, the loader
benchmark over a synthetic cache, and the pretraining benchmark's FLOP count."""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch):
    """bench/<name>.py as a module (the scripts import each other by plain name)."""
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name: str):
        return importlib.import_module(name)

    yield load
    for name in ("table", "loader", "pretrain", "machine_info", "sparse_gate"):
        module = sys.modules.get(name)
        if module is not None and Path(getattr(module, "__file__", "")).parent == BENCH:
            del sys.modules[name]


def pretrain_record(label, **config):
    base = {"preset": "vismae", "img_size": [1024, 832], "batch": 8, "precision": "bf16", "decoder": "mirror",
            "sparse": False, "mask_unit_px": 16, "compile": False, "grad_checkpointing": True, "window_size": 7}  # fmt: skip
    return {"benchmark": "pretrain", "label": label, "images_per_s": 123.456, "gflops_per_image": 551.2,
            "mfu": 0.3125, "peak_source": "H100 bf16 dense datasheet peak", "peak_memory_mb": 40960.4,
            "config": {**base, **config},
            "machine": {"cpu": "x", "cores": 16, "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.14.1", "cuda": "13.0"}}  # fmt: skip


def test_the_table_has_a_row_per_record_and_names_the_device(bench):
    table = bench("table")
    loader = {"benchmark": "loader", "label": "loader 224", "images_per_s": 800.0, "images_per_s_per_worker": 100.0,
              "config": {"img_size": [224, 224], "workers": 8, "batch": 32}}  # fmt: skip
    lines = [
        "some log output",
        json.dumps(pretrain_record("dense bf16 1024x832 ckpt")),
        json.dumps(pretrain_record("sparse bf16 224", img_size=[224, 224], sparse=True, grad_checkpointing=False,
                                   compile="inductor", mask_unit_px=32)),  # fmt: skip
        json.dumps(loader),
        json.dumps({"label": "sparse bf16 224 compiled", "error": "stopped at its 150 s limit"}),
    ]
    text = table.markdown(table.read_records(lines))
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| cell")]
    assert len(rows) == 4
    dense, sparse, loader_row, failed = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    assert dense[:8] == ["dense bf16 1024x832 ckpt", "dense, mirror", "bf16", "off", "1024x832", "on", "8", "123"]
    assert dense[8:11] == ["551.2", "31.2 %", "40,960"]
    assert sparse[1] == "sparse, mirror" and sparse[3] == "inductor" and sparse[4] == "224" and "32 px units" in sparse[11]
    assert loader_row[1] == "loader, 8 workers" and loader_row[7] == "800" and "100 img/s per worker" in loader_row[11]
    assert failed[0] == "sparse bf16 224 compiled" and failed[11] == "stopped at its 150 s limit"
    assert "Device: NVIDIA H100 80GB HBM3; torch 2.14.1, CUDA 13.0" in text


def test_the_table_refuses_input_without_records(bench, tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("not json\n")
    assert bench("table").main([str(path)]) == 1
    assert "no benchmark records" in capsys.readouterr().err


def test_the_loader_benchmark_reads_the_synthetic_cache_each_epoch(bench, tmp_path, capsys):
    loader = bench("loader")
    cache = tmp_path / "cache"
    argv = ["--size", "64x32", "--images", "10", "--batch", "4", "--workers", "0", "--epochs", "2", "--cache", str(cache)]
    assert loader.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "loader" and result["images_per_s"] > 0
    assert result["config"]["images"] == 10 and result["config"]["img_size"] == [64, 32]
    assert len(list((cache / "images").glob("*.png"))) == 10  # the cache is kept and reused
    assert loader.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["cache_build_s"] < result["cache_build_s"] + 1


def test_the_flop_count_leaves_out_checkpointing_recomputation(bench, capsys):
    """MFU counts model FLOPs: the same model with and without activation checkpointing has the same count."""
    pretrain = bench("pretrain")
    counts = {}
    for flags in ([], ["--grad-checkpointing"]):
        argv = ["--preset", "tiny", "--size", "64", "--batch", "2", "--steps", "1", "--warmup", "0", "--device", "cpu",
                "--sparse", "--window", "2", "--label", "x", "--keep-denormals", *flags]  # fmt: skip
        assert pretrain.main(argv) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["label"] == "x" and result["config"]["window_size"] == 2 and result["config"]["sparse"]
        counts[bool(flags)] = result["gflops_per_image"]
    assert counts[False] > 0 and counts[True] == counts[False]


@pytest.mark.slow
def test_the_sparse_gate_compares_the_two_paths_on_the_same_data(bench, tmp_path, capsys):
    gate = bench("sparse_gate")
    out = tmp_path / "gate"
    record = gate.main(["--out", str(out), "--seeds", "0", "1", "--epochs", "1", "--labelled-patients", "24",
                        "--pool-patients", "6", "--n-boot", "100"])  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    assert record["difference"]["value"] == pytest.approx(record["sparse"]["value"] - record["dense"]["value"], abs=2e-4)
    assert [entry["seed"] for entry in record["per_seed"]] == ["pretrained-s0", "pretrained-s1"]
    verdicts = {"sparse worse": record["difference"]["high"] < 0, "sparse better": record["difference"]["low"] > 0}
    assert record["verdict"] == next((name for name, holds in verdicts.items() if holds), "no difference shown")
    # The sparse switch is the only difference: same pool, same seeds, same model otherwise.
    for seed in (0, 1):
        configs = {path: (out / path / "pretrain" / f"s{seed}" / "config.yaml").read_text() for path in ("dense", "sparse")}
        assert "sparse: true" in configs["sparse"] and "sparse: false" in configs["dense"]
        assert configs["sparse"].replace("sparse: true", "sparse: false").replace("/sparse/", "/dense/") == configs["dense"]
        images = {path: (out / path / "pretrain" / f"s{seed}" / "pretraining_images.csv").read_text() for path in ("dense", "sparse")}
        assert images["sparse"] == images["dense"]
