"""Config loading, overrides, type checks, renamed keys, and the resume check on a saved config."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from vismae.config import (
    ConfigError,
    PretrainConfig,
    differing_keys,
    flatten,
    load_config,
    load_pretrain_config,
    parse_override,
    read_yaml,
    to_dict,
)
from vismae.engine.finetune_config import load_finetune_config
from vismae.experiments.label_efficiency.config import load_sweep_config
from vismae.experiments.label_efficiency.study_config import load_study_config
from vismae.experiments.roi_aware.config import load_roi_aware_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "pretrain"
LOADERS = {"pretrain": load_pretrain_config, "finetune": load_finetune_config, "roi_aware": load_roi_aware_config, "sweep": load_sweep_config,
           "study": load_study_config}  # fmt: skip
# Every YAML file shipped, wherever the repository keeps them (configs/, the package's own copy).
SHIPPED = sorted({path.resolve() for root in (REPO / "configs", REPO / "vismae" / "configs") for path in root.glob("*/*.yaml")})


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
    assert parse_override("a=1e-3") == (["a"], 0.001)
    assert parse_override("a=random:tiny") == (["a"], "random:tiny")


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


# -- every shipped config, and one test per kind of error message ------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_shipped_config_loads_with_its_schema(path):
    overrides = ["data.manifests=[x.csv]"] if path.name == "tiny-test.yaml" else []
    config = LOADERS[path.parent.name](path, overrides)
    loaded = flatten(to_dict(config))
    for key, value in flatten(read_yaml(path)).items():  # every key of the file arrives, as written
        if not (overrides and key == "data.manifests"):
            assert loaded[key] == value, key


def test_an_unknown_key_in_a_file_is_named_with_the_closest_one(tmp_path):
    path = write_config(tmp_path, MINIMAL + "log: {every_step: 5}\n")
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(path)
    assert str(error.value) == (
        f"{path}: unknown key 'log.every_step' (did you mean 'log.every_steps'?); "
        "keys of log: every_steps, recon_every_epochs, recon_images"
    )


def test_a_wrong_type_names_the_file_or_the_override_it_comes_from(tmp_path):
    path = write_config(tmp_path, MINIMAL.replace("batch_size: 4", "batch_size: four"))
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(path)
    assert str(error.value) == f"{path}: train.batch_size: expected an integer, got 'four'"
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(write_config(tmp_path, MINIMAL), ["log.every_steps=5", "train.seed=[1]"])
    assert str(error.value) == "override 'train.seed=[1]': train.seed: expected an integer, got [1]"


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("train: 3\n", "train: expected a mapping of TrainSection keys, got 3"),
        ("train:\n", "train: expected a mapping of TrainSection keys, got None"),
        ("data: {manifests: [[a.csv]]}\n", "data.manifests[0]: expected a string, got ['a.csv']"),
        ("data: {manifests: [a.csv], size: [[64]]}\n", "data.size[0]: expected an integer, got [64]"),
        ("train: {betas: {a: 1}}\n", "'train.betas' is a value, not a section: expected a list of a number"),
        ("output_dir: ${nowhere}\n", "output_dir: Interpolation key 'nowhere' not found"),
    ],
)
def test_a_misshapen_value_is_named(tmp_path, yaml_text, message):
    path = write_config(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(path)
    assert str(error.value) == f"{path}: {message}"


def test_a_bad_value_names_the_file_and_the_rule(tmp_path):
    path = write_config(tmp_path, MINIMAL.replace("{preset: tiny}", "{preset: tiny, mask_ratio: 1.5}"))
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(path)
    assert str(error.value) == f"{path}: model.mask_ratio must be in (0, 1), got 1.5"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs", "override 'train.epochs' is not of the form key=value (for example train.max_steps=20)"),
        ("=3", "override '=3' is not of the form key=value"),
        ("train..epochs=3", "override 'train..epochs=3' is not of the form key=value"),
        ("train.betas=[0.9,", "override 'train.betas=[0.9,': the value is not valid YAML"),
    ],
)
def test_bad_override_syntax_is_named(tmp_path, override, message):
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(write_config(tmp_path, MINIMAL), [override])
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("- train\n- data\n", "expected a mapping of sections at the top level (section: {key: value}), got a list"),
        ("3\n", "expected a mapping of sections at the top level (section: {key: value}), got a single value"),
        ("train: [1,\n", "not valid YAML"),
        ("train: {seed: 1}\ntrain: {seed: 2}\n", "not valid YAML (while constructing a mapping"),  # a repeated section
    ],
)
def test_a_file_that_is_not_a_mapping_of_sections_is_refused(tmp_path, yaml_text, message):
    path = write_config(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as error:
        load_pretrain_config(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_an_override_of_a_mapping_replaces_it(tmp_path):
    path = write_config(tmp_path, MINIMAL.replace("{preset: tiny}", "{preset: tiny, overrides: {window_size: 8}}"))
    assert load_pretrain_config(path).model.overrides == {"window_size": 8}
    assert load_pretrain_config(path, ["model.overrides={drop_path_rate: 0}"]).model.overrides == {"drop_path_rate": 0}
    assert load_pretrain_config(path, ["model.overrides.drop_path_rate=0"]).model.overrides == {"window_size": 8, "drop_path_rate": 0}


# -- renamed keys ------------------------------------------------------------------------------


@dataclass
class RenamedSection:
    steps: int = 1
    RENAMED_KEYS = {"max_iters": "steps"}  # not a field: no annotation


@dataclass
class RenamingConfig:
    name: str = "x"
    section: RenamedSection = field(default_factory=RenamedSection)
    RENAMED_KEYS = {"title": "name", "old_section": "section"}


def test_renamed_keys_are_still_read_with_a_warning(tmp_path):
    path = write_config(tmp_path, "title: a\nsection: {max_iters: 5}\n")
    with pytest.warns(FutureWarning) as caught:
        config = load_config(RenamingConfig, path)
    assert config == RenamingConfig(name="a", section=RenamedSection(steps=5))
    assert sorted(str(warning.message) for warning in caught) == [
        f"{path}: 'section.max_iters' is deprecated and read as 'section.steps'; rename it",
        f"{path}: 'title' is deprecated and read as 'name'; rename it",
    ]
    # An override under a renamed section's old name, of a renamed key: both renames apply.
    with pytest.warns(FutureWarning, match="override 'old_section.max_iters=7'"):
        assert load_config(RenamingConfig, None, ["old_section.max_iters=7"]).section.steps == 7


def test_new_key_names_load_without_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = load_config(RenamingConfig, write_config(tmp_path, "name: a\nsection: {steps: 5}\n"), ["section.steps=6"])
    assert config == RenamingConfig(name="a", section=RenamedSection(steps=6))
