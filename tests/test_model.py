"""The thin model path: DiT shapes and initialisation, the OU schedule, and the denoising loss
against its analytic floor with the exact score as the model."""

import math

import pytest
import torch

from stdiff.diffusion import ExactNoiseModel, denoising_loss, denoising_loss_floor, diffuse, score_from_noise
from stdiff.gp import KroneckerGP
from stdiff.kernels import RBF, PoweredExponential
from stdiff.module import DiffusionModule
from stdiff.nn import DiT, FullAttention
from stdiff.schedules import OrnsteinUhlenbeck


@pytest.mark.parametrize("shape", [(8, 5), (6, 3, 4)], ids=["1d", "2d"])
def test_dit_maps_samples_to_samples(shape):
    net = DiT(shape, width=32, depth=2, heads=4)
    x, c = torch.randn(3, *shape), torch.randn(3)
    assert torch.equal(net(x, c), torch.zeros(3, *shape))  # adaLN-Zero: the untrained net outputs 0
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    (net(x, c) - x).pow(2).mean().backward()
    opt.step()
    out = net(x, c)
    assert out.shape == x.shape and out.abs().sum() > 0


def test_dit_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"heads must be >= 1 and divide width=30, got heads=4"):
        DiT((8, 5), width=30, heads=4)
    with pytest.raises(ValueError, match=r"depth must be an integer >= 1, got 0"):
        DiT((8, 5), depth=0)
    with pytest.raises(ValueError, match=r"sample_shape must be"):
        DiT((8,))
    with pytest.raises(ValueError, match=r"DiT built for samples of shape \(8, 5\), got input \(2, 8, 6\)"):
        DiT((8, 5), width=16, heads=2)(torch.zeros(2, 8, 6), torch.zeros(2))


def test_full_attention_matches_explicit_softmax():
    attn = FullAttention(width=16, heads=4)
    x = torch.randn(2, 5, 3, 16)  # (B, T, P, D)
    q, k, v = attn.qkv(x.reshape(2, 15, 16)).reshape(2, 15, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 15, 16)).reshape(2, 5, 3, 16)
    torch.testing.assert_close(attn(x), expected)


def test_ou_schedule_closed_form():
    s = OrnsteinUhlenbeck()
    t = torch.linspace(1e-4, 20, 200, dtype=torch.float64)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(s.alpha(t), torch.exp(-t / 2))
    torch.testing.assert_close(s.log_snr(t), torch.log(s.alpha(t) ** 2 / s.sigma(t) ** 2))
    assert (s.log_snr(t).diff() < 0).all()
    times = s.sample_time(1000, torch.Generator().manual_seed(0))
    assert times.min() >= s.t_min and times.max() <= s.t_max
    with pytest.raises(ValueError, match=r"OrnsteinUhlenbeck.t_max must be > t_min"):
        OrnsteinUhlenbeck(t_min=1.0, t_max=0.5)
    with pytest.raises(ValueError, match=r"OrnsteinUhlenbeck.t_min must be a finite number > 0, got 0.0"):
        OrnsteinUhlenbeck(t_min=0.0)


def test_exact_noise_model_loss_equals_its_analytic_floor():
    """With ε̂ = −σ ∇log p_t (the exact posterior mean of ε), the ε-MSE at time t is
    (1/d) Σ_k α²λ_k / (α²λ_k + σ²), λ_k the eigenvalues of Γ ⊗ Σ."""
    gp = KroneckerGP(PoweredExponential(3.0), RBF(1.0), frames=8, space_shape=(4,), mean=0.5)
    schedule = OrnsteinUhlenbeck()
    oracle = ExactNoiseModel(gp, schedule)
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    x0 = gp.sample(n, gen, dtype=torch.float64)
    t = schedule.sample_time(n, gen).double()
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    excess = denoising_loss(oracle, schedule, x0, t, noise) - denoising_loss_floor(gp, schedule, t)
    assert abs(excess.mean()) < 4 * excess.std() / math.sqrt(n)
    # a wrong model sits measurably above the floor
    biased = denoising_loss(lambda x, s: 1.05 * oracle(x, s), schedule, x0, t, noise) - denoising_loss_floor(
        gp, schedule, t
    )
    assert biased.mean() > 4 * biased.std() / math.sqrt(n)
    # the exact ε-prediction turned back into a score is the exact score
    x_t = diffuse(schedule, x0[:4], t[:4], noise[:4])
    score = score_from_noise(oracle(x_t, t[:4]), schedule, t[:4])
    torch.testing.assert_close(score, gp.score(x_t, schedule.alpha(t[:4]), schedule.sigma(t[:4])))


def test_module_optimizer_reduces_the_loss():
    torch.manual_seed(0)
    gp = KroneckerGP(PoweredExponential(3.0), None, frames=8, space_shape=(4,))
    module = DiffusionModule((8, 4), backbone=lambda shape: DiT(shape, width=32, depth=1, heads=2))
    opt = module.configure_optimizers()
    x0 = gp.sample(256, torch.Generator().manual_seed(1))
    t = torch.full((256,), 1.0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    first = denoising_loss(module, module.schedule, x0, t, noise).mean().item()
    for _ in range(30):
        opt.zero_grad()
        loss = denoising_loss(module, module.schedule, x0, t, noise).mean()
        loss.backward()
        opt.step()
    assert denoising_loss(module, module.schedule, x0, t, noise).mean().item() < 0.9 * first
