"""``EMA``: Lightning's ``EMAWeightAveraging`` with the average updated by foreach kernels."""

from __future__ import annotations

from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMA(EMAWeightAveraging):
    """An exponential moving average of the weights (and buffers), used for validation, sampling
    and the saved checkpoints, exactly as Lightning's ``EMAWeightAveraging``
    (``average ← decay·average + (1 − decay)·weights`` after every optimizer step) but updated with
    one foreach ``lerp`` over all tensors instead of a Python loop over them, which Lightning's
    per-tensor ``avg_fn`` costs on every step (``python -m stdiff.bench`` measures the difference).

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
