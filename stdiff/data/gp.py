"""``GPDataModule``: sequences drawn from a ``KroneckerGP`` with covariance Γ ⊗ Σ, whose exact
distribution (``truth``) the diagnostics score every model against."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from stdiff._validation import check_int, check_memory
from stdiff.data.base import SequenceDataModule
from stdiff.gp import KroneckerGP
from stdiff.kernels import Kernel


class GPDataModule(SequenceDataModule):
    """Sequences ``(B, T, *space_shape)`` from a ``KroneckerGP`` with covariance Γ ⊗ Σ.

    Args:
        temporal: kernel on frame times (Γ).
        spatial: kernel on the spatial grid (Σ); ``None`` for Σ = I.
        frames: T, the number of frames (>= 2).
        space_shape: the spatial grid, ``[S]`` or ``[H, W]``.
        mean: constant mean of every coordinate.
        jitter: added to the diagonals of Γ and Σ: 0 (exact kernel), a number, or ``auto`` (only
            where a factor's condition number exceeds 1e12); see ``KroneckerGP``. Whenever jitter
            is added, how much and the resulting condition numbers are printed.
        **kwargs: the base's ``batch_size``, ``num_train``, ``num_val``, ``seed``, ``num_workers``,
            ``num_predict``, ``generate_on`` (see ``SequenceDataModule``); ``generate_on: device`` draws
            from factors kept on the training device (no host work beyond a seed per batch).
    """

    def __init__(
        self,
        temporal: Kernel,
        spatial: Kernel | None = None,
        frames: int = 32,
        space_shape: Sequence[int] = (8,),
        mean: float = 0.0,
        jitter: float | Literal["auto"] = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        # Estimated before anything is allocated: Γ and Σ in float64 with their eigendecompositions
        # and eigh's workspace (~6 matrices each), and a batch with its noise and noisy copy in float32.
        t, s = check_int("frames", frames, 2), math.prod(int(n) for n in space_shape)
        check_memory(f"GPDataModule(frames={t}, space_shape={tuple(space_shape)}, batch_size={self.batch_size})",
                     {"Γ and Σ": 6 * 8 * (t * t + s * s), "a batch": 3 * 4 * self.batch_size * t * s},
                     "use fewer frames, a smaller grid or a smaller batch_size")  # fmt: skip
        # Built here, not in setup(): a bad kernel fails before any run directory exists.
        self.gp = KroneckerGP(temporal, spatial, frames, space_shape, mean, jitter)
        if any(r["jitter"] > 0 for r in self.gp.conditioning.values()):
            rank_zero_info(f"GPDataModule: jitter added to the kernel matrices\n{self.gp.report()}")

    @property
    def truth(self) -> KroneckerGP:
        return self.gp

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.gp.sample_shape

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        return self.gp.sample(n, generator, device=device)
