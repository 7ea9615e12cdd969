"""Reading the datasets' own CSV and spreadsheet files, with errors that say where.

Every table is read as text (nothing guessed, nothing turned into NaN) with its header names
stripped: real downloads carry stray spaces in headers (VinDr's ``Image Laterality ``) and in
cells. Line numbers in messages count the header as line 1, as an editor shows them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd


class SourceError(ValueError):
    """A dataset file that does not have the expected format; the message says where."""


def where(path: Path, index: int | None = None, column: str | None = None) -> str:
    """``file, line N, column 'c'`` for the data row ``index`` (0-based) of a table."""
    place = str(path)
    if index is not None:
        unit = "row" if Path(path).suffix.lower() in (".xlsx", ".xls") else "line"
        place += f", {unit} {index + 2}"
    if column is not None:
        place += f", column '{column}'"
    return place


def _finish(frame: pd.DataFrame, path: Path, required) -> pd.DataFrame:
    frame = frame.fillna("").astype(str)
    frame.columns = [str(name).strip() for name in frame.columns]
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise SourceError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"the header has {', '.join(map(repr, frame.columns))}"
        )
    return frame


def read_csv(path: Path, required=()) -> pd.DataFrame:
    """A CSV as a frame of stripped-header text columns; ``required`` columns must exist."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SourceError(f"{path}: not a readable CSV ({error})") from None
    return _finish(frame, path, required)


def read_sheet(path: Path, sheet: str, required=()) -> pd.DataFrame:
    """One sheet of a spreadsheet, like :func:`read_csv`."""
    try:
        frame = pd.read_excel(path, sheet_name=sheet, dtype=str)
    except ValueError as error:
        # pandas says "Worksheet named 'x' not found"; add the file name.
        raise SourceError(f"{path}: cannot read sheet {sheet!r} ({error})") from None
    return _finish(frame, path, required)


def read_table(path: Path, sheet: str, required=()) -> pd.DataFrame:
    """A CSV, or the named sheet of a spreadsheet, chosen by the file's extension."""
    if Path(path).suffix.lower() in (".xlsx", ".xls"):
        return read_sheet(path, sheet, required)
    return read_csv(path, required)


def squeeze(text: str) -> str:
    """A header or name compared loosely: lower case, no spaces, underscores or hyphens."""
    return re.sub(r"[\s_\-]+", "", str(text)).lower()


def find_column(frame: pd.DataFrame, aliases) -> str | None:
    """The first column whose loosely compared name is one of ``aliases``."""
    wanted = [squeeze(alias) for alias in aliases]
    by_name = {squeeze(column): column for column in frame.columns}
    for alias in wanted:
        if alias in by_name:
            return by_name[alias]
    return None


def _find_one(root: Path, name: str, is_kind, kind: str) -> Path:
    """The one file or folder called ``name`` at or below ``root`` (downloads nest folders
    differently); none, or several, is an error naming ``root``."""
    direct = root / name
    if is_kind(direct):
        return direct
    found = sorted(path for path in root.rglob(name) if is_kind(path))
    if not found:
        raise FileNotFoundError(f"{root}: no {kind} named {name!r} in this folder or below it")
    if len(found) > 1:
        raise SourceError(f"{root}: several {kind}s named {name!r}: {', '.join(map(str, found[:3]))}")
    return found[0]


def find_file(root: Path, name: str) -> Path:
    return _find_one(root, name, Path.is_file, "file")


def find_folder(root: Path, name: str) -> Path:
    return _find_one(root, name, Path.is_dir, "folder")
