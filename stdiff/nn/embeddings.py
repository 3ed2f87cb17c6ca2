"""Fixed sinusoidal features: positions of frames and the diffusion-noise conditioning."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_positions(n: int, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer position features ``(n, dim)`` for positions 0..n-1 (Vaswani et al. 2017)."""
    if dim % 2:
        raise ValueError(f"position embedding width must be even, got {dim}")
    freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = torch.arange(n, dtype=torch.float64)[:, None] * freqs[None, :]  # (n, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


def sinusoidal_grid(shape: tuple[int, ...], dim: int) -> Tensor:
    """Fixed position features ``(prod(shape), dim)`` for the points of a 1-D or 2-D grid in
    row-major order; in 2-D, half of the channels encode the row and half the column (the fixed
    2-D sin-cos embedding of DiT / MAE)."""
    if len(shape) == 1:
        return sinusoidal_positions(shape[0], dim)
    if dim % 4:
        raise ValueError(f"a 2-D position embedding needs a width divisible by 4, got {dim}")
    rows = sinusoidal_positions(shape[0], dim // 2)[:, None, :].expand(*shape, dim // 2)
    cols = sinusoidal_positions(shape[1], dim // 2)[None, :, :].expand(*shape, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(-1, dim)


class NoiseEmbedding(nn.Module):
    """Embeds a conditioning scalar per sample, ``c (B,) -> (B, D)``: Fourier features with
    geometrically spaced frequencies, then a two-layer MLP (as DiT's ``TimestepEmbedder``).

    The diffusion layer passes the log-SNR, which spans about [-20, 20] for every schedule, so
    the frequencies cover periods from ~0.6 to ~600 log-SNR units.

    Args:
        width: D, the output width.
        features: number of Fourier features (even).
        min_freq, max_freq: the frequency range in radians per unit of the input.
    """

    def __init__(self, width: int, features: int = 128, min_freq: float = 1e-2, max_freq: float = 10.0) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), features // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c: Tensor) -> Tensor:
        """``c (B,)`` -> ``(B, D)``."""
        angles = c.float()[:, None] * self.freqs[None, :]  # (B, F/2)
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1))
