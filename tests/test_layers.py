"""The package's layers hold: a lower layer never imports a higher one (docs/architecture.md).

Checked two ways: statically, every ``import`` in every module (function-level imports too), and
at run time, importing each layer in a fresh interpreter and listing what it pulled in.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cryostack"

#: Layer of each top-level package or module of ``cryostack``, lowest first.
LAYERS: dict[str, int] = {
    "errors": 0,
    "examples": 0,
    "io": 1,
    "chem": 2,
    "density": 3,
    "geometry": 3,
    "data": 4,
    "learn": 5,
    "nn": 5,
    "refine": 6,
    "particles": 6,
    "enhance": 6,
    "build": 6,
    "validate": 7,
    "pipeline": 8,
    "report": 8,
    "cli": 9,
    "__init__": 9,  # the package's convenience re-exports
}
#: Different packages on one layer that may use each other (pure physics; training and its blocks).
SAME_LAYER_ALLOWED = {frozenset({"density", "geometry"}), frozenset({"learn", "nn"}), frozenset({"pipeline", "report"})}


def _package_of(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.suffix == ".py" else rel.parts[0]


def _imported_packages(module_path: Path) -> set[str]:
    tree = ast.parse(module_path.read_text(), filename=str(module_path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "cryostack" and len(parts) > 1:
                found.add(parts[1])
    return found


def _allowed(importer: str, imported: str) -> bool:
    if importer == imported:
        return True
    a, b = LAYERS[importer], LAYERS[imported]
    return b < a or (a == b and frozenset({importer, imported}) in SAME_LAYER_ALLOWED)


def test_every_package_has_a_layer():
    packages = {_package_of(p) for p in SRC.rglob("*.py")}
    assert packages <= set(LAYERS), f"give these a layer in LAYERS and docs/architecture.md: {packages - set(LAYERS)}"


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        importer = _package_of(path)
        for imported in _imported_packages(path):
            if imported in LAYERS and not _allowed(importer, imported):
                violations.append(f"{path.relative_to(SRC)} ({importer}) imports cryostack.{imported}")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("package", ["io", "chem", "density", "geometry", "data", "learn", "nn", "refine", "validate"])
def test_importing_a_layer_loads_nothing_above_it(package):
    modules = [p for p in (SRC / package).rglob("*.py") if not p.name.startswith("_promod3")]
    names = sorted(
        "cryostack." + ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__") for p in modules
    )
    code = (
        "import importlib, json, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('cryostack.')})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    above = {p for p in loaded if p in LAYERS and not _allowed(package, p)}
    assert not above, f"importing cryostack.{package} loaded higher layers {sorted(above)}"
