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
from stdiff.kernels import Kernel
from stdiff.truth import GPMixture, KroneckerGP
from stdiff.truth.factors import factor_entries


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
                     {"Γ and Σ": 6 * 8 * (t * t + factor_entries(spatial, space_shape)), "a batch": 3 * 4 * self.batch_size * t * s},
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


class GPMixtureDataModule(SequenceDataModule):
    """Sequences ``(B, T, *space_shape)`` from a mixture of Kronecker GPs (``stdiff.truth.GPMixture``),
    whose exact law (``truth``) is known although its optimal denoiser is nonlinear: every
    component k is ``N(mean_k, Γ_k ⊗ Σ_k)`` with weight w_k. Presets: ``configs/mixtures/``.

    Args:
        temporal: one kernel per component (Γ_k); their number is K.
        spatial: one kernel per component, or one shared by all; ``None`` for Σ = I.
        frames, space_shape, jitter: as ``GPDataModule`` (shared by the components).
        mean: the constant mean of each component (K numbers), or one shared by all.
        weights: K positive weights (normalised); ``None``: equal.
        **kwargs: the base's (see ``SequenceDataModule``).
    """

    def __init__(
        self,
        temporal: list[Kernel],
        spatial: list[Kernel] | None = None,
        frames: int = 32,
        space_shape: Sequence[int] = (8,),
        mean: list[float] = [0.0],  # noqa: B006 (jsonargparse shows the default)
        weights: list[float] | None = None,
        jitter: float | Literal["auto"] = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        temporal = list(temporal) if isinstance(temporal, (list, tuple)) else [temporal]
        k = len(temporal)
        if k == 0:
            raise ValueError("GPMixtureDataModule.temporal: give one kernel per component, got none")
        spatial = [None] if spatial is None else list(spatial) if isinstance(spatial, (list, tuple)) else [spatial]
        mean = list(mean) if isinstance(mean, (list, tuple)) else [mean]
        for name, values in (("spatial", spatial), ("mean", mean)) + ((("weights", weights),) if weights else ()):
            if len(values) not in (1, k):
                raise ValueError(f"GPMixtureDataModule.{name}: {len(values)} entries for {k} components (one per "
                                 f"temporal kernel); give {k}, or one shared by all")  # fmt: skip
        spatial, mean = spatial * (k // len(spatial)), mean * (k // len(mean))
        t, s = check_int("frames", frames, 2), math.prod(int(n) for n in space_shape)
        check_memory(f"GPMixtureDataModule({k} components, frames={t}, space_shape={tuple(space_shape)})",
                     {"Γ and Σ": k * 6 * 8 * (t * t + max(factor_entries(c, space_shape) for c in spatial)), "a batch": 3 * 4 * self.batch_size * t * s},
                     "use fewer components, fewer frames or a smaller grid")  # fmt: skip
        components = []
        for i in range(k):
            try:
                components.append(KroneckerGP(temporal[i], spatial[i], frames, space_shape, mean[i], jitter))
            except ValueError as error:
                raise ValueError(f"GPMixtureDataModule component {i}: {error}") from None
        self.mixture = GPMixture(components, weights if weights else None)
        if any(r["jitter"] > 0 for c in components for r in c.conditioning.values()):
            rank_zero_info(f"GPMixtureDataModule: jitter added to the kernel matrices\n{self.mixture.report()}")

    @property
    def truth(self):
        return self.mixture

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.mixture.sample_shape

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        return self.mixture.sample(n, generator, device=device)
