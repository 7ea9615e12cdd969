"""Classifiers on any timm image backbone, by name: the ROI paper's second model is ConvNeXtV2
(``convnextv2_tiny``, its Tables 6 and 8), and timm builds it like every other of its models.

    model, description = build_timm_classifier("convnextv2_tiny", "random", (384, 384))
    model, description = build_timm_classifier("convnextv2_tiny", "weights/convnextv2_tiny.safetensors", (384, 384))
    model = rebuild_task_model(description)          # the same architecture, from model.json

The network takes one input channel (timm's ``in_chans=1``) and ends in timm's own head
(global pooling, linear) with two classes. It starts from random init or from one local timm
checkpoint file: safetensors, or a .pth read with ``torch.load(weights_only=True)``. Nothing is
ever downloaded (``pretrained=False`` always). A file is mapped the way timm maps its own
pretrained weights: the model's ``checkpoint_filter_fn`` (original-repository key names), RGB
first-conv weights summed into one channel (``adapt_input_conv``), and a classifier for
another number of classes left out, so a fresh two-class head trains from scratch.

Our Swin encoder (``model.backbone: swin``) keeps its own loader, ``vismae.models.weights``.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from vismae.models.formats.report import LoadReport, shorten
from vismae.models.formats.tensor_files import read_tensor_file, strip_wrapper_prefixes
from vismae.models.heads import build_task_model
from vismae.models.random_init import SWIN_BACKBONE, is_random_init
from vismae.models.swin import EncoderConfig, SwinEncoder

__all__ = [
    "SWIN_BACKBONE", "build_timm_classifier", "check_backbone_name", "image_size_of", "load_timm_weights", "rebuild_task_model",
]  # fmt: skip

IN_CHANS = 1
NUM_CLASSES = 2
EMA_KEYS = ("state_dict_ema", "model_ema")  # where timm's training checkpoints keep EMA weights


def check_backbone_name(name: str) -> None:
    """Refuse a name timm does not know, suggesting the nearest ones it does."""
    if not isinstance(name, str) or not name or name == SWIN_BACKBONE:
        raise ValueError(f"model.backbone: {name!r} is not a timm model name")
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"model.backbone: timm has no model {name!r}{hint} "
        f"(timm.list_models('{name[:4]}*') lists its names; {SWIN_BACKBONE} is the VIS-MAE Swin encoder)"
    )


def timm_settings(image_size, pool: str = "avg", drop_path: float = 0.0, dropout: float = 0.0) -> dict:
    """The keyword arguments of ``timm.create_model`` that model.json keeps to rebuild the network."""
    return {
        "in_chans": IN_CHANS,
        "num_classes": NUM_CLASSES,
        "global_pool": pool,
        "drop_path_rate": float(drop_path),
        "drop_rate": float(dropout),
        "image_size": [int(side) for side in image_size],
    }


def create_timm_classifier(name: str, settings: dict) -> nn.Module:
    """The randomly initialized network that ``settings`` (``timm_settings``) describe."""
    check_backbone_name(name)
    arguments = {key: value for key, value in settings.items() if key != "image_size"}
    try:
        model = timm.create_model(name, pretrained=False, **arguments)
    except TypeError as error:  # a model without e.g. global_pool or drop_path_rate
        raise ValueError(f"model.backbone {name}: timm refuses these settings {arguments} ({error})") from error
    # Transformers with position tables are built for one input size; convolutional networks
    # take any. timm says which, and resizes the former.
    if model.pretrained_cfg.get("fixed_input_size") and hasattr(model, "set_input_size"):
        model.set_input_size(img_size=tuple(settings["image_size"]))
    return model


def build_timm_classifier(
    name: str,
    init: str | os.PathLike,
    image_size,
    pool: str = "avg",
    drop_path: float = 0.0,
    dropout: float = 0.0,
    verbose: bool = True,
) -> tuple[nn.Module, dict]:
    """The two-class timm ``name`` network for one-channel ``image_size`` images, randomly
    initialized (``init`` is ``random`` or ``random:<name>``) or loaded from ``init``, a
    timm checkpoint file; and the description (model.json) that rebuilds it."""
    settings = timm_settings(image_size, pool, drop_path, dropout)
    model = create_timm_classifier(name, settings)
    if is_random_init(init):
        note = f"every tensor randomly initialized (timm {name})"
        report = LoadReport(source=str(init), format="random", file="", notes=[note])
    else:
        report = load_timm_weights(model, init, name)
    if verbose:
        report.print()
    return model, {"backbone": name, "timm": settings}


def load_timm_weights(model: nn.Module, source: str | os.PathLike, name: str) -> LoadReport:
    """Load one local timm checkpoint file into ``model``, mapped as timm maps its pretrained
    weights; refuse weights that do not fit, naming them."""
    path = Path(source).expanduser()
    if path.is_dir():
        raise ValueError(f"{source}: a folder; a timm backbone ({name}) loads one .safetensors or .pth file")
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such weights file for the timm backbone {name}")
    # Never unpickled beyond tensors and plain data; a training checkpoint's "model" or
    # "state_dict" entry unwrapped, and its EMA weights taken where it has them (timm's rule).
    state, extras = read_tensor_file(path)
    ema = next((extras[key] for key in EMA_KEYS if isinstance(extras.get(key), dict)), None)
    notes = []
    if ema is not None:
        tensors = {key: value for key, value in strip_wrapper_prefixes(ema).items() if isinstance(value, torch.Tensor)}
        state = {key: value.float() if value.is_floating_point() else value for key, value in tensors.items()}
        notes.append("the file's EMA weights are loaded (timm's rule)")
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)  # the original repository's key names -> timm's
    target = model.state_dict()
    notes += _one_input_channel(state, target, model.pretrained_cfg.get("first_conv"))
    dropped = _other_classifier(state, target, model.pretrained_cfg.get("classifier"))
    notes.append("no input normalization is folded in: the network sees the cache's [0, 1] pixels")

    # The classifier starts fresh where the file has none for two classes (or none at all).
    head = [key for module in _names(model.pretrained_cfg.get("classifier")) for key in target if key.startswith(f"{module}.")]
    fresh = [key for key in head if key not in state]
    missing = [key for key in target if key not in state and key not in fresh]
    unexpected = sorted(key for key in state if key not in target)
    mismatched = sorted(key for key in state if key in target and state[key].shape != target[key].shape)
    if missing or unexpected or mismatched:
        problems = [
            f"{label} {len(keys)}: {shorten(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise ValueError(f"{source}: the weights do not fit timm {name} ({'; '.join(problems)}); is it a {name} checkpoint?")
    model.load_state_dict(state, strict=False)
    return LoadReport(
        source=str(source),
        format="timm",
        file=str(path),
        loaded=sorted(state),
        notes=notes,
        dropped=dropped,
        fresh=fresh,
    )


def _names(spec) -> list[str]:
    """A pretrained_cfg entry (one module name, several, or none) as a list."""
    if not spec:
        return []
    return [spec] if isinstance(spec, str) else list(spec)


def _one_input_channel(state: dict, target: dict, first_conv) -> list[str]:
    """Sum RGB (or any) first-conv weights into one input channel, as timm does."""
    notes = []
    for module in _names(first_conv):
        key = f"{module}.weight"
        if key in state and key in target and state[key].shape[1] != target[key].shape[1]:
            channels = state[key].shape[1]
            state[key] = adapt_input_conv(target[key].shape[1], state[key])
            notes.append(f"{key}: {channels} input channels summed into {target[key].shape[1]} (timm's adapt_input_conv)")
    return notes


def _other_classifier(state: dict, target: dict, classifier) -> dict[str, list[str]]:
    """Leave out a classifier trained for another number of classes; the new head starts fresh."""
    keys = [
        key
        for module in _names(classifier)
        for key in (f"{module}.weight", f"{module}.bias")
        if key in state and key in target and state[key].shape != target[key].shape
    ]
    for key in keys:
        del state[key]
    return {f"a classifier for another number of classes; the {NUM_CLASSES}-class head starts fresh": keys} if keys else {}


def rebuild_task_model(description: dict) -> nn.Module:
    """The architecture a finetuned run's model.json describes, randomly initialized (its
    weights are loaded next): a timm backbone, or our Swin encoder with its task head."""
    if "backbone" in description:
        return create_timm_classifier(description["backbone"], description["timm"])
    encoder = SwinEncoder(EncoderConfig.from_dict(description["encoder"]))
    return build_task_model(encoder, description["task"], **description["head"])


def image_size_of(description: dict) -> tuple[int, int]:
    """The input size a model.json's model was trained at."""
    if "backbone" in description:
        return tuple(description["timm"]["image_size"])
    return tuple(description["encoder"]["img_size"])
