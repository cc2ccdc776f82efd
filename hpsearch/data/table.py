"""A user's own table: ``data: {dataset: csv, path: data.csv, target: COLUMN}``.

The file is UTF-8 text, comma-separated, read with the standard ``csv`` module. Its first line names the columns
(a header is required: a first line of numbers is refused); fields are stripped of surrounding spaces and blank
lines are skipped. The ``target`` column is what to predict; every other column is a feature and must hold a finite
number on every line. The target holds numbers (classification or regression as for ``dataset: arrays``) or, when
any value is not a number, text labels (classification, the labels in sorted order). The rows are then shuffled
and split as one ``X``/``y`` of :mod:`hpsearch.data.arrays`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TextIO

import numpy as np

from hpsearch.data.arrays import Split, file_problem, from_arrays
from hpsearch.data.dataset import Dataset
from hpsearch.errors import DataError
from hpsearch.files import SizeBound, data_bound, open_regular

__all__ = ["load", "read_table"]

SHOWN_COLUMNS = 10  # an unknown target lists this many of the header's columns
# while a table is read every field is held as text: 12 times the file's size in memory for fields like 0.123456,
# about 25 times for fields of two characters
TEXT_PER_BYTE = 32


def table_bound() -> SizeBound:
    """The most a table may hold: what a data file may hold, divided by :data:`TEXT_PER_BYTE`."""
    data = data_bound("a csv table")
    return SizeBound(data.what, data.limit // TEXT_PER_BYTE, "its fields are held as text while it is read; "
                                                             "save larger data as an .npz")


def load(path: str | Path | None, target: str | None, split: Split, *, task: str | None = None) -> Dataset:
    """The table at ``path``, column ``target`` predicted from the others, checked, split and preprocessed."""
    if path is None:
        raise DataError("csv: data.path is required (a .csv file whose first line names the columns).")
    if target is None:
        raise DataError("csv: data.target is required (the name of the column to predict).")
    path = Path(path)
    X, y = read_table(path, target)
    return from_arrays({"X": X, "y": y}, split, name=path.name, source=str(path), task=task,
                       names={"X": "the table", "y": f"column {target!r}"})


def read_table(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float64 and the target column (N,): float64 when every value is a number, else text."""
    try:
        with open_regular(path, table_bound()) as raw, \
                io.TextIOWrapper(raw, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is no name
            header, cells, lines = _read_cells(f, path, target)
    except OSError as exc:
        raise file_problem(path, exc, "a .csv file whose first line names the columns") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); save the table as UTF-8.") from None
    columns = {name: cells[:, j] for j, name in enumerate(header)}  # (N,) text each
    features = [_numbers(path, name, column, lines, required=True) for name, column in columns.items()
                if name != target]
    y = _numbers(path, target, columns[target], lines, required=False)
    if y is None:
        empty = np.flatnonzero(columns[target] == "")
        if len(empty):
            raise DataError(f"{path}: column {target!r} is empty on line {lines[empty[0]]}.")
        y = columns[target]
    return np.stack(features, axis=1), y


def _read_cells(f: TextIO, path: Path, target: str) -> tuple[list[str], np.ndarray, list[int]]:
    """The header, every field as text (N, K), and the line each row ends on."""
    reader = csv.reader(f, strict=True)  # a stray quote is an error, not a field that runs to the end
    try:
        header = [name.strip() for name in next(reader, [])]
        _check_header(header, path, target)
        rows, lines = [], []
        for record in reader:
            if not record:
                continue
            if len(record) != len(header):
                raise DataError(f"{path}: line {reader.line_num} has {len(record)} fields, the header has "
                                f"{len(header)}.")
            rows.append([field.strip() for field in record])
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV table (line {reader.line_num}: {exc}).") from None
    if not rows:
        raise DataError(f"{path}: a header and no rows.")
    return header, np.array(rows, dtype=str), lines


def _check_header(header: list[str], path: Path, target: str) -> None:
    if not header:
        raise DataError(f"{path}: empty; its first line must name the columns.")
    if all(_is_number(name) for name in header):
        raise DataError(f"{path}: the first line must name the columns. Got numbers ({', '.join(header[:3])}"
                        f"{', ...' if len(header) > 3 else ''}) instead.")
    seen: set[str] = set()
    for index, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: column {index + 1} of the header has no name.")
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header.")
        seen.add(name)
    if target not in seen:
        shown = ", ".join(header[:SHOWN_COLUMNS]) + (", ..." if len(header) > SHOWN_COLUMNS else "")
        raise DataError(f"{path}: no column {target!r} (data.target); the columns are {shown}.")
    if len(header) == 1:
        raise DataError(f"{path}: no feature columns besides the target {target!r}.")


def _is_number(text: str) -> bool:
    """Whether NumPy reads ``text`` as a float, as it reads a whole column."""
    try:
        np.array([text]).astype(np.float64)
    except ValueError:
        return False
    return True


def _numbers(path: Path, name: str, column: np.ndarray, lines: list[int], *, required: bool) -> np.ndarray | None:
    """The column (N,) as finite float64; None when a value is not a number and ``required`` is false."""
    try:
        values = column.astype(np.float64)
    except ValueError:
        if not required:
            return None
        row = next(i for i, text in enumerate(column) if not _is_number(text))
        raise DataError(f"{path}: column {name!r} must hold numbers; line {lines[row]} holds {column[row].item()!r}.") \
            from None
    finite = np.isfinite(values)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError(f"{path}: column {name!r} holds {column[row].item()!r} on line {lines[row]}; every value must "
                        "be finite.")
    return values
