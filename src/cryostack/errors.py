"""Errors a user can act on.

Every problem with an input file is raised as :class:`InputError`, whose message is one line
naming the file and the problem. The CLI prints it and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A user-supplied file or value is unusable; ``str(err)`` is a one-line message."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # keep it on one line
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")
