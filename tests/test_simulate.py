"""The density simulator: agreement with gemmi, physics, gradients, chunking, devices."""

from __future__ import annotations

import math

import gemmi
import numpy as np
import pytest
import torch

from cryostack.density.metrics import correlation
from cryostack.density.simulate import grid_around_atoms, resolution_to_bfactor, simulate_density
from cryostack.examples import SPIKE_NTD_MODEL
from cryostack.io.maps import GridSpec
from cryostack.io.models import read_structure


@pytest.fixture(scope="module")
def atoms():
    return read_structure(SPIKE_NTD_MODEL).atoms()


def _gemmi_map(atoms, grid: GridSpec, resolution: float, b_factors: np.ndarray) -> np.ndarray:
    """gemmi's DensityCalculatorE on the same grid (P1 cell = box, atoms shifted to the cell)."""
    st = gemmi.Structure()
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    for i, (xyz, z, b) in enumerate(zip(atoms.coords.astype(float), atoms.atomic_numbers, b_factors)):
        res = gemmi.Residue()
        res.name, res.seqid = "UNK", gemmi.SeqId(i + 1, " ")
        atom = gemmi.Atom()
        atom.name, atom.element, atom.b_iso, atom.occ = "X", gemmi.Element(int(z)), float(b), 1.0
        atom.pos = gemmi.Position(*(xyz - np.asarray(grid.origin)))
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    nz, ny, nx = grid.shape
    st.cell = gemmi.UnitCell(*grid.extent, 90, 90, 90)
    dc = gemmi.DensityCalculatorE()
    dc.d_min = resolution
    dc.blur = resolution_to_bfactor(resolution)
    dc.grid.set_unit_cell(st.cell)
    dc.grid.set_size(nx, ny, nz)
    dc.grid.fill(0)
    dc.add_model_density_to_grid(st[0])
    return np.array(dc.grid, copy=True).transpose(2, 1, 0)


@pytest.mark.parametrize(
    "resolution, voxel",
    [(3.0, (1.0, 1.0, 1.0)), (6.0, (1.7, 1.7, 1.7)), (4.0, (0.9, 1.1, 1.3))],
)
def test_matches_gemmi_density_calculator(atoms, resolution, voxel):
    # A margin large enough that gemmi's periodic wrap-around does not matter.
    grid0 = grid_around_atoms(atoms.coords, voxel[0], margin_A=12.0)
    n_xyz = np.ceil(np.asarray(grid0.extent) / np.asarray(voxel)).astype(int)
    grid = GridSpec(tuple(n_xyz[::-1]), voxel, grid0.origin)
    b = np.clip(atoms.b_factors, 5, 150)
    ours = simulate_density(
        torch.tensor(atoms.coords),
        torch.tensor(atoms.atomic_numbers),
        grid,
        resolution_A=resolution,
        b_factors=torch.tensor(b),
    ).numpy()
    ref = _gemmi_map(atoms, grid, resolution, b)
    assert correlation(ours, ref) >= 0.99
    # Same scale too, not just the same shape.
    assert ours.sum() == pytest.approx(ref.sum(), rel=0.01)


def test_integral_equals_scattering_amplitude():
    """Each normalised Gaussian integrates to its amplitude: sum(map) × voxel volume = Σ a_k."""
    coords = torch.tensor([[10.0, 11.0, 12.0], [14.3, 9.7, 11.1]])
    z = torch.tensor([6, 8])
    grid = GridSpec((48, 48, 48), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0))
    m = simulate_density(coords, z, grid, resolution_A=2.0, b_factors=torch.tensor([20.0, 30.0]))
    expected = sum(sum(gemmi.Element(int(e)).c4322.a) for e in z)
    assert float(m.sum()) * 0.5**3 == pytest.approx(expected, rel=1e-3)


def test_width_is_physical_not_voxel_based():
    """The same atom sampled at 0.5 Å and 1.0 Å gives the same density at the shared points."""
    coords = torch.tensor([[12.3, 11.8, 12.6]])
    z = torch.tensor([6])
    fine = simulate_density(coords, z, GridSpec((50, 50, 50), (0.5,) * 3), resolution_A=4.0)
    coarse = simulate_density(coords, z, GridSpec((25, 25, 25), (1.0,) * 3), resolution_A=4.0)
    # Equal up to the truncation at the cutoff radius (1e-5 of the peak).
    assert torch.allclose(fine[::2, ::2, ::2], coarse, rtol=1e-4, atol=2e-5 * float(coarse.max()))


def test_anisotropic_voxels_place_density_in_angstrom():
    coords = torch.tensor([[7.0, 9.0, 13.0]])
    grid = GridSpec((20, 15, 30), (0.5, 1.0, 1.3), (1.0, 2.0, 3.0))
    m = simulate_density(coords, torch.tensor([8]), grid, resolution_A=3.0)
    k, j, i = np.unravel_index(int(torch.argmax(m)), grid.shape)
    peak = grid.voxel_to_angstrom(np.array([k, j, i]))
    assert np.all(np.abs(peak - coords[0].numpy()) <= np.asarray(grid.voxel_size) / 2 + 1e-6)


def test_chunking_does_not_change_the_map(atoms):
    grid = grid_around_atoms(atoms.coords, 1.2, margin_A=4.0)
    c, z, b = torch.tensor(atoms.coords), torch.tensor(atoms.atomic_numbers), torch.tensor(atoms.b_factors)
    big = simulate_density(c, z, grid, resolution_A=3.5, b_factors=b)
    small = simulate_density(c, z, grid, resolution_A=3.5, b_factors=b, chunk_voxels=5000)
    assert torch.allclose(big, small, rtol=1e-5, atol=1e-6)


def test_atoms_outside_and_at_edges():
    """Atoms far outside add nothing; an atom straddling the edge adds its in-box part."""
    z = torch.tensor([6])
    big = GridSpec((40, 40, 40), (1.0,) * 3, (-20.0, -20.0, -20.0))
    half = GridSpec((40, 40, 20), (1.0,) * 3, (0.0, -20.0, -20.0))
    atom = torch.tensor([[0.4, 0.0, 0.0]])
    full = simulate_density(atom, z, big, resolution_A=3.0)
    part = simulate_density(atom, z, half, resolution_A=3.0)
    assert torch.allclose(full[:, :, 20:], part, atol=1e-7)
    far = simulate_density(torch.tensor([[500.0, 0.0, 0.0]]), z, big, resolution_A=3.0)
    assert float(far.abs().max()) == 0.0


def test_grid_cutting_through_the_model_matches_the_full_map(atoms):
    """A sub-grid whose faces cut through the model (stencils overhang it on every side) gives
    the same values and gradients as the matching block of a grid that holds every atom."""
    full = grid_around_atoms(atoms.coords, 1.5, margin_A=8.0)
    k0, j0, i0 = 7, 5, 9
    nz, ny, nx = (n - 2 * k for n, k in zip(full.shape, (k0 + 1, j0 + 2, i0 + 3)))
    origin = tuple(o + i * v for o, i, v in zip(full.origin, (i0, j0, k0), full.voxel_size))
    sub = GridSpec((nz, ny, nx), full.voxel_size, origin)
    c = torch.tensor(atoms.coords, dtype=torch.float64)
    z, b = torch.tensor(atoms.atomic_numbers), torch.tensor(atoms.b_factors, dtype=torch.float64)
    w = torch.randn(sub.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for grid, block in ((full, (slice(k0, k0 + nz), slice(j0, j0 + ny), slice(i0, i0 + nx))), (sub, ...)):
        x = c.clone().requires_grad_()
        m = simulate_density(x, z, grid, resolution_A=3.0, b_factors=b)[block]
        (m * w).sum().backward()
        grads.append((m.detach(), x.grad))
    (m_full, g_full), (m_sub, g_sub) = grads
    assert torch.allclose(m_sub, m_full, rtol=1e-10, atol=1e-12)
    assert torch.allclose(g_sub, g_full, rtol=1e-9, atol=1e-12)


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    coords = (torch.rand(4, 3, dtype=torch.float64) * 4 + 3).requires_grad_()
    b = (torch.rand(4, dtype=torch.float64) * 20 + 10).requires_grad_()
    occ = torch.ones(4, dtype=torch.float64, requires_grad=True)
    z = torch.tensor([6, 7, 8, 16])
    grid = GridSpec((10, 11, 12), (0.9, 0.9, 0.9), (0.0, 0.0, 0.0))

    def f(c, bb, o):
        return simulate_density(c, z, grid, resolution_A=2.5, b_factors=bb, occupancies=o, cutoff=1e-9)

    assert torch.autograd.gradcheck(f, (coords, b, occ), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_hand_written_gradients_at_grid_edges_and_across_chunks():
    """The backward pass is worked out by hand from the separable form: check it where stencils
    overhang the grid (padding) and where atoms fall into several chunks and stencil sizes."""
    torch.manual_seed(1)
    n = 30
    coords = (torch.rand(n, 3, dtype=torch.float64) * 12 + 1).requires_grad_()
    b = (torch.rand(n, dtype=torch.float64) * 30 + 2).requires_grad_()
    occ = (torch.rand(n, dtype=torch.float64) * 0.5 + 0.5).requires_grad_()
    z = torch.randint(6, 17, (n,))
    grid = GridSpec((14, 13, 12), (1.0, 1.1, 0.9), (0.5, -0.3, 0.2))

    w = torch.randn(grid.shape, dtype=torch.float64)  # a random upstream gradient: one scalar to check

    def f(c, bb, o):
        m = simulate_density(c, z, grid, resolution_A=3.0, b_factors=bb, occupancies=o, cutoff=1e-3, chunk_voxels=500)
        return (m * w).sum()

    assert torch.autograd.gradcheck(f, (coords, b, occ), eps=1e-6, atol=1e-6, rtol=1e-4)
    c_only = coords.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda c: f(c, b.detach(), occ.detach()), (c_only,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_fewer_gaussians_reproduce_the_blurred_profile(atoms):
    """At a few Å the resolution blur swamps the tabulated widths: 2 Gaussians per element give the
    same map as 5 (relative error at the level of the stencil truncation), and stay differentiable."""
    from cryostack.density.scattering import blurred_gaussians

    zs = torch.as_tensor(atoms.atomic_numbers)
    a, btot = blurred_gaussians(zs, resolution_to_bfactor(3.3))
    assert a.shape[1] == 2 and bool((btot > 0).all())
    a2, _ = blurred_gaussians(zs, resolution_to_bfactor(2.0))
    assert a2.shape[1] == 3  # sharper maps need more terms
    grid = grid_around_atoms(atoms.coords, 1.1)
    x = torch.as_tensor(atoms.coords, dtype=torch.float64)
    exact = simulate_density(x, zs, grid, resolution_A=3.3, cutoff=1e-7)
    fitted = simulate_density(x, zs, grid, resolution_A=3.3, cutoff=1e-7, profile_tolerance=1e-3)
    rel = float((fitted - exact).norm() / exact.norm())
    assert rel < 1e-3
    assert float(correlation(fitted.numpy(), exact.numpy())) > 0.99999


def test_gradient_pulls_atom_into_density():
    """Maximising overlap with a target map moves a displaced atom back to the target position."""
    grid = GridSpec((24, 24, 24), (1.0,) * 3)
    z = torch.tensor([6])
    target = simulate_density(torch.tensor([[12.0, 12.0, 12.0]]), z, grid, resolution_A=4.0)
    x = torch.tensor([[13.0, 11.2, 12.5]], requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    for _ in range(150):
        opt.zero_grad()
        m = simulate_density(x, z, grid, resolution_A=4.0)
        loss = -(m * target).sum() / (m.norm() * target.norm())
        loss.backward()
        opt.step()
    assert torch.linalg.norm(x.detach() - torch.tensor([12.0, 12.0, 12.0])) < 0.05


def test_many_atoms_memory_is_chunked():
    """20,000 atoms forward + backward with a small chunk: runs and gives finite gradients."""
    torch.manual_seed(1)
    n = 20_000
    coords = (torch.rand(n, 3) * 60).requires_grad_()
    z = torch.full((n,), 6)
    grid = GridSpec((60, 60, 60), (1.0,) * 3)
    m = simulate_density(coords, z, grid, resolution_A=4.0, chunk_voxels=1 << 18)
    (m**2).sum().backward()
    assert torch.isfinite(coords.grad).all() and coords.grad.abs().sum() > 0


def test_resolution_to_bfactor():
    assert resolution_to_bfactor(3.0) == pytest.approx(36.0)
    # The blur's Fourier amplitude exp(-B s²/4) falls to 1/e at s = 1/d.
    d = 4.5
    assert math.exp(-resolution_to_bfactor(d) / d**2 / 4) == pytest.approx(math.exp(-1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(atoms):
    grid = grid_around_atoms(atoms.coords, 1.0)
    c, z = torch.tensor(atoms.coords), torch.tensor(atoms.atomic_numbers)
    cpu = simulate_density(c, z, grid, resolution_A=3.0)
    gpu = simulate_density(c.cuda(), z.cuda(), grid, resolution_A=3.0).cpu()
    assert torch.allclose(cpu, gpu, rtol=1e-4, atol=1e-6)
