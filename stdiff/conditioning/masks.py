"""Tasks as masks: which coordinates of a sample ``(T, *space)`` are observed. Forecasting observes
the first frames, interpolation every m-th frame, imputation random coordinates or blocks; a
mixture of them is the training strategy of a conditional model (as in CSDI, Tashiro et al. 2021).

A mask is a boolean tensor shaped like a sample, True where observed. ``Mask.draw(n, shape,
generator)`` returns ``(n, T, *space)``; ``check_mask`` refuses masks that leave nothing to
predict or nothing to condition on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from stdiff._validation import check_int, check_range, init_repr


def check_mask(mask: Tensor, sample_shape: Sequence[int], name: str = "mask") -> Tensor:
    """``mask`` as a boolean ``(n, T, *space)`` tensor (a single ``(T, *space)`` mask is broadcast
    to n = 1), each with at least one observed and one missing coordinate; ``ValueError`` naming
    the problem otherwise."""
    sample_shape = tuple(sample_shape)
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) == sample_shape:
        mask = mask[None]
    if mask.ndim != len(sample_shape) + 1 or tuple(mask.shape[1:]) != sample_shape:
        raise ValueError(f"{name} must have the sample shape {sample_shape} (T, *space), optionally with a leading "
                         f"batch axis; got {tuple(mask.shape)}")  # fmt: skip
    if mask.dtype != torch.bool:
        if not torch.isin(mask, torch.tensor([0, 1], dtype=mask.dtype, device=mask.device)).all():
            raise ValueError(f"{name} must be boolean (True = observed) or 0/1, got values other than 0 and 1")
        mask = mask.bool()
    counts = mask.flatten(1).sum(1)
    if (counts == mask[0].numel()).any():
        raise ValueError(f"{name}: every coordinate is observed in sample(s) "
                         f"{(counts == mask[0].numel()).nonzero().flatten().tolist()[:5]}: nothing to predict")  # fmt: skip
    if (counts == 0).any():
        raise ValueError(f"{name}: nothing is observed in sample(s) {(counts == 0).nonzero().flatten().tolist()[:5]}: "
                         "that is unconditional generation (use plain predict)")  # fmt: skip
    return mask


class Mask(ABC):
    """A task: which coordinates are observed. Subclasses implement ``observed(shape, generator)``
    for one sample ``(T, *space)``; ``draw`` stacks n of them."""

    @abstractmethod
    def observed(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Boolean mask ``shape = (T, *space)``, True where observed."""

    def draw(self, n: int, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """``n`` masks ``(n, T, *space)``, checked (something observed, something missing)."""
        shape = tuple(shape)
        return check_mask(torch.stack([self.observed(shape, generator) for _ in range(n)]), shape, repr(self))

    def check(self, shape: Sequence[int]) -> None:
        """``ValueError`` now if this task cannot be drawn for samples of ``shape`` (the CLI's
        preflight: before a fit's first batch or a test's sampling)."""
        self.draw(1, shape, torch.Generator().manual_seed(0))

    def __repr__(self) -> str:
        return init_repr(self)


class Forecast(Mask):
    """Observe the first ``context`` frames, predict the rest.

    Args:
        context: observed frames, 1 <= context < T.
    """

    def __init__(self, context: int = 16) -> None:
        self.context = check_int("Forecast.context", context, 1)

    def observed(self, shape, generator=None):
        if self.context >= shape[0]:
            raise ValueError(f"Forecast.context={self.context} must be below the number of frames T={shape[0]}")
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[: self.context] = True
        return mask


class Interpolation(Mask):
    """Observe every ``every``-th frame (frames 0, m, 2m, …), predict the frames between.

    Args:
        every: m >= 2.
    """

    def __init__(self, every: int = 4) -> None:
        self.every = check_int("Interpolation.every", every, 2)

    def observed(self, shape, generator=None):
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[:: self.every] = True
        return mask


class Imputation(Mask):
    """Missing coordinates at random: each coordinate (``block=1``) or each block of ``block``
    consecutive frames of one spatial point is missing with probability ``missing``; at least one
    coordinate is kept and at least one is missing.

    Args:
        missing: probability that a coordinate (or block) is missing, in (0, 1).
        block: length in frames of the missing runs.
    """

    def __init__(self, missing: float = 0.5, block: int = 1) -> None:
        self.missing = check_range("Imputation.missing", missing, 0.0, 1.0)
        if self.missing >= 1.0:
            raise ValueError("Imputation.missing must be below 1 (something must stay observed), got 1.0")
        self.block = check_int("Imputation.block", block, 1)

    def observed(self, shape, generator=None):
        frames, rest = shape[0], shape[1:]
        blocks = -(-frames // self.block)
        keep = torch.rand((blocks, *rest), generator=generator) >= self.missing
        mask = keep.repeat_interleave(self.block, 0)[:frames]
        flat = mask.reshape(-1)
        if flat.all() or not flat.any():  # flip one coordinate so that the task is not degenerate
            i = int(torch.randint(flat.numel(), (1,), generator=generator))
            flat[i] = ~flat[i]
        return mask


class MaskMixture(Mask):
    """For each sample, one of ``masks`` drawn with probabilities ``weights``: the training strategy
    of a conditional model that should serve every task.

    Args:
        masks: the tasks.
        weights: their probabilities (normalised); equal by default.
    """

    def __init__(self, masks: list[Mask], weights: list[float] | None = None) -> None:
        if not masks:
            raise ValueError("MaskMixture.masks must list at least one mask")
        weights = [1.0] * len(masks) if weights is None else list(weights)
        if len(weights) != len(masks) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"MaskMixture.weights must be {len(masks)} numbers >= 0, not all 0; got {weights}")
        self.masks, self.weights = list(masks), [w / sum(weights) for w in weights]
        self._p = torch.tensor(self.weights, dtype=torch.float64)

    def check(self, shape: Sequence[int]) -> None:
        for mask in self.masks:  # every task it may draw
            mask.check(shape)

    def observed(self, shape, generator=None):
        k = int(torch.multinomial(self._p, 1, generator=generator))
        return self.masks[k].observed(shape, generator)


MASKS: dict[str, type[Mask]] = {cls.__name__: cls for cls in (Forecast, Interpolation, Imputation, MaskMixture)}
