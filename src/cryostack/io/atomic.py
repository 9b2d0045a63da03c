"""Atomic file writes: never leave a partial output, never replace an input by accident."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
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
