"""The run folder, kept the same way by every command that writes one (pretraining,
finetuning, the ROI-aware experiment, the label-efficiency sweep):

- its resolved config, saved as ``config.yaml`` and compared with the saved one whenever the
  folder is used again; each caller declares the keys that may differ (run length, location,
  loader workers ...), any other difference is refused with the keys' old and new values;
- a lock: while a run lives, another launch into its folder is refused at once, naming the
  process that holds it. The lock is ``fcntl.flock`` on a file kept open for the run's life,
  so the operating system lets go of it when the process ends, killed or not;
- its checkpoints, ``checkpoints/step_XXXXXXX``, each written as ``.tmp-step_XXXXXXX`` and
  renamed once complete: listed, the newest found, the oldest pruned, half-written ones removed.

Input digests and absolute paths are ``vismae.io.input_digest`` and ``absolute_path``: the
config schemas and the data readers use them too, and those cannot import this module, which
reads configs. Atomic writes are ``vismae.io``'s as well.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vismae.config import ConfigError, differing_keys, flatten, read_yaml
from vismae.io import write_yaml

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
STATE_FILE = "trainer_state.json"  # written last into a checkpoint: it marks the checkpoint complete
TEMPORARY_PREFIX = ".tmp-"
_CHECKPOINT_NAME = re.compile(r"^step_(\d{7,})$")


# ---------------------------------------------------------------------------------------------
# The saved config.


def save_config(folder: str | os.PathLike, config: dict, file: str = CONFIG_FILE) -> Path:
    """Write the resolved config (a plain dict, e.g. ``vismae.config.to_dict(config)``)."""
    return write_yaml(Path(folder) / file, config)


def _is_neutral(key: str, neutral: Iterable[str]) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in neutral)


def config_changes(saved: dict, config: dict, neutral: Iterable[str] = (), defaults: dict | None = None) -> list[str]:
    """The dotted keys in which ``config`` differs from ``saved`` and that matter: not a
    ``neutral`` key (nor a key under one), and not a key the saved config lacks whose new
    value is its default in ``defaults`` (a key a newer vismae added changes nothing)."""
    neutral = tuple(neutral)
    saved_flat, new_flat = flatten(saved), flatten(config)
    default_flat = flatten(defaults) if defaults is not None else {}
    missing = object()
    return [
        key
        for key in differing_keys(saved, config)
        if not _is_neutral(key, neutral)
        and not (key not in saved_flat and key in default_flat and new_flat.get(key, missing) == default_flat[key])
    ]


def describe_changes(saved: dict, config: dict, keys: list[str]) -> str:
    """``key: old -> new`` for each key, ``'(absent)'`` where a config lacks it."""
    old, new = flatten(saved), flatten(config)
    return "; ".join(f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}" for key in keys)


def check_config(
    folder: str | os.PathLike,
    config: dict,
    *,
    neutral: Iterable[str] = (),
    defaults: dict | None = None,
    what: str = "a run",
    remedy: str = "choose another output_dir",
    allow_change: bool = False,
    file: str = CONFIG_FILE,
    saved: dict | None = None,
) -> None:
    """Refuse to use ``folder`` again under a config that differs from its saved one in more
    than the ``neutral`` keys: a ConfigError naming the folder, each changed key with its old
    and new value, and ``remedy``. ``allow_change`` logs the changes and goes on instead.
    A folder without a saved config passes. ``saved``: the saved config as the caller has
    already read (and perhaps narrowed) it, instead of ``folder/file``."""
    folder = Path(folder)
    if saved is None:
        path = folder / file
        if not path.is_file():
            return
        saved = read_yaml(path)
    changed = config_changes(saved, config, neutral, defaults)
    if not changed:
        return
    details = describe_changes(saved, config, changed)
    if allow_change:
        log.warning("continuing %s with a changed config (%s)", folder, details)
        return
    raise ConfigError(f"{folder} holds {what} with another config ({details}); {remedy}")


# ---------------------------------------------------------------------------------------------
# The lock.


class FolderInUseError(ValueError):
    """Another live process holds the folder. A ValueError, so that the commands report it in
    one line, as they report other input that cannot be used."""


@dataclass
class _Hold:
    descriptor: int
    count: int  # nested holds of this process
    pid: int  # the process that opened the descriptor (a forked child holds nothing)


_holds: dict[str, _Hold] = {}
_holds_guard = threading.Lock()


def _holder_details() -> bytes:
    started = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    details = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "command": " ".join(sys.argv)}
    return (json.dumps(details) + "\n").encode()


def _read_holder(descriptor: int) -> dict:
    try:
        return json.loads(os.pread(descriptor, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _in_use_message(folder: Path, lock_file: Path, holder: dict) -> str:
    if {"pid", "host", "started"} <= holder.keys():
        who = f"process {holder['pid']} on {holder['host']}, started {holder['started']}"
    else:
        who = f"a process that has not yet written its details to {lock_file}"
    return (
        f"{folder} is in use by another run ({who}): wait for it to end or stop it, or choose another folder. "
        "A run that was killed holds nothing; running again then continues its folder."
    )


class FolderLock:
    """This process's exclusive hold on ``folder``, through ``folder/name``. Holding a folder
    the process already holds nests (a sweep, then a run it trains in the same folder); the
    folder is let go when the outermost hold is released."""

    def __init__(self, folder: str | os.PathLike, name: str = LOCK_FILE):
        self.folder = Path(folder)
        self.path = self.folder / name
        self._key: str | None = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> FolderLock:
        """Take the folder (creating it) or raise FolderInUseError at once, never waiting."""
        if self._key is not None:
            raise RuntimeError(f"{self.path}: this FolderLock is already acquired")
        self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        with _holds_guard:
            hold = _holds.get(key)
            if hold is not None and hold.pid == os.getpid():
                hold.count += 1
            else:
                descriptor = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    holder = _read_holder(descriptor)
                    os.close(descriptor)
                    if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    raise FolderInUseError(_in_use_message(self.folder, self.path, holder)) from None
                # Who holds it, for the message another launch will show.
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, _holder_details(), 0)
                _holds[key] = _Hold(descriptor, 1, os.getpid())
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        with _holds_guard:
            hold = _holds[self._key]
            hold.count -= 1
            if hold.count == 0:
                del _holds[self._key]
                fcntl.flock(hold.descriptor, fcntl.LOCK_UN)
                os.close(hold.descriptor)
        self._key = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextlib.contextmanager
def hold(folder: str | os.PathLike, accelerator=None, *, name: str = LOCK_FILE) -> Iterator[FolderLock | None]:
    """Hold ``folder`` for the ``with`` block, or raise FolderInUseError if a live process
    holds it. Under Accelerate (``accelerator`` given) only the main process takes the lock
    and a refusal is raised on every process, so that none is left waiting at a barrier for
    the others; the other processes yield None. Without ``accelerator`` this process locks."""
    lock, refusal = None, None
    if accelerator is None or accelerator.is_main_process:
        try:
            lock = FolderLock(folder, name).acquire()
        except FolderInUseError as error:
            refusal = str(error)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise FolderInUseError(refusal)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def holds_only_its_lock(folder: str | os.PathLike) -> bool:
    """True for a folder that holds nothing but lock files (a run that never wrote anything)."""
    folder = Path(folder)
    return folder.is_dir() and all(path.name.startswith(LOCK_FILE) for path in folder.iterdir())


def clear_folder(folder: str | os.PathLike) -> None:
    """Remove everything in ``folder`` but its lock files, which a live hold keeps open: a
    lock file deleted under its holder would let a second process take a new one."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(LOCK_FILE):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def temporary_checkpoint(folder: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before it is complete."""
    return Path(folder) / f"{TEMPORARY_PREFIX}{checkpoint_name(step)}"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``folder`` as (step, path), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def newest_checkpoint(folder: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1][1] if checkpoints else None


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(path)


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete half-written checkpoints left by a run that was killed while saving."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(TEMPORARY_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
