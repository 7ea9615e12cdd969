"""Config loading, overrides, type checks, and the resume check on a saved config."""

from pathlib import Path

import pytest
import yaml

from vismae.config import (
    ConfigError,
    PretrainConfig,
    apply_overrides,
    differing_keys,
    load_pretrain_config,
    parse_override,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "pretrain"


def write_config(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


MINIMAL = """
model: {preset: tiny}
data: {manifests: [cache/manifest.csv], size: 64}
train: {batch_size: 4, mixed_precision: no}
"""


@pytest.mark.parametrize("name", ["vismae", "mammo384", "demo", "tiny-test"])
def test_shipped_configs_load(name):
    overrides = ["data.manifests=[x.csv]"] if name == "tiny-test" else []
    config = load_pretrain_config(CONFIGS / f"{name}.yaml", overrides)
    assert config.data.manifests


def test_vismae_recipe_reaches_the_paper_values_on_eight_gpus():
    train = load_pretrain_config(CONFIGS / "vismae.yaml").train
    effective_batch = train.batch_size * 8 * train.grad_accum_steps
    assert effective_batch == 640
    assert train.base_lr * effective_batch / 256 == pytest.approx(1e-3)
    assert train.betas == [0.9, 0.95] and train.weight_decay == 0.05
    assert (train.warmup_epochs, train.epochs) == (10, 800)


def test_yaml_values_are_typed_and_coerced(tmp_path):
    config = load_pretrain_config(write_config(tmp_path, MINIMAL + "log: {every_steps: 7}\n"))
    assert config.model.preset == "tiny"
    assert config.train.mixed_precision == "no"  # YAML 1.1 reads a bare `no` as false
    assert config.data.image_size == (64, 64)
    assert config.log.every_steps == 7
    assert config.train.betas == [0.9, 0.95]  # defaults fill what the file leaves out


def test_overrides_set_nested_keys_with_yaml_values(tmp_path):
    path = write_config(tmp_path, MINIMAL)
    config = load_pretrain_config(
        path,
        [
            "train.max_steps=20",
            "train.base_lr=1e-3",  # YAML reads 1e-3 as a string; a float field accepts it
            "data.manifests=[a.csv,b.csv]",
            "data.size=[96,64]",
            "model.overrides.drop_path_rate=0",
            "train.clip_grad=null",
            "output_dir=runs/x",
        ],
    )
    assert config.train.max_steps == 20
    assert config.train.base_lr == pytest.approx(1e-3)
    assert config.data.manifests == ["a.csv", "b.csv"]
    assert config.data.image_size == (96, 64)
    assert config.model.overrides == {"drop_path_rate": 0}
    assert config.train.clip_grad is None
    assert config.output_dir == "runs/x"


def test_a_single_item_is_accepted_where_a_list_is_expected(tmp_path):
    config = load_pretrain_config(write_config(tmp_path, MINIMAL), ["data.manifests=only.csv"])
    assert config.data.manifests == ["only.csv"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batchsize=4", "unknown key 'train.batchsize' (did you mean 'train.batch_size'?)"),
        ("trian.epochs=3", "unknown key 'trian' (did you mean 'train'?)"),
        ("train.batch_size=four", "train.batch_size: expected an integer, got 'four'"),
        ("train.batch_size=2.5", "train.batch_size: expected an integer"),
        ("train.mixed_precision=fp8", "train.mixed_precision: expected one of 'no', 'bf16', 'fp16'"),
        ("model.norm_pix_loss=maybe", "model.norm_pix_loss: expected true or false"),
        ("data.size=[64,abc]", "data.size: expected an integer or a list of an integer"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("model.mask_ratio=1.5", "model.mask_ratio must be in (0, 1)"),
        ("train.betas=[0.9]", "train.betas must be two numbers"),
        ("data.splits=[train,holdout]", "data.splits must be some of train, val, test"),
        ("train.batch_size.value=3", "'train.batch_size' is a value, not a section"),
        ("train.epochs", "is not of the form key=value"),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path, override, message):
    path = write_config(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(path, [override])
    assert message in str(error.value)


def test_a_missing_manifest_list_is_refused(tmp_path):
    path = write_config(tmp_path, "model: {preset: tiny}\n")
    with pytest.raises(ConfigError, match="data.manifests: give at least one"):
        load_pretrain_config(path)


def test_a_missing_config_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_pretrain_config(tmp_path / "absent.yaml")


def test_parse_override_reads_yaml():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=") == (["a"], None)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_differing_keys_treats_tuples_as_lists():
    old = {"train": {"epochs": 3, "betas": [0.9, 0.95]}, "model": {"overrides": {}}}
    new = {"train": {"epochs": 4, "betas": (0.9, 0.95)}, "model": {"overrides": {"window_size": 8}}}
    assert differing_keys(old, new) == ["model.overrides", "model.overrides.window_size", "train.epochs"]


def test_to_dict_round_trips_through_yaml(tmp_path):
    config = load_pretrain_config(write_config(tmp_path, MINIMAL), ["data.size=[96,64]"])
    path = tmp_path / "saved.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert load_pretrain_config(path) == config


def test_absolute_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_pretrain_config(write_config(tmp_path, MINIMAL), ["output_dir=runs/a", "init=w/encoder.json"])
    absolute = config.with_absolute_paths()
    assert absolute.output_dir == str(tmp_path / "runs" / "a")
    assert absolute.data.manifests == [str(tmp_path / "cache" / "manifest.csv")]
    assert absolute.init == str(tmp_path / "w" / "encoder.json")


# -- the resume check on a run folder's saved config -------------------------------------------


def saved_run(tmp_path, config: PretrainConfig) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    return run_dir


def test_resume_accepts_a_changed_run_length(tmp_path):
    from vismae.engine.pretrain import check_saved_config

    base = load_pretrain_config(write_config(tmp_path, MINIMAL))
    run_dir = saved_run(tmp_path, base)
    longer = load_pretrain_config(write_config(tmp_path, MINIMAL), ["train.epochs=900", "train.max_steps=5"])
    check_saved_config(run_dir, longer, allow_config_change=False)  # no error


def test_resume_refuses_other_changes_and_lists_them(tmp_path):
    from vismae.engine.pretrain import check_saved_config

    base = load_pretrain_config(write_config(tmp_path, MINIMAL))
    run_dir = saved_run(tmp_path, base)
    changed = load_pretrain_config(
        write_config(tmp_path, MINIMAL), ["train.base_lr=0.1", "model.mask_ratio=0.5", "train.epochs=9"]
    )
    with pytest.raises(ConfigError) as error:
        check_saved_config(run_dir, changed, allow_config_change=False)
    message = str(error.value)
    assert "model.mask_ratio: 0.75 -> 0.5" in message and "train.base_lr" in message
    assert "train.epochs" not in message.split("(")[1].split(")")[0]  # the run length is not a difference
    assert "--allow-config-change" in message
    check_saved_config(run_dir, changed, allow_config_change=True)  # allowed explicitly
