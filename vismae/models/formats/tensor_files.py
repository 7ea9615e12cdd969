"""Reading tensors from a file without ever running code stored in it.

safetensors files hold nothing but tensors. PyTorch files are pickles, and a pickle can call
any function while it is read, so they are opened with ``weights_only=True``: only tensors,
plain containers and numbers come back, plus ``argparse.Namespace``, which the VIS-MAE
reference code stores as ``args``. Anything else is refused before it is built.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

# The one class beyond tensors and containers that a weights file may need: the reference
# code saves its command line arguments with the model.
ALLOWED_CLASSES = [argparse.Namespace]

# Where a training checkpoint keeps the model's state dict, outermost first.
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module")

# Wrappers that prefix every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def is_safetensors(path: str | os.PathLike) -> bool:
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except (SafetensorError, OSError):
        return False


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def load_pickle_safely(path: str | os.PathLike):
    """``torch.load`` with ``weights_only=True``; a file that needs any other class is refused."""
    try:
        with torch.serialization.safe_globals(ALLOWED_CLASSES):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: refused to unpickle ({_refusal_reason(str(error))}); only tensors, plain containers and "
            "argparse.Namespace are read from PyTorch files (convert the file to safetensors where you trust it)"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path}: neither a safetensors file nor a readable PyTorch file ({error})") from None


def read_tensor_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, everything else the file holds) from safetensors or a PyTorch file.

    Training checkpoints that wrap the state dict (``{'model': ..., 'epoch': ...}``) are
    unwrapped; the other top-level entries come back as the second value. Floating tensors are
    made float32 so that half-precision checkpoints can be resized and folded on the CPU.
    """
    path = Path(path)
    if is_safetensors(path):
        state, extras = load_file(str(path)), {}
    else:
        state, extras = _unwrap(load_pickle_safely(path), path)
    return {key: _as_float32(value) for key, value in strip_wrapper_prefixes(state).items()}, extras


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _refusal_reason(message: str) -> str:
    """The one line of torch's long refusal that says what the file asked for."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return f"it asks for {found.group(1)}, which could run code"
    other = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return other.group(1).strip() if other else "not plain data"


def _unwrap(loaded, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not isinstance(loaded, dict):
        found = type(loaded).__name__
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), found {found}")
    extras: dict = {}
    for key in _STATE_DICT_KEYS:
        if isinstance(loaded.get(key), dict) and not _is_state_dict(loaded):
            extras.update({name: value for name, value in loaded.items() if name != key})
            loaded = loaded[key]
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors (top-level keys: {sorted(map(str, loaded))[:10]})")
    return tensors, extras


def _is_state_dict(mapping: dict) -> bool:
    return any(isinstance(value, torch.Tensor) for value in mapping.values())


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor
