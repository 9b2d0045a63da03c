"""Particle orientations as RELION Euler angles (rot, tilt, psi) in degrees.

The viewing direction of a pose, in the map's frame, is ``Aᵀ (0, 0, 1) = (sin tilt cos rot,
sin tilt sin rot, cos tilt)``: ``rot`` and ``tilt`` choose the view, ``psi`` turns the image in
its plane. Uniform SO(3) therefore means uniform ``rot`` and ``psi`` and ``cos tilt`` uniform in
[−1, 1].
"""

from __future__ import annotations

import numpy as np


def uniform_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3)`` (rot, tilt, psi) degrees, uniform over SO(3) (Haar measure)."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return np.stack([rot, tilt, psi], axis=1)


def direction_to_rot_tilt(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) degrees of unit viewing directions ``(..., 3)`` (map frame, x y z)."""
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    tilt = np.degrees(np.arccos(np.clip(d[..., 2], -1.0, 1.0)))
    rot = np.degrees(np.arctan2(d[..., 1], d[..., 0]))
    return rot, tilt


def preferred_view_directions(rng: np.random.Generator, n_views: int) -> np.ndarray:
    """``(n_views, 3)`` random unit directions, the dominant views of a preferred-orientation set."""
    d = rng.normal(size=(n_views, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def preferred_poses(
    rng: np.random.Generator,
    n: int,
    views: np.ndarray,
    *,
    view_weights: np.ndarray | None = None,
    spread_deg: float = 8.0,
    uniform_fraction: float = 0.1,
) -> np.ndarray:
    """``(n, 3)`` poses concentrated around a few views, with a sparse uniform remainder.

    Each pose is, with probability ``uniform_fraction``, uniform over SO(3); otherwise its viewing
    direction is one of ``views`` (chosen with ``view_weights``) tilted by a random angle whose
    per-axis spread is ``spread_deg`` (a 2D Gaussian on the tangent plane), and ``psi`` is
    uniform (a preferred orientation fixes the view, not the in-plane angle).
    """
    k = len(views)
    w = np.full(k, 1.0 / k) if view_weights is None else np.asarray(view_weights, dtype=float) / np.sum(view_weights)
    out = uniform_poses(rng, n)
    concentrated = rng.uniform(size=n) >= uniform_fraction
    which = rng.choice(k, size=n, p=w)
    tangent = rng.normal(scale=np.radians(spread_deg), size=(n, 2))
    m = int(concentrated.sum())
    if m:
        v = views[which[concentrated]]
        # An orthonormal tangent basis at each view: any vector not parallel to v, crossed twice.
        helper = np.where(np.abs(v[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
        e1 = np.cross(v, helper)
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        e2 = np.cross(v, e1)
        t = tangent[concentrated]
        angle = np.linalg.norm(t, axis=1, keepdims=True)
        direction = (t[:, :1] * e1 + t[:, 1:] * e2) / np.maximum(angle, 1e-12)
        d = np.cos(angle) * v + np.sin(angle) * direction
        rot, tilt = direction_to_rot_tilt(d)
        out[concentrated, 0] = rot
        out[concentrated, 1] = tilt
    return out
