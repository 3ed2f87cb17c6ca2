"""Conditioning beyond the dense limit (``stdiff.truth.structured`` and its callers): whole frames
through the Kronecker structure, exact at any size, and scattered masks by conjugate gradients,
each against the dense Cholesky path where both run; then at video scale (16 × 64 × 64), where
the dense path cannot."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stdiff.kernels import RBF, Matern, Separable
from stdiff.truth import DENSE_LIMIT, KroneckerGP, conditioning, structured

VIDEO_KERNELS = (Matern(4.0, 0.5), Separable([Matern(6.0, 0.5), Matern(6.0, 0.5)]))  # configs/video.yaml's


def small_gp(nugget: float = 0.0, frames: int = 6, side: int = 8) -> KroneckerGP:
    return KroneckerGP(*VIDEO_KERNELS, frames, (side, side), 0.3, jitter="auto", nugget=nugget)


def noisy(gp: KroneckerGP, s: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = gp.sample(len(s), g, dtype=torch.float64)
    return x0, x0 + s.sqrt().reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g, dtype=torch.float64)


def dense(gp, x0, xt, mask, s):
    """x̂₀ and evidence through the dense Cholesky path, whatever the mask."""
    b = len(x0)
    v = (torch.where(mask, x0, xt) - gp.mean_value).reshape(b, -1)
    kw, quad, logdet = conditioning._dense_solve(gp, v, mask, s)
    x0_hat = torch.where(mask.reshape(b, gp.frames, -1), x0.reshape(b, gp.frames, -1), gp.mean_value + kw)
    return x0_hat.reshape(x0.shape), -0.5 * (quad + logdet + gp.dim * conditioning.LOG_2PI)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(nugget=st.sampled_from([0.0, 0.05]), log_s=st.floats(-4, 4), seed=st.integers(0, 2**16),
       observed=st.lists(st.booleans(), min_size=6, max_size=6).filter(lambda f: 0 < sum(f) < 6))  # fmt: skip
@example(nugget=0.0, log_s=4.0, seed=0, observed=[True, False, False, False, False, False])
def test_whole_frames_are_exact_through_the_kronecker_structure(nugget, log_s, seed, observed):
    gp = small_gp(nugget)
    s = torch.full((3,), 10.0**log_s, dtype=torch.float64)
    s[1] *= 3  # another noise level: another group
    x0, xt = noisy(gp, s, seed)
    mask = torch.tensor(observed)[None, :, None, None].expand(3, *gp.sample_shape).clone()
    mask[2] = True
    mask[2, 0] = False  # another pattern of frames
    one = torch.ones(3, dtype=torch.float64)
    got, evidence = conditioning.masked_denoise(gp, xt, one, s.sqrt(), x0, mask)
    want, want_evidence = dense(gp, x0, xt, mask, s)
    assert (got - want).abs().max() <= 1e-9 * want.abs().max()
    assert torch.equal(got[mask], x0[mask])
    assert torch.allclose(evidence, want_evidence, rtol=1e-10, atol=1e-6)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(nugget=st.sampled_from([0.0, 0.05]), log_s=st.floats(-4, 6), fraction=st.floats(0.05, 0.95),
       seed=st.integers(0, 2**16))  # fmt: skip
@example(nugget=0.0, log_s=6.0, fraction=0.5, seed=1)
def test_conjugate_gradients_match_the_dense_solve_to_their_stated_tolerance(nugget, log_s, fraction, seed):
    gp = small_gp(nugget)
    s = torch.full((2,), 10.0**log_s, dtype=torch.float64)
    s[1] /= 7
    x0, xt = noisy(gp, s, seed)
    mask = torch.rand(x0.shape, generator=torch.Generator().manual_seed(seed)) < fraction
    mask[:, 0, 0, 0], mask[:, 0, 0, 1] = True, False
    want, _ = dense(gp, x0, xt, mask, s)
    v = (torch.where(mask, x0, xt) - gp.mean_value).reshape(2, gp.frames, -1)
    got, iterations = structured.pcg_solve(gp, v, mask.reshape(2, gp.frames, -1), s)
    got = gp.mean_value + got.reshape(x0.shape)
    # relative residual 1e-6 (PCG_TOLERANCE): measured errors up to 7e-6 of the field
    assert ((got - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)).max() < 3e-5
    assert torch.equal(got[mask], x0[mask])
    assert iterations < 400


def test_conjugate_gradients_refuse_a_system_they_would_solve_wrongly():
    gp = KroneckerGP(RBF(4.0), RBF(3.0), 8, (16, 16), jitter="auto")  # condition ~1e13, held up by jitter
    assert gp.dim <= DENSE_LIMIT
    v = torch.zeros(1, 8, 256, dtype=torch.float64)
    with pytest.raises(ValueError, match="condition number of K .* add a nugget .* observe whole frames"):
        structured.pcg_solve(gp, v, torch.rand(1, 8, 256) < 0.5, torch.ones(1, dtype=torch.float64))


def test_conjugate_gradients_name_their_residual_when_they_do_not_converge():
    gp = small_gp()
    s = torch.ones(1, dtype=torch.float64)
    x0, _ = noisy(gp, s, 0)
    mask = (torch.rand(x0.shape, generator=torch.Generator().manual_seed(0)) < 0.5).reshape(1, gp.frames, -1)
    with pytest.raises(RuntimeError, match=r"did not reach a relative residual of 1e-06 in 2 iterations \(worst row"):
        structured.pcg_solve(gp, (x0 - 0.3).reshape(1, gp.frames, -1), mask, s, max_iterations=2)


def test_frame_posterior_moments_and_draws_without_a_dense_covariance():
    gp = small_gp()
    x = gp.sample(2, torch.Generator().manual_seed(3), dtype=torch.float64)
    frames = torch.tensor([True, True, False, True, False, False])
    coordinates = frames[:, None, None].expand(gp.sample_shape)
    mean, cov = gp.conditional(x, frames)
    mean_c, var_c = gp.conditional(x, coordinates, variance_only=True)  # a coordinate mask of whole frames
    assert torch.allclose(mean, mean_c, atol=1e-12) and var_c.shape == (3 * 64,)
    assert torch.allclose(cov[0].diagonal(), var_c, rtol=1e-10)
    draws = gp.sample_conditional(x, coordinates, 4000, torch.Generator().manual_seed(4))
    missing = ~coordinates.reshape(-1)
    residual = (draws - mean[:, None]).reshape(2, 4000, -1)[..., missing]
    assert torch.equal(draws.reshape(2, 4000, -1)[..., ~missing], x.reshape(2, 1, -1)[..., ~missing].expand(2, 4000, -1))
    # 4000 draws: means within 5 standard errors, variances within 10 % (sd of a variance ~2.2 %)
    assert (residual.mean(1).abs() / (var_c / 4000).sqrt()).max() < 5
    assert ((residual.var(1) / var_c) - 1).abs().max() < 0.1
    cross = torch.cov(residual[0, :, :64].T)  # one missing frame: Σ's shape times the Schur variance
    assert torch.allclose(cross, cov[0][:64, :64], atol=0.15 * cov[0].diagonal().max().item())


def test_matheron_draws_are_the_dense_posterior():
    gp = small_gp(nugget=0.05)  # a nugget: a frame mask is conditioned as coordinates
    x = gp.sample(1, torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = torch.rand(gp.sample_shape, generator=torch.Generator().manual_seed(6)) < 0.4
    mean, cov = gp.conditional(x, mask)
    draws = conditioning._matheron(gp, x, mask, 3000, torch.Generator().manual_seed(7)).reshape(3000, -1)
    missing = ~mask.reshape(-1)
    assert torch.allclose(draws[:, ~missing], x.reshape(1, -1)[:, ~missing].expand(3000, -1), atol=1e-12)
    residual = draws[:, missing] - mean.reshape(1, -1)[:, missing]
    var = cov[0].diagonal()
    assert (residual.mean(0).abs() / (var / 3000).sqrt()).max() < 5
    assert ((residual.var(0) / var) - 1).abs().max() < 0.12


def test_scattered_masks_beyond_the_dense_limit_give_no_evidence():
    gp = KroneckerGP(*VIDEO_KERNELS, 8, (24, 24))
    assert gp.dim > DENSE_LIMIT
    s = torch.ones(1, dtype=torch.float64)
    x0, xt = noisy(gp, s, 0)
    mask = torch.rand(x0.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    with pytest.raises(ValueError, match="the evidence of a scattered mask on T·S = 4608 > 4096 values"):
        gp.denoise_with_evidence(xt, 1.0, 1.0, x0, mask)
    assert gp.denoise(xt, 1.0, 1.0, x0, mask).shape == x0.shape


def test_video_scale_conditioning_forms_nothing_dense():
    """16 × 64 × 64 (d = 65,536): a forecast's x̂₀ and evidence, an imputation's x̂₀, and exact
    forecast draws, with Σ never formed as 4096 × 4096 (nor K as 65,536²)."""
    gp = KroneckerGP(*VIDEO_KERNELS, 16, (64, 64))
    s = torch.tensor([1e-3, 1.0, 1e10], dtype=torch.float64)
    x0, xt = noisy(gp, s, 1)
    one = torch.ones(3, dtype=torch.float64)
    forecast = torch.zeros(x0.shape, dtype=torch.bool)
    forecast[:, :8] = True
    got, evidence = gp.denoise_with_evidence(xt, one, s.sqrt(), x0, forecast)
    assert torch.isfinite(evidence).all() and torch.equal(got[forecast], x0[forecast])
    # at small noise x̂₀ is nearer x_0 than x_t is; at large noise the forecast's mean, x_t barely counts
    assert (got[0] - x0[0]).pow(2).mean() < 0.5 * (xt[0] - x0[0]).pow(2).mean()
    mean, _ = gp.conditional(x0[2:], torch.arange(16) < 8, variance_only=True)
    assert (got[2] - mean[0]).abs().max() < 1e-3 * mean.abs().max()
    imputation = torch.rand(x0.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    got = gp.denoise(xt, one, s.sqrt(), x0, imputation)
    assert torch.equal(got[imputation], x0[imputation]) and torch.isfinite(got).all()
    draws = gp.sample_conditional(x0[:1], torch.arange(16) < 8, 2, torch.Generator().manual_seed(3))
    assert draws.shape == (1, 2, 16, 64, 64) and torch.equal(draws[0, :, :8], x0[:1, :8].expand(2, -1, -1, -1))
    assert not gp.space.dense_formed
    with pytest.raises(ValueError, match="the covariance of 32768 unobserved values is dense beyond 4096"):
        gp.conditional(x0, torch.arange(16) < 8)


def test_conditional_memory_estimate_counts_what_the_structured_paths_allocate():
    from stdiff.estimates import posterior_memory

    d = 16 * 64 * 64
    assert posterior_memory(32, 64, d) < 2**31  # was 2 × 8 × 32 × d² = 1 PiB
    assert posterior_memory(32, 64, 1024) >= 2 * 8 * 32 * 1024**2
    assert math.isclose(posterior_memory(1, 1, d), 8 * d + 80 * d)


def test_a_nearly_singular_gamma_keeps_whole_frames_on_the_dense_path():
    """Regression (the long truth-contract profile's shrunk failure): at a Γ of condition 3e10 the
    Kronecker path's conditional evidence was 1.3e-6 to 4e-4 nats off the 40-digit one; below the
    dense limit such a K now takes the dense solve (3e-7 off), a well-conditioned one the Kronecker path."""
    import math

    import truth_reference as ref

    from stdiff.kernels import RBF, PoweredExponential, Scaled

    bad = KroneckerGP(Scaled(RBF(3.8395286570328317), 7.951386717277986), RBF(2.2755711223123667), 10, (2, 3))
    good = KroneckerGP(PoweredExponential(2.7773114079367702, 0.5), None, 10, (2, 3))
    assert not structured.frames_pay(bad) and structured.frames_pay(good)
    assert structured.frames_pay(KroneckerGP(*VIDEO_KERNELS, 16, (64, 64)))  # beyond the dense limit: always
    a, s = math.exp(-0.5), math.sqrt(1 - math.exp(-1))
    for gp in (bad, good):
        g = torch.Generator().manual_seed(2745)
        x0 = gp.sample(1, g, dtype=torch.float64)
        xt = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        mask = torch.zeros(x0.shape, dtype=torch.bool)
        mask[:, :7] = True
        _, evidence = conditioning.masked_denoise(gp, xt, torch.tensor([a], dtype=torch.float64),
                                                  torch.tensor([s], dtype=torch.float64), x0, mask)  # fmt: skip
        exact = ref.mp_component_evidence(gp, xt.reshape(-1).numpy(), a, s, x0.reshape(-1).numpy(), mask.reshape(-1).numpy())
        assert abs(evidence.item() - float(exact[0])) < 1e-6
