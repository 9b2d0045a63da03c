"""Errors a user can act on.

Every problem with an input — a file, an argument, a combination of them — is raised as a
:class:`CryostackError` subclass whose message is one line naming what is wrong (and the file,
where there is one). The CLI prints it and exits with status 2; anything else that escapes is a
bug (exit 1). Messages name arguments (``resolution_A``, ``split``), never CLI flags, since the
same library is called from Python.
"""

from __future__ import annotations

from pathlib import Path


class CryostackError(Exception):
    """Base of every error a user can act on; ``str(err)`` is a one-line message."""


class InputError(CryostackError, ValueError):
    """A user-supplied file or value is unusable; ``str(err)`` is ``"path: problem"`` or ``"problem"``."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # keep it on one line
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


class DataAccessError(CryostackError, PermissionError):
    """A data set was asked for something its rules forbid (e.g. reading a held-out test split for training)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
