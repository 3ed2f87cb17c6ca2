"""``GPDataModule``: sequences drawn from a ``KroneckerGP`` with covariance Γ ⊗ Σ, whose exact
distribution (``truth``) the diagnostics score every model against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

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
        batch_size: samples per batch on each device.
        num_train: size of a fixed training set (sample-complexity studies), reshuffled every
            epoch; ``None`` streams fresh samples forever.
        num_val: size of the fixed, seeded validation set, and of the separate test set.
        seed: root of every derived seed.
        num_workers: DataLoader worker processes (0 = generate in the main process).
        num_predict: how many samples ``stdiff predict`` generates.
        generate_on: where streamed training batches are drawn: ``cpu`` (in the loader) or
            ``device`` (from factors kept on the training device: no per-step host work beyond a
            seed, no host-device synchronisation).
    """

    def __init__(
        self,
        temporal: Kernel,
        spatial: Kernel | None = None,
        frames: int = 32,
        space_shape: Sequence[int] = (8,),
        mean: float = 0.0,
        jitter: float | Literal["auto"] = 0.0,
        batch_size: int = 64,
        num_train: int | None = None,
        num_val: int = 512,
        seed: int = 0,
        num_workers: int = 0,
        num_predict: int = 0,
        generate_on: Literal["cpu", "device"] = "cpu",
    ) -> None:
        super().__init__(batch_size, num_train, num_val, seed, num_workers, num_predict, generate_on)
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
