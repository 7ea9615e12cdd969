"""Our exported encoder, written and read: ``encoder.safetensors`` + ``encoder.json`` (a folder,
or the two files side by side). It is what pretraining leaves for finetuning and what
``vismae convert-weights`` writes; the JSON holds the ``EncoderConfig`` and where the weights
came from, so the encoder is rebuilt without guessing.

Beside them a pretraining run leaves ``pretraining_images.csv``: the ``image_id`` of every image
it pretrained on. A finetuning run or study started from those weights compares it with its own
test images (``pretraining_images``): a test image the encoder has seen, even unlabelled, makes
its test numbers transductive, and the reports say so."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vismae.io import atomic_path, write_json
from vismae.models.formats.checkpoint_types import Checkpoint
from vismae.models.formats.tensor_files import is_safetensors, safetensors_metadata
from vismae.models.random_init import is_random_init
from vismae.models.swin import SwinEncoder

ENCODER_FORMAT = "vismae-encoder"
ENCODER_FORMAT_VERSION = 1
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_CONFIG = "encoder.json"
FORMAT = ENCODER_FORMAT
PRETRAINING_IMAGES = "pretraining_images.csv"
PRETRAINING_IMAGES_COLUMN = "image_id"
# The key under which runs and reports record how many of their test images the encoder saw.
SEEN_IN_PRETRAINING = "test_images_seen_in_pretraining"
# A pretraining checkpoint folder, RUN/checkpoints/step_XXXXXXX (vismae.run_folder's names).
_CHECKPOINT_FOLDER = re.compile(r"^step_\d{7,}$")


def export_encoder(encoder: SwinEncoder, folder: str | os.PathLike, source: dict) -> Path:
    """Write ``encoder.safetensors`` and ``encoder.json`` into ``folder``; return the weights path."""
    folder = Path(folder)
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in encoder.state_dict().items()}
    weights = folder / ENCODER_WEIGHTS
    with atomic_path(weights) as temporary:
        save_file(tensors, str(temporary), metadata={"format": ENCODER_FORMAT})
    description = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_FORMAT_VERSION,
        "encoder": encoder.config.to_dict(),
        "source": source,
    }
    write_json(folder / ENCODER_CONFIG, description)
    return weights


def read_exported_encoder(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(encoder config dict, state dict) of an exported encoder; safetensors only, no pickle."""
    weights, description_path = _exported_files(path)
    for required in (weights, description_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: no such file (an exported encoder has {ENCODER_WEIGHTS} and {ENCODER_CONFIG})")
    description = json.loads(description_path.read_text())
    if description.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{description_path}: format is {description.get('format')!r}, expected {ENCODER_FORMAT!r}")
    if description.get("version") != ENCODER_FORMAT_VERSION:
        raise ValueError(
            f"{description_path}: version {description.get('version')!r}; this vismae reads version {ENCODER_FORMAT_VERSION}"
        )
    return description["encoder"], load_file(str(weights))


# ---------------------------------------------------------------------------------------------
# The images an encoder was pretrained on.


def write_pretraining_images(folder: str | os.PathLike, image_ids) -> Path:
    """Write ``folder/pretraining_images.csv`` (atomically): one ``image_id`` a row."""
    path = Path(folder) / PRETRAINING_IMAGES
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([PRETRAINING_IMAGES_COLUMN])
        writer.writerows([str(image_id)] for image_id in image_ids)
    return path


def pretraining_images_file(init: str | os.PathLike | None) -> Path | None:
    """The ``pretraining_images.csv`` that encoder source ``init`` carries: in an exported
    encoder's folder (``init`` the folder or one of its files), a pretraining run folder, or the
    run folder of a checkpoint (``RUN/checkpoints/step_*`` or a file in it). None for a random
    init, a source that does not exist, or one whose folder has no list (foreign weights)."""
    if init is None or str(init) == "" or is_random_init(init):
        return None
    path = Path(init).expanduser()
    if not path.exists():
        return None
    folder = path if path.is_dir() else path.parent
    candidates = [folder]
    if _CHECKPOINT_FOLDER.match(folder.name) and folder.parent.name == "checkpoints":
        candidates.append(folder.parent.parent)
    return next((candidate / PRETRAINING_IMAGES for candidate in candidates if (candidate / PRETRAINING_IMAGES).is_file()), None)


def pretraining_images(init: str | os.PathLike | None) -> list[str] | None:
    """The image ids the encoder ``init`` was pretrained on, or None where it carries no list
    (``pretraining_images_file``)."""
    path = pretraining_images_file(init)
    if path is None:
        return None
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != [PRETRAINING_IMAGES_COLUMN]:
            raise ValueError(f"{path}: expected one column named {PRETRAINING_IMAGES_COLUMN!r}, found header {header!r}")
        return [row[0] for row in reader if row]


def images_seen_in_pretraining(init: str | os.PathLike | None, image_ids) -> int | None:
    """How many of ``image_ids`` (each counted once) the encoder ``init`` was pretrained on;
    None where ``init`` carries no list, so nothing can be said."""
    seen = pretraining_images(init)
    if seen is None:
        return None
    return len({str(image_id) for image_id in image_ids} & set(seen))


def seen_warning(seen: int, total: int, init: str | os.PathLike, images: str = "test images") -> str:
    """The warning printed, and written into reports, where the encoder ``init`` was pretrained
    on ``seen`` of the ``total`` images a run or study is judged on."""
    return (
        f"WARNING: the encoder {init} was pretrained on {seen} of the {total} {images} (its {PRETRAINING_IMAGES}), "
        "unlabelled: the numbers on them are transductive, not those of unseen images"
    )


def seen_mark(seen: int) -> str:
    """The mark reports put beside every number computed on images the encoder was pretrained on."""
    return f"[{seen} SEEN IN PRETRAINING]"


# ---------------------------------------------------------------------------------------------
# As one of the formats ``load_encoder`` detects.


def is_export(path: Path) -> bool:
    """Told by content: the JSON description, or the safetensors metadata, names the format."""
    if path.is_dir():
        return _describes_export(path / ENCODER_CONFIG)
    if path.suffix == ".json":
        return _describes_export(path)
    if is_safetensors(path):
        return safetensors_metadata(path).get("format") == ENCODER_FORMAT or _describes_export(path.with_suffix(".json"))
    return False


def read(path: Path) -> Checkpoint:
    config, state = read_exported_encoder(path)
    weights = path / ENCODER_WEIGHTS if path.is_dir() else path.with_suffix(".safetensors")
    note = "an exported encoder has no decoder"
    return Checkpoint(format=FORMAT, file=weights, encoder=state, config=config, decoder_note=note)


def _exported_files(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        return path / ENCODER_WEIGHTS, path / ENCODER_CONFIG
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    raise ValueError(f"{path}: expected an exported encoder folder, {ENCODER_WEIGHTS} or {ENCODER_CONFIG}")


def _describes_export(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == ENCODER_FORMAT
    except (ValueError, AttributeError):
        return False
