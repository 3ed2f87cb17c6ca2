"""``DiffusionModule``: the LightningModule that trains a backbone to denoise GP sequences."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from stdiff.diffusion import denoising_loss
from stdiff.nn import DiT
from stdiff.nn.dit import Backbone
from stdiff.schedules import NoiseSchedule, OrnsteinUhlenbeck

BackboneFactory = Callable[[tuple[int, ...]], Backbone]  # sample_shape -> network


class DiffusionModule(L.LightningModule):
    """Trains ``backbone`` with the ε-prediction denoising loss under ``schedule``.

    Args:
        sample_shape: ``(T, *space_shape)``; the CLI links it from the data module.
        backbone: the network class and its options; called with ``sample_shape``.
        schedule: the forward noising process.
        optimizer: optimizer class and options; called with the parameters.
        lr_scheduler: optional learning-rate scheduler, stepped every optimizer step.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        backbone: BackboneFactory = DiT,
        schedule: NoiseSchedule = lazy_instance(OrnsteinUhlenbeck),  # noqa: B008 (jsonargparse default)
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        # Under the CLI this stores the parsed config (class paths and options), which is what
        # load_from_checkpoint re-instantiates from.
        self.save_hyperparameters()
        self.sample_shape = tuple(sample_shape)
        self.backbone = backbone(self.sample_shape)
        self.schedule = schedule
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise model: ``x_t (B, T, *space)``, diffusion times ``t (B,)`` -> ε̂ ``(B, T, *space)``."""
        return self.backbone(x_t, self.schedule.log_snr(t))

    def training_step(self, x0: Tensor, batch_idx: int) -> Tensor:
        t = self.schedule.sample_time(len(x0), device=x0.device)
        loss = denoising_loss(self, self.schedule, x0, t, torch.randn_like(x0)).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_inputs(self, x0: Tensor, batch_idx: int) -> tuple[Tensor, Tensor]:
        """Times ``(B,)`` and noise ``(B, T, *space)`` for validation batch ``batch_idx``, seeded by
        the batch index: every validation pass scores the same (x0, t, ε) triples, so val/loss
        moves only when the model does."""
        generator = torch.Generator().manual_seed(batch_idx)
        t = self.schedule.sample_time(len(x0), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        return t, noise

    def validation_step(self, x0: Tensor, batch_idx: int) -> None:
        t, noise = self.validation_inputs(x0, batch_idx)
        loss = denoising_loss(self, self.schedule, x0, t, noise).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(x0))

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "step"}}
