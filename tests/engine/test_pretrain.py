"""End to end on the tiny model: the loss falls, the run folder is complete, a resumed run
equals an uninterrupted one, the export reloads, a non-finite loss stops the run cleanly."""

import importlib.util
import json
import re

import cv2
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState, GradientState
from held_folder import held_by_another_process
from safetensors.torch import load_file
from tiny_pretrain import REPO, TINY_CONFIG, tiny_config
from vismae import run_folder
from vismae.config import ConfigError, load_pretrain_config, to_dict
from vismae.engine import checkpoint
from vismae.engine.pretrain import build_model, run
from vismae.engine.train_step import NonFiniteLossError
from vismae.models.formats.vismae_export import ENCODER_WEIGHTS, PRETRAINING_IMAGES, images_seen_in_pretraining
from vismae.models.mae import SwinMAE
from vismae.models.weights import load_encoder
from vismae.synthetic.cache import CacheImage


def load_entry_point():
    """The repository's pretrain.py, imported from its path (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("pretrain_entry", REPO / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest(pretrain_cache):
    return pretrain_cache


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def final_weights(run_dir):
    return load_file(str(run_dir / "debug" / "rank0.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, manifest):
    """A short run that learns: 32 images, batch 8, 6 epochs = 24 steps."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    config = tiny_config(
        manifest, run_dir, **{"train.epochs": 6, "train.lr": 3e-3, "checkpoint.every_epochs": 3, "debug.rank_weights": "true"}
    )
    run(config)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return run_dir


@pytest.mark.slow
def test_the_loss_falls_clearly(trained):
    history = losses(trained)
    assert len(history) == 24
    first, last = sum(history[:3]) / 3, sum(history[-6:]) / 6
    assert last < 0.7 * first, history


@pytest.mark.slow
def test_the_run_folder_holds_everything(trained):
    names = {path.name for path in trained.iterdir()}
    assert {"config.yaml", "log.jsonl", "metrics.json", "encoder.safetensors", "encoder.json", "reconstruction.png"} <= names
    assert [p.name for p in sorted((trained / "checkpoints").iterdir())] == ["step_0000012", "step_0000024"]
    assert sorted(p.name for p in (trained / "recon").iterdir()) == ["epoch_0002.png", "epoch_0004.png", "epoch_0006.png"]
    assert list((trained / "tensorboard").rglob("events.out.tfevents.*"))
    grid = cv2.imread(str(trained / "reconstruction.png"))
    assert grid is not None and grid.shape[0] > 200 and grid.shape[1] > 300

    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["step"] == 24 and metrics["images_seen"] == 24 * 8
    assert metrics["peak_lr"] == pytest.approx(3e-3)
    assert [record["loss"] for record in metrics["history"]] == losses(trained)
    assert metrics["final_loss"] == losses(trained)[-1]

    records = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == list(range(1, 25))
    assert records[0]["lr"] == 0.0 and records[4]["lr"] == pytest.approx(3e-3)  # warmup is 1 epoch = 4 steps


@pytest.mark.slow
def test_the_exported_encoder_is_the_trained_one(trained):
    model_weights = final_weights(trained)
    encoder = load_encoder(trained / ENCODER_WEIGHTS, verbose=False).eval()
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, model_weights[f"encoder.{name}"]), name

    config = load_pretrain_config(trained / "config.yaml")
    model = build_model(config).eval()
    model.load_state_dict(load_file(str(trained / "checkpoints" / "step_0000024" / "model.safetensors")))
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(images), model.encoder(images))
    source = json.loads((trained / "encoder.json").read_text())["source"]
    assert source["step"] == 24 and source["preset"] == "tiny"


@pytest.mark.slow
@pytest.mark.parametrize("source", ["encoder.safetensors", "."])  # the exported encoder, the run folder
def test_init_starts_the_encoder_from_trained_weights(tmp_path, manifest, trained, source):
    # max_steps=0: set up, load the starting weights, export them again untouched.
    init = trained / source
    run_dir = run(tiny_config(manifest, tmp_path / "run", **{"init": str(init), "train.max_steps": 0}))
    started = load_encoder(run_dir / ENCODER_WEIGHTS, verbose=False).state_dict()
    source = load_encoder(trained / ENCODER_WEIGHTS, verbose=False).state_dict()
    assert all(torch.equal(started[name], value) for name, value in source.items())


@pytest.mark.slow
def test_init_weights_of_another_shape_are_refused(tmp_path, manifest, trained):
    config = tiny_config(manifest, tmp_path / "run", **{"init": str(trained), "model.overrides.embed_dim": 32})
    with pytest.raises(ValueError, match="another architecture"):
        run(config)


@pytest.mark.slow
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, manifest):
    # Drop path, augmentation, gradient accumulation and a loader worker on: resuming must restore
    # the RNG, the data order mid-epoch and the accumulation phase, not only the weights.
    settings = {
        "data.num_workers": 1,
        "train.epochs": 2,
        "train.batch_size": 4,
        "train.grad_accum_steps": 2,
        "model.overrides.drop_path_rate": 0.1,
        "data.vflip_prob": 0.5,
        "data.intensity_jitter": 0.2,
        "log.recon_every_epochs": 1,
        "debug.rank_weights": "true",
    }
    whole = run(tiny_config(manifest, tmp_path / "whole", **settings))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

    # 4 steps per epoch: stop at step 3, in the middle of the first epoch, then run again.
    parts = tmp_path / "parts"
    run(tiny_config(manifest, parts, **settings, **{"train.max_steps": 3}))
    interrupted = json.loads((parts / "metrics.json").read_text())
    assert interrupted["status"] == "stopped at train.max_steps" and interrupted["step"] == 3
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    run(tiny_config(manifest, parts, **settings))

    expected, resumed = final_weights(whole), final_weights(parts)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert losses(parts) == losses(whole)  # the log was trimmed and continued, not duplicated


@pytest.mark.slow
def test_a_longer_run_extends_a_finished_one(tmp_path, manifest):
    run_dir = tmp_path / "run"
    quick = {"train.batch_size": 16, "log.recon_every_epochs": 0}  # 2 steps per epoch
    run(tiny_config(manifest, run_dir, **quick, **{"train.epochs": 1}))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    run(tiny_config(manifest, run_dir, **quick, **{"train.epochs": 2}))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["status"] == "finished"
    assert [record["step"] for record in metrics["history"]] == [1, 2, 3, 4]


def test_resuming_with_another_config_is_refused(tmp_path, manifest):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = tiny_config(manifest, run_dir).with_absolute_paths()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(first)))
    with pytest.raises(ConfigError, match="model.mask_ratio: 0.75 -> 0.5"):
        run(tiny_config(manifest, run_dir, **{"model.mask_ratio": 0.5}))
    assert not (run_dir / "checkpoints").exists()


def test_a_folder_that_a_live_run_holds_is_refused_at_once(tmp_path, manifest):
    run_dir = tmp_path / "run"
    with held_by_another_process(run_dir) as pid:
        with pytest.raises(run_folder.FolderInUseError, match=re.escape(f"{run_dir} is in use by another run (process {pid} on ")):
            run(tiny_config(manifest, run_dir))
    assert [path.name for path in run_dir.iterdir()] == [run_folder.LOCK_FILE]  # nothing written
    run(tiny_config(manifest, run_dir, **{"train.max_steps": 0}))  # the holder is gone: the folder is free


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, manifest, monkeypatch):
    real_forward = SwinMAE.forward
    calls = {"count": 0}

    def forward_that_diverges(self, *args, **kwargs):
        output = real_forward(self, *args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 6:  # the 6th step
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(SwinMAE, "forward", forward_that_diverges)
    run_dir = tmp_path / "run"
    config = tiny_config(manifest, run_dir, **{"checkpoint.every_steps": 2, "checkpoint.keep": 5, "train.epochs": 3})
    with pytest.raises(NonFiniteLossError) as error:
        run(config)
    assert "the loss is nan at step 6" in str(error.value)
    assert "step_0000004" in str(error.value)
    assert [step for step, _ in run_folder.list_checkpoints(run_dir / "checkpoints")] == [2, 4]
    assert not (run_dir / "encoder.safetensors").exists()
    assert checkpoint.read_trainer_state(run_dir / "checkpoints" / "step_0000004")["step"] == 4


def test_the_entry_point_reports_bad_input_in_one_line(tmp_path, capsys):
    code = load_entry_point().main(["--config", str(TINY_CONFIG), "train.batch_size=many", f"output_dir={tmp_path}"])
    assert code == 2
    assert "train.batch_size: expected an integer, got 'many'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def split_cache(synthetic_cache):
    """8 images of 4 patients: two train, one val, one test."""
    images = [
        CacheImage(f"q{patient}", view=view, split=("train", "train", "val", "test")[patient])
        for patient in range(4)
        for view in ("CC", "MLO")
    ]
    return synthetic_cache(images)


def test_pretraining_sees_no_test_image_unless_asked_and_lists_what_it_saw(tmp_path, split_cache):
    # max_steps=0: set up, record the images, export; no training needed to check what was read.
    quick = {"train.max_steps": 0, "train.batch_size": 2, "log.recon_every_epochs": 0}
    test_images = ["q3_LCC", "q3_LMLO"]
    default = run(tiny_config(split_cache, tmp_path / "default", **quick))
    listed = (default / PRETRAINING_IMAGES).read_text().split()
    assert listed[0] == "image_id" and sorted(listed[1:]) == ["q0_LCC", "q0_LMLO", "q1_LCC", "q1_LMLO", "q2_LCC", "q2_LMLO"]
    source = json.loads((default / "encoder.json").read_text())["source"]
    assert source["pretraining_splits"] == ["train", "val"] and source["pretraining_images"] == 6
    # Every form of init finds the list: the run folder, the exported files, a checkpoint.
    for init in (default, default / "encoder.safetensors", default / "encoder.json", default / "checkpoints" / "step_0000000"):
        assert images_seen_in_pretraining(init, test_images) == 0, init
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

    transductive = run(tiny_config(split_cache, tmp_path / "all", **quick, **{"data.splits": "[train,val,test]"}))
    assert images_seen_in_pretraining(transductive, test_images) == 2
    assert json.loads((transductive / "encoder.json").read_text())["source"]["pretraining_images"] == 8
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

    # Pretraining further from those weights keeps what they had seen.
    continued = run(tiny_config(split_cache, tmp_path / "continued", **quick, **{"init": str(transductive / "encoder.safetensors")}))
    assert images_seen_in_pretraining(continued, test_images) == 2


def test_resuming_a_run_that_saw_test_images_says_how_to_continue_it(tmp_path, split_cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = tiny_config(split_cache, run_dir, **{"data.splits": "[train,val,test]"}).with_absolute_paths()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(old)))
    with pytest.raises(ConfigError, match=re.escape("pass data.splits=[train,val,test]")):
        run(tiny_config(split_cache, run_dir))
