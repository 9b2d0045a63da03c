"""Contrast transfer function (CTF) of a transmission electron microscope, in physical units.

Pure tensor functions built on teamtomo ``torch-ctf``. The conventions are RELION's, so that
parameters written to a STAR file mean exactly what RELION reads:

* Spatial frequency ``s`` in 1/Å; images are ``[y, x]`` arrays (row = y), frequencies on the
  ``rfft2`` half-plane ``(..., h, w // 2 + 1)`` unless ``rfft=False``.
* Defocus in Å, positive is underfocus. ``defocus_u_A`` is the defocus along the direction at
  ``astigmatism_angle_deg`` from the +x axis (towards +y), ``defocus_v_A`` perpendicular to it
  (RELION's ``rlnDefocusU``, ``rlnDefocusV``, ``rlnDefocusAngle``).
* Phase aberration ``γ(s) = π λ Δf(θ) s² − (π/2) Cs λ³ s⁴ + φ + arctan(A / √(1 − A²))`` with the
  relativistic wavelength ``λ`` (Å), Cs in Å, amplitude contrast fraction ``A`` and extra phase
  shift ``φ`` (phase plate, ``rlnPhaseShift`` in degrees). ``CTF = sin γ · exp(−B s² / 4)``:
  positive at low frequency for underfocus, so a particle that is bright in the projection stays
  bright in the image (RELION's sign; its images have white protein).
* The envelope ``exp(−B s² / 4)`` uses the B-factor in Å² as RELION's ``rlnCtfBfactor`` does.
"""

from __future__ import annotations

import math

import torch
import torch_ctf

#: ``h / sqrt(2 m0 e)`` (Å √V) and ``e / (2 m0 c²)`` (1/V): the constants of the relativistic
#: wavelength as RELION writes it.
_H_OVER_SQRT_2ME = 12.2643247
_RELATIVISTIC_PER_V = 0.978466e-6


def electron_wavelength_A(voltage_kV: float | torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength λ (Å) at an accelerating voltage in kV.

    ``λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²)))``: 0.019687 Å at 300 kV, 0.025079 Å at 200 kV.
    """
    v = torch.as_tensor(voltage_kV, dtype=torch.float64) * 1e3
    return _H_OVER_SQRT_2ME / torch.sqrt(v * (1.0 + v * _RELATIVISTIC_PER_V))


def _as_batch(x: float | torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(x, dtype=dtype)


def ctf_2d(
    defocus_u_A: float | torch.Tensor,
    defocus_v_A: float | torch.Tensor,
    astigmatism_angle_deg: float | torch.Tensor,
    voltage_kV: float | torch.Tensor,
    cs_mm: float | torch.Tensor,
    amplitude_contrast: float | torch.Tensor,
    pixel_size_A: float,
    image_shape: tuple[int, int],
    *,
    phase_shift_deg: float | torch.Tensor = 0.0,
    b_factor_A2: float | torch.Tensor = 0.0,
    rfft: bool = True,
) -> torch.Tensor:
    """CTF of images of ``image_shape = (h, w)`` pixels of ``pixel_size_A``; batched over parameters.

    Every parameter may be a scalar or a tensor of batch shape ``(...)`` (all broadcast together).

    Returns:
        float32 ``(..., h, w // 2 + 1)`` (``rfft=True``: the ``torch.fft.rfft2`` layout, DC at
        ``[0, 0]``) or ``(..., h, w)`` (``rfft=False``: the ``fft2`` layout).
    """
    u = _as_batch(defocus_u_A)
    v = _as_batch(defocus_v_A)
    angle = _as_batch(astigmatism_angle_deg)
    u, v, angle, volt, cs, ac, phase, bfac = torch.broadcast_tensors(
        u,
        v,
        angle,
        _as_batch(voltage_kV),
        _as_batch(cs_mm),
        _as_batch(amplitude_contrast),
        _as_batch(phase_shift_deg),
        _as_batch(b_factor_A2),
    )
    # torch-ctf parameterises astigmatism by a magnitude whose square root it takes, so it
    # must be ≥ 0: when V > U the larger defocus lies 90° away from the given angle.
    swap = v > u
    mean_um = (u + v) * 0.5e-4
    astig_um = torch.abs(u - v) * 0.5e-4
    angle = torch.where(swap, angle + 90.0, angle)
    ctf = torch_ctf.calculate_ctf_2d(
        defocus=mean_um,
        astigmatism=astig_um,
        astigmatism_angle=angle,
        voltage=volt,
        spherical_aberration=cs,
        amplitude_contrast=ac,
        phase_shift=phase,
        pixel_size=float(pixel_size_A),
        image_shape=(int(image_shape[0]), int(image_shape[1])),
        rfft=rfft,
        fftshift=False,
    )
    if bool((bfac != 0).any()):
        ctf = ctf * bfactor_envelope(bfac, pixel_size_A, image_shape, rfft=rfft)
    return ctf


def frequency_squared_2d(
    pixel_size_A: float, image_shape: tuple[int, int], *, rfft: bool = True, device: torch.device | str | None = None
) -> torch.Tensor:
    """``|s|²`` (1/Å²) on the ``rfft2`` (or ``fft2``) grid of ``(h, w)`` images: ``(h, w//2+1)``."""
    h, w = image_shape
    sy = torch.fft.fftfreq(h, d=pixel_size_A, device=device)[:, None]
    sx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(w, d=pixel_size_A, device=device)[None, :]
    return sy**2 + sx**2


def bfactor_envelope(
    b_factor_A2: float | torch.Tensor, pixel_size_A: float, image_shape: tuple[int, int], *, rfft: bool = True
) -> torch.Tensor:
    """``exp(−B s² / 4)`` for B in Å² of batch shape ``(...)``: ``(..., h, w//2+1)``."""
    b = _as_batch(b_factor_A2)
    s2 = frequency_squared_2d(pixel_size_A, image_shape, rfft=rfft)
    return torch.exp(-b[..., None, None] * s2 / 4.0)


def ctf_zero_frequencies(
    defocus_A: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    *,
    phase_shift_deg: float = 0.0,
    n_zeros: int = 5,
) -> list[float]:
    """Spatial frequencies (1/Å) of the first ``n_zeros`` zeros of a non-astigmatic CTF.

    Zeros are where ``γ(s) = kπ`` for whole k: a quadratic in ``s²`` solved exactly (the smaller
    root, before the Cs term turns the phase back). Used by the tests and for plotting.
    """
    lam = float(electron_wavelength_A(voltage_kV))
    cs_A = cs_mm * 1e7
    offset = math.radians(phase_shift_deg) + math.atan(amplitude_contrast / math.sqrt(1 - amplitude_contrast**2))
    a = -0.5 * math.pi * cs_A * lam**3  # γ = a s⁴ + b s² + offset
    b = math.pi * lam * defocus_A
    zeros: list[float] = []
    k = 1
    while len(zeros) < n_zeros and k < 10_000:
        c = offset - k * math.pi
        if a == 0.0:
            x = -c / b
        else:
            disc = b * b - 4 * a * c
            if disc < 0:
                break
            x = (-b + math.sqrt(disc)) / (2 * a)  # the root that tends to -c/b as Cs → 0
        if x > 0:
            zeros.append(math.sqrt(x))
        k += 1
    return zeros


def ctf_2d_defocus_offsets(
    defocus_u_A: float,
    defocus_v_A: float,
    astigmatism_angle_deg: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    pixel_size_A: float,
    image_shape: tuple[int, int],
    offsets_A: torch.Tensor,
    *,
    phase_shift_deg: float = 0.0,
    b_factor_A2: float = 0.0,
) -> torch.Tensor:
    """CTFs ``(B, h, w//2+1)`` of particles of one micrograph whose defocus is the micrograph's
    plus ``offsets_A`` ``(B,)`` (their heights in the ice), all else shared.

    Equal to :func:`ctf_2d` with ``defocus_u_A + offset`` and ``defocus_v_A + offset``, but the
    micrograph's phase (astigmatism, Cs, amplitude contrast) comes from ``torch-ctf`` once, as
    ``exp(−iγ₀)``, and each particle only adds ``−π λ Δz s²``: two sines per frequency.
    """
    u, v, angle = float(defocus_u_A), float(defocus_v_A), float(astigmatism_angle_deg)
    if v > u:  # torch-ctf needs a non-negative astigmatism magnitude (see ctf_2d)
        u, v, angle = v, u, angle + 90.0
    base = torch_ctf.calculate_ctf_2d(
        defocus=(u + v) * 0.5e-4,
        astigmatism=(u - v) * 0.5e-4,
        astigmatism_angle=angle,
        voltage=float(voltage_kV),
        spherical_aberration=float(cs_mm),
        amplitude_contrast=float(amplitude_contrast),
        phase_shift=float(phase_shift_deg),
        pixel_size=float(pixel_size_A),
        image_shape=(int(image_shape[0]), int(image_shape[1])),
        rfft=True,
        fftshift=False,
        return_complex_ctf=True,
    )  # exp(−iγ₀) with torch-ctf's γ₀ = −π λ Δf s² + (π/2) Cs λ³ s⁴ − φ − arctan(...); CTF = −sin γ
    cos0, sin0 = base.real, -base.imag
    lam = float(electron_wavelength_A(voltage_kV))
    s2 = frequency_squared_2d(pixel_size_A, image_shape)
    a = math.pi * lam * torch.as_tensor(offsets_A, dtype=torch.float32).reshape(-1, 1, 1) * s2  # γ = γ₀ − a
    ctf = cos0 * torch.sin(a) - sin0 * torch.cos(a)  # −sin(γ₀ − a)
    if b_factor_A2:
        ctf = ctf * torch.exp(-float(b_factor_A2) * s2 / 4.0)
    return ctf
