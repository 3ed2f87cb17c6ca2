"""``LikelihoodReport``: the model's own held-out log-likelihood in ``stdiff test``, and, where the
data's distribution is known, the true KL of the learned distribution."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from stdiff._validation import check_int, warn
from stdiff.diffusion import ExactDenoiser
from stdiff.likelihood import Divergence, Likelihood, log_likelihood
from stdiff.seeding import DIAGNOSTICS, generator


class LikelihoodReport(Callback):
    """At the end of ``stdiff test``: the log-likelihood of the first ``num_samples`` test samples
    under the model's probability-flow ODE (``stdiff.likelihood.log_likelihood``), logged as
    ``test/likelihood/*``:

    - ``nll``, ``nll_se``: negative log-likelihood in nats per dimension and its standard error;
    - with the exact truth (GP data): ``nll_truth`` (the truth's own, closed form, same samples),
      ``kl_true`` = E[log p(x) − log p_θ(x)] in nats with ``kl_true_se``: the real KL(p ‖ p_θ) of
      the learned distribution, not of a Gaussian fit; ``kl_true_floor``, the same for the exact
      model through the same ODE steps (it stops at t_min too and shares the integrator's error),
      and ``kl_true_excess``;
    - with a fitted reference (``ArrayDataModule(reference=…)``): ``nll_reference``, the fitted
      Gaussian's, and ``nll_excess`` = nll − nll_reference (< 0: the model explains the held-out
      data better than the Gaussian);
    - ``integrator_error``: nats per dimension, the Richardson correction that removed the ODE
      integrator's leading error (``stdiff.likelihood.log_likelihood``), an upper bound of what is left;
      a warning when it is not below ``nll_se``;
    - ``seconds``, ``evaluations`` (network evaluations, each with a backward pass per probe).

    The ODE gives the density of the data noised to t_min, where sampling ends, not of the data itself.

    Args:
        num_samples: test samples scored (0: off); samples with missing values are skipped.
        steps: ODE steps, >= 2 (and steps // 2 more for the extrapolation: 3·steps + 2 network evaluations).
        divergence: ``exact`` (d backward passes per evaluation), ``hutchinson`` or ``auto``
            (exact up to d = 64).
        probes: Hutchinson probes per sample. Where the data has a truth (exact or fitted), its
            exact model is the control variate: Hutchinson estimates only the divergence of the
            network's difference from it.
        seed: seed of the probes.
    """

    def __init__(
        self, num_samples: int = 256, steps: int = 100, divergence: Divergence = "auto", probes: int = 1, seed: int = 0
    ) -> None:
        self.num_samples = check_int("likelihood.num_samples", num_samples, 0)
        self.steps = check_int("likelihood.steps", steps, 2)
        self.probes = check_int("likelihood.probes", probes, 1)
        if divergence not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"likelihood.divergence must be one of auto, exact, hutchinson, got {divergence!r}")
        self.divergence, self.seed = divergence, seed
        self._kept: list[torch.Tensor] = []
        self.results: dict[str, float] = {}

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._kept = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        have = sum(len(x) for x in self._kept)
        if self.num_samples and have < self.num_samples:
            x0 = batch[0] if isinstance(batch, (tuple, list)) else batch
            x0 = x0[~x0.flatten(1).isnan().any(1)]  # only complete samples have a likelihood
            self._kept.append(x0[: self.num_samples - have].detach())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.num_samples:
            return
        if pl_module.mask is not None:
            warn("LikelihoodReport: a conditional model has no unconditional likelihood; skipped.")
            return
        x = torch.cat(self._kept) if self._kept else torch.empty(0)
        if len(x) < 2:
            warn(f"LikelihoodReport: {len(x)} complete test samples; need >= 2 for a likelihood.")
            return
        bar = None
        if trainer.is_global_zero and trainer.progress_bar_callback is not None:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps + self.steps // 2, desc=f"likelihood of {len(x)} test samples", leave=False)
        start = time.perf_counter()
        g = generator(self.seed, DIAGNOSTICS, 9, trainer.global_rank, device=pl_module.device)
        truth = getattr(trainer.datamodule, "truth", None)
        if truth is not None and tuple(truth.sample_shape) != tuple(x.shape[1:]):
            truth = None
        # The exact model of the truth (or of the fitted reference) as Hutchinson's control variate.
        control = None if truth is None else ExactDenoiser.from_gp(truth, pl_module.schedule)
        # In float32 (its sums in float64) whatever the run's precision: log p is a sum over d
        # coordinates of the divergence along the path, so bf16's relative error of ~4e-3 per network
        # output would move it by far more than the KLs of a fraction of a nat it is read for.
        with torch.autocast(pl_module.device.type, enabled=False):
            result = log_likelihood(
                pl_module.denoiser, x.to(pl_module.device), self.steps, self.divergence, self.probes, g,
                progress=(lambda i, total: bar.update(1)) if bar is not None else None, control=control,
            )  # fmt: skip
        if bar is not None:
            bar.close()
        log_prob = pl_module.all_gather(result.log_prob.to(pl_module.device)).reshape(-1).double().cpu()
        xs = pl_module.all_gather(x.to(pl_module.device)).reshape(-1, *x.shape[1:]).cpu()
        error = pl_module.all_gather(torch.tensor(abs(result.integrator_error), device=pl_module.device)).max().item()
        every = Likelihood(log_prob, result.dim, result.divergence, result.evaluations, error)  # all ranks' samples
        d, n = every.dim, len(log_prob)
        values = {
            "nll": every.nll,
            "nll_se": every.nll_se,
            "integrator_error": error,
            "seconds": time.perf_counter() - start,
            "evaluations": float(every.evaluations),
            "samples": float(n),
        }
        if truth is not None:
            truth_lp = truth.log_prob(xs)
            if getattr(trainer.datamodule, "truth_is_exact", True):
                # The floor: the exact model through the same ODE steps (it stops at t_min too, and
                # shares the integrator's error); as its own control, Hutchinson's estimate is exact.
                exact = log_likelihood(control, xs.to(pl_module.device), self.steps, "hutchinson", 1, g,
                                       control=control).log_prob.double().cpu()  # fmt: skip
                gap = truth_lp - log_prob
                floor = (truth_lp - exact).mean().item()
                values.update({"nll_truth": -truth_lp.mean().item() / d, "kl_true": gap.mean().item(),
                               "kl_true_se": gap.std().item() / math.sqrt(n), "kl_true_floor": floor,
                               "kl_true_excess": gap.mean().item() - floor})  # fmt: skip
            else:
                values.update({"nll_reference": -truth_lp.mean().item() / d,
                               "nll_excess": values["nll"] + truth_lp.mean().item() / d})  # fmt: skip
        self.results = {f"test/likelihood/{k}": v for k, v in values.items()}
        for name, value in self.results.items():
            pl_module.log(name, value, sync_dist=False, rank_zero_only=True)
        rank_zero_info(
            f"likelihood of {n} test samples ({result.divergence} divergence, {result.evaluations} evaluations, "
            f"{values['seconds']:.0f} s): nll {values['nll']:.4f} ± {values['nll_se']:.4f} nats/dim (integrator "
            f"error < {error:.1g}, of the density at t_min)"
            + (f", true KL {values['kl_true']:.3f} ± {values['kl_true_se']:.3f} nats (exact model at t_min: "
               f"{values['kl_true_floor']:.3f})" if "kl_true" in values else "")
            + (f", fitted reference {values['nll_reference']:.4f} nats/dim" if "nll_reference" in values else "")
        )  # fmt: skip
        if error > values["nll_se"]:
            warn(f"LikelihoodReport: the ODE integrator's error bound, {error:.2g} nats/dim, is above the standard "
                 f"error {values['nll_se']:.2g}: raise likelihood.steps (now {self.steps})")  # fmt: skip
