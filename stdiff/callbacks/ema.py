"""``EMA``: Lightning's ``EMAWeightAveraging`` with a cheaper update."""

from __future__ import annotations

import itertools

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMA(EMAWeightAveraging):
    """An exponential moving average of the weights (and buffers), used for validation, sampling
    and the saved checkpoints, exactly as Lightning's ``EMAWeightAveraging``
    (``average ← decay·average + (1 − decay)·weights`` after every optimizer step), but updated
    with one foreach ``lerp`` over tensor lists made once, instead of Lightning's Python loop over
    the tensors with two walks of both module trees on every step (``python -m stdiff.bench step_hooks``
    measures both).

    Args: as ``EMAWeightAveraging``: ``decay``, ``update_every_n_steps``, ``update_starting_at_step``,
    ``update_starting_at_epoch``, ``device``, ``use_buffers``.
    """

    def __init__(self, decay: float = 0.999, **kwargs) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA.decay must be in [0, 1], got {decay!r}")
        super().__init__(decay=decay, **kwargs)
        # WeightAveraging passes _kwargs to AveragedModel, which takes avg_fn or multi_avg_fn, not both.
        self._kwargs = {k: v for k, v in self._kwargs.items() if k != "avg_fn"}
        self._kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)
        self.decay = decay
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._listed = False  # _pairs made (None there: Lightning's path on every step)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._pairs, self._listed = None, False  # a new average model: list its tensors again

    # Validation runs with the average swapped into the model (Lightning's WeightAveraging); a fit
    # stopped by a signal within it swaps the training weights back before its checkpoint.
    swapped = False

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self.swapped = self._average_model is not None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self.swapped = False

    def restore_training_weights(self, pl_module) -> None:
        """Put the training weights back in the model if a validation left the average there."""
        if self.swapped:
            self._swap_models(pl_module)
            self.swapped = False

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn != "fit":
            # validate / test / predict: the checkpoint's state_dict already holds the average
            # (stdiff's checkpoints store the EMA weights there), which is what they score and sample
            # with, and no average is kept, so there is nothing else to restore.
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step_idx = trainer.global_step - 1  # as Lightning: zero-based index of the optimizer step
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step

    def _update(self, pl_module) -> None:
        average = self._average_model
        if self._pairs is None:  # no test of n_averaged here: on a GPU it would sync every step
            average.update_parameters(pl_module)  # the first update copies; Lightning's own path
            if not self._listed:
                self._pairs, self._listed = self._tensor_lists(pl_module), True
            return
        ours, theirs = self._pairs
        torch._foreach_lerp_(ours, theirs, 1.0 - self.decay)  # what get_ema_multi_avg_fn does, listed once
        average.n_averaged += 1

    def _tensor_lists(self, pl_module):
        """(average, current) tensors in update order, or None (Lightning's path on every step)
        where buffers are not averaged or a pair differs in kind, dtype or device."""
        if not self._use_buffers:
            return None
        average = self._average_model
        ours = [t.detach() for t in itertools.chain(average.module.parameters(), average.module.buffers())]
        theirs = [t.detach() for t in itertools.chain(pl_module.parameters(), pl_module.buffers())]
        same = all(a.is_floating_point() and a.device == b.device and a.dtype == b.dtype for a, b in zip(ours, theirs))
        return (ours, theirs) if same and len(ours) == len(theirs) else None
