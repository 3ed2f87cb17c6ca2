"""A 1-D temporal UNet baseline (Ho et al. 2020 layout, 1-D over frames): spatial points are the
input channels, convolutions run along time. For the paper's DiT-vs-UNet comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from stdiff._validation import check_int
from stdiff.nn.dit import Backbone
from stdiff.nn.embeddings import NoiseEmbedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """Two convolutions along time with the conditioning added as a per-channel scale and shift
    in between (FiLM); the second convolution starts at zero, so the block starts as its skip."""

    def __init__(self, c_in: int, c_out: int, cond_width: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv1d(c_in, c_out, 3, padding=1))
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_width, 2 * c_out))
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Sequential(nn.SiLU(), nn.Conv1d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.conv2[-1].weight)
        nn.init.zeros_(self.conv2[-1].bias)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """``x (B, C_in, T)``, ``cond (B, E)`` -> ``(B, C_out, T)``."""
        h = self.conv1(x)
        scale, shift = self.film(cond)[:, :, None].chunk(2, dim=1)  # each (B, C_out, 1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(h)


class UNet(Backbone):
    """1-D UNet over frames, spatial points as channels (a 2-D grid is flattened into channels).

    Each level halves the number of frames and doubles the channels; T must be divisible by
    2^(levels − 1).

    Args:
        sample_shape: ``(T, *space_shape)``, linked from the data by the CLI.
        width: channels at the first level.
        levels: number of resolutions, >= 1.
    """

    def __init__(self, sample_shape: Sequence[int], width: int = 64, levels: int = 3) -> None:
        super().__init__(sample_shape)
        check_int("width", width, 2)
        if width % 2:
            raise ValueError(f"width must be even, got {width}")
        check_int("levels", levels, 1)
        frames, channels = self.sample_shape[0], math.prod(self.sample_shape[1:])
        if frames % 2 ** (levels - 1):
            raise ValueError(f"UNet with levels={levels} needs T divisible by {2 ** (levels - 1)}, got T={frames}")
        widths = [width * 2**i for i in range(levels)]
        cond = 4 * width
        self.noise_embed = NoiseEmbedding(cond)
        self.stem = nn.Conv1d(channels, width, 3, padding=1)
        self.down = nn.ModuleList(ResBlock(c_in, c, cond) for c_in, c in zip([width, *widths[:-1]], widths))
        self.downsample = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in widths[:-1])
        self.mid = ResBlock(widths[-1], widths[-1], cond)
        # Up path, coarsest level first: level i takes the level below (widths[i + 1] channels, or
        # the middle block's at the coarsest) concatenated with its own skip (widths[i]).
        below = [widths[-1], *widths[:0:-1]]
        self.up = nn.ModuleList(ResBlock(b + c, c, cond) for b, c in zip(below, widths[::-1]))
        self.upsample = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(c, c, 3, padding=1))
            for c in widths[:0:-1]
        )  # fmt: skip
        self.out = nn.Sequential(_norm(width), nn.SiLU(), nn.Conv1d(width, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # the untrained network predicts 0, like the DiT
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x (B, T, *space)``, ``c (B,)`` noise conditioning -> ``(B, T, *space)``."""
        self.check_input(x)
        b, t = x.shape[:2]
        cond = self.noise_embed(c)  # (B, E)
        h = self.stem(x.reshape(b, t, -1).transpose(1, 2))  # (B, S, T) -> (B, width, T)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, cond)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # T -> T / 2
        h = self.mid(h, cond)
        for i, block in enumerate(self.up):
            if i > 0:
                h = self.upsample[i - 1](h)  # T / 2 -> T
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
        return self.out(h).transpose(1, 2).reshape(x.shape)  # (B, S, T) -> (B, T, *space)
