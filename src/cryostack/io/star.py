"""RELION STAR files: data blocks in, data blocks out.

Reading goes through ``starfile`` (``starfile.read(path, always_dict=True)``), so every reader in
cryostack sees the same DataFrames (column names without the leading underscore, numbers parsed
as int64/float64, everything else as strings). For files above :data:`FAST_READ_MIN_BYTES` a
fast path parses the loop blocks itself: starfile walks the file one ``linecache`` line at a time
and then parses a joined copy of the text, which for a million-particle RELION 3.1 file (391 MB)
took 12.6-14.6 s CPU and 3.1 GB; the fast path 5.6-8.2 s CPU and 1.1 GB (``benchmarks/particles_io.py``). The fast path hands each loop block straight from the file to
the same ``pandas.read_csv`` call with the same options and the same numeric conversion, so the
DataFrames are identical (``tests/test_particles_io.py`` checks this on every real file); a file
it does not cover (simple key/value blocks, single quotes, unusual headers) goes to starfile.

Writing uses :func:`write_star_blocks`: tab-separated like starfile, floats written by pandas in
their shortest exact form (``300.0``, ``0.019324``), so a written file reads back to the same
DataFrame, dtypes included.
"""

from __future__ import annotations

import csv
import io
import mmap
import re
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd
import starfile

from cryostack.errors import InputError

#: Files at least this large are read with the fast loop-block parser (when it applies).
FAST_READ_MIN_BYTES = 8 << 20

#: A STAR data block: a loop (DataFrame) or a simple block (``{name: value}``).
StarBlock: TypeAlias = pd.DataFrame | dict

# The options starfile passes to read_csv for a loop block (starfile 0.5.x, parser.py).
_READ_CSV_OPTIONS = dict(
    delimiter=r"\s+",
    header=None,
    comment="#",
    keep_default_na=False,
    na_values=["nan", "NaN", "<NA>"],
    engine="c",
)
_NON_SPACE = re.compile(rb"\S")


def read_star_blocks(path: str | Path, *, fast: bool | None = None) -> dict[str, StarBlock]:
    """All data blocks of a STAR file as ``{block name: DataFrame or dict}``, in file order.

    ``fast=None`` picks the fast loop parser for files of :data:`FAST_READ_MIN_BYTES` or more;
    ``True``/``False`` force it on/off (it still hands files it does not cover to starfile).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a regular file")
    if fast is None:
        fast = path.stat().st_size >= FAST_READ_MIN_BYTES
    try:
        blocks = _read_fast(path) if fast else None
        if blocks is None:
            blocks = starfile.read(path, always_dict=True)
    except InputError:
        raise
    except Exception as exc:  # pandas/starfile errors on ragged rows, binary files, ...
        raise InputError(path, f"not a readable STAR file ({type(exc).__name__}: {exc})") from None
    if not blocks:
        raise InputError(path, "no data_ block found: not a STAR file")
    return dict(blocks)


class _Window(io.RawIOBase):
    """Bytes ``[start, end)`` of an open file, as a readable stream (no copy of the block)."""

    def __init__(self, fh, start: int, end: int):
        self._fh, self._pos, self._end = fh, start, end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._end - self._pos)
        if n <= 0:
            return 0
        self._fh.seek(self._pos)
        got = self._fh.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got


def _numericise(df: pd.DataFrame) -> pd.DataFrame:
    """starfile's post-processing: ``pd.to_numeric`` on every column that allows it."""
    for col in df.columns:
        if df[col].dtype.kind in "biuf":
            continue
        try:
            converted = pd.to_numeric(df[col])
        except (ValueError, TypeError):
            continue
        if not converted.isna().all():
            df[col] = converted
    return df


def _read_fast(path: Path) -> dict[str, StarBlock] | None:
    """Loop blocks parsed straight from the file; ``None`` when starfile must read it instead."""
    with open(path, "rb") as fh:
        if path.stat().st_size == 0:
            return None
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm.find(b"'") != -1:  # starfile rewrites ' to " before parsing; leave that to it
                return None
            heads = _block_heads(mm)
            blocks: dict[str, StarBlock] = {}
            for k, (_, head_end, name) in enumerate(heads):
                block_end = heads[k + 1][0] if k + 1 < len(heads) else len(mm)
                layout = _loop_layout(mm, head_end, block_end)
                if layout is None:
                    return None
                columns, data_start = layout
                if _NON_SPACE.search(mm, data_start, block_end) is None:
                    df = pd.DataFrame(np.zeros((0, len(columns))))
                else:
                    reader = io.BufferedReader(_Window(fh, data_start, block_end), buffer_size=1 << 20)
                    df = pd.read_csv(reader, **_READ_CSV_OPTIONS)
                    if df.shape[1] != len(columns):
                        raise InputError(
                            path, f"data_{name}: {len(columns)} columns in the header, {df.shape[1]} in the rows"
                        )
                    df = _numericise(df)
                df.columns = list(columns)
                blocks[name] = df
    return blocks


def _block_heads(mm: mmap.mmap) -> list[tuple[int, int, str]]:
    """``(line start, line end, block name)`` of every ``data_`` line (blanks before it allowed).

    A byte search for ``data_`` rather than a ``(?m)^`` regex, which tries every byte position
    (7 s on a 400 MB file); ``data_`` inside rows costs one check per occurrence.
    """
    heads = []
    pos = mm.find(b"data_")
    while pos != -1:
        start = mm.rfind(b"\n", 0, pos) + 1
        if not mm[start:pos].strip(b" \t"):
            end = mm.find(b"\n", pos)
            end = len(mm) if end == -1 else end
            heads.append((start, end, mm[pos + 5 : end].rstrip().decode()))
        pos = mm.find(b"data_", pos + 5)
    return heads


def _loop_layout(mm: mmap.mmap, pos: int, end: int) -> tuple[list[str], int] | None:
    """Column names and the offset of the first row of the loop block in ``mm[pos:end]``.

    ``None`` for anything but the plain layout (``loop_``, header lines, rows) that starfile's
    line-by-line parser reads the same way.
    """
    pos = mm.find(b"\n", pos, end) + 1 or end
    # Lines before loop_: blank or comments (starfile skips them); '_name value' is a simple block.
    while pos < end:
        nl = mm.find(b"\n", pos, end)
        nl = end if nl == -1 else nl
        line = mm[pos:nl].strip()
        pos = nl + 1
        if line.startswith(b"loop_"):
            break
        if line.startswith(b"_"):
            return None
    else:
        return None
    columns: list[str] = []
    while pos < end:
        nl = mm.find(b"\n", pos, end)
        nl = end if nl == -1 else nl
        line = mm[pos:nl].strip()
        if not line.startswith(b"_"):
            break
        columns.append(line.split()[0][1:].decode())
        pos = nl + 1
    if not columns:
        return None
    return columns, min(pos, end)


def _format_strings(col: pd.Series) -> pd.Series:
    """Quote strings that contain whitespace or are empty, as STAR readers expect."""
    s = col.astype(str)
    needs = s.str.contains(r"\s", regex=True) | (s == "")
    if needs.any():
        if s[needs].str.contains('"').any():
            raise ValueError(f"column {col.name}: a value holds both whitespace and a double quote")
        s = s.where(~needs, '"' + s + '"')
    return s


def write_star_blocks(blocks: dict[str, StarBlock], path: str | Path, *, version: int = 30001) -> None:
    """Write data blocks (loops and simple blocks) to ``path`` (not atomic: callers pass a temporary path).

    Every block is preceded by ``# version {version}`` as RELION writes it; floats are written in
    their shortest exact form, so reading the file back gives identical DataFrames.
    """
    with open(path, "w", newline="\n") as fh:
        fh.write("\n")
        for name, block in blocks.items():
            fh.write(f"# version {version}\n\ndata_{name}\n\n")
            if isinstance(block, dict):
                for key, value in block.items():
                    text = _format_strings(pd.Series([value], name=key)).iloc[0] if isinstance(value, str) else value
                    fh.write(f"_{key} {text}\n")
                fh.write("\n\n")
                continue
            fh.write("loop_\n")
            for i, column in enumerate(block.columns, 1):
                fh.write(f"_{column} #{i}\n")
            out = block.copy(deep=False)
            for column in out.columns:
                if out[column].dtype.kind not in "biuf":
                    out[column] = _format_strings(out[column])
            out.to_csv(
                fh, sep="\t", header=False, index=False, na_rep="nan", quoting=csv.QUOTE_NONE, lineterminator="\n"
            )
            fh.write("\n\n")
