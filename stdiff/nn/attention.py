"""Attention over spatial-temporal tokens: one contract, ``forward(x (B, T, P, D)) -> (B, T, P, D)``.

A variant decides which tokens attend to which (all T·P jointly, along time only, within a frame
then along time, along time within a window) by how it reshapes the token grid before handing
sequences to a ``MultiHeadAttention`` unit. The hot path is ``F.scaled_dot_product_attention``,
which picks flash / memory-efficient kernels where it can; attention weights are materialised
only while ``capture_attention`` is active.
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stdiff._validation import check_int

AXES = ("time", "space", "joint")


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention within each of N sequences, ``(N, L, D) -> (N, L, D)``.

    While ``capture`` is set, the weights are computed explicitly, used for the output, and their
    average over the N sequences is kept in ``captured`` as ``(H, L, L)``; otherwise nothing is
    materialised.

    Args:
        width: D.
        heads: H, must divide ``width``.
        axis: what the L tokens of a sequence are, declared for the diagnostics: ``time`` (the T
            frames of one patch), ``space`` (the P patches of one frame) or ``joint`` (all T·P
            tokens, frame-major).
    """

    def __init__(self, width: int, heads: int, axis: Literal["time", "space", "joint"] = "time") -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"heads must be >= 1 and divide width={width}, got heads={heads}")
        if axis not in AXES:
            raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
        self.heads, self.axis = heads, axis
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.capture = False
        self.captured: Tensor | None = None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x (N, L, D)``; ``mask (L, L)`` boolean, True where attention is allowed."""
        n, length, width = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, width // self.heads)  # (N, L, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, H, L, D/H)
        if self.capture:
            logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (N, H, L, L)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            weights = logits.softmax(dim=-1)
            self.captured = weights.detach().float().mean(0)  # (H, L, L)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, L, D/H)
        return self.proj(out.transpose(1, 2).reshape(n, length, width))  # (N, L, D)


class Attention(nn.Module):
    """Base of the attention plug-ins: ``__init__(width, heads, …)``, ``forward(x (B, T, P, D))``.

    A user's own variant is a subclass in the user's package, selected from YAML by ``class_path``
    (``model.denoiser.init_args.backbone.init_args.attention``); extra ``__init__`` arguments come from ``init_args``.

    Args:
        width: D, the token width.
        heads: H, the number of heads; must divide ``width``.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.width, self.heads = width, heads

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``x (B, T, P, D) -> (B, T, P, D)``."""


def over_time(attend, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Apply ``attend`` along time, independently for each patch: ``(B, T, P, D) -> (B, T, P, D)``."""
    b, t, p, d = x.shape
    seqs = x.transpose(1, 2).reshape(b * p, t, d)  # (B·P, T, D)
    return attend(seqs, mask).reshape(b, p, t, d).transpose(1, 2)


def over_space(attend, x: Tensor) -> Tensor:
    """Apply ``attend`` across the patches of each frame: ``(B, T, P, D) -> (B, T, P, D)``."""
    b, t, p, d = x.shape
    return attend(x.reshape(b * t, p, d)).reshape(b, t, p, d)  # (B·T, P, D)


class FullAttention(Attention):
    """Joint attention over all T·P tokens of a sample. With one token per frame (P = 1) this is
    the paper's setting: attention mixes frames."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.attn = MultiHeadAttention(width, heads, axis="joint")

    def forward(self, x: Tensor) -> Tensor:
        b, t, p, d = x.shape
        return self.attn(x.reshape(b, t * p, d)).reshape(b, t, p, d)  # (B, T·P, D) -> (B, T, P, D)


class TemporalAttention(Attention):
    """Attention along time only, for each spatial patch separately (T tokens per sequence)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.attn = MultiHeadAttention(width, heads)

    def forward(self, x: Tensor) -> Tensor:
        return over_time(self.attn, x)


class WindowedTemporalAttention(Attention):
    """Attention along time restricted to lags ``|i − j| <= window``: the paper's truncation of
    temporal correlations beyond a lag J (Sec. 4), which fast kernel decay makes harmless.

    Args:
        width: D, the token width.
        heads: H, must divide ``width``.
        window: J >= 0, the largest lag attended to; J >= T − 1 is plain temporal attention.
    """

    def __init__(self, width: int, heads: int, window: int = 4) -> None:
        super().__init__(width, heads)
        self.window = check_int("WindowedTemporalAttention.window", window, 0)
        self.attn = MultiHeadAttention(width, heads)

    def forward(self, x: Tensor) -> Tensor:
        lag = torch.arange(x.shape[1], device=x.device)
        mask = (lag[:, None] - lag[None, :]).abs() <= self.window  # (T, T)
        return over_time(self.attn, x, mask)


class FactorizedAttention(Attention):
    """Spatial attention across the P patches of each frame, then temporal attention across the
    T frames of each patch (one block holds both, as in Latte / STDiT): cost O(T·P·(T + P))
    instead of O((T·P)²). The two steps compose without an inner residual; the block's
    residual wraps both."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.spatial = MultiHeadAttention(width, heads, axis="space")
        self.temporal = MultiHeadAttention(width, heads, axis="time")

    def forward(self, x: Tensor) -> Tensor:
        return over_time(self.temporal, over_space(self.spatial, x))


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record attention weights inside ``with capture_attention(model) as maps:``.

    After each forward pass in the block, ``maps[name]`` holds the weights of every attention unit
    of ``model`` (name = its module path, e.g. ``blocks.0.attn.attn`` or ``blocks.0.attn.temporal``),
    averaged over the batch and the other axis, as ``(H, L, L)``; row i is what query i attended
    to. The forward pass computes the same output as without capture (explicit softmax instead of
    the fused kernel, equal to float round-off).
    """
    units = {name: m for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
    maps: dict[str, Tensor] = {}
    handles = []
    for name, unit in units.items():
        unit.capture = True

        def keep(module, args, output, name=name):
            maps[name] = module.captured

        handles.append(unit.register_forward_hook(keep))
    try:
        yield maps
    finally:
        for unit in units.values():
            unit.capture, unit.captured = False, None
        for handle in handles:
            handle.remove()
