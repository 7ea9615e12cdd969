"""The missing-files check every reader runs: a listed image that is not on disk stops the
run, unless the caller allows dropping it (then the count is reported)."""

from __future__ import annotations

import logging
import os

import pandas as pd

log = logging.getLogger(__name__)
SHOWN = 3


def missing_message(count: int, total: int, what: str, examples) -> str:
    shown = ", ".join(str(path) for path in list(examples)[:SHOWN])
    return f"{count} of {total} {what} missing on disk (first: {shown})"


def drop_missing(frame: pd.DataFrame, allow_missing: bool, what: str = "images listed") -> pd.DataFrame:
    """``frame`` without rows whose ``path`` is not a file; raise unless ``allow_missing``."""
    present = frame["path"].map(os.path.isfile).astype(bool)
    if present.all():
        return frame
    message = missing_message(int((~present).sum()), len(frame), what, frame.loc[~present, "path"])
    if not allow_missing:
        raise FileNotFoundError(f"{message}; allow missing files (--allow-missing) to drop them")
    log.warning("dropped %s", message)
    return frame[present.to_numpy()].reset_index(drop=True)
