"""``DiffusionModule``: the LightningModule that trains a noise model (``Denoiser``) on sequences
and samples from it. Everything about diffusion lives in ``stdiff.diffusion`` and
``stdiff.sampling``; this file holds only optimisation, evaluation bookkeeping and logging."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from stdiff._validation import check_positive
from stdiff.conditioning import Conditioning, Mask, Trained
from stdiff.diffusion import (
    Denoiser,
    NoiseModel,
    Shared,
    data_moments,
    denoising_loss,
    diffuse,
    times_from_uniform,
    training_times,
)
from stdiff.sampling import Sampler, UniPC
from stdiff.schedules import NoiseSchedule
from stdiff.seeding import NOISE, VAL, derive_seed, generator

NoiseModelFactory = Callable[[tuple[int, ...]], NoiseModel]  # sample_shape -> noise model


class DiffusionModule(L.LightningModule):
    """Trains ``denoiser`` by denoising score matching; ``predict`` draws samples with ``sampler``.

    Args:
        sample_shape: ``(T, *space_shape)``; the CLI links it from the data module.
        denoiser: the noise model and its options (``Denoiser``: backbone, schedule,
            parameterisation; ``ExactDenoiser``: the exact model of the data, for validate, test
            and predict; ``ResidualDenoiser``: the data's Gaussian (truth or fitted reference)
            plus a learned correction); called with ``sample_shape``.
        weighting: loss weight on the ε-error: ``eps`` (uniform), ``x0``, ``v``, ``score`` (the
            paper's plain score matching, 1/σ²) or ``min_snr``.
        min_snr_gamma: γ of the ``min_snr`` weighting.
        time_sampling: training times uniform in t (``uniform``) or in log-SNR (``log_snr``).
        sampler: the sampler (and its steps and time grid) used by ``predict`` and the diagnostics.
        mask: train a conditional model (a ``ConditionalDiT`` backbone): each training sample gets a
            mask from this task (``MaskMixture`` for all tasks), the network sees the observed
            values and the mask, and the loss counts only the missing entries.
        conditioning: how conditional samples are drawn (predict with observations, conditional
            diagnostics): ``Trained`` (default with ``mask``), or, for an unconditional model,
            ``Replacement`` or ``ReconstructionGuidance``.
        compile: compile the noise model with ``torch.compile`` (in place, so checkpoints keep the
            same keys); the first steps are slow while it compiles.
        optimizer: optimizer class and options; called with the parameters.
        lr_scheduler: optional learning-rate scheduler, stepped every optimizer step.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        denoiser: NoiseModelFactory = Denoiser,
        weighting: Literal["eps", "x0", "v", "score", "min_snr"] = "eps",
        min_snr_gamma: float = 5.0,
        time_sampling: Literal["uniform", "log_snr"] = "uniform",
        sampler: Sampler = lazy_instance(UniPC, steps=25),  # noqa: B008 (jsonargparse default)
        mask: Mask | None = None,
        conditioning: Conditioning | None = None,
        compile: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        # Under the CLI this stores the parsed config (class paths and options): what a checkpoint's
        # settings are compared with (stdiff.checkpoints.check_compatible).
        self.save_hyperparameters()
        self.sample_shape = tuple(sample_shape)
        self.denoiser = denoiser(self.sample_shape)
        self.weighting, self.time_sampling = weighting, time_sampling
        self.min_snr_gamma = check_positive("min_snr_gamma", min_snr_gamma)
        self.sampler = sampler
        self.mask = mask
        self.conditioning = conditioning if conditioning is not None or mask is None else Trained()
        if compile:
            self.denoiser.compile()  # nn.Module.compile: in place, state_dict keys unchanged
        # Shared, not copied, by deepcopy: EMA deep-copies the module, and under DDP the CLI's
        # optimizer partial holds a lock that cannot be copied (nor needs to be).
        self._factories = Shared((optimizer, lr_scheduler))
        self._flops: int | None = None

    @property
    def schedule(self) -> NoiseSchedule:
        return self.denoiser.schedule

    @property
    def trainable(self) -> bool:
        """Whether there is anything to train (the exact model has no parameters)."""
        return any(p.requires_grad for p in self.parameters())

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        self._missing = getattr(data, "missing_values", False)  # NaN in the data: left out of the loss
        truth = getattr(data, "truth", None) if getattr(data, "truth_is_exact", False) else None
        if truth is not None and self.denoiser.data_moments is None:
            self.denoiser.data_moments = data_moments(truth)  # where sampling starts (Sampler.start_state)
        if self.denoiser.needs_truth:
            # predict may never need it (a checkpoint carries a ResidualDenoiser's prior): fetched
            # when first used, so a fitted reference is not fitted for nothing
            truth = (lambda: getattr(data, "truth", None)) if stage == "predict" else getattr(data, "truth", None)
            self.denoiser.attach_truth(truth)

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        """The noise model: ``x_t (B, T, *space)``, times ``t (B,)`` -> ε̂ ``(B, T, *space)``."""
        return self.denoiser(x_t, t, **cond)

    @property
    def tokens_per_sample(self) -> int:
        """Tokens the backbone sees per sample (throughput figures)."""
        backbone = getattr(self.denoiser, "backbone", None)
        return backbone.tokens_per_sample if backbone is not None else self.sample_shape[0]

    @property
    def flops_per_batch(self) -> int:
        """Forward + backward FLOPs of the backbone on one training batch, counted once on a copy
        built on the meta device (``lightning.fabric.utilities.throughput.measure_flops``); read
        by ``ThroughputMonitor`` for FLOP/s and MFU. 0 for a noise model without a backbone."""
        factory = getattr(self.denoiser, "backbone_factory", None)
        if self._flops is None and factory is None:
            self._flops = 0
        if self._flops is None:
            from lightning.fabric.utilities.throughput import measure_flops

            batch = self.trainer.datamodule.batch_size if self._trainer is not None else 1
            # ThroughputMonitor asks from under inference mode; counting the backward needs grads.
            with torch.inference_mode(False), torch.enable_grad(), torch.device("meta"):
                net = factory.value(self.sample_shape)
                x, c = torch.randn(batch, *self.sample_shape), torch.randn(batch)
                self._flops = measure_flops(net, lambda: net(x, c), lambda y: y.sum())
        return self._flops

    # --- training and validation ---------------------------------------------------------------

    def training_step(self, x0: Tensor, batch_idx: int) -> Tensor:
        # Times and noise come from a generator seeded by (run seed, rank, step, micro-batch), not
        # from the global RNG, which a checkpoint does not hold, nor from the index in the epoch,
        # which Lightning can count differently after a resume: a resumed run draws exactly what
        # the uninterrupted one would have.
        micro = batch_idx % self.trainer.accumulate_grad_batches if self._trainer is not None else batch_idx
        seed = derive_seed(torch.initial_seed(), NOISE, self.global_rank, self.global_step, micro)
        generator = torch.Generator(device=x0.device).manual_seed(seed)
        t = training_times(self.schedule, len(x0), self.time_sampling, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x0, cond, where = self.loss_inputs(x0, seed, 0)
        loss = denoising_loss(self.denoiser, x0, t, noise, self.weighting, self.min_snr_gamma, where, **cond).mean()
        if self._logs_this_step():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The last step of the fit asks Lightning to stop, which makes it validate there (it
        # validates when asked to stop): every fit ends with a validation, so its diagnostics,
        # metrics.json and figures describe the final weights, also when the run is shorter than
        # val_check_interval or does not end on a multiple of it.
        if self._trainer is not None and _last_step(self.trainer):
            self.trainer.should_stop = True

    def _logs_this_step(self) -> bool:
        # Lightning writes step metrics every `log_every_n_steps` optimizer steps but its `log` call
        # costs ~1 ms of Python on every step; logging only where it is written keeps the same
        # curves (and the progress bar shows the latest written loss).
        if self._trainer is None:
            return True
        every = self.trainer.log_every_n_steps
        # Lightning also writes on the step that stops the fit (the last one: see on_train_batch_end)
        last = self.trainer.should_stop or _last_step(self.trainer, taken=False)
        return every > 0 and ((self.global_step + 1) % every == 0 or last)

    def evaluation_inputs(self, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(x0, t, noise)`` of a validation or test batch ``(x0, noise, u)`` (``SequenceDataModule``
        fixes noise and time per sample, so every pass scores the same triples and the loss moves
        only when the model does). Times are uniform in log-SNR, whatever the training sampling,
        so every noise level (and every bin of the score-error diagnostic) is represented evenly."""
        x0, noise, u = batch
        return x0, times_from_uniform(self.schedule, u, "log_snr").to(x0.dtype), noise

    def validation_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch, batch_idx: int, stage: str) -> dict[str, Tensor]:
        """Unweighted ε-loss on fixed (x0, t, ε) triples (comparable across runs and weightings; for a
        conditional model on the missing entries, masks seeded by the batch index); returns what
        the diagnostics need, so they cost no second forward pass."""
        x0, t, noise = self.evaluation_inputs(batch)
        x0, cond, where = self.loss_inputs(x0, 0, VAL, batch_idx)
        x_t = diffuse(self.schedule, x0, t, noise)
        parts = getattr(self.denoiser, "forward_parts", None)
        noise_pred, prior = parts(x_t, t, **cond) if parts is not None else (self(x_t, t, **cond), None)

        def mean_over(sq: Tensor) -> Tensor:
            return sq.flatten(1).mean(1) if where is None else (sq * where).flatten(1).sum(1) / where.flatten(1).sum(1).clamp_min(1)

        loss = mean_over((noise_pred - noise).pow(2))
        self.log(f"{stage}/loss", loss.mean(), prog_bar=True, sync_dist=True, batch_size=len(x0))
        if prior is not None:  # a ResidualDenoiser: its prior's loss, and the size of the learned correction
            self.log(f"{stage}/prior_loss", mean_over((prior - noise).pow(2)).mean(), sync_dist=True, batch_size=len(x0))
            self.log(f"{stage}/correction", mean_over((noise_pred - prior).pow(2)).mean().sqrt(), sync_dist=True,
                     batch_size=len(x0))  # fmt: skip
        out = {"x0": x0, "t": t, "noise": noise, "x_t": x_t, "noise_pred": noise_pred, "loss": loss}
        if where is not None:  # the diagnostics' exact score is the unconditional one of complete data:
            if self.mask is not None:  # a conditional model has no such counterpart
                return {"loss": loss}
            complete = where.flatten(1).all(1)  # unconditional, missing values: the windows without any
            out = {k: v[complete] for k, v in out.items()} if complete.any() else {"loss": loss}
        return out

    def loss_inputs(self, x0: Tensor, *key: int) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """``(x0, cond, where)`` for the loss on a batch ``x0 (B, T, *space)``: a conditional model's
        ``observed`` values (0 elsewhere) and ``mask``, drawn from the training task with the seed
        ``derive_seed(*key)`` (derived only then: nothing per step for an unconditional model);
        ``where`` the entries the loss counts (the missing ones; never NaN entries of the data,
        which are set to 0), None for all."""
        valid = None
        if getattr(self, "_missing", False):
            valid = ~x0.isnan()
            x0 = torch.nan_to_num(x0)
        if self.mask is None:
            return x0, {}, valid
        mask = self.mask.draw(len(x0), self.sample_shape, generator(*key)).to(x0.device)
        where = ~mask
        if valid is not None:
            mask, where = mask & valid, where & valid
        return x0, {"observed": torch.where(mask, x0, torch.zeros_like(x0)), "mask": mask}, where

    # --- sampling ----------------------------------------------------------------------------

    def predict_step(self, request, batch_idx: int) -> Tensor:
        """A request from the data module -> samples ``(n, T, *space)``: ``[(seed, n)]`` for n
        unconditional samples, or ``{"seed", "observed", "mask"}`` (each ``(n, T, *space)``) for n
        conditional ones."""
        if isinstance(request, dict):
            g = torch.Generator(device=self.device).manual_seed(int(request["seed"].reshape(-1)[0]))
            return self.sample_conditional(request["observed"][0], request["mask"][0], g)
        seed, n = request.reshape(-1).tolist()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.sampler.sample(self.denoiser, (n, *self.sample_shape), generator, self.device)

    def sample_conditional(self, observed: Tensor, mask: Tensor, generator=None, progress=None) -> Tensor:
        """Samples ``(n, T, *space)`` given ``observed`` values at ``mask`` (both ``(n, T, *space)``),
        drawn with ``sampler`` by the ``conditioning`` method."""
        if self.conditioning is None:
            raise ValueError(
                "conditional sampling needs model.conditioning (Replacement or ReconstructionGuidance for an "
                "unconditional model), or a conditional model (trained with model.mask)"
            )
        observed, mask = observed.to(self.device), mask.to(self.device)
        return self.conditioning.sample(self.sampler, self.denoiser, observed, mask, generator, self.device, progress)

    # The data's settings (``stdiff.checkpoints.data_settings``: its class and every argument that shapes its
    # distribution), set by the CLI and stored in each checkpoint as ``stdiff_data``, so that a
    # checkpoint is never scored on, sampled for or resumed with data it was not trained on unawares.
    data_settings: dict | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.data_settings is not None:
            checkpoint["stdiff_data"] = self.data_settings
        if self.denoiser.data_moments is not None:
            mean, variance = self.denoiser.data_moments
            checkpoint["stdiff_moments"] = {"mean": mean, "variance": variance}
        if hasattr(self.denoiser, "prior_state"):  # a ResidualDenoiser: the prior it was trained with
            checkpoint["stdiff_prior"] = self.denoiser.prior_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("hyper_parameters", {}).get("sample_shape")
        if stored is not None and tuple(stored) != self.sample_shape:
            raise ValueError(
                f"the checkpoint was trained on samples of shape {tuple(stored)} (T, *space_shape), but the "
                f"data gives {self.sample_shape}: use the data settings the checkpoint was trained with"
            )
        if "stdiff_moments" in checkpoint:
            self.denoiser.data_moments = (checkpoint["stdiff_moments"]["mean"], checkpoint["stdiff_moments"]["variance"])
        if "stdiff_prior" in checkpoint and hasattr(self.denoiser, "load_prior_state"):
            self.denoiser.load_prior_state(checkpoint["stdiff_prior"])

    def configure_optimizers(self):
        make_optimizer, make_scheduler = self._factories.value
        optimizer = make_optimizer(self.parameters())
        if make_scheduler is None:
            return optimizer
        scheduler = make_scheduler(optimizer)
        if getattr(scheduler, "total_steps", 0) is None and self._trainer is not None:
            # A schedule that decays over the run (stdiff.optim.WarmupCosine) learns its length here.
            steps = self.trainer.max_steps
            scheduler.total_steps = int(steps if steps and steps > 0 else self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _last_step(trainer, taken: bool = True) -> bool:
    """Whether the optimizer step just taken (``taken``; else the one in progress) is the fit's
    last: ``max_steps``, or the last batch of the last of ``max_epochs``."""
    if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step + (0 if taken else 1):
        return True
    epochs = trainer.max_epochs
    last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    return epochs is not None and 0 < epochs <= trainer.current_epoch + 1 and bool(last_batch)
