"""Settings of ``cryostack run`` as plain dataclasses, read from a TOML file.

Every section is optional; a key that is not a setting is refused with the file named, so a
typo never passes silently. Example (every value shown is the default, except where noted)::

    resolution_A = 3.2          # default: measured (half-map FSC 0.143) or required
    device = "cpu"

    [wizard]                    # cryostack.particles.wizard.WizardConfig
    symmetry = "C1"
    min_subset = 200
    [wizard.engine]
    mpi = 3
    [wizard.search]             # RELION sampling of the subset searches
    healpix_order = 1

    [enhance]
    enabled = true
    views = 1
    confidence = true

    [refine]
    max_recycles = 8
    max_rounds = 4
    round_tolerance_A = 0.15      # default: 5 % of the resolution
    method = "direct"
    weights = "density=60"      # default: none (the refinement's own weights)

    [validate]
    q_score = true
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryostack.errors import InputError
from cryostack.particles.wizard import WizardConfig


@dataclass(frozen=True)
class EnhanceSettings:
    """Map enhancement (``cryostack enhance``): run for maps of 4–10 Å, skipped outside that range.
    The enhanced map is for looking and building; docking, refinement and validation use the
    experimental map."""

    enabled: bool = True
    views: int = 1  # rotated passes averaged
    confidence: bool = True  # also write the per-voxel confidence map (4 passes)


@dataclass(frozen=True)
class RefineSettings:
    """The refinement stage (``cryostack refine``'s options)."""

    max_recycles: int = 8
    max_rounds: int = 4
    round_tolerance_A: float | None = None  # None: 5 % of the resolution
    method: str = "direct"
    weights: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class ValidateSettings:
    """The final validation; the Q-score is the slow part on large models."""

    q_score: bool = True


@dataclass(frozen=True)
class RunConfig:
    """Everything ``cryostack run`` can be told; printed back in the report."""

    resolution_A: float | None = None
    device: str = "cpu"
    wizard: WizardConfig = field(default_factory=WizardConfig)
    enhance: EnhanceSettings = field(default_factory=EnhanceSettings)
    refine: RefineSettings = field(default_factory=RefineSettings)
    validate: ValidateSettings = field(default_factory=ValidateSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, **overrides: Any) -> tuple[RunConfig, str]:
    """The settings of ``path`` (TOML; ``None``: defaults) with ``overrides`` applied to the top
    level (command-line values), and the file's text for the report."""
    text = ""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such config file")
        text = path.read_text()
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(path, f"not valid TOML: {exc}") from None
    for key, value in overrides.items():
        if value is not None:
            raw[key] = value
    return _build(RunConfig, raw, path, ""), text


def _build(cls, values: dict, path: Path | None, where: str, defaults=None):
    """``defaults`` (an instance of ``cls``) with ``values`` replaced; nested tables start from
    the field's own default (``[wizard.search]`` from the wizard's search sampling, not from a
    bare ``Sampling()``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    kwargs = {}
    for key, value in values.items():
        name = f"{where}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise InputError(path, f"unknown setting {name!r} (known{' in [' + where[:-1] + ']' if where else ''}: {known})")  # fmt: skip
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise InputError(path, f"{name} must be a table ([{name}])")
            kwargs[key] = _build(type(default), value, path, f"{name}.", default)
        else:
            # the declared type decides (a float setting whose default happens to be an int)
            if hints.get(key) is float and isinstance(value, int | float) and not isinstance(value, bool):
                value, default = float(value), float(default)
            kwargs[key] = _coerce(value, default, name, path)
    return dataclasses.replace(defaults, **kwargs)


def _coerce(value: Any, default: Any, name: str, path: Path | None) -> Any:
    if isinstance(value, list) and default is None:
        return tuple(value)
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise InputError(path, f"{name} must be a list, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(path, f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if default is not None and not isinstance(value, type(default)):
        raise InputError(path, f"{name} must be a {type(default).__name__}, got {value!r}")
    return value
