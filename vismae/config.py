"""Run configuration: dataclass schemas, YAML loading, dotted ``key=value`` overrides.

A config file is YAML whose nesting mirrors the dataclasses below. Every value is checked
against its field's type on loading, so a typo or a wrong type fails at once with the dotted
key, what was expected and what was given, instead of hours into a run. Overrides given
after ``--config`` use the same dotted keys and YAML values::

    train.max_steps=20   data.manifests=[a.csv,b.csv]   model.overrides.drop_path_rate=0
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what was expected."""


# ---------------------------------------------------------------------------------------------
# Generic machinery: any dataclass tree can be loaded, overridden, validated and compared.


def _type_name(kind) -> str:
    if kind is type(None):
        return "null"
    origin = typing.get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(kind))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(member) for member in typing.get_args(kind))
    if origin is list:
        (item,) = typing.get_args(kind)
        return f"a list of {_type_name(item)}"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _coerce(value, kind, key: str):
    """``value`` as ``kind`` or ConfigError. YAML already typed most values; this accepts the
    few safe conversions (an int where a float is expected, ``1e-3`` which YAML reads as a
    string, one item where a list is expected) and refuses everything else."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {kind.__name__} keys, got {value!r}")
        return from_dict(kind, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(kind)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(kind)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(kind)
        if isinstance(value, bool) and ("no" if not value else "yes") in choices:
            value = "no" if not value else "yes"  # YAML 1.1 reads a bare no/yes as a boolean
        if value not in choices:
            raise ConfigError(f"{key}: expected {_type_name(kind)}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(kind)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [_coerce(element, item, f"{key}[{index}]") for index, element in enumerate(items)]
    if kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(kind)}, got {value!r}")


def _unknown_key_error(cls, key: str, prefix: str) -> ConfigError:
    known = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    where = prefix.rstrip(".") or "the top level"
    return ConfigError(f"unknown key '{prefix}{key}'{hint}; keys of {where}: {', '.join(known)}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, type-checking every value; missing keys keep
    their defaults. Values are checked against each other by ``validate_tree``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key_error(cls, key, prefix)
    values = {key: _coerce(value, hints[key], f"{prefix}{key}") for key, value in data.items()}
    return cls(**values)


def validate_tree(config) -> None:
    """Call ``validate()`` on every section, those left at their defaults included."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            validate_tree(value)
    if hasattr(config, "validate"):
        config.validate()


def to_dict(config) -> dict:
    """Plain nested dict (lists, not tuples): what ``config.yaml`` holds."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[list[str], object]:
    """``'train.max_steps=20'`` -> (['train', 'max_steps'], 20); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key=value (for example train.max_steps=20)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of ``data`` with each ``key=value`` set; unknown keys are caught by ``from_dict``."""
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(parts[: depth + 1])}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_config(cls, path: str | os.PathLike | None, overrides: list[str] = ()):
    """Read ``path`` (or start from the defaults), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    try:
        config = from_dict(cls, data)
        validate_tree(config)
        return config
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path is not None else str(error)) from None


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


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class ModelSection:
    preset: str = "vismae"  # vismae, vismae-reference, swin-t, swin-s, swin-b, tiny
    decoder: Literal["mirror", "light"] = "mirror"
    mask_ratio: float = 0.75
    mask_unit_px: int = 16  # masked squares, in pixels (VIS-MAE: 4 x 4 tokens of 4 px)
    norm_pix_loss: bool = False
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    overrides: dict = field(default_factory=dict)  # any EncoderConfig field: window_size, drop_path_rate ...

    def validate(self) -> None:
        _require(0.0 < self.mask_ratio < 1.0, f"model.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        _require(self.mask_unit_px >= 1, f"model.mask_unit_px must be positive, got {self.mask_unit_px}")
        _require("img_size" not in self.overrides, "model.overrides.img_size: set the image size with data.size")


@dataclass
class DataSection:
    manifests: list[str] = field(default_factory=list)  # prepared caches' manifest.csv files
    size: int | list[int] = 224  # the cache's image size: one side, or [height, width]
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])  # pretraining needs no labels
    num_workers: int = 4
    # Light augmentation only. Never a horizontal flip: every cached breast touches the left edge.
    vflip_prob: float = 0.0
    intensity_jitter: float = 0.0  # random gamma in [exp(-j), exp(j)]: black stays black, white stays white

    def validate(self) -> None:
        _require(bool(self.manifests), "data.manifests: give at least one prepared cache manifest")
        sides = [self.size] if isinstance(self.size, int) else self.size
        _require(len(sides) in (1, 2) and min(sides) > 0, f"data.size must be a positive int or [height, width], got {self.size}")
        unknown = sorted(set(self.splits) - {"train", "val", "test"})
        _require(not unknown and bool(self.splits), f"data.splits must be some of train, val, test, got {self.splits}")
        _require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        _require(0.0 <= self.vflip_prob <= 1.0, f"data.vflip_prob must be in [0, 1], got {self.vflip_prob}")
        _require(0.0 <= self.intensity_jitter < 1.0, f"data.intensity_jitter must be in [0, 1), got {self.intensity_jitter}")

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
            _require(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        _require(self.max_steps is None or self.max_steps >= 0, f"train.max_steps must be >= 0, got {self.max_steps}")
        _require(self.base_lr > 0 and (self.lr is None or self.lr > 0), "train.base_lr and train.lr must be positive")
        _require(self.min_lr >= 0, f"train.min_lr must be >= 0, got {self.min_lr}")
        _require(self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _require(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"train.betas must be two numbers in [0, 1), got {self.betas}",
        )
        _require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.clip_grad is None or self.clip_grad > 0, f"train.clip_grad must be positive or null, got {self.clip_grad}")


@dataclass
class LogSection:
    every_steps: int = 50  # optimizer steps between loss records (TensorBoard, log.jsonl)
    recon_every_epochs: int = 10  # reconstruction grid PNG every N epochs (0: only at the end)
    recon_images: int = 6  # images in the grid

    def validate(self) -> None:
        _require(self.every_steps >= 1, f"log.every_steps must be >= 1, got {self.every_steps}")
        _require(self.recon_every_epochs >= 0, f"log.recon_every_epochs must be >= 0, got {self.recon_every_epochs}")
        _require(self.recon_images >= 1, f"log.recon_images must be >= 1, got {self.recon_images}")


@dataclass
class CheckpointSection:
    every_steps: int = 0  # 0: off
    every_epochs: int = 1  # 0: off
    keep: int = 3  # the newest k checkpoints are kept

    def validate(self) -> None:
        _require(self.every_steps >= 0 and self.every_epochs >= 0, "checkpoint.every_steps/every_epochs must be >= 0")
        _require(self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")


@dataclass
class DebugSection:
    # Every process writes its final weights to debug/rank<N>.safetensors, to check that
    # distributed processes ended in sync.
    rank_weights: bool = False


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

    def with_absolute_paths(self) -> PretrainConfig:
        """Paths resolved against the working directory, so that the saved config names the
        same files whichever folder a later resume is started from."""
        absolute = lambda path: str(Path(path).expanduser().resolve())  # noqa: E731
        data = dataclasses.replace(self.data, manifests=[absolute(path) for path in self.data.manifests])
        return dataclasses.replace(
            self,
            output_dir=absolute(self.output_dir),
            init=absolute(self.init) if self.init else None,
            data=data,
        )


def load_pretrain_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> PretrainConfig:
    return load_config(PretrainConfig, path, overrides)
