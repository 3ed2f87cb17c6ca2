"""The noise models: ``Denoiser`` (a backbone network and what it predicts) and ``ExactDenoiser``
(the optimal ε̂ of GP data, from the true score), behind one contract, ``NoiseModel``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from stdiff.diffusion.process import get_parameterization, per_sample
from stdiff.gp import KroneckerGP
from stdiff.nn import Backbone, DiT
from stdiff.schedules import NoiseSchedule, OrnsteinUhlenbeck


class NoiseModel(nn.Module, ABC):
    """Contract of everything samplers, losses and diagnostics call: ``forward(x_t (B, T, *space),
    t (B,), **cond) -> ε̂ (B, T, *space)``, and the ``schedule`` it denoises under.

    A plug-in subclass is built by the CLI as ``cls(sample_shape, **init_args)``.

    Args:
        sample_shape: ``(T, *space_shape)``; the CLI links it from the data module.
        schedule: the forward noising process.
    """

    needs_truth = False  # True: ``attach_truth`` must be given the data's exact distribution first

    def __init__(self, sample_shape: Sequence[int], schedule: NoiseSchedule) -> None:
        super().__init__()
        schedule.validate()
        self.sample_shape, self.schedule = tuple(sample_shape), schedule

    @abstractmethod
    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        """ε̂ ``(B, T, *space)`` at ``x_t (B, T, *space)``, diffusion times ``t (B,)``."""

    def attach_truth(self, truth: KroneckerGP | None) -> None:
        """Receive the data's exact distribution (``SequenceDataModule.truth``); ignored by default."""


class Denoiser(NoiseModel):
    """A backbone network as a noise model: the network sees ``(x_t, log-SNR(t), **cond)`` and predicts
    ``parameterization``, converted here to ε̂, so it reads noise levels the same way under every
    schedule and knows nothing of the schedule itself.

    Args:
        sample_shape: ``(T, *space_shape)``; the CLI links it from the data module.
        backbone: the network class and its options; called with ``sample_shape``.
        schedule: the forward noising process.
        parameterization: what the network predicts: ``v`` (default), ``eps``, ``x0`` or ``score``.
            ``v`` is Karras et al.'s (2022, EDM) preconditioning for unit-variance data: ε̂ =
            (σ x_t + α v̂)/(α² + σ²) is the optimal denoiser of white data plus the network's
            correction scaled by α, so at high noise ε̂ → x_t exactly, whatever the network does.
            With ``eps`` the network itself must output ε̂ ≈ x_t there, through its final
            LayerNorm; the small errors it makes are carried by the probability-flow ODE to the
            end of sampling (``stdiff/bench/results/recipe_ablation.md``; ``stdiff/guide/models.md``,
            "Why a well-fitted score gave poor samples").
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        backbone: Callable[[tuple[int, ...]], Backbone] = DiT,
        schedule: NoiseSchedule = lazy_instance(OrnsteinUhlenbeck),  # noqa: B008 (jsonargparse default)
        parameterization: Literal["eps", "x0", "v", "score"] = "v",
    ) -> None:
        super().__init__(sample_shape, schedule)
        self.backbone = backbone(self.sample_shape)
        self.backbone_factory = Shared(backbone)  # to build copies (FLOPs counted on the meta device)
        self.parameterization_name = parameterization
        self.parameterization = get_parameterization(parameterization)

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        out = self.backbone(x_t, self.schedule.log_snr(t), **cond)
        alpha, sigma = per_sample(self.schedule.alpha(t), x_t), per_sample(self.schedule.sigma(t), x_t)
        return self.parameterization.to_noise(out, x_t, alpha, sigma)


class ExactDenoiser(NoiseModel):
    """The optimal ε-predictor for GP data, ``ε̂ = E[ε | x_t] = −σ(t) ∇ log p_t(x_t)``: a noise model
    usable wherever a trained one is (losses, samplers, predict, validate), to separate model error
    from everything else. It has nothing to train. In Python, ``ExactDenoiser.from_gp(gp, schedule)``;
    under the CLI (``--model.denoiser=ExactDenoiser``) it takes the data module's ``truth``.

    Args:
        sample_shape: ``(T, *space_shape)``; the CLI links it from the data module.
        schedule: the forward noising process.
    """

    needs_truth = True

    def __init__(self, sample_shape: Sequence[int],
                 schedule: NoiseSchedule = lazy_instance(OrnsteinUhlenbeck)) -> None:  # noqa: B008  # fmt: skip
        super().__init__(sample_shape, schedule)
        self.gp: KroneckerGP | None = None

    @classmethod
    def from_gp(cls, gp: KroneckerGP, schedule: NoiseSchedule) -> ExactDenoiser:
        model = cls(gp.sample_shape, schedule)
        model.attach_truth(gp)
        return model

    def attach_truth(self, truth: KroneckerGP | None) -> None:
        if truth is None:
            raise ValueError(
                "ExactDenoiser needs data whose exact distribution is known (a data module with a `truth`, such as "
                "GPDataModule); this data module has none"
            )
        if tuple(truth.sample_shape) != self.sample_shape:
            raise ValueError(f"ExactDenoiser built for samples {self.sample_shape}, the truth has {truth.sample_shape}")
        self.gp = truth

    def divergence(self, t: float) -> float:
        """∇ₓ·ε̂ at time ``t``, the same at every x (ε̂ is linear): σ Σ_k 1/(α²λ_k + σ²) over the
        eigenvalues λ_k of Γ ⊗ Σ (a control variate for Hutchinson's estimator, ``stdiff.likelihood``)."""
        tt = torch.tensor(t, dtype=torch.float64)
        alpha, sigma = self.schedule.alpha(tt).item(), self.schedule.sigma(tt).item()
        lam = self.gp._eigenvalues(torch.device("cpu"))
        return (sigma / (alpha**2 * lam + sigma**2)).sum().item()

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        if self.gp is None:
            raise RuntimeError("ExactDenoiser has no GP yet: build it with ExactDenoiser.from_gp(gp, schedule)")
        if cond:
            raise ValueError(f"ExactDenoiser is unconditional; got conditioning {sorted(cond)}")
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        return -per_sample(sigma, x_t) * self.gp.score(x_t, alpha, sigma)


class Shared:
    """A value that deep copies of its owner share instead of copying (EMA deep-copies the model; a
    configured factory may hold a lock that cannot be copied, nor needs to be)."""

    def __init__(self, value) -> None:
        self.value = value

    def __deepcopy__(self, memo) -> Shared:
        return self


NOISE_MODELS: dict[str, type[NoiseModel]] = {cls.__name__: cls for cls in (Denoiser, ExactDenoiser)}
