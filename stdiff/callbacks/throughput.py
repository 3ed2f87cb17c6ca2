"""Lightning's ``ThroughputMonitor`` set up for stdiff: samples/s, tokens/s and, on GPUs, MFU."""

from __future__ import annotations

import warnings

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ThroughputMonitor

# Dense peak FLOP/s of the H200 (NVIDIA's data sheets halved: they quote 2:4 sparsity). Lightning's
# table needs a name torch does not give ("NVIDIA H200" is not matched) and lists the sparse
# figures, which would halve the MFU; its H100 rows are dense and are used as they are.
H200 = {
    "sxm": {torch.float32: 67e12, "tfloat32": 494.5e12, torch.bfloat16: 989.5e12, torch.float16: 989.5e12},
    "nvl": {torch.float32: 60e12, "tfloat32": 417.5e12, torch.bfloat16: 835.5e12, torch.float16: 835.5e12},
}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of ``device`` for matmuls in ``dtype`` (float32 counts as TF32 unless
    ``torch.get_float32_matmul_precision()`` is ``highest``), or ``None`` for an unknown device:
    Lightning's table, with the H200 corrected."""
    if device.type == "cuda" and "h200" in (name := torch.cuda.get_device_name(device).lower()):
        if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
            dtype = "tfloat32"
        return H200["nvl" if "nvl" in name else "sxm"].get(dtype)
    return get_available_flops(device, dtype)


def batch_size(batch) -> int:
    """Samples in a training batch: ``x0 (B, …)`` or a tuple starting with it."""
    return len(batch[0] if isinstance(batch, (tuple, list)) else batch)


class Throughput(ThroughputMonitor):
    """Logs ``train/device/…`` (and, with several processes, ``train/…`` totals): batches, samples
    and items = tokens (T·P per sample, the backbone's token grid) per second, FLOP/s from the
    module's measured ``flops_per_batch``, and MFU where the device's peak FLOP/s is known
    (``peak_flops``: Lightning's table of GPUs and TPUs, the H200 corrected).

    Args:
        window_size: number of batches averaged over.
    """

    def __init__(self, window_size: int = 50) -> None:
        super().__init__(batch_size_fn=batch_size, window_size=window_size)
        self.window_size = window_size
        self.final: dict[str, float] = {}  # the last window's figures, at the end of training

    def on_train_end(self, trainer, pl_module) -> None:
        """Says what the last ``window_size`` steps ran at, and records it (``train/device/…``)
        where ``metrics.json`` takes its logged values from."""
        from lightning.pytorch.trainer.states import RunningStage

        throughput = self._throughputs.get(RunningStage.TRAINING)
        if throughput is None:
            return
        self.final = {f"train/{k}": float(v) for k, v in throughput.compute().items() if "per_sec" in k or "mfu" in k}
        if not self.final:  # fewer than two steps timed (or not rank 0, which alone times them)
            return
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in self.final.items()})
        if trainer.is_global_zero:
            f = self.final
            mfu = f"MFU {f['train/device/mfu']:.3f}" if "train/device/mfu" in f else "MFU unknown for this device"
            print(f"throughput over the last {self.window_size} steps: {f.get('train/device/samples_per_sec', 0):.4g} "
                  f"samples/s, {f.get('train/device/items_per_sec', 0):.4g} tokens/s, {mfu}", flush=True)  # fmt: skip

    def setup(self, trainer, pl_module, stage: str) -> None:
        tokens = getattr(pl_module, "tokens_per_sample", None)
        if tokens is not None:
            self.length_fn = lambda batch: batch_size(batch) * tokens
        device = trainer.strategy.root_device
        h200 = device.type == "cuda" and "h200" in torch.cuda.get_device_name(device).lower()
        with warnings.catch_warnings():
            if h200:  # Lightning's "FLOPs not found": stdiff knows them
                warnings.filterwarnings("ignore", message="FLOPs not found")
            super().setup(trainer, pl_module, stage)
        if h200:
            from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

            self.available_flops = peak_flops(device, _plugin_to_compute_dtype(trainer.precision_plugin))
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops
