"""Run configuration: dataclass schemas filled from YAML and dotted overrides by OmegaConf.

A config file is YAML whose nesting mirrors a dataclass schema (``PretrainConfig`` below,
``FinetuneConfig``, ``RoiAwareConfig``, ``SweepConfig``). OmegaConf merges the file, then each
``key=value`` given after ``--config``, onto the schema: an unknown key or a value of the wrong
type fails at once, naming the dotted key, what was expected and what was given, instead of
hours into a run. The result is the plain dataclass, whose ``validate()`` methods check values::

    train.max_steps=20   data.manifests=[a.csv,b.csv]   model.overrides.drop_path_rate=0

A schema renames a key by listing it in a ``RENAMED_KEYS`` class attribute (old dotted key ->
new one, relative to that schema): files and overrides using the old name still load, with a
warning that names the new one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException

from vismae.io import absolute_path


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what was expected."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key  # the dotted key at fault, when there is one


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# ---------------------------------------------------------------------------------------------
# Loading: the file's keys, then each override, set in turn; the schema checks their types.


def load_config(cls, path: str | os.PathLike | None, overrides: list[str] = ()):
    """Read ``path`` (or start from the defaults), apply overrides, validate. A type error names
    the file or the override it comes from; a ``validate()`` error, the file."""
    settings = [(key, value, str(path)) for key, value in flatten(read_yaml(path)).items()] if path is not None else []
    for text in overrides:
        parts, value = parse_override(text)
        settings.append((".".join(parts), value, f"override {text!r}"))
    renamed, data, origins = renamed_keys(cls), OmegaConf.create(), []
    try:
        for key, value, source in settings:
            key = _renamed_key(key, renamed, source)
            origins.append((key, source))
            OmegaConf.update(data, key, _as_declared(cls, key, value), merge=False)
        config = from_dict(cls, OmegaConf.to_container(data))
        validate_tree(config)
        return config
    except ConfigError as error:
        sources = [source for key, source in origins if error.key and _overlap(key, error.key)]
        where = sources[-1] if sources else (str(path) if path is not None else "")
        raise ConfigError(f"{where}: {error}" if where else str(error), error.key) from None


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    except OSError:  # a bare number or boolean
        loaded = None
    if not isinstance(loaded, DictConfig):
        got = "a list" if isinstance(loaded, ListConfig) else "a single value"
        raise ConfigError(f"{path}: expected a mapping of sections at the top level (section: {{key: value}}), got {got}")
    return OmegaConf.to_container(loaded)


def parse_override(text: str) -> tuple[list[str], object]:
    """``'train.max_steps=20'`` -> (['train', 'max_steps'], 20); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {text!r} is not of the form key=value (for example train.max_steps=20)")
    try:
        return parts, OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from None


def from_dict(cls, data: dict):
    """Dataclass ``cls`` from a nested dict, every value type-checked by OmegaConf; missing keys
    keep their defaults. Values are checked against each other by ``validate_tree``."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))
    except OmegaConfBaseException as error:
        key, message = _explain(cls, error)
        raise ConfigError(message, key) from None


def validate_tree(config) -> None:
    """Call ``validate()`` on every section, those left at their defaults included."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            validate_tree(value)
    if hasattr(config, "validate"):
        config.validate()


def renamed_keys(cls, prefix: str = "") -> dict[str, str]:
    """Every old -> new dotted key of schema ``cls`` and of the sections within it."""
    table = {prefix + old: prefix + new for old, new in getattr(cls, "RENAMED_KEYS", {}).items()}
    for name, kind in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            table.update(renamed_keys(kind, f"{prefix}{name}."))
    return table


def _renamed_key(key: str, renamed: dict[str, str], source: str) -> str:
    for old, new in renamed.items():  # a section's rename comes before those of keys within it
        if key == old or key.startswith(old + "."):
            # A FutureWarning, not a DeprecationWarning: Python shows it to whoever runs the command.
            warnings.warn(f"{source}: '{old}' is deprecated and read as '{new}'; rename it", FutureWarning, stacklevel=3)
            key = new + key[len(old) :]
    return key


def _as_declared(cls, key: str, value):
    """``value`` for dotted ``key`` of schema ``cls``, with the YAML spellings that OmegaConf's
    strict nodes refuse put in the field's terms: a bare no/yes (a boolean to YAML 1.1) where a
    Literal expects the word, one item where a list is expected. A value given keys, or a
    section given a value, is refused here, where the key is known."""
    parts = key.split(".")
    for depth in range(1, len(parts) + 1):
        within = ".".join(parts[:depth])
        kind = _field_type(cls, within)  # None: a key the schema lacks (OmegaConf refuses it) or one inside a mapping
        if not (kind is None or kind is dict or dataclasses.is_dataclass(kind)) and (depth < len(parts) or isinstance(value, dict)):
            raise ConfigError(f"'{within}' is a value, not a section: expected {_type_name(kind)}", within)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(kind)}, got {value!r}", key)
        return {name: _as_declared(cls, f"{key}.{name}", item) for name, item in value.items()}
    if typing.get_origin(kind) is list and value is not None and not isinstance(value, list):
        value = [value]
    lists = [member for member in _union_members(kind) if typing.get_origin(member) is list]
    for index, item in enumerate(value if lists and isinstance(value, list) else []):
        if isinstance(item, (list, dict)):  # OmegaConf lets a list or mapping by as a list's item
            raise ConfigError(f"{key}[{index}]: expected {_type_name(typing.get_args(lists[0])[0])}, got {item!r}", key)
    if isinstance(value, bool) and ("yes" if value else "no") in _literal_choices(kind):
        return "yes" if value else "no"
    return value


def _explain(cls, error: OmegaConfBaseException) -> tuple[str | None, str]:
    """OmegaConf's error as (dotted key, message naming what was expected and what was given)."""
    key, said = getattr(error, "full_key", None), str(getattr(error, "msg", None) or error).splitlines()[0]
    if not key:
        return None, said
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):  # a key the schema lacks
        parent, _, leaf = key.rpartition(".")
        section = _field_type(cls, parent) if parent else cls
        known = [item.name for item in dataclasses.fields(section)] if dataclasses.is_dataclass(section) else []
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f" (did you mean '{key[: len(key) - len(leaf)]}{close[0]}'?)" if close else ""
        return key, f"unknown key '{key}'{hint}; keys of {parent or 'the top level'}: {', '.join(known)}"
    kind, value = _field_type(cls, key), error.value
    value = OmegaConf.to_container(value) if isinstance(value, Container) else value
    if kind is None or isinstance(error, InterpolationResolutionError):
        return key, f"{key}: {said}"
    return key, f"{key}: expected {_type_name(kind)}, got {value!r}"


def _field_type(cls, key: str):
    """The annotation at dotted ``key`` (``data.size``, ``train.betas[0]``) of schema ``cls``;
    None for a key it lacks or one inside a plain mapping."""
    kind = cls
    for token in re.findall(r"[^.\[\]]+", key):
        if dataclasses.is_dataclass(kind):
            kind = typing.get_type_hints(kind).get(token)
        elif typing.get_origin(kind) is list and token.isdigit():
            (kind,) = typing.get_args(kind)
        else:
            return None
    return kind


def _union_members(kind) -> tuple:
    return typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)


def _literal_choices(kind) -> list:
    return [choice for member in _union_members(kind) if typing.get_origin(member) is Literal for choice in typing.get_args(member)]


def _type_name(kind) -> str:
    if len(_union_members(kind)) > 1:
        return " or ".join(_type_name(member) for member in _union_members(kind))
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return f"a list of {_type_name(typing.get_args(kind)[0])}"
    if dataclasses.is_dataclass(kind):
        return f"a mapping of {kind.__name__} keys"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping", type(None): "null"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _overlap(key: str, other: str) -> bool:
    """Whether one dotted key is the other or lies within it."""
    return any(a == b or b.startswith((a + ".", a + "[")) for a, b in ((key, other), (other, key)))


# ---------------------------------------------------------------------------------------------
# Comparing configs: what a resumed run changed.


def to_dict(config) -> dict:
    """Plain nested dict (lists, not tuples): what ``config.yaml`` holds."""
    return dataclasses.asdict(config)


def flatten(data: dict, prefix: str = "") -> dict:
    """``{'train': {'epochs': 3}}`` -> ``{'train.epochs': 3}``; lists stay values."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two config dicts (tuples equal lists)."""
    old_flat, new_flat = flatten(_deep_listify(old)), flatten(_deep_listify(new))
    return sorted(key for key in old_flat.keys() | new_flat.keys() if old_flat.get(key) != new_flat.get(key))


def _deep_listify(data):
    if isinstance(data, dict):
        return {key: _deep_listify(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_deep_listify(value) for value in data]
    return data


# ---------------------------------------------------------------------------------------------
# The pretraining schema.


@dataclass
class ModelSection:
    preset: str = "vismae"  # vismae, vismae-reference, swin-t, swin-s, swin-b, tiny
    decoder: Literal["mirror", "light"] = "mirror"
    mask_ratio: float = 0.75
    mask_unit_px: int = 16  # masked squares, in pixels (VIS-MAE: 4 x 4 tokens of 4 px)
    norm_pix_loss: bool = False
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    sparse: bool = False  # encode visible tokens only: 1.7-4.5x faster, but its encoders probed worse at 64 px (docs/benchmarks.md); needs mask_unit_px a multiple of 32 for the presets
    overrides: dict = field(default_factory=dict)  # any EncoderConfig field: window_size, drop_path_rate ...

    def validate(self) -> None:
        require(0.0 < self.mask_ratio < 1.0, f"model.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        require(self.mask_unit_px >= 1, f"model.mask_unit_px must be positive, got {self.mask_unit_px}")
        require("img_size" not in self.overrides, "model.overrides.img_size: set the image size with data.size")


@dataclass
class DataSection:
    manifests: list[str] = field(default_factory=list)  # prepared caches' manifest.csv files
    size: int | list[int] = 224  # the cache's image size: one side, or [height, width]
    # The manifests' splits pretrained on. Train and val: pretraining needs no labels, but an
    # encoder that has seen the test images makes every test number transductive. Add test
    # ([train, val, test]) to pretrain on them too, as an explicit choice; finetuning and the
    # studies then count and flag the test images the encoder has seen.
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    num_workers: int = 4
    # Light augmentation only. Never a horizontal flip: every cached breast touches the left edge.
    vflip_prob: float = 0.0
    intensity_jitter: float = 0.0  # random gamma in [exp(-j), exp(j)]: black stays black, white stays white

    def validate(self) -> None:
        require(bool(self.manifests), "data.manifests: give at least one prepared cache manifest")
        sides = [self.size] if isinstance(self.size, int) else self.size
        require(len(sides) in (1, 2) and min(sides) > 0, f"data.size must be a positive int or [height, width], got {self.size}")
        unknown = sorted(set(self.splits) - {"train", "val", "test"})
        require(not unknown and bool(self.splits), f"data.splits must be some of train, val, test, got {self.splits}")
        require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        require(0.0 <= self.vflip_prob <= 1.0, f"data.vflip_prob must be in [0, 1], got {self.vflip_prob}")
        require(0.0 <= self.intensity_jitter < 1.0, f"data.intensity_jitter must be in [0, 1), got {self.intensity_jitter}")

    @property
    def image_size(self) -> tuple[int, int]:
        sides = [self.size] if isinstance(self.size, int) else self.size
        return (sides[0], sides[-1])


@dataclass
class TrainSection:
    batch_size: int = 64  # per process
    epochs: int = 800  # defines the lr schedule
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule still follows epochs)
    base_lr: float = 1.5e-4  # lr = base_lr x effective batch / 256
    lr: float | None = None  # absolute lr; replaces the base_lr scaling when set
    min_lr: float = 0.0
    warmup_epochs: float = 10.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.05
    grad_accum_steps: int = 1
    clip_grad: float | None = None  # max gradient norm; null = no clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"  # GPUs only; forced to "no" on the CPU
    seed: int = 0

    def validate(self) -> None:
        for name in ("batch_size", "epochs", "grad_accum_steps"):
            require(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        require(self.max_steps is None or self.max_steps >= 0, f"train.max_steps must be >= 0, got {self.max_steps}")
        require(self.base_lr > 0 and (self.lr is None or self.lr > 0), "train.base_lr and train.lr must be positive")
        require(self.min_lr >= 0, f"train.min_lr must be >= 0, got {self.min_lr}")
        require(self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        require(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"train.betas must be two numbers in [0, 1), got {self.betas}",
        )
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.clip_grad is None or self.clip_grad > 0, f"train.clip_grad must be positive or null, got {self.clip_grad}")


@dataclass
class LogSection:
    every_steps: int = 50  # optimizer steps between loss records (TensorBoard, log.jsonl)
    recon_every_epochs: int = 10  # reconstruction grid PNG every N epochs (0: only at the end)
    recon_images: int = 6  # images in the grid

    def validate(self) -> None:
        require(self.every_steps >= 1, f"log.every_steps must be >= 1, got {self.every_steps}")
        require(self.recon_every_epochs >= 0, f"log.recon_every_epochs must be >= 0, got {self.recon_every_epochs}")
        require(self.recon_images >= 1, f"log.recon_images must be >= 1, got {self.recon_images}")


@dataclass
class CheckpointSection:
    every_steps: int = 0  # 0: off
    every_epochs: int = 1  # 0: off
    keep: int = 3  # the newest k checkpoints are kept

    def validate(self) -> None:
        require(self.every_steps >= 0 and self.every_epochs >= 0, "checkpoint.every_steps/every_epochs must be >= 0")
        require(self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")


@dataclass
class DebugSection:
    # Every process writes its final weights to debug/rank<N>.safetensors, to check that
    # distributed processes ended in sync.
    rank_weights: bool = False


@dataclass
class MonitorSection:
    # Every few epochs, a linear probe and a kNN classifier read benign vs malignant from the
    # encoder being trained: fitted on a labelled cache's train rows, scored by ROC AUC on its
    # val rows (carved from train by patient when it has none), logged to TensorBoard
    # (monitor/*) and log.jsonl. Off unless a manifest is given; the cache must have the
    # pretraining image size. It never touches the training's randomness.
    manifest: str | None = None  # a prepared, labelled cache's manifest.csv
    every_epochs: int = 5
    stages: str = "all"  # the encoder stages pooled into features: last, all, or numbers like 0,3

    def validate(self) -> None:
        require(self.every_epochs >= 1, f"monitor.every_epochs must be >= 1, got {self.every_epochs}")
        text = str(self.stages).strip().lower()
        numbers = [part.strip().lstrip("-") for part in text.split(",")]
        require(
            text in ("last", "all") or all(part.isdigit() for part in numbers),
            f"monitor.stages must be last, all or stage numbers like 0,3, got {self.stages!r}",
        )


@dataclass
class PretrainConfig:
    output_dir: str = "runs/pretrain"  # the run folder; running again resumes it
    init: str | None = None  # start the encoder from these weights (an exported encoder)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    debug: DebugSection = field(default_factory=DebugSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)

    def with_absolute_paths(self) -> PretrainConfig:
        """Paths resolved against the working directory, so that the saved config names the
        same files whichever folder a later resume is started from."""
        data = dataclasses.replace(self.data, manifests=[absolute_path(path) for path in self.data.manifests])
        monitor = dataclasses.replace(self.monitor, manifest=absolute_path(self.monitor.manifest))
        return dataclasses.replace(
            self, output_dir=absolute_path(self.output_dir), init=absolute_path(self.init), data=data, monitor=monitor
        )


def load_pretrain_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> PretrainConfig:
    return load_config(PretrainConfig, path, overrides)
