"""Particle images → the encoder's input: fixed physical sampling, CTF phase flipped, normalised.

Kept apart from the network (as in Boltz/OpenFold), so training, ``particles rank`` and
``particles embed`` see exactly the same pixels. For each image (``(B, n, n)`` at ``p`` Å/pixel):

1. **Phase flip** at the image's own sampling: the Fourier transform is multiplied by the sign of
   its CTF (RELION conventions: defocus U/V and angle, voltage, Cs, amplitude contrast, phase
   shift). Doing it before any resampling keeps the CTF's fast oscillations (high defocus, large
   boxes) on the finest frequency grid the data has.
2. **Resample to** :attr:`FeatureSpec.pixel_size_A` by cropping (or zero-padding) the centred
   Fourier transform to ``m = round(n · p / p_target)`` pixels. Images are never resized by
   pixel count alone: a particle of 150 Å spans the same number of input pixels whatever the
   detector. (The realised sampling is ``n · p / m``, within half a pixel over the box of the
   target; :func:`realised_pixel_size_A` reports it.)
3. **Box**: a centre crop (or zero pad) to :attr:`FeatureSpec.box_px`, so the field of view is
   ``box_px · pixel_size_A`` Å whatever the input box.
4. **Normalise** each image to zero mean and unit standard deviation over the pixels it has
   (before padding), so padding is exactly the mean.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cryostack.density.ctf import ctf_2d


@dataclass(frozen=True)
class FeatureSpec:
    """The encoder's input: ``box_px`` square pixels of ``pixel_size_A`` Å (field of view in Å:
    :attr:`field_of_view_A`)."""

    pixel_size_A: float = 3.0
    box_px: int = 64

    @property
    def field_of_view_A(self) -> float:
        return self.pixel_size_A * self.box_px

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CtfParams:
    """Per-image CTF parameters ``(B,)`` in RELION's units (Å, degrees, kV, mm)."""

    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    angle_deg: np.ndarray
    voltage_kV: np.ndarray
    cs_mm: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift_deg: np.ndarray

    def take(self, rows: np.ndarray) -> CtfParams:
        return CtfParams(**{k: np.asarray(v)[rows] for k, v in self.__dict__.items()})

    @classmethod
    def from_micrograph(cls, ctf: dict, n: int, dz_A: np.ndarray | None = None) -> CtfParams:
        """``n`` images of one simulated micrograph (a :class:`~cryostack.particles.simulate.MicrographBatch`
        CTF dict), each at its own defocus offset ``dz_A``."""
        dz = np.zeros(n) if dz_A is None else np.asarray(dz_A, dtype=np.float64)

        def full(key: str) -> np.ndarray:
            return np.full(n, float(ctf[key]))

        return cls(
            defocus_u_A=full("defocus_u_A") + dz,
            defocus_v_A=full("defocus_v_A") + dz,
            angle_deg=full("angle_deg"),
            voltage_kV=full("voltage_kV"),
            cs_mm=full("cs_mm"),
            amplitude_contrast=full("amplitude_contrast"),
            phase_shift_deg=full("phase_shift_deg"),
        )


def ctf_params_from_set(pset, rows: np.ndarray | None = None) -> CtfParams | None:
    """The CTF of particles ``rows`` of a :class:`~cryostack.io.particles.ParticleSet`, or None
    when the set has no defocus (images are then used without phase flipping)."""
    if not pset.has("rlnDefocusU"):
        return None
    n = len(pset)
    idx = np.arange(n) if rows is None else np.asarray(rows)

    def col(name: str, default: float | None = None) -> np.ndarray:
        if pset.has(name):
            return np.asarray(pset.column(name), dtype=np.float64)[idx]
        if default is None:
            raise KeyError(name)
        return np.full(len(idx), default)

    u = col("rlnDefocusU")
    return CtfParams(
        defocus_u_A=u,
        defocus_v_A=col("rlnDefocusV") if pset.has("rlnDefocusV") else u,
        angle_deg=col("rlnDefocusAngle", 0.0),
        voltage_kV=col("rlnVoltage", 300.0),
        cs_mm=col("rlnSphericalAberration", 2.7),
        amplitude_contrast=col("rlnAmplitudeContrast", 0.1),
        phase_shift_deg=col("rlnPhaseShift", 0.0),
    )


def resampled_size(n_px: int, pixel_size_A: float, target_A: float) -> int:
    """Pixels of an ``n_px`` box of ``pixel_size_A`` brought to ``target_A`` (even, at least 2)."""
    m = max(2, int(round(n_px * pixel_size_A / target_A)))
    return m + (m % 2)


def realised_pixel_size_A(n_px: int, pixel_size_A: float, target_A: float) -> float:
    """The sampling the Fourier resampling of :func:`featurize` actually gives (Å/pixel)."""
    return n_px * pixel_size_A / resampled_size(n_px, pixel_size_A, target_A)


def _ctf_sign(ctf: CtfParams, pixel_size_A: float, m: int, device: torch.device) -> torch.Tensor:
    """Sign of each image's CTF ``(B, m, m // 2 + 1)`` on the rfft grid of an ``m`` box of ``pixel_size_A``."""
    c = ctf_2d(
        torch.tensor(np.asarray(ctf.defocus_u_A, dtype=np.float32)),
        torch.tensor(np.asarray(ctf.defocus_v_A, dtype=np.float32)),
        torch.tensor(np.asarray(ctf.angle_deg, dtype=np.float32)),
        torch.tensor(np.asarray(ctf.voltage_kV, dtype=np.float32)),
        torch.tensor(np.asarray(ctf.cs_mm, dtype=np.float32)),
        torch.tensor(np.asarray(ctf.amplitude_contrast, dtype=np.float32)),
        pixel_size_A,
        (m, m),
        phase_shift_deg=torch.tensor(np.asarray(ctf.phase_shift_deg, dtype=np.float32)),
    ).to(device)
    return torch.where(c < 0, -1.0, 1.0)


def phase_flip(images: torch.Tensor, ctf: CtfParams, pixel_size_A: float) -> torch.Tensor:
    """Images ``(B, n, n)`` multiplied in Fourier space by the sign of their CTF."""
    n = images.shape[-1]
    sign = _ctf_sign(ctf, pixel_size_A, n, images.device)
    return torch.fft.irfft2(torch.fft.rfft2(images) * sign, s=images.shape[-2:])


def flip_and_downsample(images: torch.Tensor, ctf: CtfParams | None, pixel_size_A: float, m: int) -> torch.Tensor:
    """:func:`phase_flip` then :func:`fourier_resample` to ``m`` ≤ ``n`` pixels in one Fourier pass.

    The frequencies an ``m`` crop keeps are exactly those of an ``m`` grid at ``n · p / m`` Å/pixel,
    so the CTF is evaluated there: the same signs as flipping at full size, at (m/n)² the cost.
    """
    n = images.shape[-1]
    if m > n:
        raise ValueError(f"flip_and_downsample: {m} > {n} pixels; use phase_flip and fourier_resample")
    f = torch.fft.rfft2(images)
    h = m // 2
    f = torch.cat([f[..., :h, : h + 1], f[..., n - h :, : h + 1]], dim=-2)
    if ctf is not None:
        f = f * _ctf_sign(ctf, n * pixel_size_A / m, m, images.device)
    return torch.fft.irfft2(f, s=(m, m)) * (m * m) / (n * n)


def fourier_resample(images: torch.Tensor, m: int) -> torch.Tensor:
    """Images ``(B, n, n)`` → ``(B, m, m)`` over the same field of view, by cropping or zero-padding
    their centred Fourier transform (a band limit, not an interpolation)."""
    n = images.shape[-1]
    if m == n:
        return images
    f = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1))
    if m < n:
        lo = n // 2 - m // 2
        f = f[..., lo : lo + m, lo : lo + m]
    else:
        lo = m // 2 - n // 2
        out = torch.zeros((*f.shape[:-2], m, m), dtype=f.dtype, device=f.device)
        out[..., lo : lo + n, lo : lo + n] = f
        f = out
    return torch.fft.ifft2(torch.fft.ifftshift(f, dim=(-2, -1))).real * (m * m) / (n * n)


def featurize(
    images: np.ndarray | torch.Tensor,
    pixel_size_A: float,
    ctf: CtfParams | None,
    spec: FeatureSpec = FeatureSpec(),
    *,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Encoder input ``(B, box, box)`` float32 from images ``(B, n, n)`` of ``pixel_size_A`` Å
    (see the module docstring). ``ctf`` None skips the phase flip (CTF-corrected or simulated
    CTF-free images)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) if not torch.is_tensor(images) else images)
    x = x.to(device=device, dtype=torch.float32)
    if x.ndim == 2:
        x = x[None]
    n = x.shape[-1]
    m = resampled_size(n, pixel_size_A, spec.pixel_size_A)
    if m <= n and n % 2 == 0:
        x = flip_and_downsample(x, ctf, pixel_size_A, m)
    else:
        if ctf is not None:
            x = phase_flip(x, ctf, pixel_size_A)
        x = fourier_resample(x, m)
    m, b = x.shape[-1], spec.box_px
    if m > b:
        lo = m // 2 - b // 2
        x = x[..., lo : lo + b, lo : lo + b]
    mean = x.mean(dim=(-2, -1), keepdim=True)
    sd = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    x = (x - mean) / sd
    if m < b:
        lo = b // 2 - m // 2
        out = torch.zeros((*x.shape[:-2], b, b), dtype=x.dtype, device=x.device)
        out[..., lo : lo + m, lo : lo + m] = x
        x = out
    return x.contiguous()


def covers_particle(diameter_A: float, spec: FeatureSpec) -> bool:
    """Whether the encoder's field of view holds a particle of ``diameter_A`` Å with some margin."""
    return diameter_A * 1.1 <= spec.field_of_view_A and math.isfinite(diameter_A)
