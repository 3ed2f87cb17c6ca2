"""``BestCheckpoint``: the checkpoint a fit hands over as its best, chosen by held-out forecasts
with step 0 (for a ``ResidualDenoiser``, the fitted Gaussian itself) always a candidate, and a
warning when the validation loss keeps rising (overfitting a small data set). Early stopping is
Lightning's own ``EarlyStopping`` (``monitor: val/loss``), added in a config where wanted."""

from __future__ import annotations

import contextlib
import math
import os
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from stdiff._validation import check_int, warn
from stdiff.callbacks.reliability import FitOnlyState, stop_if_signalled
from stdiff.seeding import DIAGNOSTICS, generator

SELECTION = 20  # the DIAGNOSTICS sub-stream of the selection's cases, masks and sampler noise
MARGIN = 2.0  # a checkpoint displaces step 0 only when its CRPS is lower by this many standard errors
PER_VALUE = 50  # trainable parameters per distinct training value above which a fit warns (the examples: 12, 3)


class BestCheckpoint(FitOnlyState, ModelCheckpoint):
    """Keeps ``checkpoints/best.ckpt``: the weights (with EMA, the averaged ones) that
    ``--ckpt_path best`` and the examples use.

    **What is compared** (``select``). ``forecast`` (``auto`` picks it for a conditional model on
    data windows with a ``task``, such as ``ArrayDataModule``'s; on a known GP's draws, ``loss``,
    where the diagnostics score against the truth): at every validation, the model's conditional samples of ``cases``
    validation windows, each observed at a mask of the data's task (and wherever the data has
    values), ``samples`` per case, scored by the fair CRPS on the hidden, really observed entries
    (standardised units), averaged per case. The cases, masks and sampler noise are the same at
    every validation, so two candidates' scores are paired. ``loss``: ``val/loss`` (step 0's is
    ``val/prior_loss`` where the model logs it, as a ``ResidualDenoiser`` does), no error bar.

    **The rule.** Step 0 (the model as initialised: for a ``ResidualDenoiser`` exactly its
    Gaussian prior) is scored before training and written as ``best.ckpt``. A later validation's
    weights replace it only when their CRPS is below step 0's by more than ``MARGIN`` (2) standard
    errors of the paired difference over the cases, and below the current best's: where nothing
    beats the prior beyond its noise, ``best.ckpt`` *is* the prior (ties go to the simpler model).
    ``report()`` gives the numbers; the end-of-fit summary and ``metrics.json`` print them. No
    validation in the fit (``limit_val_batches=0``): no ``best.ckpt``.

    Args:
        patience: validations in a row above the best ``val/loss`` before the overfitting warning
            (0: never warn).
        tolerance: relative rise counted as "above the best" (0.05: 5 %).
        enabled: False writes no best checkpoint and gives no warning.
        select: ``auto``, ``forecast`` or ``loss`` (above).
        cases: validation windows scored (``forecast``), at most.
        samples: conditional samples per case (``forecast``).
        seed: root seed of the cases' masks and the sampler noise.
    """

    def __init__(self, patience: int = 2, tolerance: float = 0.05, enabled: bool = True,
                 select: Literal["auto", "forecast", "loss"] = "auto", cases: int = 64, samples: int = 16,
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__(monitor="val/loss", mode="min", save_top_k=1 if enabled else 0, filename="best",
                         auto_insert_metric_name=False, save_last=False, save_on_train_epoch_end=False)  # fmt: skip
        self.patience = check_int("BestCheckpoint.patience", patience, 0)
        if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
            raise ValueError(f"BestCheckpoint.tolerance must be a number >= 0, got {tolerance!r}")
        if select not in ("auto", "forecast", "loss"):
            raise ValueError(f"BestCheckpoint.select must be 'auto', 'forecast' or 'loss', got {select!r}")
        self.tolerance, self.enabled, self.select = float(tolerance), bool(enabled), select
        self.cases = check_int("BestCheckpoint.cases", cases, 2)
        self.samples = check_int("BestCheckpoint.samples", samples, 2)
        self.seed = int(seed)
        self.history: list[tuple[int, float]] = []  # (step, val/loss) of every validation in fit
        self.scores: dict[int, list[float]] = {}  # step -> per-case CRPS (forecast) or [val/loss] (loss)
        self.best_step: int | None = None
        self._warned = False
        self._mode: str | None = None
        self._pending: list[float] | None = None  # this validation's scores, until on_validation_end

    @property
    def state_key(self) -> str:
        return "BestCheckpoint"

    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": self.history, "warned": self._warned,
                "scores": {str(k): v for k, v in self.scores.items()}, "best_step": self.best_step}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if not getattr(self, "_fitting", True):
            return
        self.history, self._warned = [tuple(h) for h in state_dict.get("history", [])], state_dict.get("warned", False)
        self.scores = {int(k): list(v) for k, v in state_dict.get("scores", {}).items()}
        self.best_step = state_dict.get("best_step")

    # --- hooks ---------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        task = getattr(trainer.datamodule, "task", None)
        conditional = getattr(pl_module, "mask", None) is not None and getattr(pl_module, "conditioning", None) is not None
        possible = task is not None and conditional and hasattr(trainer.datamodule, "conditional_cases")
        if self.select == "forecast" and not possible:
            raise ValueError("BestCheckpoint.select=forecast needs a conditional model (model.mask) and data with a "
                             "task (data.init_args.task); use select: auto or loss")  # fmt: skip
        values = getattr(trainer.datamodule, "training_values", None)
        if stage == "fit" and self.enabled and values:
            size_warning(sum(p.numel() for p in pl_module.parameters() if p.requires_grad), values)
        held_out = not getattr(trainer.datamodule, "truth_is_exact", True)  # data windows, not a known GP's draws
        self._mode = "forecast" if possible and (self.select == "forecast" or self.select == "auto" and held_out) else "loss"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.global_step != 0 or 0 in self.scores or not trainer.enable_validation:
            return  # resumed (step 0 was scored and written by the run's first process), or nothing to compare
        if self._mode == "forecast":
            self.scores[0] = self._forecast_scores(trainer, pl_module)
        self._write(trainer, 0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs with the validation's weights in the model (before EMA swaps the training ones back),
        # and before the diagnostics count the validation's time: StdiffCLI.instantiate_trainer
        # puts this callback first.
        self._pending = None
        if not self.enabled or trainer.sanity_checking or trainer.state.fn != "fit" or self._mode != "forecast":
            return
        self._pending = self._forecast_scores(trainer, pl_module)
        pl_module.log("val/forecast_crps", sum(self._pending) / len(self._pending), sync_dist=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        loss = trainer.callback_metrics.get("val/loss")
        step = trainer.global_step
        if loss is not None and math.isfinite(float(loss)):
            self.history.append((step, float(loss)))
            self._check_rise()
        if self._mode == "forecast":
            current, self._pending = self._pending, None
        else:
            current = [float(loss)] if loss is not None and math.isfinite(float(loss)) else None
            prior = trainer.callback_metrics.get("val/prior_loss")
            if 0 not in self.scores and prior is not None:
                self.scores[0] = [float(prior)]  # step 0 of a ResidualDenoiser: its prior's loss
        if current is None or step == 0:
            return
        self.scores[step] = current
        if self._beats(current):
            self._write(trainer, step)

    # --- the rule ------------------------------------------------------------------------------

    def _beats(self, scores: list[float]) -> bool:
        """Whether ``scores`` beat step 0 beyond ``MARGIN`` standard errors and the current best."""
        best = self.scores.get(self.best_step) if self.best_step is not None else None
        if best is not None and _mean(scores) >= _mean(best):
            return False
        prior = self.scores.get(0)
        if prior is None:
            return True  # nothing scored at step 0 (loss mode, a plain Denoiser): the lowest loss
        difference, se = paired(prior, scores)
        return difference > MARGIN * se if len(scores) > 1 else difference > 0

    def _write(self, trainer: L.Trainer, step: int) -> None:
        path = self.format_checkpoint_name({})
        self._save_checkpoint(trainer, path)
        self.best_model_path, self.best_step = path, step
        self.best_model_score = torch.tensor(_mean(self.scores[step])) if step in self.scores else None

    def report(self) -> dict[str, float]:
        """The selection in numbers (``fit/best/…``): the step chosen, its score and step 0's, and
        the paired difference's standard error; for the best later candidate too when step 0 stayed."""
        if self.best_step is None or not self.scores:
            return {}
        out = {"fit/best/step": float(self.best_step), "fit/best/forecast": float(self._mode == "forecast")}
        prior = self.scores.get(0)
        others = {s: v for s, v in self.scores.items() if s != 0}
        if prior is not None:
            out["fit/best/prior_score"] = _mean(prior)
        if others:
            step = min(others, key=lambda s: _mean(others[s])) if self.best_step == 0 else self.best_step
            out.update({"fit/best/candidate_step": float(step), "fit/best/candidate_score": _mean(others[step])})
            if prior is not None:
                se = paired(prior, others[step])[1]
                out.update({"fit/best/ratio": _mean(others[step]) / _mean(prior), "fit/best/ratio_se": se / _mean(prior)})
        out["fit/best/cases"] = float(len(prior or next(iter(others.values()), [])))
        return out

    # --- scoring -------------------------------------------------------------------------------

    def _forecast_scores(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[float]:
        """Per-case fair CRPS of the model's conditional samples (class docstring)."""
        from stdiff.callbacks.conditional import run_precision
        from stdiff.metrics.conditional import crps

        data = trainer.datamodule
        shape = tuple(pl_module.sample_shape)
        x = data.conditional_cases(self.cases, generator(self.seed, DIAGNOSTICS, SELECTION, 0), "val").cpu()
        mask = data.task.draw(len(x), shape, generator(self.seed, DIAGNOSTICS, SELECTION, 1)) & ~x.isnan()
        scored = ~mask & ~x.isnan()
        keep = scored.flatten(1).any(1)  # a case with nothing hidden and observed scores nothing
        x, mask, scored = x[keep], mask[keep], scored[keep]
        k = self.samples
        observed, masks = torch.nan_to_num(x).repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        g = generator(self.seed, DIAGNOSTICS, SELECTION, 2, device=pl_module.device)
        chunks, training = [], pl_module.training
        pl_module.eval()  # at step 0 the module is in training mode: no dropout in the samples
        clocks = [cb.clock for cb in trainer.callbacks if trainer.validating and getattr(cb, "clock", None) is not None]
        with torch.no_grad(), run_precision(trainer), clocks[0].part("selection") if clocks else contextlib.nullcontext():
            for o, m in zip(observed.split(512), masks.split(512)):
                stop_if_signalled(trainer)
                chunks.append(pl_module.sample_conditional(o, m, g).float().cpu())
        pl_module.train(training)
        samples = torch.cat(chunks).reshape(len(x), k, *shape).movedim(1, -1)  # (n, T, *space, k)
        per_entry = crps(samples[scored].double(), x[scored].double(), "fair")
        case = torch.arange(len(x))[:, None].expand(len(x), scored[0].numel())[scored.flatten(1)]
        sums = torch.zeros(len(x), dtype=torch.float64).index_add_(0, case, per_entry)
        return (sums / torch.bincount(case, minlength=len(x))).tolist()

    def _check_rise(self) -> None:
        if self._warned or self.patience == 0 or len(self.history) <= self.patience:
            return
        best_step, best = min(self.history, key=lambda h: h[1])
        recent = self.history[-self.patience :]
        if all(v > best * (1 + self.tolerance) for _, v in recent) and best_step < recent[0][0]:
            self._warned = True
            where = self.best_model_path or os.path.join("checkpoints", "best.ckpt")
            warn(
                f"val/loss has risen from its best {best:.4g} (step {best_step}) to {recent[-1][1]:.4g} (step "
                f"{recent[-1][0]}) over the last {self.patience} validations: the model is overfitting its training "
                f"data. The best weights ({where}) are chosen by held-out forecasts where the model is conditional, "
                "with step 0 a candidate. Remedies: more data or every window offset (data.init_args.train_stride=1), "
                "weight decay, dropout (model.denoiser.init_args.backbone.init_args.dropout), a smaller model, fewer "
                "steps, or stop early (a lightning.pytorch.callbacks.EarlyStopping with monitor: val/loss in "
                "trainer.callbacks)"
            )


def size_warning(parameters: int, values: int) -> None:
    """Warn when a model is large for its data: more than ``PER_VALUE`` trainable parameters per
    distinct training value (``ArrayDataModule.training_values``)."""
    if parameters > PER_VALUE * values:
        warn(f"the model has {parameters:,} trainable parameters for {values:,} distinct training values "
             f"({parameters / values:.0f} per value; the shipped real-data examples train 12 and 3): it can learn "
             "its training windows by heart. best.ckpt keeps step 0 (a ResidualDenoiser's fitted Gaussian) unless "
             "validation forecasts beat it beyond 2 standard errors; to learn more from so little: a narrower "
             "backbone (model.denoiser.init_args.backbone.init_args.width), dropout, weight decay, fewer steps "
             "(stdiff/guide/own_data.md, \"Data size\")")  # fmt: skip


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a − b`` over paired cases and its standard error (0 for a single case)."""
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item() if len(d) > 1 else 0.0
