"""Learning-rate schedules that know the run's length."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from stdiff._validation import check_int, check_range


class WarmupCosine(LambdaLR):
    """Linear warm-up over ``warmup_steps``, then a cosine decay of the learning rate to
    ``final_ratio`` × its base value at ``total_steps`` (Loshchilov & Hutter 2017), stepped every
    optimizer step. Annealing removes the weight noise a constant rate leaves, which the samples
    of a diffusion model feel more than its loss does (``stdiff/guide/models.md``, "Why a well-fitted score gave
    poor samples").

    Args:
        optimizer: the optimizer (given by the module).
        warmup_steps: steps of linear warm-up from 0, >= 0.
        total_steps: steps to the end of the decay; ``None``: the run's ``trainer.max_steps``
            (filled in by ``DiffusionModule``, so the run length is written once).
        final_ratio: learning rate at ``total_steps`` over the base rate, in [0, 1].
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | None = None, final_ratio: float = 0.0
    ) -> None:
        self.warmup_steps = check_int("WarmupCosine.warmup_steps", warmup_steps, 0)
        self.total_steps = None if total_steps is None else check_int("WarmupCosine.total_steps", total_steps, 1)
        self.final_ratio = check_range("WarmupCosine.final_ratio", final_ratio, 0.0, 1.0, low_open=False)
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """Learning rate at optimizer step ``step`` over the base rate."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:  # not yet told the run's length: hold the base rate
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
