"""torchmetrics ``Metric``s against the exact GP: state is summed or concatenated across DDP
ranks by torchmetrics, so every rank computes the same value as one process would."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from stdiff.metrics.reports import sample_report
from stdiff.schedules import NoiseSchedule
from stdiff.truth import KroneckerGP


class ScoreError(Metric):
    """Relative score error E‖ŝ − s*‖² / E‖s*‖² against the exact score s*, overall and per bin of
    log-SNR, and the excess of the model's ε-loss over the exact model's on the same inputs.

    Args:
        logsnr_edges: increasing bin edges in log-SNR (values outside fall in the end bins).
    """

    full_state_update = False

    def __init__(self, logsnr_edges: Tensor) -> None:
        super().__init__()
        self.register_buffer("edges", torch.as_tensor(logsnr_edges, dtype=torch.float64), persistent=False)
        bins = len(self.edges) - 1
        self.add_state("err", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ref", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("loss", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("loss_exact", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, score: Tensor, score_exact: Tensor, log_snr: Tensor, loss: Tensor, loss_exact: Tensor) -> None:
        """``score``, ``score_exact (B, …)``; ``log_snr``, per-sample ``loss``, ``loss_exact (B,)``."""
        if score.shape != score_exact.shape:
            raise ValueError(
                f"score and score_exact must have the same shape, got {score.shape} and {score_exact.shape}"
            )
        b = len(score)
        err = (score.double() - score_exact.double()).pow(2).reshape(b, -1).sum(1)
        ref = score_exact.double().pow(2).reshape(b, -1).sum(1)
        edges = self.edges.to(log_snr.device)
        idx = (torch.bucketize(log_snr.double(), edges[1:-1])).clamp(0, len(edges) - 2)
        self.err.index_add_(0, idx, err)
        self.ref.index_add_(0, idx, ref)
        self.count.index_add_(0, idx, torch.ones_like(err))
        self.loss += loss.double().sum()
        self.loss_exact += loss_exact.double().sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.sum()
        out = {
            "score_rel_error": self.err.sum() / self.ref.sum(),
            "loss_exact": self.loss_exact / n,
            "excess_loss": (self.loss - self.loss_exact) / n,
        }
        for i in range(len(self.err)):
            if self.count[i] > 0:
                lo, hi = self.edges[i].item(), self.edges[i + 1].item()
                out[f"score_rel_error/logsnr_{lo:+.1f}_{hi:+.1f}"] = self.err[i] / self.ref[i]
        return out


class SampleDistance(Metric):
    """Distances of generated samples to the true GP, each with its finite-sample floor and the
    excess over it, and the early-stopping KL (``stdiff.metrics.sample_report``). Samples are
    gathered from every rank.

    Args:
        gp: the true process.
        schedule: the schedule the samples were drawn under (its t_min: the early-stopping bias).
        seed: seed of the exact samples that give the floors.
        full_max_dim: largest T·S for the full-covariance KL and W2.
        endpoint: the sampler's endpoint (``stdiff.sampling.ENDPOINTS``), for the early-stopping bias.
    """

    full_state_update = False

    def __init__(self, gp: KroneckerGP, schedule: NoiseSchedule, seed: int = 0, full_max_dim: int = 1024,
                 endpoint: str = "t_min") -> None:  # fmt: skip
        super().__init__()
        self.gp, self.schedule, self.seed, self.full_max_dim = gp, schedule, seed, full_max_dim
        self.endpoint = endpoint
        self.add_state("samples", [], dist_reduce_fx="cat")

    def update(self, samples: Tensor) -> None:
        """``samples (n, T, *space_shape)``."""
        if tuple(samples.shape[1:]) != self.gp.sample_shape:
            raise ValueError(
                f"samples must have shape (n, {', '.join(map(str, self.gp.sample_shape))}) (n, T, *space_shape), "
                f"got {tuple(samples.shape)}"
            )
        self.samples.append(samples.detach().double())

    def compute(self) -> dict[str, float]:
        x = self.samples if isinstance(self.samples, Tensor) else torch.cat(self.samples)
        return sample_report(self.gp, x.cpu(), self.schedule, self.seed, self.full_max_dim, self.endpoint)
