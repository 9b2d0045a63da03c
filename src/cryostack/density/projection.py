"""Projections of a 3D map by the Fourier slice theorem, in RELION's conventions.

Pure tensor functions on teamtomo ``torch-fourier-slice``'s layout (a zero-padded, sinc²-corrected
volume whose ``rfftn`` is ``fftshift``-ed along z and y; rotation matrices act on ``(x, y, z)``
column vectors). Conventions, checked against ``relion_project`` and ``relion_reconstruct``
in ``tests/test_particles_simulate.py``:

* Volumes are ``[z, y, x]``, images ``[y, x]``; the centre of an ``n``-voxel axis is voxel
  ``n // 2`` (RELION's and the FFT's origin), so box sizes are even.
* Euler angles are RELION's ZYZ ``(rot, tilt, psi)`` in degrees, and :func:`euler_to_matrix`
  gives RELION's matrix ``A``. The image of a particle at pose ``A`` is the projection along z of
  the map rotated by ``A``: ``image(x, y) = Σ_z V(Aᵀ (x, y, z))``, so its 2D transform is the
  central section ``F_V(Aᵀ (kx, ky, 0))``.
* Shifts are ``(x, y)`` in Å and move the image content: an image made with shift ``+s`` shows
  the particle centre at ``centre + s``. RELION's ``rlnOriginXAngst``/``rlnOriginYAngst`` are the
  opposite, ``origin = −s``: the offset that brings the particle back to the centre (measured:
  ``relion_project`` with origin ``o`` equals this projection with shift ``−o``, and
  ``relion_reconstruct`` recovers the map only with ``origin = −s``).

A full ``torch-fourier-slice`` extraction builds a slice as large as the padded volume; here the
slice is sampled on the image's own grid (any size, even smaller or larger than the volume's
box), which is what makes the particle simulator fast. :func:`extract_slices_teamtomo` is the
library's own extraction, kept as the reference the fast path is tested against.
"""

from __future__ import annotations

import math

import torch
from torch_fourier_slice import extract_central_slices_rfft_3d
from torch_fourier_slice.volume_utils import separable_sinc2_correction


# --------------------------------------------------------------------------------------------
# Euler angles
# --------------------------------------------------------------------------------------------
def euler_to_matrix(
    rot_deg: torch.Tensor | float, tilt_deg: torch.Tensor | float, psi_deg: torch.Tensor | float
) -> torch.Tensor:
    """RELION's rotation matrix ``A`` ``(..., 3, 3)`` (float64) of ZYZ Euler angles in degrees.

    ``A = R_z(psi) · R_y(tilt) · R_z(rot)`` with RELION's sign convention (each factor rotates
    the coordinate frame, so ``R_z(a) = [[cos a, sin a, 0], [−sin a, cos a, 0], [0, 0, 1]]``).
    """
    a, b, g = (torch.deg2rad(torch.as_tensor(x, dtype=torch.float64)) for x in (rot_deg, tilt_deg, psi_deg))
    a, b, g = torch.broadcast_tensors(a, b, g)
    ca, sa, cb, sb, cg, sg = torch.cos(a), torch.sin(a), torch.cos(b), torch.sin(b), torch.cos(g), torch.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], dim=-1),
        torch.stack([sc, ss, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_euler(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ZYZ Euler angles ``(rot, tilt, psi)`` in degrees of RELION matrices ``(..., 3, 3)``.

    ``tilt`` is in ``[0, 180]``; at the poles (tilt 0 or 180) rot and psi are not separable and
    ``psi`` carries the in-plane angle with ``rot = 0``.
    """
    m = torch.as_tensor(matrix, dtype=torch.float64)
    tilt = torch.arccos(torch.clamp(m[..., 2, 2], -1.0, 1.0))
    sb = torch.sin(tilt)
    pole = sb.abs() < 1e-6
    rot = torch.where(pole, torch.zeros_like(tilt), torch.atan2(m[..., 2, 1], m[..., 2, 0]))
    sgn = torch.where(m[..., 2, 2] < 0, -1.0, 1.0).to(m.dtype)
    psi = torch.where(
        pole, torch.atan2(-m[..., 1, 0] * sgn, m[..., 0, 0] * sgn), torch.atan2(m[..., 1, 2], -m[..., 0, 2])
    )
    return torch.rad2deg(rot), torch.rad2deg(tilt), torch.rad2deg(psi)


# --------------------------------------------------------------------------------------------
# Volume in Fourier space
# --------------------------------------------------------------------------------------------
def volume_rfft(volume: torch.Tensor, pad_factor: float = 2.0) -> torch.Tensor:
    """The transform to slice: ``(P, P, P//2 + 1)`` complex64, ``P ≈ pad_factor × d`` (even).

    ``volume`` is ``(d, d, d)`` ``[z, y, x]`` with its centre at voxel ``d // 2``. It is zero-padded
    about that centre, divided by the sinc² apodisation that trilinear interpolation in Fourier
    space imposes in real space (so the slices need no further correction), transformed with its
    centre at the phase origin, and ``fftshift``-ed along z and y: teamtomo's layout. Padding by 2
    oversamples the transform enough for trilinear interpolation to be accurate to well past the
    frequencies where interpolation errors would matter.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must be a cube (d, d, d), got {tuple(volume.shape)}")
    if pad_factor < 1.0:
        raise ValueError(f"pad_factor must be ≥ 1, got {pad_factor}")
    d = volume.shape[-1]
    if d % 2:
        raise ValueError(f"volume edge must be even (centre at d // 2), got {d}")
    p = 2 * int(round(d * pad_factor / 2.0))
    lo = (p - d) // 2
    padded = torch.nn.functional.pad(volume.to(torch.float32), [lo, p - d - lo] * 3)
    padded = padded / separable_sinc2_correction(padded.shape, device=padded.device)
    ft = torch.fft.rfftn(torch.fft.ifftshift(padded, dim=(-3, -2, -1)), dim=(-3, -2, -1))
    return torch.fft.fftshift(ft, dim=(-3, -2)).to(torch.complex64).contiguous()


def _slice_frequencies(image_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, 2)`` ``(kx, ky)`` frequencies (cycles/pixel) of the ``rfft2`` points of an
    ``image_size²`` image inside the Nyquist circle, and their flat indices in ``(n, n//2+1)``."""
    ky = torch.fft.fftfreq(image_size, device=device)
    kx = torch.fft.rfftfreq(image_size, device=device)
    yy, xx = torch.meshgrid(ky, kx, indexing="ij")
    inside = (yy**2 + xx**2 <= 0.25).reshape(-1)
    idx = torch.nonzero(inside).squeeze(1)
    k = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)[idx]
    return k, idx


class FourierVolume:
    """A volume ready for slicing: its :func:`volume_rfft` (``.rfft``, teamtomo's layout) and the
    same values with one zero plane appended along each axis, flattened (``.table``), which the
    trilinear gather of :func:`extract_slices` indexes without clamping."""

    def __init__(self, vol_rfft: torch.Tensor):
        self.rfft = vol_rfft
        d, h, w = vol_rfft.shape
        self.shape = (d, h, w)
        padded = torch.nn.functional.pad(torch.view_as_real(vol_rfft), (0, 0, 0, 1, 0, 1, 0, 1))
        self.table = torch.view_as_complex(padded.contiguous()).reshape(-1)

    @classmethod
    def from_volume(cls, volume: torch.Tensor, pad_factor: float = 2.0) -> FourierVolume:
        """From a real ``(d, d, d)`` volume (see :func:`volume_rfft`)."""
        return cls(volume_rfft(volume, pad_factor))

    @property
    def padded_size(self) -> int:
        return self.shape[0]


def extract_slices(volume: FourierVolume | torch.Tensor, matrices: torch.Tensor, image_size: int) -> torch.Tensor:
    """Central sections ``(B, n, n//2 + 1)`` (``rfft2`` layout, DC at ``[0, 0]``) of a volume.

    Args:
        volume: a :class:`FourierVolume`, or the ``(P, P, P//2 + 1)`` tensor of :func:`volume_rfft`.
        matrices: ``(B, 3, 3)`` RELION pose matrices ``A`` (:func:`euler_to_matrix`).
        image_size: edge ``n`` of the images, in pixels of the volume's voxel size (even).

    The section of pose ``A`` samples the volume transform at ``Aᵀ (kx, ky, 0)``; frequencies
    beyond Nyquist (1/2 cycle per pixel) are zero. Trilinear interpolation on the padded grid.
    """
    if not isinstance(volume, FourierVolume):
        volume = FourierVolume(volume)
    if image_size % 2:
        raise ValueError(f"image size must be even, got {image_size}")
    p, h, w = volume.shape
    dev = volume.table.device
    k, idx = _slice_frequencies(image_size, dev)  # (M, 2) cycles/pixel
    a = torch.as_tensor(matrices, dtype=torch.float32, device=dev).reshape(-1, 3, 3)
    # Aᵀ (kx, ky, 0): the first two rows of A, contracted with (kx, ky).
    f = torch.einsum("mi,bij->bmj", k, a[:, :2, :]) * p  # (B, M, 3) xyz, in padded-grid steps
    conj = f[..., 0] < 0  # the rfft holds x ≥ 0 only; F(−k) = conj(F(k)) for a real volume
    f = torch.where(conj[..., None], -f, f)
    # z and y are fftshift-ed (DC at P/2); x starts at DC.
    vals = _trilinear(volume.table, (p, h, w), f[..., 2] + p // 2, f[..., 1] + p // 2, f[..., 0])
    vals = torch.where(conj, vals.conj(), vals)
    out = torch.zeros(a.shape[0], image_size * (image_size // 2 + 1), dtype=torch.complex64, device=dev)
    out[:, idx] = vals
    return out.view(a.shape[0], image_size, image_size // 2 + 1)


def _trilinear(
    table: torch.Tensor, shape: tuple[int, int, int], cz: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor
) -> torch.Tensor:
    """Trilinear samples at array coordinates ``(...)`` (≥ 0) of a complex ``(D, H, W)`` volume
    given as its :attr:`FourierVolume.table`.

    The far neighbour of the last plane along each axis is the appended zero plane, which
    touches only points at exactly +Nyquist.
    """
    d, h, w = shape
    h1, w1 = h + 1, w + 1
    z0f, y0f, x0f = torch.floor(cz), torch.floor(cy), torch.floor(cx)
    tz, ty, tx = cz - z0f, cy - y0f, cx - x0f
    base = ((z0f.clamp_(0, d - 1) * h1 + y0f.clamp_(0, h - 1)) * w1 + x0f.clamp_(0, w - 1)).long().reshape(-1)
    out: torch.Tensor | None = None
    # 1-D index_select on complex64 is several times faster than advanced indexing of rows.
    for dz, wz in ((0, 1 - tz), (h1 * w1, tz)):
        for dy, wy in ((0, 1 - ty), (w1, ty)):
            wzy = wz * wy
            for dx, wx in ((0, 1 - tx), (1, tx)):
                v = table.index_select(0, base + (dz + dy + dx)).view(cz.shape) * (wzy * wx)
                out = v if out is None else out.add_(v)
    assert out is not None
    return out


def extract_slices_teamtomo(vol_rfft: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """The same sections with ``torch_fourier_slice.extract_central_slices_rfft_3d``, on the padded
    grid: ``(B, P, P//2 + 1)`` in ``rfft2`` layout (DC at ``[0, 0]``). The reference for
    :func:`extract_slices` (slower: its slice is as large as the padded volume)."""
    a = torch.as_tensor(matrices, dtype=torch.float32).reshape(-1, 3, 3)
    slices = extract_central_slices_rfft_3d(vol_rfft, a.transpose(-1, -2), fftfreq_max=0.5)
    return torch.fft.ifftshift(slices, dim=-2)


# --------------------------------------------------------------------------------------------
# 2D operations in Fourier space
# --------------------------------------------------------------------------------------------
def phase_shift(images_rfft: torch.Tensor, shifts_A: torch.Tensor, pixel_size_A: float) -> torch.Tensor:
    """Shift images ``(B, n, n//2+1)`` (``rfft2``) by ``shifts_A`` ``(B, 2)`` ``(x, y)`` Å.

    Multiplies by ``exp(−2πi (kx sx + ky sy))``: the content moves by ``+s``. Sub-pixel shifts are
    exact for band-limited images (periodic in the box).
    """
    n = images_rfft.shape[-2]
    s = torch.as_tensor(shifts_A, dtype=torch.float64, device=images_rfft.device).reshape(-1, 2) / pixel_size_A
    kx = torch.fft.rfftfreq(n, device=images_rfft.device, dtype=torch.float64)
    ky = torch.fft.fftfreq(n, device=images_rfft.device, dtype=torch.float64)
    # Separable: exp(−2πi kx sx) ⊗ exp(−2πi ky sy) costs O(n) exponentials per image, not O(n²).
    ex = torch.polar(torch.ones_like(kx[None, :]), -2 * math.pi * kx[None, :] * s[:, :1]).to(torch.complex64)
    ey = torch.polar(torch.ones_like(ky[None, :]), -2 * math.pi * ky[None, :] * s[:, 1:]).to(torch.complex64)
    return images_rfft * ey[:, :, None] * ex[:, None, :]


def images_from_rfft(images_rfft: torch.Tensor) -> torch.Tensor:
    """Real images ``(B, n, n)`` with their centre at pixel ``n // 2`` from ``rfft2`` spectra whose
    phase origin is the image centre (as :func:`extract_slices` returns them)."""
    n = images_rfft.shape[-2]
    return torch.fft.fftshift(torch.fft.irfft2(images_rfft, s=(n, n)), dim=(-2, -1))


def images_to_rfft(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`images_from_rfft`: ``(B, n, n)`` → ``(B, n, n//2+1)`` with the centre
    pixel ``n // 2`` at the phase origin."""
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))


def project(
    volume: torch.Tensor,
    rot_deg,
    tilt_deg,
    psi_deg,
    *,
    shifts_A: torch.Tensor | None = None,
    pixel_size_A: float = 1.0,
    image_size: int | None = None,
    pad_factor: float = 2.0,
) -> torch.Tensor:
    """Projections ``(B, n, n)`` of ``volume`` ``(d, d, d)`` at RELION poses (degrees, shape ``(B,)``).

    Convenience over :func:`volume_rfft`, :func:`extract_slices`, :func:`phase_shift` and
    :func:`images_from_rfft`; ``image_size`` defaults to ``d``. Pixel values are sums of voxel
    values along the beam.
    """
    n = int(image_size or volume.shape[-1])
    a = euler_to_matrix(rot_deg, tilt_deg, psi_deg).reshape(-1, 3, 3)
    ft = extract_slices(FourierVolume.from_volume(volume, pad_factor), a, n)
    if shifts_A is not None:
        ft = phase_shift(ft, shifts_A, pixel_size_A)
    return images_from_rfft(ft)
