"""EDM preconditioning (Karras et al. 2022): ``D(x; σ) = c_skip x + c_out F(c_in x, c_noise)``.

``σ`` and ``σ_data`` are in the data's own unit (Å for coordinates). All functions take ``σ`` as a
tensor of any shape and return the same shape.
"""

from __future__ import annotations

import torch


def c_skip(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Weight of the noisy input in the output: ``σ_d² / (σ² + σ_d²)``."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Scale of the network output: ``σ σ_d / √(σ² + σ_d²)``."""
    return sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)


def c_in(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Scale that gives the network input unit variance: ``1 / √(σ² + σ_d²)``."""
    return 1.0 / torch.sqrt(sigma**2 + sigma_data**2)


def c_noise(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Noise conditioning fed to the network: ``ln(σ / σ_d) / 4``."""
    return 0.25 * torch.log(sigma / sigma_data)


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's λ(σ) = 1 / c_out², which gives the network target unit variance at every σ."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
