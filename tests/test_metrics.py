"""Truth-checking metrics against oracles: exact samples sit at the floor, a known wrong
covariance gives its closed-form KL and W2, the exact model has zero score error, attention
alignment behaves, and two processes agree with one."""

import datetime
import math
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stdiff.kernels import Matern, PoweredExponential
from stdiff.metrics import (
    SampleDistance,
    ScoreError,
    attention_alignment,
    gaussian_kl,
    gaussian_w2,
    ks_normal,
    sample_distances,
    sample_statistics,
    temporal_map,
)
from stdiff.schedules import OrnsteinUhlenbeck
from stdiff.truth import KroneckerGP


def small_gp(lengthscale=3.0):
    return KroneckerGP(PoweredExponential(lengthscale, 1.0), Matern(1.5, 2.5), frames=8, space_shape=(4,))  # d = 32


def test_closed_forms():
    d = 5
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    c1, c2 = a @ a.T + torch.eye(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64) * 2
    m1, m2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    dense_kl = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(m1, c1), torch.distributions.MultivariateNormal(m2, c2)
    )
    assert gaussian_kl(m1, c1, m2, c2) == pytest.approx(dense_kl.item(), rel=1e-10)
    # W2 between commuting covariances: ‖m1 − m2‖² + Σ (√λ1 − √λ2)²
    c3 = torch.diag(torch.tensor([1.0, 4.0, 9.0, 1.0, 1.0], dtype=torch.float64))
    expected = math.sqrt(m1.pow(2).sum().item() + ((c3.diagonal().sqrt() - math.sqrt(2)) ** 2).sum().item())
    assert gaussian_w2(m1, c3, m2, c2) == pytest.approx(expected, rel=1e-10)
    assert gaussian_w2(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-6)


def test_gaussian_kl_refuses_what_is_not_a_covariance():
    d = 4
    eye = torch.eye(d, dtype=torch.float64)
    zeros = torch.zeros(d, dtype=torch.float64)
    indefinite = torch.diag(torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64))  # det > 0: slogdet alone passes it
    with pytest.raises(ValueError, match=r"first covariance \(c1\) is not positive semi-definite \(eigenvalues from -1"):
        gaussian_kl(zeros, indefinite, zeros, eye)
    with pytest.raises(ValueError, match=r"second covariance \(c2\) is not positive definite \(smallest eigenvalue -1"):
        gaussian_kl(zeros, eye, zeros, indefinite)
    assert gaussian_kl(zeros, torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)), zeros, eye) == math.inf


def test_the_gaussian_fit_floor_is_d_d_plus_3_over_4n():
    """The docstring's floor of ``gaussian_fit_kl`` on exact samples: d(d + 3) / (4n), mean over seeds."""
    from stdiff.metrics import gaussian_fit_kl

    d, n = 8, 400
    eye, zeros = torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    kls = [gaussian_fit_kl(torch.randn(n, d, generator=torch.Generator().manual_seed(s), dtype=torch.float64), zeros, eye)
           for s in range(400)]  # fmt: skip
    mean, se = sum(kls) / len(kls), torch.tensor(kls).std().item() / len(kls) ** 0.5
    assert abs(mean - d * (d + 3) / (4 * n)) < 4 * se  # 0.055 (measured 0.0548 ± 0.0006); d(d + 1) / (4n) = 0.045 is 17 se away
    assert abs(mean - d * (d + 1) / (4 * n)) > 4 * se


def test_ks_statistic():
    z = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ks_normal(z) < 0.005
    assert ks_normal(z * 1.2) > 0.03


def test_exact_samples_sit_at_the_floor():
    """Exact samples: every excess is within the spread of the floor across seeds."""
    gp, n = small_gp(), 4000
    stats = [sample_statistics(gp, gp.sample(n, torch.Generator().manual_seed(s), torch.float64)) for s in range(8)]
    spread = {k: torch.tensor([s[k] for s in stats]).std().item() for k in stats[0]}
    x = gp.sample(n, torch.Generator().manual_seed(100), torch.float64)
    out = sample_distances(gp, x, seed=7)
    assert abs(out["whitened_norm"] - 1) < 4 * spread["whitened_norm"]
    for name in ("kl", "w2", "ks", "gamma_rel_frob", "sigma_rel_frob", "gamma_kl", "sigma_kl"):
        assert abs(out[f"{name}_excess"]) < 4 * math.sqrt(2) * spread[name], name


def test_wrong_covariance_gives_its_closed_form_kl_and_w2():
    truth, wrong, n = small_gp(3.0), small_gp(1.5), 20_000
    x = wrong.sample(n, torch.Generator().manual_seed(1), torch.float64)
    mean = truth.mean.reshape(-1)
    closed_kl = gaussian_kl(mean, wrong.covariance(), mean, truth.covariance())
    closed_w2 = gaussian_w2(mean, wrong.covariance(), mean, truth.covariance())
    out = sample_distances(truth, x, seed=2)
    # The fit-KL's finite-sample bias is the floor; what is left is the closed form.
    floor_spread = 0.002  # std of the floor over seeds at d = 32, n = 20,000 (8e-4), with room
    assert out["kl_excess"] == pytest.approx(closed_kl, abs=max(0.05 * closed_kl, 5 * floor_spread))
    assert out["w2"] == pytest.approx(closed_w2, rel=0.03)
    assert closed_kl > 1.0  # a clearly wrong model


def test_score_error_of_the_exact_score_is_zero_and_bins_separate():
    gp = small_gp()
    metric = ScoreError(torch.linspace(-10, 10, 5))
    x = torch.randn(64, 8, 4, dtype=torch.float64)
    lam = torch.linspace(-9, 9, 64, dtype=torch.float64)
    s = gp.score(x, torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt())
    loss = torch.rand(64, dtype=torch.float64)
    metric.update(s, s, lam, loss, loss)
    out = metric.compute()
    assert out["score_rel_error"] == 0 and out["excess_loss"] == 0
    metric.reset()
    noisy = s.clone()
    noisy[lam > 0] *= 1.1  # 10% wrong at high SNR only
    metric.update(noisy, s, lam, loss, loss)
    out = metric.compute()
    assert out["score_rel_error/logsnr_+5.0_+10.0"].item() == pytest.approx(0.01)
    assert out["score_rel_error/logsnr_-10.0_-5.0"].item() == 0


def test_sample_distance_rejects_the_wrong_shape():
    metric = SampleDistance(small_gp(), OrnsteinUhlenbeck())
    with pytest.raises(
        ValueError, match=r"samples must have shape \(n, 8, 4\) \(n, T, \*space_shape\), got \(3, 8, 5\)"
    ):
        metric.update(torch.zeros(3, 8, 5))


def test_too_few_samples_fall_back_to_structured_metrics():
    gp = small_gp()
    out = sample_statistics(gp, gp.sample(40))  # n = 40 <= 2d = 64
    assert "kl" not in out and "w2" not in out and "gamma_kl" in out


def test_attention_alignment():
    gamma = PoweredExponential(3.0)(torch.arange(10.0)[:, None])
    rows = gamma / gamma.sum(1, keepdim=True)
    uniform = torch.full((10, 10), 0.1)
    out = attention_alignment(torch.stack([rows, uniform, gamma / 10]), gamma)
    assert out["rel_frob"][0].item() == pytest.approx(0.0, abs=1e-6) and out["pearson"][0] > 0.95
    assert out["pearson"][2].item() == pytest.approx(1.0)  # Pearson ignores scale
    assert abs(out["pearson"][1].item()) < 1e-6 and out["rel_frob"][1] > 0.5
    # joint attention over T·P tokens reduces to frame-to-frame rows that still sum to 1
    joint = torch.softmax(torch.randn(2, 10 * 3, 10 * 3), -1)
    frames = temporal_map(joint, 10)
    assert frames.shape == (2, 10, 10)
    torch.testing.assert_close(frames.sum(-1), torch.ones(2, 10))


# --- two processes ----------------------------------------------------------------------------


def _rank_worker(rank, world, port, x, scores, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a timeout: a rank left waiting fails the test instead of hanging the suite
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        gp = small_gp()
        samples = SampleDistance(gp, OrnsteinUhlenbeck(), seed=3)
        samples.update(x[rank::world])
        score = ScoreError(torch.linspace(-10, 10, 5))
        s, s_exact, lam, loss = (v[rank::world] for v in scores)
        score.update(s, s_exact, lam, loss, loss * 0.5)
        result = {**samples.compute(), **{k: v.item() for k, v in score.compute().items()}}
        if rank == 0:
            out.update(result)
        dist.barrier()
    finally:
        dist.destroy_process_group()
        # Rank 0's process hosts the rendezvous store, so it leaves last (seen once with torch 2.5.1:
        # rank 0 exited while rank 1 still used the store, and rank 1 waited forever).
        out[f"left{rank}"] = True
        deadline = time.monotonic() + 60
        while rank == 0 and not all(f"left{r}" in out for r in range(world)) and time.monotonic() < deadline:
            time.sleep(0.05)


def test_two_processes_give_the_values_of_one():
    gp = small_gp()
    x = gp.sample(1000, torch.Generator().manual_seed(4), torch.float64)
    gen = torch.Generator().manual_seed(5)
    lam = torch.linspace(-9, 9, 100, dtype=torch.float64)
    s_exact = torch.randn(100, 8, 4, generator=gen, dtype=torch.float64)
    scores = (s_exact + 0.1 * torch.randn(100, 8, 4, generator=gen, dtype=torch.float64), s_exact, lam,
              torch.rand(100, generator=gen, dtype=torch.float64))  # fmt: skip
    single = SampleDistance(gp, OrnsteinUhlenbeck(), seed=3)
    single.update(x)
    score = ScoreError(torch.linspace(-10, 10, 5))
    score.update(scores[0], scores[1], scores[2], scores[3], scores[3] * 0.5)
    expected = {**single.compute(), **{k: v.item() for k, v in score.compute().items()}}
    with mp.Manager() as manager:
        out = manager.dict()
        port = 29500 + os.getpid() % 1000
        mp.spawn(_rank_worker, args=(2, port, x, scores, out), nprocs=2, join=True)
        got = {k: v for k, v in out.items() if not k.startswith("left")}
    assert set(got) == set(expected)
    for k, value in expected.items():
        assert got[k] == pytest.approx(value, rel=1e-9, abs=1e-12), k
