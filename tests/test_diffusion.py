"""Parameterisations, loss weightings and training times, checked in closed form."""

import math

import pytest
import torch

from stdiff.diffusion import (
    NOISE_MODELS,
    PARAMETERIZATIONS,
    WEIGHTINGS,
    Denoiser,
    ExactDenoiser,
    NoiseModel,
    convert,
    denoising_loss,
    denoising_loss_floor,
    diffuse,
    get_parameterization,
    loss_weight,
    training_times,
)
from stdiff.kernels import RBF, PoweredExponential
from stdiff.nn import DiT
from stdiff.sampling import SAMPLERS
from stdiff.schedules import SCHEDULES, OrnsteinUhlenbeck
from stdiff.truth import KroneckerGP


@pytest.mark.parametrize("schedule", [cls() for cls in SCHEDULES.values()], ids=list(SCHEDULES))
def test_conversions_round_trip_for_every_schedule(schedule):
    gen = torch.Generator().manual_seed(0)
    n = 64
    t = torch.linspace(schedule.t_min, schedule.t_max, n, dtype=torch.float64)
    x0 = torch.randn(n, 6, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, 6, 3, generator=gen, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    x_t = diffuse(schedule, x0, t, eps)
    a_, s_ = a[:, None, None], s[:, None, None]
    truth = {"eps": eps, "x0": x0, "v": a_ * eps - s_ * x0, "score": -eps / s_}
    assert set(truth) == set(PARAMETERIZATIONS)
    for source, given in truth.items():
        for target, wanted in truth.items():
            got = convert(given, source, target, x_t, a, s)
            torch.testing.assert_close(got, wanted, rtol=1e-9, atol=1e-9, msg=f"{source} -> {target}")


def test_loss_weights_equal_the_implied_target_errors():
    """Training on x0, v or score targets is the ε-loss times the documented weight."""
    s = OrnsteinUhlenbeck()
    gen = torch.Generator().manual_seed(1)
    t = torch.linspace(0.01, 9.0, 32, dtype=torch.float64)
    x0, eps, eps_hat = (torch.randn(32, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    a, sg = s.alpha(t), s.sigma(t)
    x_t = diffuse(s, x0, t, eps)
    eps_err = (eps_hat - eps).pow(2).mean(1)
    for name in ("x0", "v", "score"):
        pred, target = (convert(e, "eps", name, x_t, a, sg) for e in (eps_hat, eps))
        torch.testing.assert_close((pred - target).pow(2).mean(1), loss_weight(name, a, sg) * eps_err)
    snr = (a / sg) ** 2
    torch.testing.assert_close(loss_weight("min_snr", a, sg, 5.0), torch.clamp(snr, max=5.0) / snr)
    assert set(WEIGHTINGS) == {"eps", "x0", "v", "score", "min_snr"}


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown parameterization 'velocity'.*Valid parameterization names: eps, score, v, x0"
    ):
        get_parameterization("velocity")
    with pytest.raises(ValueError, match=r"unknown loss weighting 'minsnr'. Did you mean 'min_snr'\?"):
        loss_weight("minsnr", torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"time spacing must be one of uniform, log_snr, got 'cosine'"):
        training_times(OrnsteinUhlenbeck(), 4, "cosine")


def test_training_times_uniform_in_t_or_log_snr():
    s = OrnsteinUhlenbeck()
    gen = torch.Generator().manual_seed(0)
    t = training_times(s, 50_000, "uniform", gen)
    assert t.min() >= s.t_min and t.max() <= s.t_max and abs(t.mean().item() - (s.t_min + s.t_max) / 2) < 0.05
    t = training_times(s, 50_000, "log_snr", gen)
    lam = s.log_snr(t.double())
    lo, hi = s.log_snr(torch.tensor([s.t_max, s.t_min], dtype=torch.float64))
    assert lam.min() >= lo - 1e-4 and lam.max() <= hi + 1e-4
    assert abs(lam.mean().item() - (lo + hi).item() / 2) < 0.1  # uniform in λ: mean at the midpoint


@pytest.mark.parametrize("weighting", ["eps", "score"])
def test_exact_model_loss_equals_its_analytic_floor(weighting):
    """With the exact model, E[w(t)‖ε̂ − ε‖²/d] = w(t) · (1/d) Σ_k α²λ_k/(α²λ_k + σ²), for any weighting."""
    gp = KroneckerGP(PoweredExponential(3.0), RBF(1.0), frames=8, space_shape=(4,), mean=0.5)
    schedule = OrnsteinUhlenbeck(t_min=0.05)
    oracle = ExactDenoiser.from_gp(gp, schedule)
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    x0 = gp.sample(n, gen, dtype=torch.float64)
    t = training_times(schedule, n, "uniform", gen).double()
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    loss = denoising_loss(oracle, x0, t, noise, weighting)
    floor = loss_weight(weighting, schedule.alpha(t), schedule.sigma(t)) * denoising_loss_floor(gp, schedule, t)
    excess = loss - floor
    assert abs(excess.mean()) < 4 * excess.std() / math.sqrt(n)
    biased = denoising_loss(_Scaled(oracle, 1.2), x0, t, noise, weighting) - floor
    assert biased.mean() > 4 * biased.std() / math.sqrt(n)


class _Scaled:
    """A noise model off by a factor: ε̂ = c · model(x_t, t)."""

    def __init__(self, model, c: float) -> None:
        self.model, self.c, self.schedule = model, c, model.schedule

    def __call__(self, x_t, t):
        return self.c * self.model(x_t, t)


def test_noise_model_and_data_module_registries_list_every_implementation():
    from conftest import stdiff_subclasses

    from stdiff.data import DATA_MODULES, SequenceDataModule

    assert set(NOISE_MODELS.values()) == stdiff_subclasses(NoiseModel)
    assert set(DATA_MODULES.values()) == stdiff_subclasses(SequenceDataModule)


def test_denoiser_passes_conditioning_to_its_backbone_and_samplers_pass_it_through():
    """k-diffusion style: ``cond`` reaches the network unchanged, from a sampler as from a direct call."""
    seen = []

    class Echo(torch.nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, c, **cond):
            seen.append(sorted(cond))
            return self.scale * cond.get("observed", torch.zeros_like(x))

    model = Denoiser((4, 2), Echo, OrnsteinUhlenbeck(), "eps")
    obs = torch.ones(3, 4, 2)
    assert torch.equal(model(torch.zeros(3, 4, 2), torch.full((3,), 0.5), observed=obs), obs)
    SAMPLERS["DDIM"](steps=2).sample(model, (3, 4, 2), torch.Generator().manual_seed(0), cond={"observed": obs})
    assert seen == [["observed"]] * 3


def test_exact_denoiser_is_the_conditional_mean_of_the_noise():
    """ε̂ = E[ε | x_t]: regressing the true ε on x_t over many draws recovers the exact model's map."""
    gp = KroneckerGP(PoweredExponential(2.0), RBF(1.0), frames=3, space_shape=(2,))
    schedule = OrnsteinUhlenbeck()
    exact = ExactDenoiser.from_gp(gp, schedule)
    n, g = 200_000, torch.Generator().manual_seed(0)
    x0 = gp.sample(n, g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.7, dtype=torch.float64)
    x_t = diffuse(schedule, x0, t, eps)
    a = torch.linalg.lstsq(x_t.reshape(n, -1), eps.reshape(n, -1)).solution  # E[ε | x_t] is linear in x_t
    probe = x_t[:5]
    assert torch.allclose(exact(probe, t[:5]).reshape(5, -1), probe.reshape(5, -1) @ a, atol=0.02)
    with pytest.raises(ValueError, match="ExactDenoiser needs data whose exact distribution is known"):
        ExactDenoiser((3, 2)).attach_truth(None)


def test_v_parameterisation_carries_the_white_data_denoiser_as_a_skip():
    # Untrained (zero output layer), a v-predicting Denoiser is the optimal denoiser of white
    # unit-variance data, ε̂ = σ x_t / (α² + σ²): at high noise ε̂ = x_t without the network's help
    # (Karras et al. 2022's c_skip); an ε-predicting one outputs 0 there.
    schedule = OrnsteinUhlenbeck()
    x_t = torch.randn(3, 4, 2)
    t = torch.tensor([0.01, 1.0, 9.0])
    alpha, sigma = (f(t)[:, None, None] for f in (schedule.alpha, schedule.sigma))
    v = Denoiser((4, 2), lambda shape: DiT(shape, width=16, depth=1, heads=2), schedule)
    assert v.parameterization_name == "v"  # the default
    torch.testing.assert_close(v(x_t, t), sigma * x_t / (alpha**2 + sigma**2))
    eps = Denoiser((4, 2), lambda shape: DiT(shape, width=16, depth=1, heads=2), schedule, parameterization="eps")
    assert eps(x_t, t).abs().max() == 0
