"""Diffusion transformer over spatial-temporal tokens (Peebles & Xie 2023, adaLN-Zero blocks).

``(B, T, *space)`` → patchify each frame into P tokens → ``(B, T, P, D)`` → blocks, each with an
attention plug-in → unpatchify → ``(B, T, *space)``. With ``patch_size=None`` a whole frame is
one token (P = 1), the paper's frames-as-tokens setting. The network knows nothing of noise
schedules: it maps ``(x_t, c)`` to a tensor shaped like ``x_t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from torch import Tensor, nn

from stdiff._validation import check_int, check_positive
from stdiff.nn.attention import Attention, FullAttention
from stdiff.nn.embeddings import NoiseEmbedding, sinusoidal_grid, sinusoidal_positions

AttentionFactory = Callable[[int, int], Attention]  # (width, heads) -> Attention


class Backbone(nn.Module):
    """Contract of a denoising network: ``__init__(sample_shape, …)`` and
    ``forward(x (B, T, *space), c (B,)) -> (B, T, *space)``, c the noise conditioning (log-SNR).

    Args:
        sample_shape: ``(T, *space_shape)`` of one sample; the CLI links it from the data.
    """

    def __init__(self, sample_shape: Sequence[int]) -> None:
        super().__init__()
        sample_shape = tuple(sample_shape)
        if len(sample_shape) not in (2, 3) or any(not isinstance(n, int) or n < 1 for n in sample_shape):
            raise ValueError(f"sample_shape must be (T, S) or (T, H, W) of positive ints, got {sample_shape!r}")
        self.sample_shape = sample_shape

    @property
    def tokens_per_sample(self) -> int:
        """Tokens the network sees per sample (for throughput figures): T unless a subclass says."""
        return self.sample_shape[0]

    def check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"{type(self).__name__} built for samples of shape {self.sample_shape}, got input {tuple(x.shape)}"
            )


# --- patches ------------------------------------------------------------------------------------


def patch_sizes(space_shape: tuple[int, ...], patch_size: int | Sequence[int] | None) -> tuple[int, ...]:
    """Validated patch size per spatial axis (``None``: the whole frame)."""
    if patch_size is None:
        return space_shape
    sizes = (patch_size,) * len(space_shape) if isinstance(patch_size, int) else tuple(patch_size)
    if len(sizes) != len(space_shape):
        raise ValueError(f"patch_size must have {len(space_shape)} entries for space {space_shape}, got {patch_size!r}")
    for axis, (n, p) in enumerate(zip(space_shape, sizes)):
        if not isinstance(p, int) or p < 1 or n % p:
            raise ValueError(
                f"patch_size {p!r} must be a positive divisor of the spatial size {n} (axis {axis} of {space_shape})"
            )
    return sizes


def patchify(x: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """``(B, T, *space) -> (B, T, P, prod(sizes))``, patches in row-major order."""
    b, t, *space = x.shape
    grid = [n // p for n, p in zip(space, sizes)]
    split = [v for g, p in zip(grid, sizes) for v in (g, p)]  # g1, p1, g2, p2
    x = x.reshape(b, t, *split)
    k = len(space)
    order = [0, 1, *[2 + 2 * i for i in range(k)], *[3 + 2 * i for i in range(k)]]  # grid axes, then patch axes
    return x.permute(order).reshape(b, t, math.prod(grid), math.prod(sizes))


def unpatchify(tokens: Tensor, sizes: tuple[int, ...], space: tuple[int, ...]) -> Tensor:
    """Inverse of ``patchify``: ``(B, T, P, prod(sizes)) -> (B, T, *space)``."""
    b, t = tokens.shape[:2]
    grid = [n // p for n, p in zip(space, sizes)]
    k = len(space)
    x = tokens.reshape(b, t, *grid, *sizes)
    order = [0, 1, *[v for i in range(k) for v in (2 + i, 2 + k + i)]]  # interleave g_i, p_i
    return x.permute(order).reshape(b, t, *space)


# --- blocks -------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation; ``shift``/``scale`` are ``(B, D)``, broadcast over ``x (B, T, P, D)``."""
    return x * (1 + scale[:, None, None]) + shift[:, None, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the conditioning ``c (B, D)``;
    the modulation is zero-initialised, so each block starts as the identity (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, attention: AttentionFactory,
                 dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        # Dropout on each residual branch when asked: a regulariser for small data (no parameters).
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x (B, T, P, D)``, ``c (B, D)`` -> ``(B, T, P, D)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # each (B, D)
        x = x + gate1[:, None, None] * self.drop(self.attn(modulate(self.norm1(x), shift1, scale1)))
        return x + gate2[:, None, None] * self.drop(self.mlp(modulate(self.norm2(x), shift2, scale2)))


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


# --- the model ----------------------------------------------------------------------------------


class DiT(Backbone):
    """Diffusion transformer over T frames of P patches each.

    Args:
        sample_shape: ``(T, *space_shape)``, linked from the data by the CLI.
        patch_size: patch size along each spatial axis (an int for all axes); ``None`` makes a
            whole frame one token (P = 1, the paper's setting). Must divide the spatial sizes.
        width: D, the token width.
        depth: number of transformer blocks.
        heads: attention heads per block; must divide ``width``.
        mlp_ratio: hidden width of the MLPs as a multiple of ``width``.
        attention: the attention variant, a class taking ``(width, heads)`` (+ its own options).
        position_embedding: ``separate``: sinusoidal frame positions plus sinusoidal patch
            positions (2-D sin-cos on a 2-D grid), each over all channels; ``joint_2d``: one 2-D
            sin-cos embedding of the (frame, patch) token grid, half the channels each.
        dropout: probability of zeroing activations of every residual branch (attention, MLP)
            while training (0: none); a regulariser for small data sets.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        patch_size: int | list[int] | None = None,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        attention: AttentionFactory = FullAttention,
        position_embedding: Literal["separate", "joint_2d"] = "separate",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(sample_shape)
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        check_int("width", width, 4)
        if width % 4:
            raise ValueError(f"width must be divisible by 4 (sinusoidal positions), got {width}")
        check_int("depth", depth, 1)
        check_positive("mlp_ratio", mlp_ratio)
        frames, space = self.sample_shape[0], self.sample_shape[1:]
        self.patch = patch_sizes(space, patch_size)
        grid = tuple(n // p for n, p in zip(space, self.patch))
        self.num_patches, features = math.prod(grid), math.prod(self.patch)

        self.embed = nn.Linear(features, width)
        if position_embedding == "separate":
            pos = sinusoidal_positions(frames, width)[:, None, :]  # (T, 1, D)
            if self.num_patches > 1:
                pos = pos + sinusoidal_grid(grid, width)[None, :, :]  # + (1, P, D)
        elif position_embedding == "joint_2d":
            pos = sinusoidal_grid((frames, self.num_patches), width).reshape(frames, self.num_patches, width)
        else:
            raise ValueError(f"position_embedding must be 'separate' or 'joint_2d', got {position_embedding!r}")
        self.register_buffer("pos", pos, persistent=False)  # (T, P or 1, D)
        self.noise_embed = NoiseEmbedding(width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, attention, dropout) for _ in range(depth))
        self.final = FinalLayer(width, features)
        self.reset_parameters()

    @property
    def tokens_per_sample(self) -> int:
        return self.sample_shape[0] * self.num_patches

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

    def patch_features(self, x: Tensor, **cond) -> Tensor:
        """What each token is embedded from: ``(B, T, P, prod(patch))``, the patch's values."""
        if cond:
            raise ValueError(f"DiT takes no conditioning inputs, got {sorted(cond)}: use ConditionalDiT (trained with "
                             "model.mask) or a conditioning method (model.conditioning) for observed values")  # fmt: skip
        return patchify(x, self.patch)

    def forward(self, x: Tensor, c: Tensor, **cond) -> Tensor:
        """``x (B, T, *space)``, ``c (B,)`` noise conditioning -> ``(B, T, *space)``."""
        self.check_input(x)
        tokens = self.embed(self.patch_features(x, **cond)) + self.pos  # (B, T, P, D)
        cond = self.noise_embed(c)  # (B, D)
        for block in self.blocks:
            tokens = block(tokens, cond)
        return unpatchify(self.final(tokens, cond), self.patch, self.sample_shape[1:])
