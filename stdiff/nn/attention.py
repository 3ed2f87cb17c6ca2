"""Attention over spatial-temporal tokens: one contract, ``forward(x (B, T, P, D)) -> (B, T, P, D)``.

A variant decides which tokens attend to which (all T·P jointly, along time only, …) by how it
reshapes the token grid before ``attend``; projections and heads are shared code. The hot path is
``F.scaled_dot_product_attention``, which picks flash / memory-efficient kernels where it can.
"""

from __future__ import annotations

from abc import abstractmethod

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention over a grid of tokens ``(B, T, P, D)``.

    Subclasses implement ``forward`` by reshaping to ``(N, L, D)`` sequences and calling
    ``attend``. A user's own variant is a subclass in the user's package, selected from YAML by
    ``class_path``.

    Args:
        width: D, the token width.
        heads: H, the number of heads; must divide ``width``.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"heads must be >= 1 and divide width={width}, got heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def attend(self, x: Tensor) -> Tensor:
        """Self-attention within each of N sequences: ``(N, L, D) -> (N, L, D)``."""
        n, length, width = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, width // self.heads)  # (N, L, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, H, L, D/H)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, D/H)
        return self.proj(out.transpose(1, 2).reshape(n, length, width))  # (N, L, D)

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``x (B, T, P, D) -> (B, T, P, D)``."""


class FullAttention(Attention):
    """Joint attention over all T·P tokens of a sample. With one token per frame (P = 1) this is
    the paper's setting: attention mixes frames."""

    def forward(self, x: Tensor) -> Tensor:
        b, t, p, d = x.shape
        return self.attend(x.reshape(b, t * p, d)).reshape(b, t, p, d)  # (B, T·P, D) -> (B, T, P, D)
