"""Nothing lost when a run is killed, stopped or goes non-finite.

``Checkpoint``: periodic checkpoints, a final one, and one when the run is stopped by SIGTERM or
Ctrl+C (SIGINT), at the end of the step in progress. ``NonFiniteGuard``: a non-finite loss or
gradient stops the run, or skips the step, at the step where it happens.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from stdiff._validation import check_int, warn

STOP_SIGNALS = {"SIGINT": 130, "SIGTERM": 143}  # exit status after a graceful stop: 128 + signal number
stopped_by: str | None = None  # the signal that stopped the last fit in this process, for the exit status
graceful = False  # whether a fit's training loop is in charge of signals (stop at the step's end)


def stop_now(signum, frame) -> None:
    """SIGTERM / SIGINT handler of a run that has no step to finish (validate, test, predict, a fit
    setting up): stop at once, by ``SIGTERMException``. Inside a fit's loop (``graceful``) Lightning's
    own handler, which calls this one after it, has taken note and the step is finished first."""
    global stopped_by
    if graceful:
        return
    stopped_by = signal.Signals(signum).name
    raise SIGTERMException


class FitOnlyState:
    """For checkpoint callbacks: their saved bookkeeping (best score, last path, directory) is
    restored only when fitting. validate / test / predict write no checkpoints, and their run
    directory differs from the training run's, which made Lightning warn that "the dirpath has
    changed" as if they were about to write checkpoints there."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: dict) -> None:
        if getattr(self, "_fitting", True):
            super().load_state_dict(state_dict)


class Checkpoint(FitOnlyState, ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with stdiff's defaults: every ``every_n_train_steps`` steps
    and at the end of training it (atomically) rewrites ``checkpoints/last.ckpt``, and when the run
    is stopped by SIGTERM (a scheduler's pre-emption) or Ctrl+C it finishes the step in progress,
    writes ``last.ckpt`` and exits with status 143 or 130. Resume with ``--ckpt_path last``.

    A second Ctrl+C aborts at once, without a checkpoint. A stop during a fit's validation stops it
    within a batch or a sampler step (in one process; under DDP after the validation) and writes
    ``last.ckpt`` of the step reached, with stdiff's ``EMA`` swapped back to the training weights
    first (under another weight-averaging callback it keeps the last periodic checkpoint).
    Every ``ModelCheckpoint`` option applies; ``save_top_k=-1`` also keeps every periodic one.
    """

    def __init__(self, every_n_train_steps: int = 1000, save_last: bool = True, save_top_k: int = 0, **kwargs) -> None:
        super().__init__(every_n_train_steps=every_n_train_steps, save_last=save_last, save_top_k=save_top_k, **kwargs)
        self.stopped_by: str | None = None
        self._previous_sigint = None

    # --- signals -------------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stopped_by = None
        global graceful
        graceful = True  # set up: from here a signal ends the step in progress, then the fit (stop_now)
        # Lightning turns SIGTERM into a stop at the end of the step (and across DDP ranks); Ctrl+C
        # becomes the same, instead of a KeyboardInterrupt wherever the program happens to be.
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        self.stopped_by = "SIGINT"
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C aborts at once
        rank_zero_info("\nCtrl+C: stopping after this step and writing a checkpoint (Ctrl+C again aborts)")
        os.kill(os.getpid(), signal.SIGTERM)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        stop_if_signalled(trainer)  # a validation stops at once, not when it is done

    # --- when to write -------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # The final state, unless the last periodic checkpoint already holds it. Written here, not
        # in on_train_end, where EMAWeightAveraging has already copied the average over the weights.
        if self.save_last and _training_ends(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # see on_train_epoch_end

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return  # an error mid-step: the model may be half-updated; keep the last good checkpoint
        global stopped_by
        self.stopped_by = stopped_by = self.stopped_by or stopped_by or "SIGTERM"
        if trainer.validating and not trainer.sanity_checking and trainer.state.fn == "fit":
            # stopped within a fit's validation (stop_if_signalled): the training weights back in the
            # model, then the checkpoint of the step reached, as after a training step
            from stdiff.callbacks.ema import EMA

            for callback in trainer.callbacks:
                if isinstance(callback, EMA):
                    callback.restore_training_weights(pl_module)
            if any(isinstance(c, EMA) and c.swapped for c in trainer.callbacks) or not _ema_only(trainer):
                rank_zero_info(f"{self.stopped_by} during validation: no new checkpoint (the model holds averaged "
                               f"weights); the last one is {self.last_model_path or 'none'}")  # fmt: skip
                return
            if self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            rank_zero_info(f"{self.stopped_by} during validation: stopped at step {trainer.global_step}, checkpoint "
                           f"{self.last_model_path}; resume with --ckpt_path last")  # fmt: skip
            return
        if not trainer.training or trainer.sanity_checking:
            where = f" (step {self._last_global_step_saved})" if self.last_model_path else ""
            rank_zero_info(
                f"{self.stopped_by} during {'validation' if trainer.validating or trainer.sanity_checking else 'training'}: no new "
                f"checkpoint; the last one is {self.last_model_path or 'none'}{where}"
            )
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        rank_zero_info(
            f"{self.stopped_by}: stopped at step {trainer.global_step}, checkpoint {self.last_model_path}; "
            "resume with --ckpt_path last"
        )


def _ema_only(trainer: L.Trainer) -> bool:
    """Whether every weight-averaging callback is stdiff's EMA, whose swap this module can undo."""
    from lightning.pytorch.callbacks import WeightAveraging

    from stdiff.callbacks.ema import EMA

    return all(isinstance(c, EMA) for c in trainer.callbacks if isinstance(c, WeightAveraging))


def stop_if_signalled(trainer: L.Trainer) -> None:
    """Within a fit's validation, stop now if SIGTERM or Ctrl+C came: Lightning only takes note and
    acts after the validation, which with sampling can take minutes. Called between validation
    batches and sampler steps. One process only: under DDP a rank that stopped alone would leave the
    others waiting in a collective, so there the stop comes after the validation, as Lightning does."""
    if trainer.world_size == 1 and trainer.state.fn == "fit" and getattr(trainer, "received_sigterm", False):
        raise SIGTERMException


def _training_ends(trainer: L.Trainer) -> bool:
    """Whether the fit stops after the current epoch."""
    steps_done = trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step
    epochs_done = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    return steps_done or epochs_done or trainer.should_stop


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient (policy ``stop``, or too many skips)."""


class NonFiniteGuard(L.Callback):
    """Checks the loss and the gradients of every optimizer step, before the step is taken.

    Args:
        policy: ``stop``: raise ``NonFiniteError`` naming the step, the loss, the gradient norm and
            the last good checkpoint, without taking the step; ``skip``: drop the step's gradients
            (the optimizer leaves the weights alone; the step still counts), count it as
            ``train/skipped_steps``, and stop once more than ``max_skips`` steps were skipped.
            ``off``: no check.
        max_skips: skipped steps allowed in a run (resumes included) under ``skip``.

    The check costs one reduction over the gradients and one device-to-host transfer per step
    (plus an all-reduce of one flag under DDP, so that every rank takes the same decision). With a
    ``GradScaler`` (``16-mixed``), infinite gradients are the scaler's business and only the loss
    is checked.
    """

    def __init__(self, policy: Literal["stop", "skip", "off"] = "stop", max_skips: int = 10) -> None:
        if policy not in ("stop", "skip", "off"):
            raise ValueError(f"NonFiniteGuard.policy must be 'stop', 'skip' or 'off', got {policy!r}")
        self.policy = policy
        self.max_skips = check_int("NonFiniteGuard.max_skips", max_skips, 0)
        self.skipped = 0
        self._loss: torch.Tensor | None = None
        self._params: list[torch.Tensor] = []

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Listed once: walking the module tree for its parameters on every step costs more than the norm.
        self._params = [p for p in pl_module.parameters() if p.requires_grad]

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self.policy == "off":
            return
        grads = [p.grad for p in self._params if p.grad is not None]
        loss = self._loss if self._loss is not None else torch.zeros((), device=pl_module.device)
        self._loss = None  # a step without backward (training_step returned None) has no loss to check
        check_grads = bool(grads) and getattr(trainer.precision_plugin, "scaler", None) is None
        norm = _total_norm(grads) if check_grads else torch.zeros((), device=loss.device)
        bad = ~(torch.isfinite(loss.float()) & torch.isfinite(norm).all())
        if trainer.world_size > 1:
            bad = torch.tensor(trainer.strategy.reduce_boolean_decision(bool(bad), all=False))
        if not bool(bad):  # the one host-device synchronisation of the check
            return
        what = "loss" if not math.isfinite(loss.item()) else "gradient"
        step = trainer.global_step
        total = torch.linalg.vector_norm(norm.double()).item()  # inf or nan where any gradient is
        found = f"non-finite {what} at step {step} (loss {loss.item():.4g}, gradient norm {total:.4g})"
        if self.policy == "skip":
            self.skipped += 1
            for p in self._params:
                p.grad = None
            pl_module.log("train/skipped_steps", float(self.skipped))
            if self.skipped <= self.max_skips:
                warn(f"{found}: step skipped ({self.skipped} of at most {self.max_skips})")
                return
            found += f"; {self.skipped} steps skipped, more than nonfinite.max_skips={self.max_skips}"
        raise NonFiniteError(
            f"{found}. The step was not taken. Last good checkpoint: {_last_checkpoint(trainer)}. "
            "Lower the learning rate, clip gradients (--trainer.gradient_clip_val=1.0), or allow skips "
            "(--nonfinite.policy=skip)."
        )


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradients' norms, stacked: non-finite where any gradient is. (Not reduced to one
    norm: the check needs no more, and ``get_total_norm`` costs twice as much on a CPU.)"""
    if hasattr(torch, "_foreach_norm"):
        return torch.stack(torch._foreach_norm(grads))
    return torch.stack([torch.linalg.vector_norm(g) for g in grads])


def _last_checkpoint(trainer: L.Trainer) -> str:
    callbacks = trainer.checkpoint_callbacks  # last.ckpt's writer first, best.ckpt's (step 0 on) only if alone
    for cb in sorted(callbacks, key=lambda cb: not cb.last_model_path):
        path = cb.last_model_path or cb.best_model_path
        if path:
            step = getattr(cb, "_last_global_step_saved", None)
            return f"{path} (step {step})" if step is not None else path
    return "none written yet"
