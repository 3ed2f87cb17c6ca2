"""Diffusion transformer over spatial-temporal tokens (Peebles & Xie 2023, adaLN-Zero blocks).

``(B, T, *space)`` → tokens ``(B, T, P, D)`` (here one token per frame, P = 1, the paper's
frames-as-tokens setting) → blocks → ``(B, T, *space)``. The network knows nothing of noise
schedules: it maps ``(x_t, c)`` to a tensor shaped like ``x_t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from stdiff._validation import check_int, check_positive
from stdiff.nn.attention import Attention, FullAttention
from stdiff.nn.embeddings import NoiseEmbedding, sinusoidal_positions

AttentionFactory = Callable[[int, int], Attention]  # (width, heads) -> Attention


class Backbone(nn.Module):
    """Contract of a denoising network: ``__init__(sample_shape, …)`` and
    ``forward(x (B, T, *space), c (B,)) -> (B, T, *space)``.

    Args:
        sample_shape: ``(T, *space_shape)`` of one sample; the CLI links it from the data.
    """

    def __init__(self, sample_shape: Sequence[int]) -> None:
        super().__init__()
        sample_shape = tuple(sample_shape)
        if len(sample_shape) not in (2, 3) or any(not isinstance(n, int) or n < 1 for n in sample_shape):
            raise ValueError(f"sample_shape must be (T, S) or (T, H, W) of positive ints, got {sample_shape!r}")
        self.sample_shape = sample_shape


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation; ``shift``/``scale`` are ``(B, D)``, broadcast over ``x (B, T, P, D)``."""
    return x * (1 + scale[:, None, None]) + shift[:, None, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the conditioning ``c (B, D)``;
    the modulation is zero-initialised, so each block starts as the identity (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, attention: AttentionFactory) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x (B, T, P, D)``, ``c (B, D)`` -> ``(B, T, P, D)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # each (B, D)
        x = x + gate1[:, None, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Modulated norm and a zero-initialised projection from tokens to patch values."""

    def __init__(self, width: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_features)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x (B, T, P, D)``, ``c (B, D)`` -> ``(B, T, P, out_features)``."""
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(Backbone):
    """Diffusion transformer with one token per frame.

    Args:
        sample_shape: ``(T, *space_shape)``, linked from the data by the CLI.
        width: D, the token width.
        depth: number of transformer blocks.
        heads: attention heads per block; must divide ``width``.
        mlp_ratio: hidden width of the MLPs as a multiple of ``width``.
        attention: the attention variant, a class taking ``(width, heads)``.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        attention: AttentionFactory = FullAttention,
    ) -> None:
        super().__init__(sample_shape)
        check_int("width", width, 2)
        if width % 2:
            raise ValueError(f"width must be even (sinusoidal positions), got {width}")
        check_int("depth", depth, 1)
        check_positive("mlp_ratio", mlp_ratio)
        frames, patch_features = self.sample_shape[0], math.prod(self.sample_shape[1:])
        self.embed = nn.Linear(patch_features, width)
        self.register_buffer("pos", sinusoidal_positions(frames, width)[:, None, :], persistent=False)  # (T, 1, D)
        self.noise_embed = NoiseEmbedding(width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, attention) for _ in range(depth))
        self.final = FinalLayer(width, patch_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DiT's initialize_weights: Xavier-uniform linears, zero biases, N(0, 0.02) for the
        # conditioning MLP, and zeros for every adaLN modulation and the output projection, so the
        # untrained network predicts 0 and each block is the identity.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.noise_embed.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for ada in [b.ada for b in self.blocks] + [self.final.ada]:
            nn.init.zeros_(ada[-1].weight)
            nn.init.zeros_(ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x (B, T, *space)``, ``c (B,)`` noise conditioning -> ``(B, T, *space)``."""
        b, t = x.shape[:2]
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"DiT built for samples of shape {self.sample_shape}, got input {tuple(x.shape)}")
        tokens = self.embed(x.reshape(b, t, 1, -1)) + self.pos  # (B, T, P=1, D)
        cond = self.noise_embed(c)  # (B, D)
        for block in self.blocks:
            tokens = block(tokens, cond)
        return self.final(tokens, cond).reshape(x.shape)  # (B, T, 1, S) -> (B, T, *space)
