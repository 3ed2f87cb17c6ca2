"""``SampleWriter``: what `stdiff predict` generated, written to the run directory."""

from __future__ import annotations

import json
import os
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class SampleWriter(BasePredictionWriter):
    """Writes what ``stdiff predict`` generated to the run directory: ``samples.npy`` (or ``.pt``)
    of shape ``(n, T, *space_shape)`` and ``samples.json`` (shape, sampler, schedule, checkpoint).
    Under several processes each rank writes its own file, ``samples_rank{r}``.

    Args:
        format: ``npy`` (NumPy) or ``pt`` (torch.save).
        filename: file name without extension.
    """

    def __init__(self, format: Literal["npy", "pt"] = "npy", filename: str = "samples") -> None:
        super().__init__(write_interval="epoch")
        if format not in ("npy", "pt"):
            raise ValueError(f"SampleWriter.format must be 'npy' or 'pt', got {format!r}")
        self.format, self.filename = format, filename

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions, batch_indices):
        data = trainer.datamodule
        samples = torch.cat([p.detach().cpu() for p in predictions]) if predictions else torch.empty(0)
        samples = data.denormalize(samples) if len(samples) else samples  # back to the data's units
        conditional = getattr(data, "observed", None) is not None
        if conditional and trainer.world_size == 1:  # (cases, samples per case, T, *space)
            samples = samples.reshape(-1, data.num_predict, *samples.shape[1:])
        out_dir = trainer.log_dir or trainer.default_root_dir
        os.makedirs(out_dir, exist_ok=True)
        name = self.filename if trainer.world_size == 1 else f"{self.filename}_rank{trainer.global_rank}"
        path = os.path.join(out_dir, f"{name}.{self.format}")
        if self.format == "npy":
            np.save(path, samples.numpy())
        else:
            torch.save(samples, path)
        meta = {
            "file": os.path.basename(path),
            "shape": list(samples.shape),
            "sampler": repr(pl_module.sampler),
            "schedule": repr(pl_module.schedule),
            "denoiser": type(pl_module.denoiser).__name__,
            "observed": getattr(data, "observed", None),
            "task": repr(getattr(data, "task", None)),
            "conditioning": repr(pl_module.conditioning) if conditional else None,
            "checkpoint": trainer.ckpt_path,
        }
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(f"wrote {tuple(samples.shape)} samples to {path}")
