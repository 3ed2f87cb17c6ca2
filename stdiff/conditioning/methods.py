"""How a noise model draws samples given observed values ``y`` at ``mask``: each method has one
signature, ``method.sample(sampler, model, observed, mask, generator, …) -> (n, T, *space)``, and
works with any sampler and any noise model (a network or ``ExactDenoiser``).

- ``Trained``: the network was trained with the observations as input (``ConditionalDiT`` and a
  training ``mask``): it receives ``observed`` and ``mask`` as ``cond``.
- ``Replacement``: RePaint (Lugmayr et al. 2022) on an unconditional model: after every step the
  observed coordinates are replaced by a forward-noised copy of ``y``; ``resample`` > 1 re-noises
  and repeats each step to let the two parts agree. Biased even with the exact score, because the
  replaced coordinates ignore how the unobserved ones should pull them.
- ``ReconstructionGuidance``: Ho et al. (2022, "Video diffusion models", eq. 7): the denoised
  estimate is moved along −∇_{x_t} ‖y − x̂₀(x_t)‖² on the observed coordinates, a Gaussian
  approximation of ∇ log p(y | x_t); biased too, the more so the cruder that approximation.

In every method the observed coordinates of the returned samples are exactly ``y``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from stdiff._validation import check_int, check_positive, init_repr
from stdiff.diffusion import per_sample
from stdiff.sampling import Sampler
from stdiff.sampling.base import alpha_sigma


class Conditioning(ABC):
    """Base of the conditioning methods (see the module docstring)."""

    @abstractmethod
    def sample(self, sampler: Sampler, model, observed: Tensor, mask: Tensor, generator=None, device=None,
               progress=None) -> Tensor:  # fmt: skip
        """``len(observed)`` samples ``(n, T, *space)`` with ``observed`` at ``mask`` (both ``(n, T, *space)``)."""

    def __repr__(self) -> str:
        return init_repr(self)


class Trained(Conditioning):
    """The network takes the observations itself (trained with a ``mask`` strategy)."""

    def sample(self, sampler, model, observed, mask, generator=None, device=None, progress=None):
        cond = {"observed": torch.where(mask, observed, torch.zeros_like(observed)), "mask": mask}
        x = sampler.sample(model, observed.shape, generator, device, observed.dtype, progress, cond=cond)
        return torch.where(mask, observed, x)


class Replacement(Conditioning):
    """RePaint's replacement with ``resample`` passes per step (1: plain replacement).

    Args:
        resample: passes per step, >= 1 (each extra pass costs one more step of model calls).
    """

    def __init__(self, resample: int = 1) -> None:
        self.resample = check_int("Replacement.resample", resample, 1)

    @torch.no_grad()
    def sample(self, sampler, model, observed, mask, generator=None, device=None, progress=None):
        schedule = model.schedule
        device = device or observed.device
        sampler.prepare(model, tuple(observed.shape[1:]), getattr(model, "data_moments", None), device, observed.dtype,
                        None, conditional=True)  # UniPC plans its grid and endpoint on the model  # fmt: skip
        times = sampler.times(schedule)
        x = sampler.initial(schedule, observed.shape, generator, device, observed.dtype)
        sampler.begin()

        def noise():
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        for i in range(sampler.intervals):
            t, s = times[i].item(), times[i + 1].item()
            (a_t, s_t), (a_s, s_s) = alpha_sigma(schedule, t), alpha_sigma(schedule, s)
            for r in range(self.resample):
                x_s = sampler.step(model, schedule, x, t, s, generator)
                x_s = torch.where(mask, a_s * observed + s_s * noise(), x_s)  # the known part, noised to s
                if r + 1 < self.resample:  # back to t: x_t | x_s = (α_t/α_s) x_s + N(0, σ_t² − (α_t/α_s)² σ_s²)
                    a_ts = a_t / a_s
                    x = a_ts * x_s + math.sqrt(max(s_t**2 - a_ts**2 * s_s**2, 0.0)) * noise()
                else:
                    x = x_s
            if progress is not None:
                progress(i + 1, sampler.intervals)
        return torch.where(mask, observed, sampler.finish(model, schedule, x))


class ReconstructionGuidance(Conditioning):
    """Reconstruction guidance with weight ``scale`` (Ho et al. 2022's w_r).

    Args:
        scale: w_r > 0; x̃₀ = x̂₀ − (w_r α_t / 2) ∇_{x_t} ‖mask ⊙ (y − x̂₀)‖².
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = check_positive("ReconstructionGuidance.scale", scale)

    def sample(self, sampler, model, observed, mask, generator=None, device=None, progress=None):
        guided = _Guided(model, self.scale)
        cond = {"observed": observed, "mask": mask}
        x = sampler.sample(guided, observed.shape, generator, device, observed.dtype, progress, cond=cond)
        return torch.where(mask, observed, x)


class _Guided:
    """A noise model moved by reconstruction guidance: ε̃ = ε̂ + (w α²/(2σ)) ∇_{x_t} ‖m ⊙ (y − x̂₀)‖²,
    the ε that the guided x̃₀ implies."""

    def __init__(self, model, scale: float) -> None:
        self.model, self.scale, self.schedule = model, scale, model.schedule

    def __call__(self, x_t: Tensor, t: Tensor, observed: Tensor, mask: Tensor) -> Tensor:
        # The gradient through the model needs autograd, also where the caller runs under
        # torch.no_grad or Lightning's inference mode (predict, test).
        with torch.inference_mode(False), torch.enable_grad():
            x = x_t.detach().clone().requires_grad_(True)
            eps = self.model(x, t.clone())
            alpha, sigma = per_sample(self.schedule.alpha(t), x), per_sample(self.schedule.sigma(t), x)
            x0 = (x - sigma * eps) / alpha
            error = ((observed.clone() - x0) * mask.clone()).pow(2).sum()
            (grad,) = torch.autograd.grad(error, x)
        return (eps + self.scale * alpha**2 / (2 * sigma) * grad).detach()


CONDITIONINGS: dict[str, type[Conditioning]] = {
    cls.__name__: cls for cls in (Trained, Replacement, ReconstructionGuidance)
}
