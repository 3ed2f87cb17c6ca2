"""Callbacks that tests add to real runs (``--trainer.callbacks+=hooks.<Name>``): they record what
a run trained on, or make something go wrong at a chosen step."""

import pathlib
import time

import lightning as L
import torch

from stdiff.sampling import DDIM


class BatchLog(L.Callback):
    """Appends ``rank step checksum…`` of every training batch to ``path``, one checksum (the sum
    of its values) per sample."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sums = " ".join(f"{s:.12e}" for s in batch.double().flatten(1).sum(1).tolist())
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_rank} {trainer.global_step} {sums}\n")


class Stall(L.Callback):
    """From step ``at`` on, touches ``marker`` and sleeps ``seconds`` before each step: a window in
    which a test kills or signals the run mid-training."""

    def __init__(self, at: int, marker: str, seconds: float = 30.0) -> None:
        self.at, self.marker, self.seconds = at, marker, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.at:
            pathlib.Path(self.marker).touch()
            time.sleep(self.seconds)


class InjectNaN(L.Callback):
    """Makes the training batch of each step in ``steps`` NaN (``where="batch"``, so the loss is
    NaN), or one gradient entry infinite after the backward pass (``where="grad"``)."""

    def __init__(self, steps: list[int], where: str = "batch") -> None:
        self.steps, self.where = set(steps), where

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.where == "batch" and trainer.global_step in self.steps:
            batch.view(-1)[0] = float("nan")

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.where == "grad" and trainer.global_step in self.steps:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = torch.inf


class StallEvaluation(L.Callback):
    """From the first validation / test / predict batch on, touches ``marker`` and sleeps ``seconds``
    before each batch: a window in which a test signals a run that is not training."""

    def __init__(self, marker: str, seconds: float = 30.0) -> None:
        self.marker, self.seconds = marker, seconds

    def _stall(self, *args, **kwargs) -> None:
        pathlib.Path(self.marker).touch()
        time.sleep(self.seconds)

    on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _stall


class StallSetup(L.Callback):
    """Touches ``marker`` and sleeps ``seconds`` in ``setup``, where a fit prepares its data and the
    diagnostics fit a reference: a long set-up in which a test signals the run."""

    def __init__(self, marker: str, seconds: float = 30.0) -> None:
        self.marker, self.seconds = marker, seconds

    def setup(self, trainer, pl_module, stage) -> None:
        pathlib.Path(self.marker).touch()
        time.sleep(self.seconds)


class MarkTestEnd(L.Callback):
    """Touches ``marker`` when the test epoch ends, just before the likelihood (a callback after
    this one) integrates its ODE."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        pathlib.Path(self.marker).touch()


class FailAtStart(L.Callback):
    """Raises as the run starts, after its run directory was claimed: a run that fails early."""

    def on_fit_start(self, trainer, pl_module) -> None:
        raise RuntimeError("failing on purpose")


class HalfNaN(DDIM):
    """A sampler that diverges on the first half of every batch (NaN there): what a schedule too
    wide for its sampler produces, on demand."""

    def step(self, model, schedule, x, t, s, generator):
        out = super().step(model, schedule, x, t, s, generator)
        out[: len(out) // 2] = float("nan")
        return out


class SlowSampler(DDIM):
    """DDIM that takes ``seconds`` per step and touches ``marker`` at its first: a long sampling
    phase (the end-of-fit validation's 2000 samples) in which a test signals a fit."""

    def __init__(self, marker: str, seconds: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker, self.seconds = marker, seconds

    def step(self, model, schedule, x, t, s, generator):
        pathlib.Path(self.marker).touch()
        time.sleep(self.seconds)
        return super().step(model, schedule, x, t, s, generator)


class FillDisk(L.Callback):
    """After step ``at``, fills the filesystem of the run directory (a file ``filler`` beside the
    checkpoints, as large as the free space allows): the disk is full when the next checkpoint is written."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.at:
            return
        import os
        import shutil

        path = pathlib.Path(trainer.log_dir) / "filler"
        with open(path, "wb") as f:
            chunk = b"\0" * 2**16
            try:
                while shutil.disk_usage(path.parent).free > 0:
                    f.write(chunk)
                    f.flush()
            except OSError:
                pass  # full
        os.sync()
