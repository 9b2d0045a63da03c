"""Byte-reproducible, atomic ``.npz`` shard files (numpy only).

Imported both by the package and by the ProMod3 worker, which runs in the *system* Python
without cryostack installed, so this module must depend on numpy and the standard library only.
``numpy.savez`` stamps each member with the current time; shards here carry a fixed time stamp
so that the same input and seed give identical bytes (checked by sha256 in the manifest).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], *, compress: bool = True) -> str:
    """Write ``arrays`` to ``path`` atomically (temp file + rename); return the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=method) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
                info.compress_type = method
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
        os.chmod(tmp, 0o644)
        digest = sha256(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a shard (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_valid_npz(path: str | Path, required: tuple[str, ...]) -> bool:
    """True when ``path`` is a complete shard holding the ``required`` arrays."""
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.testzip() is not None:
                return False
            names = {n[:-4] for n in zf.namelist()}
        return all(r in names for r in required)
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
