"""The noise models, behind one contract, ``NoiseModel``: ``Denoiser`` (a backbone network and what
it predicts), ``ExactDenoiser`` (the optimal ε̂ of a Gaussian, from its exact score or posterior)
and ``ResidualDenoiser`` (the exact ε̂ of a Gaussian prior plus a learned correction)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from stdiff.diffusion.process import get_parameterization, per_sample
from stdiff.kernels import Separable, Tabulated
from stdiff.nn import Backbone, DiT
from stdiff.schedules import NoiseSchedule, OrnsteinUhlenbeck
from stdiff.truth import KroneckerGP, Truth


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
        # (mean (T, *space) or None, per-coordinate variance) of the data, where samplers start
        # (``Sampler.start_state``); None: zero mean, unit variance. Checkpoints carry it.
        self.data_moments: tuple[Tensor | None, float] | None = None

    @abstractmethod
    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        """ε̂ ``(B, T, *space)`` at ``x_t (B, T, *space)``, diffusion times ``t (B,)``."""

    def attach_truth(self, truth: KroneckerGP | Callable[[], KroneckerGP | None] | None) -> None:
        """Receive the data's exact distribution (``SequenceDataModule.truth``), or a function that
        returns it when first needed (``predict``, which may never need it); ignored by default."""


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
    """The optimal ε-predictor for GP data, ``ε̂ = E[ε | x_t] = −σ(t) ∇ log p_t(x_t)``, and given
    ``observed`` values at ``mask`` (``cond``, as a conditional model gets them) the exact
    conditional ``E[ε | x_t, observed]`` (``KroneckerGP.denoise``): a noise model usable wherever a
    trained one is (losses, samplers, conditional sampling, predict, validate), to separate model
    error from everything else. It has nothing to train. In Python,
    ``ExactDenoiser.from_gp(gp, schedule)``; under the CLI (``--model.denoiser=ExactDenoiser``) it
    takes the data module's ``truth``.

    Args:
        sample_shape: ``(T, *space_shape)``; the CLI links it from the data module.
        schedule: the forward noising process.
    """

    needs_truth = True

    def __init__(self, sample_shape: Sequence[int],
                 schedule: NoiseSchedule = lazy_instance(OrnsteinUhlenbeck)) -> None:  # noqa: B008  # fmt: skip
        super().__init__(sample_shape, schedule)
        self.gp: Truth | None = None

    @classmethod
    def from_gp(cls, gp: Truth, schedule: NoiseSchedule) -> ExactDenoiser:
        model = cls(gp.sample_shape, schedule)
        model.attach_truth(gp)
        return model

    def attach_truth(self, truth) -> None:
        self.gp = _check_truth(type(self).__name__, truth() if callable(truth) else truth, self.sample_shape)
        self.data_moments = data_moments(self.gp)

    def divergence(self, t: float, x_t: Tensor) -> Tensor:
        """∇ₓ·ε̂ ``(B,)`` at time ``t`` and ``x_t (B, T, *space)`` (a control variate for Hutchinson's
        estimator, ``stdiff.likelihood``): ``Truth.divergence``, in closed form."""
        tt = torch.tensor(t, dtype=torch.float64)
        return self.gp.divergence(x_t, self.schedule.alpha(tt).item(), self.schedule.sigma(tt).item())

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        if self.gp is None:
            raise RuntimeError("ExactDenoiser has no GP yet: build it with ExactDenoiser.from_gp(gp, schedule)")
        return exact_noise(self.gp, self.schedule, x_t, t, **cond).to(x_t.dtype)


class ResidualDenoiser(Denoiser):
    """A backbone that learns only what a Gaussian prior misses: the prediction is the prior's exact
    one (``ExactDenoiser``'s ε̂, conditional on ``observed`` at ``mask`` when the model is) plus the
    backbone's output as a correction, added in the ``parameterization``'s own units:

        ε̂ = to_noise(from_noise(ε̂_prior) + network(x_t, log-SNR, **cond)).

    The DiT's output layer is zero at initialisation (adaLN-Zero), so at step 0 this model *is*
    the prior: its samples, likelihood and conditional scores are the prior's, and training spends
    its capacity on what a Gaussian cannot express (non-Gaussian marginals, nonstationarity,
    non-separable dependence). Use it when a fitted Gaussian is already a good model (real data
    with a ``reference``: ``ArrayDataModule(reference=kernels)``), or a small budget would leave a
    plain ``Denoiser`` worse than it; with the data's exact law as prior (``GPDataModule``) the
    correction has nothing to learn (``stdiff/guide/models.md``).

    The prior is the data module's ``truth`` (the GP truth or the fitted reference), received at
    ``fit`` and stored in every checkpoint (``stdiff_prior``), so a checkpoint is sampled with the
    prior it was trained with and ``predict`` fits nothing. Its cost: unconditionally a Kronecker
    eigenbasis transform per sample (O(T·S·(T + S))); conditionally (``KroneckerGP.denoise``) whole
    frames through the Kronecker structure at any size, and scattered masks one Cholesky factor of
    order T·S per distinct (mask, noise level) in the batch up to ``stdiff.truth.DENSE_LIMIT`` (a
    training batch of B samples, B factors, O(B·(T·S)³/3) flops; k samples of a case share one per
    sampler step), by conjugate gradients beyond it (``stdiff.truth.structured``).

    Args:
        sample_shape, backbone, schedule, parameterization: as ``Denoiser``.
        backbone_input: what the backbone sees in place of x_t: ``denoised``, the prior's own
            estimate x̂₀ (an invertible affine function of x_t at every noise level, so nothing is
            lost, and the network corrects a field at the data's scale: on the NYC example it was
            ahead from 1000 steps on, ``stdiff/bench/results/real_data/``), or ``noisy``, x_t
            itself (as ``Denoiser``).
    """

    needs_truth = True

    def __init__(
        self,
        sample_shape: Sequence[int],
        backbone: Callable[[tuple[int, ...]], Backbone] = DiT,
        schedule: NoiseSchedule = lazy_instance(OrnsteinUhlenbeck),  # noqa: B008 (jsonargparse default)
        parameterization: Literal["eps", "x0", "v", "score"] = "v",
        backbone_input: Literal["noisy", "denoised"] = "denoised",
    ) -> None:
        super().__init__(sample_shape, backbone, schedule, parameterization)
        if backbone_input not in ("noisy", "denoised"):
            raise ValueError(f"ResidualDenoiser.backbone_input must be 'noisy' or 'denoised', got {backbone_input!r}")
        self.backbone_input = backbone_input
        # Shared by the deep copies EMA makes: the prior is set once, for the model and its average.
        self._prior = Shared({"gp": None, "pending": None})

    @property
    def gp(self) -> KroneckerGP:
        """The prior (resolved from the data module on first use when it was deferred)."""
        prior = self._prior.value
        if prior["gp"] is None and prior["pending"] is not None:
            prior["gp"] = _gaussian_prior(_check_truth(type(self).__name__, prior["pending"](), self.sample_shape))
            self.data_moments = self.data_moments or data_moments(prior["gp"])
        if prior["gp"] is None:
            raise RuntimeError("ResidualDenoiser has no prior yet: attach_truth(gp), or load a checkpoint of one")
        return prior["gp"]

    def attach_truth(self, truth) -> None:
        if callable(truth):
            self._prior.value.update(gp=None, pending=truth)
        else:
            self._prior.value.update(gp=_gaussian_prior(_check_truth(type(self).__name__, truth, self.sample_shape)),
                                     pending=None)  # fmt: skip
            self.data_moments = data_moments(self._prior.value["gp"])  # the prior's: where sampling starts

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return self.forward_parts(x_t, t, **cond)[0]

    def forward_parts(self, x_t: Tensor, t: Tensor, **cond) -> tuple[Tensor, Tensor]:
        """``(ε̂, ε̂_prior)``: the prediction and the prior's part of it."""
        prior = exact_noise(self.gp, self.schedule, x_t, t, **cond).to(x_t.dtype)
        alpha, sigma = per_sample(self.schedule.alpha(t), x_t), per_sample(self.schedule.sigma(t), x_t)
        seen = x_t if self.backbone_input == "noisy" else (x_t - sigma * prior) / alpha  # the prior's x̂₀
        out = self.backbone(seen, self.schedule.log_snr(t), **cond)
        # every parameterisation is affine in the output: the correction's ε is its linear part
        return prior + self.parameterization.to_noise(out, torch.zeros_like(x_t), alpha, sigma), prior

    def prior_state(self) -> dict:
        """The prior as plain tensors and numbers, for a checkpoint (``load_prior_state``)."""
        gp = self.gp  # a separable Σ as its axes' matrices: a 64 × 64 grid's is 2 × 64², not 4096²
        space = {"sigma_axes": gp.sigma_factors()} if gp.separable else {"sigma": gp.sigma}
        return {"gamma": gp.gamma, **space, "nugget": gp.nugget, "mean": gp.mean_value,
                "space_shape": list(gp.space_shape), "description": repr(gp)}  # fmt: skip

    def load_prior_state(self, state: dict) -> None:
        """The prior a checkpoint was trained with (``prior_state``): Γ and Σ as tabulated kernels."""
        shape = list(state["space_shape"])
        if "sigma_axes" in state:  # a separable Σ, or Σ = I (no factors)
            axes = state["sigma_axes"]
            spatial = Separable([Tabulated(m.tolist()) for m in axes]) if axes else None
        else:
            spatial = Tabulated(state["sigma"].tolist(), shape if len(shape) > 1 else None)
        gp = KroneckerGP(Tabulated(state["gamma"].tolist()), spatial, len(state["gamma"]), shape, state["mean"],
                         nugget=state["nugget"])  # fmt: skip
        self.attach_truth(gp)


def exact_noise(gp: Truth, schedule: NoiseSchedule, x_t: Tensor, t: Tensor, observed: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:  # fmt: skip
    """The exact ε̂ of ``gp`` at ``x_t (B, T, *space)``, times ``t (B,)``: −σ ∇ log p_t(x_t), or
    with ``observed`` values at ``mask`` (x_0 known there) (x_t − α E[x_0 | x_t, observed]) / σ."""
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    if mask is None:
        if observed is not None:
            raise ValueError("observed values need their mask")
        return -per_sample(sigma, x_t) * gp.score(x_t, alpha, sigma)
    x0 = gp.denoise(x_t, alpha, sigma, observed, mask)
    a, s = per_sample(alpha.double(), x0), per_sample(sigma.double(), x0)
    return (x_t.double() - a * x0) / s


def data_moments(truth: Truth) -> tuple[Tensor, float]:
    """The mean ``(T, *space)`` and the per-coordinate variance, averaged over coordinates, of a
    truth (a mixture's: its components' variances plus the spread of their means)."""
    weights = truth.weights.tolist()
    mean = sum(w * c.mean for w, c in zip(weights, truth.components, strict=True))
    variance = sum(w * (c.eigenvalues().mean().item() + (c.mean - mean).pow(2).mean().item())
                   for w, c in zip(weights, truth.components, strict=True))  # fmt: skip
    return mean, variance


def _check_truth(name: str, truth: Truth | None, sample_shape: tuple[int, ...]) -> Truth:
    if truth is None:
        raise ValueError(
            f"{name} needs data whose exact distribution is known, or a Gaussian fitted to it (a data module with a "
            "`truth`: GPDataModule, or ArrayDataModule with a reference); this data module has none"
        )
    if tuple(truth.sample_shape) != tuple(sample_shape):
        raise ValueError(f"{name} built for samples {tuple(sample_shape)}, the truth has {truth.sample_shape}")
    return truth


def _gaussian_prior(truth: Truth) -> KroneckerGP:
    """ResidualDenoiser's prior: one Gaussian (a mixture of one is its component)."""
    if not truth.is_gaussian:
        raise ValueError(f"ResidualDenoiser's prior must be one Gaussian; the data's truth is a mixture of "
                         f"{len(truth.components)} (GPMixtureDataModule): use Denoiser, which learns the mixture, or "
                         "ExactDenoiser, which is its exact model")  # fmt: skip
    return truth.components[0]


class Shared:
    """A value that deep copies of its owner share instead of copying (EMA deep-copies the model; a
    configured factory may hold a lock that cannot be copied, nor needs to be)."""

    def __init__(self, value) -> None:
        self.value = value

    def __deepcopy__(self, memo) -> Shared:
        return self


NOISE_MODELS: dict[str, type[NoiseModel]] = {cls.__name__: cls for cls in (Denoiser, ExactDenoiser, ResidualDenoiser)}
