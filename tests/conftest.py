"""Shared fixtures: the real cryo-EM data in ``../shared/data`` (tests skip cleanly without it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Real maps and models, outside the repository (``<repo>/../shared/data``); read-only.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data directory; skips the test when it is not available."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_file(shared_data):
    """``shared_file("maps/x/y.mrc")`` → path of that shared file; skips the test if it is missing."""

    def get(relative: str) -> Path:
        path = shared_data / relative
        if not path.is_file():
            pytest.skip(f"shared data file not available: {path}")
        return path

    return get


def _rama_helpers():
    """``tests/data/validate_rama/helpers.py`` (a data folder, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "validate_rama_helpers", Path(__file__).parent / "data" / "validate_rama" / "helpers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cctbx_reference(tmp_path_factory) -> dict:
    """MolProbity ramalyze + cbetadev (cctbx) on every agreement structure, in one subprocess
    per test session (it takes 10–20 s): ``{name: (path, {"rama": ..., "cbeta": ...})}``.

    Shared by tests/test_ramachandran.py and tests/test_cbeta.py; skips without cctbx-base.
    """
    pytest.importorskip("mmtbx", reason="cctbx-base (mmtbx) is not installed")
    helpers = _rama_helpers()
    data = Path(__file__).parent / "data" / "validate_rama"
    backbones = data / "promod3_backbones.pdb"
    tmp = tmp_path_factory.mktemp("cctbx_ref")
    paths = helpers.agreement_inputs(backbones, data / "mixed_break_ligand_na.pdb", tmp)
    if "3MFP" in paths:
        paths["3MFP_noTER"] = helpers.strip_ter(paths["3MFP"], tmp / "3MFP_noTER.pdb")
    paths["mirrored"] = helpers.make_mirrored(backbones, tmp / "mirrored.pdb")
    ref = helpers.cctbx_reference(list(paths.values()), tmp / "reference.json")
    return {name: (path, ref[str(path)]) for name, path in paths.items()}


@pytest.fixture(scope="session")
def spike_piece():
    """``spike_piece(n)`` → the first ``n`` residues of the bundled spike NTD model's first chain
    (a real fragment; other chains dropped) as a new :class:`~cryostack.io.models.Structure`."""
    from cryostack.examples import SPIKE_NTD_MODEL
    from cryostack.io.models import Structure, read_structure

    def make(n: int) -> Structure:
        st = read_structure(SPIKE_NTD_MODEL).gemmi.clone()
        chain = st[0][0]
        for i in reversed(range(n, len(chain))):
            del chain[i]
        for ch in list(st[0])[1:]:
            st[0].remove_chain(ch.name)
        return Structure(st)

    return make


@pytest.fixture(scope="session")
def simulated_map():
    """``simulated_map(structure, resolution_A, noise=0.05, margin_A=8.0)`` → a
    :class:`~cryostack.io.maps.DensityMap` simulated from the structure (no B-factors) on 1 Å voxels
    around it, plus Gaussian noise of ``noise`` × the map's SD (seed 0; ``noise=0`` for none)."""
    import numpy as np

    from cryostack.density.simulate import grid_around_atoms, simulate_model_map
    from cryostack.io.maps import DensityMap

    def make(structure, resolution_A: float, *, noise: float = 0.05, margin_A: float = 8.0) -> DensityMap:
        grid = grid_around_atoms(structure.atoms().coords, 1.0, margin_A=margin_A)
        data = simulate_model_map(structure, grid, resolution_A, use_b_factors=False)
        if noise:
            rng = np.random.default_rng(0)
            data = data + rng.normal(0, noise * data.std(), data.shape).astype(np.float32)
        return DensityMap(data=data.astype(np.float32), voxel_size=grid.voxel_size, origin=grid.origin)

    return make


@pytest.fixture
def torchrun(tmp_path):
    """``torchrun(code)`` runs ``code`` (dedented; ``tests/`` importable) in two one-thread Gloo
    processes under ``torch.distributed.run`` and asserts they exit 0."""

    def run(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
        script = tmp_path / "torchrun_script.py"
        script.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n" + textwrap.dedent(code))
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=timeout,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    return run
