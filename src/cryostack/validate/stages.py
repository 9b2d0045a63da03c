"""Named stages of a validation run: wall and CPU seconds each, and a hook to show progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Stages:
    """Records ``{stage: {"wall_s", "cpu_s"}}``; ``on_start(name)`` is called as each stage begins.

    CPU seconds are the whole process's user + system time (all threads), so they stay
    meaningful when other jobs share the machine and stretch the wall time.
    """

    on_start: Callable[[str], None] | None = None
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.on_start is not None:
            self.on_start(name)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry = self.seconds.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += time.process_time() - cpu


@contextmanager
def stage(stages: Stages | None, name: str) -> Iterator[None]:
    """``with stage(stages, "Q-score"):`` — times the block when ``stages`` is given."""
    if stages is None:
        yield
    else:
        with stages(name):
            yield
