"""``DiffusionModule``: the LightningModule that trains a backbone to denoise GP sequences and
samples from it (or from the exact model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from stdiff._validation import check_positive
from stdiff.data import derive_seed
from stdiff.diffusion import (
    ExactNoiseModel,
    denoising_loss,
    diffuse,
    get_parameterization,
    per_sample,
    times_from_uniform,
    training_times,
)
from stdiff.nn import DiT
from stdiff.nn.dit import Backbone
from stdiff.sampling import Heun, Sampler
from stdiff.schedules import NoiseSchedule, OrnsteinUhlenbeck

BackboneFactory = Callable[[tuple[int, ...]], Backbone]  # sample_shape -> network


class DiffusionModule(L.LightningModule):
    """Trains ``backbone`` to denoise under ``schedule``; ``predict`` draws samples with ``sampler``.

    Args:
        sample_shape: ``(T, *space_shape)``; the CLI links it from the data module.
        backbone: the network class and its options; called with ``sample_shape``.
        schedule: the forward noising process.
        parameterization: what the network predicts: ``eps``, ``x0``, ``v`` or ``score``.
        weighting: loss weight on the ε-error: ``eps`` (uniform), ``x0``, ``v``, ``score`` (the
            paper's plain score matching, 1/σ²) or ``min_snr``.
        min_snr_gamma: γ of the ``min_snr`` weighting.
        time_sampling: training times uniform in t (``uniform``) or in log-SNR (``log_snr``).
        sampler: the sampler (and its steps and time grid) used by ``predict``.
        oracle: use the exact noise model of the data's GP instead of the network (validate
            and predict only): separates sampler error from model error.
        compile: compile the backbone with ``torch.compile`` (in place, so checkpoints keep the
            same keys); the first steps are slow while it compiles.
        optimizer: optimizer class and options; called with the parameters.
        lr_scheduler: optional learning-rate scheduler, stepped every optimizer step.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        backbone: BackboneFactory = DiT,
        schedule: NoiseSchedule = lazy_instance(OrnsteinUhlenbeck),  # noqa: B008 (jsonargparse default)
        parameterization: Literal["eps", "x0", "v", "score"] = "eps",
        weighting: Literal["eps", "x0", "v", "score", "min_snr"] = "eps",
        min_snr_gamma: float = 5.0,
        time_sampling: Literal["uniform", "log_snr"] = "uniform",
        sampler: Sampler = lazy_instance(Heun, steps=100),  # noqa: B008
        oracle: bool = False,
        compile: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        # Under the CLI this stores the parsed config (class paths and options), which is what
        # load_from_checkpoint re-instantiates from.
        self.save_hyperparameters()
        schedule.validate()
        self.sample_shape = tuple(sample_shape)
        self.backbone = backbone(self.sample_shape)
        self._backbone_factory = _Shared(backbone)
        self._flops: int | None = None
        self.schedule = schedule
        self.parameterization = get_parameterization(parameterization)
        self.weighting, self.time_sampling = weighting, time_sampling
        self.min_snr_gamma = check_positive("min_snr_gamma", min_snr_gamma)
        self.sampler = sampler
        self.oracle: ExactNoiseModel | None = None
        self.use_oracle = oracle
        if compile:
            self.backbone.compile()  # nn.Module.compile: in place, state_dict keys unchanged
        # Shared, not copied, by deepcopy: EMAWeightAveraging deep-copies the module, and under DDP
        # the CLI's optimizer partial holds a lock that cannot be copied (nor needs to be).
        self._factories = _Shared((optimizer, lr_scheduler))

    def setup(self, stage: str) -> None:
        if not self.use_oracle:
            return
        if stage == "fit":
            raise ValueError(
                "model.oracle=true uses the exact model, which has nothing to train: use it with validate or predict"
            )
        gp = getattr(self.trainer.datamodule, "gp", None)
        if gp is None:
            raise ValueError("model.oracle=true needs a data module with a `gp` attribute (a KroneckerGP)")
        self.oracle = ExactNoiseModel(gp, self.schedule)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise model: ``x_t (B, T, *space)``, diffusion times ``t (B,)`` -> ε̂ ``(B, T, *space)``."""
        if self.oracle is not None:
            return self.oracle(x_t, t)
        out = self.backbone(x_t, self.schedule.log_snr(t))
        alpha, sigma = per_sample(self.schedule.alpha(t), x_t), per_sample(self.schedule.sigma(t), x_t)
        return self.parameterization.to_noise(out, x_t, alpha, sigma)

    @property
    def tokens_per_sample(self) -> int:
        """Tokens the backbone sees per sample: T·P for a DiT, T otherwise."""
        return self.sample_shape[0] * getattr(self.backbone, "num_patches", 1)

    @property
    def flops_per_batch(self) -> int:
        """Forward + backward FLOPs of the backbone on one training batch, counted once on a copy
        built on the meta device (``lightning.fabric.utilities.throughput.measure_flops``); read
        by ``ThroughputMonitor`` for FLOP/s and MFU."""
        if self._flops is None:
            from lightning.fabric.utilities.throughput import measure_flops

            batch = getattr(self.trainer.datamodule, "batch_size", 1) if self._trainer is not None else 1
            # ThroughputMonitor asks from under inference mode; counting the backward needs grads.
            with torch.inference_mode(False), torch.enable_grad(), torch.device("meta"):
                net = self._backbone_factory.value(self.sample_shape)
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
        seed = derive_seed(torch.initial_seed(), self.global_rank, self.global_step, micro)
        generator = torch.Generator(device=x0.device).manual_seed(seed)
        t = training_times(self.schedule, len(x0), self.time_sampling, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        loss = denoising_loss(self, self.schedule, x0, t, noise, self.weighting, self.min_snr_gamma).mean()
        if self._logs_this_step():
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def _logs_this_step(self) -> bool:
        # Lightning writes step metrics every `log_every_n_steps` optimizer steps but its `log` call
        # costs ~1 ms of Python on every step; logging only where it is written keeps the same
        # curves (and the progress bar shows the latest written loss).
        if self._trainer is None:
            return True
        every = self.trainer.log_every_n_steps
        return every > 0 and ((self.global_step + 1) % every == 0 or self.trainer.should_stop)

    def evaluation_inputs(self, batch, batch_idx: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(x0, t, noise)`` of a validation or test batch. Times are uniform in log-SNR, whatever
        the training sampling, so every noise level (and every bin of the score-error diagnostic)
        is represented evenly. A batch ``(x0, noise, u)`` (``GPDataModule``) fixes noise and time
        per sample; a plain ``x0`` batch gets both from a generator seeded by the batch index.
        Either way every pass scores the same triples, so the loss moves only when the model does."""
        if isinstance(batch, (tuple, list)):
            x0, noise, u = batch
        else:
            x0, generator = batch, torch.Generator().manual_seed(batch_idx)
            u = torch.rand(len(x0), generator=generator).to(x0.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        return x0, times_from_uniform(self.schedule, u, "log_snr").to(x0.dtype), noise

    def validation_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch, batch_idx: int, stage: str) -> dict[str, Tensor]:
        """Unweighted ε-loss on fixed (x0, t, ε) triples (comparable across runs and weightings);
        returns what diagnostics need, so they cost no second forward pass."""
        x0, t, noise = self.evaluation_inputs(batch, batch_idx)
        x_t = diffuse(self.schedule, x0, t, noise)
        noise_pred = self(x_t, t)
        loss = (noise_pred - noise).pow(2).flatten(1).mean(1)
        self.log(f"{stage}/loss", loss.mean(), prog_bar=True, sync_dist=True, batch_size=len(x0))
        return {"x0": x0, "t": t, "noise": noise, "x_t": x_t, "noise_pred": noise_pred, "loss": loss}

    # --- sampling ----------------------------------------------------------------------------

    def predict_step(self, request: Tensor, batch_idx: int) -> Tensor:
        """``request = [(seed, n)]`` from the data module -> ``n`` samples ``(n, T, *space)``."""
        seed, n = request.reshape(-1).tolist()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.sampler.sample(self, self.schedule, (n, *self.sample_shape), generator, self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("hyper_parameters", {}).get("sample_shape")
        if stored is not None and tuple(stored) != self.sample_shape:
            raise ValueError(
                f"the checkpoint was trained on samples of shape {tuple(stored)} (T, *space_shape), but the "
                f"data gives {self.sample_shape}: use the data settings the checkpoint was trained with"
            )

    def configure_optimizers(self):
        make_optimizer, make_scheduler = self._factories.value
        optimizer = make_optimizer(self.parameters())
        if make_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": make_scheduler(optimizer), "interval": "step"}}


class _Shared:
    """A value that deep copies of its owner share instead of copying."""

    def __init__(self, value) -> None:
        self.value = value

    def __deepcopy__(self, memo) -> _Shared:
        return self
