"""What the simulator puts in a box besides a clean particle: the junk types and their specimens.

A junk image is built like a real one: everything in the beam (particles, carbon, ice) is a
*projected specimen* in the units of the particle projections (the sum of map values along the
beam, i.e. ``∫ρ dz / pixel size``), which then goes through the same CTF and noise as a good
particle. This module draws the specimens that are not particles (carbon film, ice); the
particle-based junk (aggregates, off-centre, fragments, wrong size, overlapping neighbours) is
assembled from projections in :mod:`cryostack.particles.simulate`.

Junk types (the ``rlnCryostackJunkType`` label; ``good`` is a clean, centred particle):

============== =============================================================================
``empty_ice``   no particle: amorphous ice and shot noise only (a false pick on background)
``carbon_edge`` the edge of the carbon support film crossing the box (dense, textured half-plane)
``ice_blob``    surface ice contamination: one to three dense, thick ellipsoidal blobs
``crystalline_ice`` a patch of crystalline ice: thick, with a hexagonal lattice at the real ice
                spacings (3.90 / 3.67 / 3.44 / 2.25 Å) where the pixel size resolves them, and
                bend contours
``aggregate``   two to five particles clumped together at random poses
``off_centre``  one particle whose centre is 30–50 % of the box away from the box centre
``fragment``    a random part of the structure (a sphere around a random atom: 15–60 % of it)
``wrong_size``  a scaled copy of the structure (×0.55–0.8 or ×1.25–1.6) or another structure
``overlap``     a centred particle with one or two neighbours touching or overlapping it
============== =============================================================================
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Every label, in the order of their integer codes (``rlnCryostackJunkClass``).
JUNK_TYPES: tuple[str, ...] = (
    "good",
    "empty_ice",
    "carbon_edge",
    "ice_blob",
    "crystalline_ice",
    "aggregate",
    "off_centre",
    "fragment",
    "wrong_size",
    "overlap",
)
#: Junk types drawn without any particle in the box.
SPECIMEN_JUNK = ("empty_ice", "carbon_edge", "ice_blob", "crystalline_ice")
#: Junk types made of particle projections.
PARTICLE_JUNK = ("aggregate", "off_centre", "fragment", "wrong_size", "overlap")

#: Lattice plane spacings (Å) of hexagonal ice Ih (100), (002), (101) and cubic ice (220).
ICE_SPACINGS_A = (3.90, 3.67, 3.44, 2.25)
#: Mass density of vitreous/crystalline ice relative to protein (0.93 / 1.35 g/cm³).
ICE_RELATIVE_DENSITY = 0.69
#: Amorphous carbon relative to protein (about 2.0 / 1.35 g/cm³).
CARBON_RELATIVE_DENSITY = 1.5


def _coords_A(size: int, pixel_size_A: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres ``(y, x)`` in Å relative to the box centre (pixel ``size // 2``): ``(size, size)`` each."""
    c = (torch.arange(size, dtype=torch.float32) - size // 2) * pixel_size_A
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return yy, xx


def random_field(rng: np.random.Generator, size: int, pixel_size_A: float, correlation_A: float) -> torch.Tensor:
    """A ``(size, size)`` Gaussian random field with unit SD and a Gaussian correlation of
    ``correlation_A`` Å (white noise low-passed in Fourier space)."""
    white = torch.from_numpy(rng.standard_normal((size, size)).astype(np.float32))
    s2 = torch.fft.fftfreq(size, d=pixel_size_A)[:, None] ** 2 + torch.fft.rfftfreq(size, d=pixel_size_A)[None, :] ** 2
    f = torch.fft.rfft2(white) * torch.exp(-2.0 * math.pi**2 * correlation_A**2 * s2)
    field = torch.fft.irfft2(f, s=(size, size))
    return field / field.std().clamp_min(1e-12)


def carbon_edge(rng: np.random.Generator, size: int, pixel_size_A: float, density: float) -> tuple[torch.Tensor, dict]:
    """Projected carbon film on one side of a wavy edge crossing the box: ``(size, size)`` and its parameters.

    ``density`` is the mean protein map value (per voxel) of the source; the film is 50–200 Å
    thick at :data:`CARBON_RELATIVE_DENSITY`, with 10 % thickness variation at 5–15 Å scale and
    amorphous texture near the pixel scale, so its Thon rings show after the CTF.
    """
    y, x = _coords_A(size, pixel_size_A)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    offset = rng.uniform(-0.3, 0.3) * size * pixel_size_A
    thickness = rng.uniform(50.0, 200.0)
    n = (math.cos(theta), math.sin(theta))
    along = -x * n[1] + y * n[0]
    wobble = torch.zeros_like(along)
    for _ in range(3):
        wavelength = rng.uniform(40.0, 200.0)
        wobble += rng.uniform(1.0, 6.0) * torch.sin(2 * math.pi * along / wavelength + rng.uniform(0, 2 * math.pi))
    signed = x * n[0] + y * n[1] - offset - wobble
    mask = torch.sigmoid(signed / 1.5)  # a 1.5 Å soft edge
    texture = 1.0 + 0.1 * random_field(rng, size, pixel_size_A, rng.uniform(5.0, 15.0))
    texture += 0.05 * random_field(rng, size, pixel_size_A, pixel_size_A)
    value = density * CARBON_RELATIVE_DENSITY * thickness / pixel_size_A
    return mask * texture * value, {"thickness_A": thickness, "angle_deg": math.degrees(theta), "offset_A": offset}


def ice_blobs(rng: np.random.Generator, size: int, pixel_size_A: float, density: float) -> tuple[torch.Tensor, dict]:
    """One to three thick ellipsoidal ice contaminants, at least one overlapping the box centre."""
    y, x = _coords_A(size, pixel_size_A)
    extent = size * pixel_size_A
    out = torch.zeros(size, size)
    n_blobs = int(rng.integers(1, 4))
    for k in range(n_blobs):
        a = rng.uniform(0.12, 0.5) * extent
        b = a * rng.uniform(0.6, 1.0)
        depth = rng.uniform(0.8, 2.0) * (a + b)  # contaminants are thick: their full depth projects
        r = rng.uniform(0.0, 0.25 if k == 0 else 0.6) * extent
        phi = rng.uniform(0.0, 2 * math.pi)
        cx, cy = r * math.cos(phi), r * math.sin(phi)
        rot = rng.uniform(0.0, math.pi)
        xr = (x - cx) * math.cos(rot) + (y - cy) * math.sin(rot)
        yr = -(x - cx) * math.sin(rot) + (y - cy) * math.cos(rot)
        inside = 1.0 - (xr / a) ** 2 - (yr / b) ** 2
        thickness = depth * torch.sqrt(torch.clamp(inside, min=0.0))
        out += thickness
    rough = 1.0 + 0.05 * random_field(rng, size, pixel_size_A, 8.0)
    value = density * ICE_RELATIVE_DENSITY / pixel_size_A
    # Smooth the ellipsoid rims over ~2 Å: a hard rim would ring through the CTF like a step.
    out = _gaussian_blur(out * rough, 2.0 / pixel_size_A)
    return out * value, {"n_blobs": n_blobs}


def crystalline_ice(
    rng: np.random.Generator, size: int, pixel_size_A: float, density: float
) -> tuple[torch.Tensor, dict]:
    """A thick crystalline-ice patch with a hexagonal lattice (where resolved) and bend contours."""
    y, x = _coords_A(size, pixel_size_A)
    extent = size * pixel_size_A
    a = rng.uniform(0.4, 1.5) * extent
    b = a * rng.uniform(0.5, 1.0)
    r = rng.uniform(0.0, 0.3) * extent
    phi = rng.uniform(0.0, 2 * math.pi)
    rot = rng.uniform(0.0, math.pi)
    xr = (x - r * math.cos(phi)) * math.cos(rot) + (y - r * math.sin(phi)) * math.sin(rot)
    yr = -(x - r * math.cos(phi)) * math.sin(rot) + (y - r * math.sin(phi)) * math.cos(rot)
    patch = torch.sigmoid((1.0 - torch.sqrt((xr / a) ** 2 + (yr / b) ** 2)) * a / 3.0)
    thickness = rng.uniform(150.0, 500.0)
    resolved = [d for d in ICE_SPACINGS_A if d > 2.05 * pixel_size_A]
    lattice = torch.zeros_like(x)
    spacing = None
    if resolved:
        spacing = float(resolved[int(rng.integers(len(resolved)))])
        base = rng.uniform(0.0, math.pi / 3)
        for j in range(3):  # three plane waves 60° apart: a hexagonal lattice
            ang = base + j * math.pi / 3
            lattice += torch.cos(
                2 * math.pi * (x * math.cos(ang) + y * math.sin(ang)) / spacing + rng.uniform(0, 2 * math.pi)
            )
        lattice /= 3.0
    contour_A = rng.uniform(100.0, 400.0)  # bend contours: bands far wider than the lattice
    cang = rng.uniform(0.0, math.pi)
    bend = torch.cos(2 * math.pi * (x * math.cos(cang) + y * math.sin(cang)) / contour_A + rng.uniform(0, 2 * math.pi))
    lattice_amp = rng.uniform(0.1, 0.4)
    img = patch * (1.0 + lattice_amp * lattice + 0.1 * bend)
    value = density * ICE_RELATIVE_DENSITY * thickness / pixel_size_A
    return img * value, {"lattice_spacing_A": spacing, "thickness_A": thickness}


def _gaussian_blur(img: torch.Tensor, sigma_px: float) -> torch.Tensor:
    n = img.shape[-1]
    s2 = torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None, :] ** 2
    return torch.fft.irfft2(torch.fft.rfft2(img) * torch.exp(-2 * math.pi**2 * sigma_px**2 * s2), s=img.shape[-2:])


SPECIMEN_RENDERERS = {"carbon_edge": carbon_edge, "ice_blob": ice_blobs, "crystalline_ice": crystalline_ice}
