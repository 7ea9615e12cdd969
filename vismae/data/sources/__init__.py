"""One reader per dataset; each turns a dataset folder into a manifest (metadata only).

A reader is a module with ``read(root, **options) -> DataFrame`` (built with
``manifest.new_frame``). Modules are imported on demand, so listing the names stays cheap
enough for the command line's ``--help``.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

READERS = {
    "vindr": "vismae.data.sources.vindr",
    "cdd-cesm": "vismae.data.sources.cdd_cesm",
    "cbis-ddsm": "vismae.data.sources.cbis_ddsm",
    "table": "vismae.data.sources.table",
    "folder": "vismae.data.sources.folder",
    "rsna": "vismae.data.sources.rsna",
}


def reader(name: str):
    """The ``read`` function of the dataset ``name``."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(READERS)}")
    return importlib.import_module(READERS[name]).read


def options_of(name: str) -> set[str]:
    """The keyword options the dataset's reader takes."""
    parameters = inspect.signature(reader(name)).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def read_dataset(name: str, root: Path | None, **options):
    """Read a dataset into a manifest frame; an option its reader does not take is an error."""
    unknown = sorted(set(options) - options_of(name))
    if unknown:
        raise ValueError(f"dataset {name} takes no option {', '.join(unknown)}")
    return reader(name)(root, **options)
