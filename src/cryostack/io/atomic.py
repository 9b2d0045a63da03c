"""Atomic file writes: never leave a partial output, never replace an input by accident."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryostack.errors import InputError


def _new_file_mode() -> int:
    """Permission bits a newly created file gets under the current umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: str | Path, *, protect: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``protect`` lists input files that must never be overwritten by this output.
    """
    path = Path(path)
    for p in protect:
        if p is not None and Path(p).exists() and path.exists() and path.resolve() == Path(p).resolve():
            raise InputError(path, "output would overwrite an input file; choose another output path")
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        raise InputError(path, f"cannot write the output ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give the output the mode a plain open() would.
        os.chmod(tmp_path, path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(path: str | Path) -> Path:
    """Raise :class:`InputError` now, before any work, if ``path`` could not be written later:
    it names a folder, or no file can be created in its folder (tried, then removed)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "output names a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(path, f"cannot create the output: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot write the output: folder {parent} is not writable")
    try:  # permissions do not tell everything (read-only mounts, /proc, quotas): try it
        fd, probe = tempfile.mkstemp(prefix=".cryostack-write-test.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(path, f"cannot write the output in {parent} ({exc.strerror})") from None
    return path


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers, arrays as lists and non-finite floats as
    ``None`` (strict JSON)."""
    if hasattr(x, "tolist") and getattr(x, "ndim", 0) > 0:
        x = x.tolist()
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and not isinstance(x, str | bytes):
        return jsonable(x.item())
    return x
