"""Lightning's ``ThroughputMonitor`` set up for stdiff: samples/s, tokens/s and, on GPUs, MFU."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def batch_size(batch) -> int:
    """Samples in a training batch: ``x0 (B, …)`` or a tuple starting with it."""
    return len(batch[0] if isinstance(batch, (tuple, list)) else batch)


class Throughput(ThroughputMonitor):
    """Logs ``train/device/…`` (and, with several processes, ``train/…`` totals): batches, samples
    and items = tokens (T·P per sample, the backbone's token grid) per second, FLOP/s from the
    module's measured ``flops_per_batch``, and MFU where Lightning knows the device's peak FLOP/s
    (GPUs, TPUs).

    Args:
        window_size: number of batches averaged over.
    """

    def __init__(self, window_size: int = 50) -> None:
        super().__init__(batch_size_fn=batch_size, window_size=window_size)

    def setup(self, trainer, pl_module, stage: str) -> None:
        tokens = getattr(pl_module, "tokens_per_sample", None)
        if tokens is not None:
            self.length_fn = lambda batch: batch_size(batch) * tokens
        super().setup(trainer, pl_module, stage)
