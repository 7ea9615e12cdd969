"""Atomic file writes (a reader never sees a half-written file, an interrupted run leaves
none), input digests and absolute paths: the file-level helpers every layer may import."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import yaml


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file keeps the target's suffix so that libraries which pick a format from
    the extension (OpenCV, matplotlib) write the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: str | os.PathLike, data) -> Path:
    """``data`` (plain dicts, lists and scalars) as block YAML, keys in their given order."""
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_csv(path: str | os.PathLike, table, **options) -> Path:
    """A pandas DataFrame as CSV, without its index unless ``index=True`` is given."""
    options.setdefault("index", False)
    with atomic_path(path) as temporary:
        table.to_csv(temporary, **options)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Leaf helpers every layer may use (the data readers and the config schemas included): what
# identifies a run's input, and paths that stay valid when a run is resumed from elsewhere.

def input_digest(items, columns: list[str] | None = None) -> str:
    """16 hex characters of SHA-256 that identify a run's input, saved with the run and
    compared when it is continued: a list of strings taken in order (``columns`` None), or
    a table's ``columns`` with the rows sorted by the first of them."""
    if columns is None:
        text = "\n".join(items)
    else:
        text = items[list(columns)].sort_values(columns[0]).to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def absolute_path(path: str | os.PathLike | None) -> str | None:
    """``path`` resolved against the working directory, so that a saved config names the same
    file whichever folder a later run is started from; None and "" (no path given) stay None."""
    if path is None or str(path) == "":
        return None
    return str(Path(path).expanduser().resolve())
