"""`vismae study` end to end on tiny synthetic data: the pool and the labelled set are other
patients, each pretraining seed gives its own encoder, both sweeps compare them all with random
init on the same subsets, the pooled numbers are the runs' own scores averaged, and a rerun
trains nothing again."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file
from sklearn.metrics import roc_auc_score

from vismae.cli import main
from vismae.config import ConfigError
from vismae.experiments.label_efficiency.study import run_study
from vismae.experiments.label_efficiency.study_config import load_study_config

pytestmark = pytest.mark.slow

TINY = [
    "synthetic.labelled_patients=24",
    "synthetic.pool_formats=[vindr]",
    "synthetic.pool_patients=8",
    "pretrain=pretrain/tiny-test.yaml",
    "pretrain_seeds=[0,1]",
    "pretrain_overrides=[train.epochs=1,log.recon_every_epochs=0]",
    "sweep=sweep/demo.yaml",
    "sweep_overrides=['fractions=[0.5,1.0]','seeds=[0]',validation=full,finetune.train.epochs=1,finetune.eval.n_boot=20]",
    "n_boot=100",
]


def scored_auc(run_dir) -> float:
    table = pd.read_csv(run_dir / "predictions.csv").query("split == 'test'")
    return roc_auc_score(table["target"], table["probability"])


def test_a_study_pools_its_pretraining_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--config", "configs/study/synthetic.yaml", f"output_dir={out}", *TINY]) == 0
    assert "## probe" in capsys.readouterr().out

    # The pool holds none of the labelled set's patients or images.
    labelled = pd.read_csv(out / "data" / "labelled" / "cache" / "manifest.csv")
    pretrained_on = pd.read_csv(out / "pretrain" / "s0" / "pretraining_images.csv")
    assert not set(pretrained_on["image_id"]) & set(labelled["image_id"])
    assert len(pretrained_on) > 0

    # One encoder per pretraining seed, and they differ.
    first, second = (load_file(out / "pretrain" / f"s{seed}" / "encoder.safetensors") for seed in (0, 1))
    assert first.keys() == second.keys()
    assert any(not np.array_equal(first[name], second[name]) for name in first)

    table = pd.read_csv(out / "report" / "study.csv")
    assert sorted(set(table["method"])) == ["finetune", "probe"] and sorted(set(table["fraction"])) == [0.5, 1.0]
    for method in ("probe", "finetune"):
        plan = json.loads((out / method / "plan.json").read_text())
        assert set(plan["inits"]) == {"pretrained-s0", "pretrained-s1", "random"} and plan["method"] == method
        for fraction in (0.5, 1.0):
            row = table[(table["method"] == method) & (table["fraction"] == fraction)].iloc[0]
            runs = {init: scored_auc(out / method / "runs" / f"f{fraction:g}_init-{init}_s0") for init in plan["inits"]}
            # The pooled means are the runs' own test AUCs, averaged by side.
            assert row["pretrained"] == pytest.approx((runs["pretrained-s0"] + runs["pretrained-s1"]) / 2)
            assert row["random"] == pytest.approx(runs["random"])
            assert row["difference"] == pytest.approx(row["pretrained"] - row["random"])
            assert row["difference_low"] <= row["difference"] <= row["difference_high"]
            assert (row["pretrained_runs"], row["random_runs"]) == (2, 1)
    assert (out / "report" / "study.png").is_file()
    assert "pooled" in (out / "report" / "study.md").read_text()

    # A rerun trains nothing again and rebuilds the same report.
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("*/runs/*/result.json")}
    stamps.update({path: path.stat().st_mtime_ns for path in out.glob("pretrain/s*/encoder.safetensors")})
    config = load_study_config("configs/study/synthetic.yaml", [f"output_dir={out}", *TINY])
    run_study(config)
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    pd.testing.assert_frame_equal(pd.read_csv(out / "report" / "study.csv"), table)


def test_a_study_config_names_what_is_wrong():
    with pytest.raises(ConfigError, match="methods"):
        load_study_config(None, ["methods=[probe,linear]"]).validate()
    with pytest.raises(ConfigError, match="pool_seed"):
        load_study_config(None, ["synthetic.pool_seed=2", "synthetic.labelled_seed=2"]).validate()
    with pytest.raises(ConfigError, match="no phantom format"):
        load_study_config(None, ["synthetic.pool_formats=[vindr,dicom]"]).validate()


@pytest.mark.parametrize("name", ["synthetic.yaml", "demo.yaml"])
def test_a_shipped_study_makes_valid_pretraining_and_sweep_configs(name, tmp_path):
    from vismae.experiments.label_efficiency.study import pretrain_config, sweep_config
    from vismae.shipped_configs import shipped_config

    config = load_study_config(shipped_config("study", name), [f"output_dir={tmp_path}"])
    config.validate()
    pool = [str(tmp_path / "pool.csv")]
    pretraining = pretrain_config(config, pool, seed=3, folder=tmp_path)
    assert (pretraining.train.seed, pretraining.data.manifests) == (3, pool)
    inits = {"pretrained-s3": str(tmp_path / "encoder.safetensors"), "random": f"random:{pretraining.model.preset}"}
    for method in config.methods:
        sweep = sweep_config(config, method, str(tmp_path / "labelled.csv"), inits, tmp_path)
        assert (sweep.method, sweep.inits, sweep.baseline) == (method, inits, "random")
        assert sweep.fractions[-1] == 1.0 and len(sweep.seeds) >= 3  # the yardstick: 3 seeds or more
