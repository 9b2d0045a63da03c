"""Shared fixtures: the real cryo-EM data in ``../shared/data`` (tests skip cleanly without it)."""

from __future__ import annotations

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

    spec = importlib.util.spec_from_file_location("validate_rama_helpers", Path(__file__).parent / "data" / "validate_rama" / "helpers.py")
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
