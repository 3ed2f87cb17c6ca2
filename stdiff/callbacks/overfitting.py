"""``BestCheckpoint``: the checkpoint of the lowest validation loss, and a warning when the
validation loss keeps rising (overfitting a small data set). Early stopping is Lightning's own
``EarlyStopping`` (``monitor: val/loss``), added in a config where wanted."""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from stdiff._validation import check_int, warn
from stdiff.callbacks.reliability import FitOnlyState


class BestCheckpoint(FitOnlyState, ModelCheckpoint):
    """Keeps ``checkpoints/best.ckpt``, rewritten after every validation whose ``val/loss`` is the
    lowest so far (with EMA, the averaged weights that loss was measured on), and warns once when
    the validation loss has stayed more than ``tolerance`` above its best for ``patience``
    validations in a row: the model is fitting its training data, not the distribution. Test or
    predict the best with ``--ckpt_path <run>/checkpoints/best.ckpt``.

    Args:
        patience: validations in a row above the best before the warning (0: never warn).
        tolerance: relative rise counted as "above the best" (0.05: 5 %).
        enabled: False writes no best checkpoint and gives no warning.
    """

    def __init__(self, patience: int = 2, tolerance: float = 0.05, enabled: bool = True) -> None:
        super().__init__(monitor="val/loss", mode="min", save_top_k=1 if enabled else 0, filename="best",
                         auto_insert_metric_name=False, save_last=False, save_on_train_epoch_end=False)  # fmt: skip
        self.patience = check_int("BestCheckpoint.patience", patience, 0)
        if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
            raise ValueError(f"BestCheckpoint.tolerance must be a number >= 0, got {tolerance!r}")
        self.tolerance, self.enabled = float(tolerance), bool(enabled)
        self.history: list[tuple[int, float]] = []  # (step, val/loss) of every validation in fit
        self._warned = False

    @property
    def state_key(self) -> str:
        return "BestCheckpoint"

    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": self.history, "warned": self._warned}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.history, self._warned = [tuple(h) for h in state_dict.get("history", [])], state_dict.get("warned", False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        super().on_validation_end(trainer, pl_module)
        loss = trainer.callback_metrics.get("val/loss")
        if loss is None or not math.isfinite(float(loss)):
            return
        self.history.append((trainer.global_step, float(loss)))
        self._check_rise()

    def _check_rise(self) -> None:
        if self._warned or self.patience == 0 or len(self.history) <= self.patience:
            return
        best_step, best = min(self.history, key=lambda h: h[1])
        recent = self.history[-self.patience :]
        if all(v > best * (1 + self.tolerance) for _, v in recent) and best_step < recent[0][0]:
            self._warned = True
            warn(
                f"val/loss has risen from its best {best:.4g} (step {best_step}) to {recent[-1][1]:.4g} (step "
                f"{recent[-1][0]}) over the last {self.patience} validations: the model is overfitting its training "
                f"data. The best weights are in {self.best_model_path or 'checkpoints/best.ckpt'}. Remedies: more "
                "data or every window offset (data.init_args.train_stride=1), weight decay, dropout "
                "(model.denoiser.init_args.backbone.init_args.dropout), a smaller model, fewer steps, or stop early "
                "(a lightning.pytorch.callbacks.EarlyStopping with monitor: val/loss in trainer.callbacks)"
            )
