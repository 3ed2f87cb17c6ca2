"""``SampleWriter``: what `stdiff predict` generates, streamed to the run directory as it comes."""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from stdiff._validation import check_disk_space, warn
from stdiff.atomic import atomic_write


class SampleWriter(BasePredictionWriter):
    """Writes what ``stdiff predict`` generates to the run directory: ``samples.npy`` of shape
    ``(n, T, *space_shape)`` (``(cases, n, T, *space)`` with observations) and ``samples.json``
    (shape, sampler, schedule, checkpoint, how many samples are non-finite, and ``data``: the
    normalisation undone and, for observations taken from a split, the windows they came from).

    Samples are written batch by batch into a ``.npy`` of the final shape (memory stays bounded by
    the batch, whatever ``num_predict``), after checking that the disk has room; the file is named
    ``samples.npy.partial`` until the last batch is in, so a run cut short leaves its samples so far
    and says so. Under several processes each rank writes its own file, ``samples_rank{r}``.

    Args:
        format: ``npy`` (streamed) or ``pt`` (``torch.save`` at the end: all samples in memory).
        filename: file name without extension.
    """

    def __init__(self, format: Literal["npy", "pt"] = "npy", filename: str = "samples") -> None:
        super().__init__(write_interval="batch")
        if format not in ("npy", "pt"):
            raise ValueError(f"SampleWriter.format must be 'npy' or 'pt', got {format!r}")
        self.format, self.filename = format, filename
        self._out = None  # the open .npy.partial while predicting
        self._kept: list[torch.Tensor] = []
        self._written = self._non_finite = 0

    # --- where and how much ----------------------------------------------------------------------

    def _paths(self, trainer: L.Trainer) -> tuple[str, str]:
        out_dir = trainer.log_dir or trainer.default_root_dir
        os.makedirs(out_dir, exist_ok=True)
        name = self.filename if trainer.world_size == 1 else f"{self.filename}_rank{trainer.global_rank}"
        return os.path.join(out_dir, f"{name}.{self.format}"), os.path.join(out_dir, f"{name}.json")

    @staticmethod
    def _count(trainer: L.Trainer) -> int:
        """Samples this rank will generate: its share of the requests, dealt out as Lightning's
        distributed sampler does (padded to a multiple of the number of ranks)."""
        sizes, world = trainer.datamodule.predict_sizes(), trainer.world_size
        padded = sizes + sizes[: (-len(sizes)) % world]
        return sum(padded[trainer.global_rank :: world])

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._written = self._non_finite = 0
        self._kept = []
        self._path, self._meta = self._paths(trainer)
        data = trainer.datamodule
        count = self._count(trainer)
        self._shape = (count, *pl_module.sample_shape)
        needed = math.prod(self._shape) * 4
        # this rank's share (the CLI's preflight checked the whole before anything started)
        check_disk_space(needed, os.path.dirname(self._path), f"predict would write {{size}} of samples ({count} × "
                         f"{tuple(pl_module.sample_shape)} float32)", "lower data.init_args.num_predict or free space")  # fmt: skip
        self._conditional = getattr(data, "observed", None) is not None
        self._final = list(self._shape)
        if self._conditional and trainer.world_size == 1:  # (cases, samples per case, T, *space)
            self._final = [count // data.num_predict, data.num_predict, *self._shape[1:]]
        if self.format == "npy":
            # Plain sequential writes, not a memory map: written pages of a mapped file count as
            # resident memory until the kernel flushes them, which would grow with num_predict.
            self._out = open(self._path + ".partial", "wb")  # noqa: SIM115 (closed in on_predict_end)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": tuple(self._final)}  # fmt: skip
            np.lib.format.write_array_header_2_0(self._out, header)
            self._out.truncate(self._out.tell() + needed)  # full size now: readable (zeros) if cut short
            self._out.flush()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        x = trainer.datamodule.denormalize(prediction.detach()).float().cpu()  # back to the data's units
        self._non_finite += int((~torch.isfinite(x)).any(dim=tuple(range(1, x.ndim))).sum())
        if self._out is not None:
            self._out.write(x.numpy().tobytes())  # batches arrive in order
        else:
            self._kept.append(x)
        self._written += len(x)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._out is None:
            return
        with contextlib.suppress(OSError):  # the last buffer may not fit a full disk
            self._out.close()  # what was written stays in .partial, said so beside it
        self._out = None
        with contextlib.suppress(OSError), atomic_write(self._meta, "w") as f:  # a full disk: the error stands
            json.dump({"file": os.path.basename(self._path) + ".partial", "complete": False, "shape": self._final,
                       "samples_written": self._written, "stopped_by": type(exception).__name__}, f, indent=1)  # fmt: skip

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data, shape = trainer.datamodule, self._final
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())  # on disk before the rename names it complete
            self._out.close()
            self._out = None
            os.replace(self._path + ".partial", self._path)
        else:
            with atomic_write(self._path) as f:
                torch.save(torch.cat(self._kept).reshape(shape) if self._kept else torch.empty(0), f)
            self._kept = []
        if self._non_finite:
            warn(f"predict: {self._non_finite} of {self._written} samples hold non-finite values (NaN or "
                 "inf): the schedule or sampler diverges (a log-SNR range too wide, too few steps?)")  # fmt: skip
        meta = {
            "file": os.path.basename(self._path),
            "complete": True,
            "shape": shape,
            "non_finite_samples": self._non_finite,
            "sampler": repr(pl_module.sampler),
            "schedule": repr(pl_module.schedule),
            "denoiser": type(pl_module.denoiser).__name__,
            "observed": getattr(data, "observed", None),
            "task": repr(getattr(data, "task", None)),
            "conditioning": repr(pl_module.conditioning) if self._conditional else None,
            "checkpoint": trainer.ckpt_path,
            "data": {"class": type(data).__name__, **data.describe()},
        }
        with atomic_write(self._meta, "w") as f:
            json.dump(meta, f, indent=1)
        print(f"wrote {tuple(shape)} samples to {self._path}")
