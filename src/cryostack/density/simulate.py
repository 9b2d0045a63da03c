"""Differentiable atoms → density on any map grid (PyTorch, CPU or CUDA).

Each atom is a sum of 5 Gaussians (electron scattering factors, :mod:`.scattering`) whose widths
are set in Å² by the scattering factor, the atom's B-factor and a resolution term, never in
voxels. Each atom is evaluated only on the voxels within a cutoff radius of it, so cost grows
with the number of atoms, and atoms are processed in chunks so memory stays bounded.

Gaussians are separable, so for every atom and term the 3D kernel is an outer product of three
1D factors: the exponentials cost O(S) per axis instead of O(S³), and the outer product and sum
over terms is one batched matrix product. The backward pass recomputes each chunk rather than
storing it, which keeps memory flat for 100,000+ atoms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryostack.density.checks import check_model_atoms
from cryostack.density.scattering import blurred_gaussians, electron_gaussians
from cryostack.io.maps import GridSpec

#: Default relative cutoff: each atom is evaluated out to the radius where all its Gaussian terms
#: have fallen below this fraction of the atom's peak density.
DEFAULT_CUTOFF = 1e-5
#: Voxels evaluated per chunk (bounds memory: about 4 bytes × this × a few per chunk).
DEFAULT_CHUNK_VOXELS = 1 << 20


def resolution_to_bfactor(resolution_A: float) -> float:
    """B (Å²) of the Gaussian blur that models a map at ``resolution_A``.

    The blur has standard deviation ``sigma = d / (pi * sqrt(2))`` (≈ 0.225 d, as ChimeraX's
    ``molmap``): its Fourier transform falls to 1/e at spatial frequency 1/d.
    ``B = 8 pi² sigma² = 4 d²``.
    """
    if resolution_A is None or resolution_A <= 0:
        return 0.0
    return 4.0 * float(resolution_A) ** 2


@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]  # nz, ny, nx
    voxel: tuple[float, float, float]  # x, y, z Å
    origin: tuple[float, float, float]  # x, y, z Å
    pad_lo: tuple[int, int, int]  # voxels added before the grid along z, y, x (stencils that overhang)
    pad_hi: tuple[int, int, int]  # voxels added after the grid along z, y, x

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        (nz, ny, nx), (lz, ly, lx), (hz, hy, hx) = self.shape, self.pad_lo, self.pad_hi
        return (nz + lz + hz, ny + ly + hy, nx + lx + hx)

    @property
    def padded(self) -> bool:
        return any(self.pad_lo) or any(self.pad_hi)

    def crop(self, padded: torch.Tensor) -> torch.Tensor:
        """The grid's part ``(nz, ny, nx)`` of a flat padded tensor."""
        out = padded.view(self.padded_shape)
        if not self.padded:
            return out
        (z0, y0, x0), (nz, ny, nx) = self.pad_lo, self.shape
        return out[z0 : z0 + nz, y0 : y0 + ny, x0 : x0 + nx].contiguous()


def _radius_voxels(btot: torch.Tensor, norm: torch.Tensor, voxel: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Per-atom cutoff radius ``(N, 3)`` in voxels along x, y, z.

    The radius is where every Gaussian term has fallen below ``cutoff`` × the atom's peak
    density, so the truncated tail is below that fraction everywhere.
    """
    peak = norm.sum(dim=1, keepdim=True)
    ratio = torch.clamp(norm / (cutoff * peak), min=1.0)
    r2 = (btot / (4.0 * math.pi**2) * torch.log(ratio)).max(dim=1).values  # Å²
    return torch.sqrt(r2)[:, None] / voxel[None, :]


def _local_cubes(
    xyz: torch.Tensor,  # (A, 3) Å
    btot: torch.Tensor,  # (A, K) Å²
    amp: torch.Tensor,  # (A, K) Å (occupancy-weighted)
    first: torch.Tensor,  # (A, 3) first stencil voxel (x, y, z) of each atom
    size: tuple[int, int, int],  # stencil size x, y, z (voxels)
    g: _Grid,
    offsets: torch.Tensor,  # (Sz, Sy, Sx) flat offsets in the padded grid
    scratch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density of each atom on its stencil ``(A, Sz, Sy, Sx)`` and the stencil's flat padded indices.

    ``scratch``: optional flat (values, int64 indices) buffers of at least ``A × Sz × Sy × Sx``
    elements that receive the results (forward pass only: ``out=`` does not record gradients).
    Reusing them across chunks saves allocating, and page-faulting, megabytes per chunk.
    """
    alpha = (4.0 * math.pi**2) / btot  # (A, K) 1/Å²
    norm = amp * (4.0 * math.pi / btot) ** 1.5  # (A, K) peak density of each term

    fx, fy, fz = (torch.exp(-alpha[:, :, None] * (d * d)[:, None, :]) for d in _axis_offsets_A(xyz, first, size, g))
    A, K = btot.shape
    n_vox = A * size[0] * size[1] * size[2]
    zy = (norm[:, :, None, None] * fz[:, :, :, None] * fy[:, :, None, :]).reshape(A, K, -1)  # (A, K, Sz*Sy)
    cube_out = None if scratch is None else scratch[0][:n_vox].view(A, size[2] * size[1], size[0])
    cube = torch.bmm(zy.transpose(1, 2), fx, out=cube_out).view(A, size[2], size[1], size[0])

    idx_out = None if scratch is None else scratch[1][:n_vox].view(A, *offsets.shape)
    idx = torch.add(_stencil_start(first, g)[:, None, None, None], offsets[None], out=idx_out)
    return cube, idx


def _axis_offsets_A(xyz: torch.Tensor, first: torch.Tensor, size: tuple[int, int, int], g: _Grid) -> list[torch.Tensor]:
    """Per axis (x, y, z), ``(A, S)`` Å from each atom to the centres of its stencil's voxels."""
    out = []
    for axis in range(3):
        steps = torch.arange(size[axis], device=xyz.device)
        pos = (first[:, axis, None] + steps[None, :]).to(xyz.dtype) * g.voxel[axis] + g.origin[axis]
        out.append(pos - xyz[:, axis, None])
    return out


def _stencil_start(first: torch.Tensor, g: _Grid) -> torch.Tensor:
    """``(A,)`` flat index in the padded grid of each stencil's first voxel."""
    _, ny, nx = g.padded_shape
    z0, y0, x0 = g.pad_lo
    return ((first[:, 2] + z0) * ny + (first[:, 1] + y0)) * nx + (first[:, 0] + x0)


def _offsets(size: tuple[int, int, int], g: _Grid, device) -> torch.Tensor:
    _, ny, nx = g.padded_shape
    z = torch.arange(size[2], device=device)[:, None, None] * (ny * nx)
    y = torch.arange(size[1], device=device)[None, :, None] * nx
    x = torch.arange(size[0], device=device)[None, None, :]
    return z + y + x


def _plan(xyz, btot, amp, g_shape, voxel, origin, cutoff, chunk_voxels):
    """Group atoms by stencil size and chunk them; drop atoms whose stencil misses the grid.

    Returns the padded grid and a list of ``(size_xyz, atom_ids, first_voxel_xyz)`` chunks.
    """
    dev, dt = xyz.device, xyz.dtype
    vox_t = torch.tensor(voxel, device=dev, dtype=dt)
    norm = amp.detach() * (4.0 * math.pi / btot.detach()) ** 1.5
    # An atom with occupancy 0 adds nothing, and its cutoff radius (a ratio to its zero peak) is
    # undefined: it is left out of the plan rather than given a NaN stencil.
    live = norm.sum(dim=1) != 0
    radius = _radius_voxels(btot.detach(), norm, vox_t, cutoff)  # (N, 3) voxels
    radius = torch.where(live[:, None], radius, torch.zeros_like(radius))
    p = (xyz.detach() - torch.tensor(origin, device=dev, dtype=dt)) / vox_t
    first = torch.ceil(p - radius).to(torch.int64)  # covers every voxel within the radius
    size = torch.floor(2.0 * radius).to(torch.int64) + 1
    n_xyz = torch.tensor(g_shape[::-1], device=dev)
    inside = live & ((first + size > 0) & (first < n_xyz)).all(dim=1)
    if not bool(inside.any()):
        return _Grid(tuple(g_shape), tuple(voxel), tuple(origin), (0, 0, 0), (0, 0, 0)), []
    # Pad only where stencils overhang the grid (often nowhere, e.g. a box with a margin): an
    # unpadded work grid is the output itself, with no crop copy.
    lo = torch.clamp(-first[inside].min(dim=0).values, min=0).tolist()  # x, y, z
    hi = torch.clamp((first + size)[inside].max(dim=0).values - n_xyz, min=0).tolist()
    grid = _Grid(tuple(g_shape), tuple(voxel), tuple(origin), tuple(lo[::-1]), tuple(hi[::-1]))
    plan = []
    # Group by one integer key per stencil size: torch.unique over rows (dim=0) costs tens of ms
    # per call on CPU. Groups come in the same (x, y, z) lexicographic order, atoms ascending.
    atom_ids = torch.nonzero(inside).squeeze(1)
    sizes = size[atom_ids]
    m = int(sizes.max().item()) + 1
    keys, inverse, counts = torch.unique(
        (sizes[:, 0] * m + sizes[:, 1]) * m + sizes[:, 2], return_inverse=True, return_counts=True
    )
    grouped = atom_ids[torch.sort(inverse, stable=True).indices]
    start = 0
    for key, count in zip(keys.tolist(), counts.tolist()):
        ids = grouped[start : start + count]
        start += count
        sz = (key // (m * m), (key // m) % m, key % m)
        step = max(1, chunk_voxels // (sz[0] * sz[1] * sz[2]))
        for s in range(0, ids.numel(), step):
            chunk = ids[s : s + step]
            plan.append((sz, chunk, first[chunk]))
    return grid, plan


class _Splat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xyz, btot, amp, g_shape, voxel, origin, cutoff, chunk_voxels):
        grid, plan = _plan(xyz, btot, amp, g_shape, voxel, origin, cutoff, chunk_voxels)
        out = torch.zeros(math.prod(grid.padded_shape), device=xyz.device, dtype=xyz.dtype)
        # One pair of scratch buffers, sized for the largest chunk, serves every chunk.
        n_max = max((ids.numel() * math.prod(size) for size, ids, _ in plan), default=0)
        scratch = (
            torch.empty(n_max, device=xyz.device, dtype=xyz.dtype),
            torch.empty(n_max, device=xyz.device, dtype=torch.int64),
        )
        offsets = {}
        for size, ids, first in plan:
            if size not in offsets:
                offsets[size] = _offsets(size, grid, xyz.device)
            cube, idx = _local_cubes(xyz[ids], btot[ids], amp[ids], first, size, grid, offsets[size], scratch)
            # scatter_add_ on a 1-D tensor: same sums as index_add_, several times faster on CPU.
            out.scatter_add_(0, idx.reshape(-1), cube.reshape(-1))
        ctx.save_for_backward(xyz, btot, amp)
        ctx.grid, ctx.plan = grid, plan
        return grid.crop(out)

    @staticmethod
    def backward(ctx, grad_out):
        xyz, btot, amp = ctx.saved_tensors
        grid, plan = ctx.grid, ctx.plan
        (z0, y0, x0), (z1, y1, x1) = grid.pad_lo, grid.pad_hi
        gpad = torch.nn.functional.pad(grad_out.contiguous(), (x0, x1, y0, y1, z0, z1)).reshape(-1)
        need_xyz, need_b, need_amp = ctx.needs_input_grad[:3]
        g_xyz = torch.zeros_like(xyz) if need_xyz else None
        g_btot = torch.zeros_like(btot) if need_b else None
        g_amp = torch.zeros_like(amp) if need_amp else None
        offsets = {}
        for size, ids, first in plan:
            if size not in offsets:
                offsets[size] = _offsets(size, grid, xyz.device)
            gx, gb, ga = _cube_gradients(
                xyz[ids], btot[ids], amp[ids], first, size, grid, offsets[size], gpad, need_b or need_amp
            )
            if need_xyz:
                g_xyz.index_add_(0, ids, gx)
            if need_b:
                g_btot.index_add_(0, ids, gb)
            if need_amp:
                g_amp.index_add_(0, ids, ga)
        return g_xyz, g_btot, g_amp, None, None, None, None, None


def _cube_gradients(
    xyz: torch.Tensor,  # (A, 3) Å
    btot: torch.Tensor,  # (A, K) Å²
    amp: torch.Tensor,  # (A, K)
    first: torch.Tensor,  # (A, 3)
    size: tuple[int, int, int],
    g: _Grid,
    offsets: torch.Tensor,
    gpad: torch.Tensor,  # flat padded dL/d(density)
    widths: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """dL/dxyz ``(A, 3)`` and, if ``widths``, dL/dbtot and dL/damp ``(A, K)`` of a chunk of atoms.

    Worked out by hand from the separable form rather than by autograd through
    :func:`_local_cubes`: the upstream gradient on each stencil, ``G (A, Sz, Sy, Sx)``, is
    contracted with the x factors (and their derivatives) in one batched matrix product, and
    everything after that acts on ``(A, K, Sz, Sy)`` tensors, a few times smaller than the
    stencils. With ``f = exp(-α d²)`` along an axis, ``∂f/∂x_atom = 2 α d f``; with
    ``α = 4π²/B`` and the peak ``∝ B^-1.5``, ``∂ρ_k/∂B_k = (α |d|² − 1.5) ρ_k / B_k``.
    """
    A, K = btot.shape
    sx, sy, sz = size
    alpha = (4.0 * math.pi**2) / btot  # (A, K)
    peak = (4.0 * math.pi / btot) ** 1.5  # (A, K) peak density per unit amplitude
    norm = amp * peak
    f: list[torch.Tensor] = []
    df: list[torch.Tensor] = []
    d2f: list[torch.Tensor] = []  # d² f, for the width gradient only
    for d in _axis_offsets_A(xyz, first, size, g):
        d = d[:, None, :]  # (A, 1, S)
        e = torch.exp(-alpha[:, :, None] * d * d)  # (A, K, S)
        f.append(e)
        df.append(2.0 * alpha[:, :, None] * d * e)
        if widths:
            d2f.append(d * d * e)
    grad = gpad[_stencil_start(first, g)[:, None, None, None] + offsets[None]].view(A, sz * sy, sx)
    xs = [f[0], df[0]] + ([d2f[0]] if widths else [])
    pq = torch.bmm(grad, torch.cat(xs, dim=1).transpose(1, 2))  # (A, Sz*Sy, 2K or 3K)
    pq = pq.view(A, sz, sy, len(xs), K).permute(0, 3, 4, 1, 2)  # (A, 2|3, K, Sz, Sy)
    P, Q = pq[:, 0], pq[:, 1]  # G·fx and G·dfx, (A, K, Sz, Sy)
    fz, fy = f[2][:, :, :, None], f[1][:, :, None, :]
    dfz, dfy = df[2][:, :, :, None], df[1][:, :, None, :]
    gx = (norm * (fz * fy * Q).sum((2, 3))).sum(1)
    gy = (norm * (fz * dfy * P).sum((2, 3))).sum(1)
    gz = (norm * (dfz * fy * P).sum((2, 3))).sum(1)
    g_xyz = torch.stack([gx, gy, gz], dim=1)
    if not widths:
        return g_xyz, None, None
    R = pq[:, 2]  # G·(d² fx)
    s0 = (fz * fy * P).sum((2, 3))  # (A, K): Σ G f, per unit peak
    d2 = (fz * fy * R + fz * d2f[1][:, :, None, :] * P + d2f[2][:, :, :, None] * fy * P).sum((2, 3))
    g_amp = peak * s0
    g_btot = norm / btot * (alpha * d2 - 1.5 * s0)
    return g_xyz, g_btot, g_amp


def simulate_density(
    coords: torch.Tensor,
    atomic_numbers: torch.Tensor,
    grid: GridSpec,
    *,
    resolution_A: float | None = None,
    b_factors: torch.Tensor | None = None,
    occupancies: torch.Tensor | None = None,
    cutoff: float = DEFAULT_CUTOFF,
    chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
    profile_tolerance: float | None = None,
) -> torch.Tensor:
    """Simulate the electron-scattering density of atoms on ``grid``; differentiable.

    Args:
        coords: ``(N, 3)`` atom positions ``(x, y, z)`` in Å (gradients flow to them).
        atomic_numbers: ``(N,)`` integer atomic numbers.
        grid: the target sampling (shape ``(nz, ny, nx)``, voxel size and origin in Å).
        resolution_A: resolution in Å; adds a blur of ``B = 4 d²`` Å² (see
            :func:`resolution_to_bfactor`). ``None`` for no resolution blur.
        b_factors: ``(N,)`` isotropic B in Å² (gradients flow to them); 0 if omitted.
        occupancies: ``(N,)`` occupancies (gradients flow to them); 1 if omitted.
        cutoff: relative value at which each atom's widest Gaussian is truncated.
        chunk_voxels: stencil voxels evaluated at once; bounds peak memory.
        profile_tolerance: if given (and ``b_factors`` is not), each element's five Gaussians,
            blurred to ``resolution_A``, are replaced by the fewest that reproduce its profile
            within this relative error (:func:`~cryostack.density.scattering.blurred_gaussians`):
            2–3 instead of 5 at a few Å, and the cost falls with them.

    Returns:
        ``(nz, ny, nx)`` density (sum over atoms of Gaussians, in the units of the scattering
        factors, Å⁻² per Å³ volume) on ``coords``' device and dtype.
    """
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be (N, 3), got {tuple(coords.shape)}")
    n = coords.shape[0]
    dev, dt = coords.device, coords.dtype
    if occupancies is None:
        occupancies = torch.ones(n, device=dev, dtype=dt)
    if profile_tolerance is not None and b_factors is None:
        a, btot = blurred_gaussians(
            atomic_numbers.to(dev), resolution_to_bfactor(resolution_A or 0.0), tolerance=profile_tolerance, dtype=dt
        )
    else:
        a, b = electron_gaussians(atomic_numbers.to(dev), dtype=dt)
        if b_factors is None:
            b_factors = torch.zeros(n, device=dev, dtype=dt)
        btot = b + b_factors.to(dt)[:, None] + resolution_to_bfactor(resolution_A or 0.0)
    if bool((btot.detach() <= 0).any()):
        raise ValueError("total Gaussian width must be positive: check for negative B-factors")
    amp = a * occupancies.to(dt)[:, None]
    return _Splat.apply(
        coords,
        btot,
        amp,
        tuple(grid.shape),
        tuple(grid.voxel_size),
        tuple(grid.origin),
        float(cutoff),
        int(chunk_voxels),
    )


def fcalc_map(
    coords: torch.Tensor,
    atomic_numbers: torch.Tensor,
    b_factors: torch.Tensor,
    grid: GridSpec,
    resolution_A: float,
    occupancies: torch.Tensor | None = None,
    cutoff: float = DEFAULT_CUTOFF,
) -> torch.Tensor:
    """Model map ``(nz, ny, nx)`` approximating F_calc(d ≥ resolution) on ``grid``: atoms with their
    B (Å²) and occupancies, Fourier-truncated at ``1/resolution_A``; differentiable in coords and B.
    ``cutoff``: the atoms' relative truncation (:func:`simulate_density`).

    The atoms are simulated with an extra anti-aliasing blur that is divided out again in Fourier
    space, so the truncated map carries the model's own B, not a resolution blur. This is the
    model map of the validation CCs and of the B-factor fit.
    """
    from cryostack.density.fourier import frequency_squared

    vmax = float(max(grid.voxel_size))
    blur_A2 = 110.0 * vmax**2  # aliasing at Nyquist below 1e-3 of the peak
    m = simulate_density(
        coords, atomic_numbers, grid, b_factors=b_factors + blur_A2, occupancies=occupancies, cutoff=cutoff
    )
    s2 = torch.as_tensor(frequency_squared(grid.shape, grid.voxel_size), dtype=torch.float64, device=m.device)
    weight = torch.where(s2 <= 1.0 / resolution_A**2, torch.exp(blur_A2 * s2 / 4.0), torch.zeros_like(s2))
    f = torch.fft.rfftn(m.to(torch.float64)) * weight
    return torch.fft.irfftn(f, s=m.shape).to(m.dtype)


def grid_around_atoms(coords_xyz, voxel_size_A: float, margin_A: float = 5.0) -> GridSpec:
    """A grid at ``voxel_size_A`` covering the atoms ``(N, 3)`` Å plus ``margin_A`` on every side.

    The origin is snapped to a multiple of the voxel size so that maps simulated for different
    models share a lattice.
    """
    c = np.asarray(coords_xyz, dtype=np.float64).reshape(-1, 3)
    lo = np.floor((c.min(axis=0) - margin_A) / voxel_size_A) * voxel_size_A
    hi = c.max(axis=0) + margin_A
    n_xyz = np.ceil((hi - lo) / voxel_size_A).astype(int) + 1
    return GridSpec(tuple(n_xyz[::-1]), (voxel_size_A,) * 3, tuple(lo))


def simulate_model_map(
    structure,
    grid: GridSpec,
    resolution_A: float,
    *,
    use_b_factors: bool = True,
    include_hydrogens: bool = False,
    device: str = "cpu",
):
    """Simulate the map of a :class:`~cryostack.io.models.Structure` on ``grid`` (numpy ``[z, y, x]``).

    Hydrogens are left out by default, since deposited models rarely carry them consistently.
    """
    arr = structure.atoms()
    check_model_atoms(arr, structure.source)  # one line for a model with no meaningful density
    keep = slice(None) if include_hydrogens else ~arr.is_hydrogen
    t = arr.torch(device)
    b = t["b_factors"][keep] if use_b_factors else None
    with torch.no_grad():
        m = simulate_density(
            t["coords"][keep],
            t["atomic_numbers"][keep],
            grid,
            resolution_A=resolution_A,
            b_factors=b,
            occupancies=t["occupancies"][keep],
        )
    return m.cpu().numpy()
