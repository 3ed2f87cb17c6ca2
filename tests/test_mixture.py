"""``GPMixture`` against independent truth: autograd of its exact log-density, dense conditioning
of each component with Bayes weights, the change of variables through the samplers; a mixture of
one component reproduces ``KroneckerGP`` and today's diagnostics exactly; the mixture metrics see
what a Gaussian fit misses; the presets run as documented."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from stdiff.diffusion import ExactDenoiser
from stdiff.kernels import RBF, PoweredExponential
from stdiff.likelihood import log_likelihood
from stdiff.metrics import sample_distances
from stdiff.metrics.distances import early_stopping_kl, flow_kl
from stdiff.metrics.mixture import mixture_distances
from stdiff.sampling import DDIM, UniPC
from stdiff.schedules import OrnsteinUhlenbeck
from stdiff.truth import GPMixture, KroneckerGP

SCHEDULE = OrnsteinUhlenbeck(t_min=1e-3, t_max=10.0)


def small_mixture(frames=6, points=3) -> GPMixture:
    """Three components that differ in lengthscale, mean and nugget, unequal weights."""
    parts = [(1.0, 0.5, 0.0), (4.0, -1.0, 0.1), (16.0, 0.0, 0.0)]
    comps = [KroneckerGP(PoweredExponential(ell, 1.0), RBF(1.0), frames, (points,), mean, nugget=nugget)
             for ell, mean, nugget in parts]  # fmt: skip
    return GPMixture(comps, [0.5, 0.3, 0.2])


def dense_log_prob(mix: GPMixture, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """log Σ_k w_k N(x; α μ_k, α² K_k + σ² I), dense, one sample at a time."""
    out = []
    for i in range(len(x)):
        terms = []
        for w, c in zip(mix.weights.tolist(), mix.components):
            cov = alpha[i] ** 2 * c.covariance() + sigma[i] ** 2 * torch.eye(c.dim, dtype=torch.float64)
            normal = torch.distributions.MultivariateNormal(alpha[i] * c.mean.reshape(-1), cov)
            terms.append(math.log(w) + normal.log_prob(x[i].reshape(-1)))
        out.append(torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(out)


def noised(mix: GPMixture, n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(n, g, dtype=torch.float64)
    alpha = torch.linspace(0.3, 0.995, n, dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    view = (n, 1, 1)
    return x0, alpha * torch.ones(n, dtype=torch.float64), sigma, alpha.reshape(view) * x0 + sigma.reshape(view) * torch.randn(
        x0.shape, generator=g, dtype=torch.float64)  # fmt: skip


def test_noised_density_is_the_dense_log_sum_exp_and_the_score_its_autograd_gradient():
    mix = small_mixture()
    _, alpha, sigma, x_t = noised(mix)
    assert torch.allclose(mix.noised_log_prob(x_t, alpha, sigma), dense_log_prob(mix, x_t, alpha, sigma), atol=1e-9)
    v = x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.noised_log_prob(v, alpha, sigma).sum(), v)
    assert torch.allclose(mix.score(x_t, alpha, sigma), grad, atol=1e-10)
    # the unconditional denoiser is Tweedie's formula: E[x_0 | x_t] = (x_t + σ² ∇ log p_t) / α
    view = (len(x_t), 1, 1)
    tweedie = (x_t + sigma.reshape(view) ** 2 * grad) / alpha.reshape(view)
    assert torch.allclose(mix.denoise(x_t, alpha, sigma), tweedie, atol=1e-10)


def test_the_divergence_of_the_exact_noise_model_is_its_autograd_trace():
    mix = small_mixture()
    _, _, _, x_t = noised(mix, 4)
    t = 0.7
    model = ExactDenoiser.from_gp(mix, SCHEDULE)
    v = x_t.clone().requires_grad_(True)
    eps = model(v, torch.full((4,), t, dtype=torch.float64))
    trace = torch.zeros(4, dtype=torch.float64)
    for j in range(mix.dim):
        (g,) = torch.autograd.grad(eps.flatten(1)[:, j].sum(), v, retain_graph=True)
        trace += g.flatten(1)[:, j]
    assert torch.allclose(model.divergence(t, x_t), trace, atol=1e-9)


def test_the_conditional_denoiser_and_its_evidence_are_dense_conditioning_with_bayes_weights():
    mix = small_mixture()
    x0, alpha, sigma, x_t = noised(mix)
    mask = torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[0] = True  # one row fully observed
    mask[1] = False  # one row with nothing observed
    x0_hat, evidence = mix.denoise_with_evidence(x_t, alpha, sigma, x0, mask)
    for i in range(len(x0)):
        m, s = mask[i].reshape(-1), (sigma[i] / alpha[i]) ** 2
        v = torch.where(m, x0[i].reshape(-1), x_t[i].reshape(-1) / alpha[i])  # observed values, x_t/α elsewhere
        joint, means = [], []
        for w, c in zip(mix.weights.tolist(), mix.components):
            cov, mu = c.covariance(), c.mean.reshape(-1)
            k = cov + s * torch.diag((~m).double())
            joint.append(math.log(w) + torch.distributions.MultivariateNormal(mu, k).log_prob(v))
            means.append(mu + cov @ torch.linalg.solve(k, v - mu))
        joint = torch.stack(joint)
        r = torch.softmax(joint, 0)
        expected = sum(r[k] * means[k] for k in range(len(means)))
        assert torch.allclose(x0_hat[i].reshape(-1), expected, atol=1e-9)
        assert evidence[i].item() == pytest.approx(torch.logsumexp(joint, 0).item(), abs=1e-8)
    assert torch.equal(x0_hat[mask], x0[mask].double())  # observed entries returned exactly


@pytest.mark.parametrize("frames_only", [True, False])
def test_the_posterior_is_the_mixture_of_the_component_posteriors_reweighted_by_bayes(frames_only):
    mix = small_mixture()
    x = mix.sample(3, torch.Generator().manual_seed(2), dtype=torch.float64)
    observed = torch.tensor([True, True, True, False, False, False])
    if not frames_only:
        observed = torch.rand(mix.sample_shape, generator=torch.Generator().manual_seed(3)) < 0.6
    flat = observed[:, None].expand(mix.frames, mix.num_points).reshape(-1) if frames_only else observed.reshape(-1)
    o, m = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
    mean, cov = mix.conditional(x, observed)
    for i in range(len(x)):
        xi = x[i].reshape(-1)
        logs, means, covs = [], [], []
        for w, c in zip(mix.weights.tolist(), mix.components):
            k, mu = c.covariance(), c.mean.reshape(-1)
            logs.append(math.log(w) + torch.distributions.MultivariateNormal(mu[o], k[o][:, o]).log_prob(xi[o]))
            gain = k[m][:, o] @ torch.linalg.inv(k[o][:, o])
            means.append(mu[m] + gain @ (xi[o] - mu[o]))
            covs.append(k[m][:, m] - gain @ k[o][:, m])
        pi = torch.softmax(torch.stack(logs), 0)
        centre = sum(pi[k] * means[k] for k in range(3))
        second = sum(pi[k] * (covs[k] + torch.outer(means[k] - centre, means[k] - centre)) for k in range(3))
        assert torch.allclose(mean[i].reshape(-1)[m], centre, atol=1e-9)
        assert torch.allclose(cov[i], second, atol=1e-9)
        assert torch.allclose(mix.posterior_weights(x[i : i + 1], observed)[0], pi, atol=1e-9)
    draws = mix.sample_conditional(x, observed, 4000, torch.Generator().manual_seed(4))
    assert torch.equal(draws.reshape(3, 4000, -1)[..., o], x.reshape(3, 1, -1)[..., o].expand(3, 4000, len(o)))
    spread = cov.diagonal(dim1=-2, dim2=-1).sqrt()  # (3, m)
    error = (draws.reshape(3, 4000, -1)[..., m].mean(1) - mean.reshape(3, -1)[..., m]) / spread
    assert error.abs().max() < 5 / math.sqrt(4000) * 1.5  # within ~7 standard errors of the posterior mean


def test_responsibilities_stay_finite_for_far_apart_components():
    far = GPMixture([KroneckerGP(RBF(2.0), None, 6, (3,), 1e4), KroneckerGP(RBF(2.0), None, 6, (3,), -1e4)])
    x = far.sample(4, torch.Generator().manual_seed(0), dtype=torch.float64)
    for alpha, sigma in ((1.0, 0.0), (0.999, 0.0447), (0.01, 0.99995)):
        r = far.responsibilities(x * alpha, alpha, sigma)
        assert torch.isfinite(r).all() and torch.allclose(r.sum(1), torch.ones(4, dtype=torch.float64))
        assert torch.isfinite(far.score(x * alpha, alpha, sigma)).all()
        assert torch.isfinite(far.noised_log_prob(x * alpha, alpha, sigma)).all()
    assert torch.equal(far.responsibilities(x).argmax(1), (x.mean((1, 2)) < 0).long())  # each sample's own mode


def test_a_mixture_of_one_component_reproduces_the_gaussian_exactly():
    gp = KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), 8, (4,), 0.3, nugget=0.05)
    one = GPMixture([gp])
    x0 = gp.sample(300, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(one.sample(300, torch.Generator().manual_seed(0), dtype=torch.float64), x0)
    alpha, sigma = torch.full((300,), 0.8, dtype=torch.float64), torch.full((300,), 0.6, dtype=torch.float64)
    x_t = 0.8 * x0 + 0.6 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = torch.rand(x0.shape, generator=torch.Generator().manual_seed(2)) < 0.3
    assert torch.equal(one.score(x_t, alpha, sigma), gp.score(x_t, alpha, sigma))
    assert torch.equal(one.log_prob(x0), gp.log_prob(x0))
    assert torch.equal(one.denoise(x_t, alpha, sigma), gp.denoise(x_t, alpha, sigma))
    assert torch.equal(one.denoise(x_t, alpha, sigma, x0, mask), gp.denoise(x_t, alpha, sigma, x0, mask))
    frames = torch.tensor([True] * 4 + [False] * 4)
    for a, b in zip(one.conditional(x0[:3], frames), gp.conditional(x0[:3], frames)):
        assert torch.equal(a, b)
    assert sample_distances(one, x0, seed=5) == sample_distances(gp, x0, seed=5)
    assert early_stopping_kl(one, 0.999, 0.0447) == early_stopping_kl(gp, 0.999, 0.0447)
    # the likelihood ODE (what `stdiff test` reports as kl_true) with each as model and control
    runs = []
    for truth in (gp, one):
        model = ExactDenoiser.from_gp(truth, SCHEDULE)
        runs.append(log_likelihood(model, x0[:8], 16, "hutchinson", 1, torch.Generator().manual_seed(3), control=model).log_prob)
    assert torch.equal(runs[0], runs[1])


def test_the_likelihood_ode_of_the_exact_mixture_model_is_its_exact_noised_density():
    """Three zero-mean regimes; with the closed-form divergence as control, Hutchinson's estimate is
    exact. (Zero means: the ODE's prior at t_max, N(0, I), ignores α(t_max)·μ = 0.0067·μ here,
    which adds to each sample's log-likelihood a zero-mean error of about α(t_max)·|μ|·√d nats, also
    for one Gaussian and shared with the exact model's floor; it would hide the 1e-4 looked for.)"""
    mix = GPMixture([KroneckerGP(PoweredExponential(ell, 1.0), RBF(1.0), 4, (2,)) for ell in (1.0, 4.0, 16.0)],
                    [0.5, 0.3, 0.2])  # fmt: skip
    x = mix.sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    model = ExactDenoiser.from_gp(mix, SCHEDULE)
    t0 = torch.tensor(SCHEDULE.t_min, dtype=torch.float64)
    exact = mix.noised_log_prob(x, SCHEDULE.alpha(t0).item(), SCHEDULE.sigma(t0).item())
    runs = {d: log_likelihood(model, x, 128, d, 1, torch.Generator().manual_seed(1), control=model).log_prob
            for d in ("exact", "hutchinson")}  # fmt: skip
    assert (runs["exact"] - exact).abs().max().item() / mix.dim < 1e-4
    assert torch.allclose(runs["hutchinson"], runs["exact"], atol=1e-9)


def test_the_sampler_with_the_exact_mixture_model_reaches_the_integrator_floor():
    """The true KL of a sampler's law (change of variables through it, against the exact mixture
    density) sees DDIM's error at 4 steps and none left by UniPC at 40, within its Monte Carlo error."""
    mix = small_mixture(frames=4, points=2)
    model = ExactDenoiser.from_gp(mix, SCHEDULE)
    z = torch.randn(400, *mix.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values = {}
    for name, sampler in (("coarse", DDIM(steps=4)), ("fine", UniPC(steps=40))):

        def draw(start, sampler=sampler):
            return type(sampler).sample.__wrapped__(sampler, model, start.shape, dtype=torch.float64, start=start)

        values[name] = flow_kl(draw, mix, z, 1.0)
    (coarse, coarse_se), (fine, fine_se) = values["coarse"], values["fine"]
    assert coarse > fine + 5 * coarse_se  # the estimator sees a sampler's error
    assert abs(fine) < 3 * fine_se + 0.01  # and finds none left at 40 steps


def test_mixture_metrics_see_what_a_gaussian_fit_misses():
    """Exact samples: weights within their noise, KL excess within its noise. A model that merges the
    two modes into their moment-matched Gaussian: small moment-matched KL, huge mixture KL. One that
    drops the rare mode: the weights say so."""
    a = KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), 4, (2,), 1.5)
    b = KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), 4, (2,), -1.5)
    mix = GPMixture([a, b], [0.7, 0.3])
    n = 3000
    exact = mix.sample(n, torch.Generator().manual_seed(10), dtype=torch.float64)
    m = mixture_distances(mix, exact, seed=1)
    assert abs(m["kl_excess"]) < 3 * m["kl_excess_noise"]
    assert m["weights_tv"] < 0.03 and m["weights/1/true"] == pytest.approx(0.3)
    merged = KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), 4, (2,)).sample(n, torch.Generator().manual_seed(11),
                                                                                 dtype=torch.float64)  # fmt: skip
    # the moment-matched Gaussian of the mixture: mean 0.6, covariance K + 0.21·9·11ᵀ … drawn densely
    normal = torch.distributions.MultivariateNormal(mix.mean.reshape(-1), mix.covariance())
    merged = normal.sample((n,)).reshape(n, *mix.sample_shape)
    g = mixture_distances(mix, merged, seed=1)
    assert g["moment_matched_kl_excess"] < 0.5 and g["kl_excess"] > 20 * g["kl_excess_noise"]
    dropped = a.sample(n, torch.Generator().manual_seed(12), dtype=torch.float64)
    d = mixture_distances(mix, dropped, seed=1)
    assert d["weights_tv"] > 0.25 and d["component1/samples"] < 0.03 * n  # some of a's samples look like b
    from stdiff.callbacks.summary import _mixture_weights_verdict

    said = _mixture_weights_verdict(lambda k: d.get(k.removeprefix("samples/")))
    assert "component 1" in said and "dropped" in said


def test_the_data_module_names_a_mismatched_list():
    from stdiff.data import GPMixtureDataModule

    with pytest.raises(ValueError, match=r"GPMixtureDataModule.mean: 3 entries for 2 components"):
        GPMixtureDataModule([PoweredExponential(1.0, 1.0), PoweredExponential(4.0, 1.0)], mean=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"GPMixture weights must be finite and > 0"):
        GPMixtureDataModule([PoweredExponential(1.0, 1.0), PoweredExponential(4.0, 1.0)], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"component 1: .*not positive definite"):
        GPMixtureDataModule([PoweredExponential(1.0, 1.0), PoweredExponential(1e9, 2.0)], frames=16)
    from stdiff.diffusion import ResidualDenoiser

    data = GPMixtureDataModule([PoweredExponential(1.0, 1.0), PoweredExponential(4.0, 1.0)], frames=8, space_shape=(4,))
    with pytest.raises(ValueError, match="ResidualDenoiser's prior must be one Gaussian"):
        ResidualDenoiser(data.sample_shape).attach_truth(data.truth)


PRESETS = ["regimes", "modes", "rare"]


def test_the_presets_run_as_documented_and_the_summary_speaks_of_the_mixture(tmp_path):
    """``stdiff fit --config configs/mixtures/<preset>.yaml``, as each file's comment says, shortened."""
    short = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--diagnostics.num_samples=40",
             "--model.sampler.init_args.steps=3", "--data.init_args.num_val=16", "--trainer.enable_progress_bar=false"]  # fmt: skip
    running = {name: subprocess.Popen([sys.executable, "-m", "stdiff", "fit", "--config", f"configs/mixtures/{name}.yaml",
                                       f"--trainer.default_root_dir={tmp_path / name}", *short], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name in PRESETS}  # fmt: skip
    for name, proc in running.items():
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
        assert f"stdiff fit --config configs/mixtures/{name}.yaml" in (ROOT / "configs" / "mixtures" / f"{name}.yaml").read_text()
        assert "against the exact mixture of" in out and "weights" in out, out[-3000:]
        (metrics,) = (tmp_path / name).glob("lightning_logs/version_*/metrics.json")
        written = json.loads(metrics.read_text())
        assert len(written["data"]["mixture"]["weights"]) == {"regimes": 3, "modes": 2, "rare": 2}[name]
        assert "val/attention/component1/gamma0/pearson_best" in written["metrics"]


def test_stdiff_test_of_a_one_component_mixture_reports_todays_numbers(tmp_path):
    """The whole `stdiff test` (score error, sample metrics, verdict inputs, likelihood's kl_true) of
    GPMixtureDataModule with one component equals GPDataModule's, number for number."""
    from stdiff.cli import main

    common = ["--model.denoiser=ExactDenoiser", "--data.init_args.frames=8", "--data.init_args.space_shape=[4]",
              "--data.init_args.num_val=64", "--diagnostics.num_samples=80", "--model.sampler.init_args.steps=6",
              "--likelihood.num_samples=16", "--likelihood.steps=8", "--trainer.enable_progress_bar=false"]  # fmt: skip
    kernel = "{class_path: PoweredExponential, init_args: {lengthscale: 4.0, power: 1.0}}"
    space = "{class_path: RBF, init_args: {lengthscale: 1.0}}"
    runs = {"gp": [], "mixture": ["--data=GPMixtureDataModule", f"--data.init_args.temporal=[{kernel}]",
                                  f"--data.init_args.spatial=[{space}]", "--data.init_args.mean=[0.0]"]}  # fmt: skip
    metrics = {}
    for name, data in runs.items():
        main(["test", "--config", str(ROOT / "configs" / "quickstart.yaml"), *data, *common,
              f"--trainer.default_root_dir={tmp_path / name}"])  # fmt: skip
        (file,) = (tmp_path / name).glob("lightning_logs/*/metrics.json")
        metrics[name] = {k: v for k, v in json.loads(file.read_text())["metrics"].items() if "seconds" not in k}
    assert "test/likelihood/kl_true" in metrics["gp"] and "test/samples/whitened_norm" in metrics["gp"]
    assert metrics["mixture"] == metrics["gp"]


def test_the_exact_conditional_model_of_a_mixture_samples_its_posterior():
    """Forecasts of the modes mixture by the exact conditional model through UniPC, scored by
    ``conditional_report`` against the mixture's posterior (one covariance per case): CRPS ratio
    and spread at 1."""
    from stdiff.metrics import conditional_report

    mix = GPMixture([KroneckerGP(PoweredExponential(3.0, 1.0), RBF(1.0), 8, (2,), m) for m in (1.5, -1.5)], [0.6, 0.4])
    cases, k = 24, 48
    x = mix.sample(cases, torch.Generator().manual_seed(0))
    mask = torch.tensor([True] * 4 + [False] * 4)[:, None].expand(8, 2)
    model = ExactDenoiser.from_gp(mix, SCHEDULE)
    observed = x.repeat_interleave(k, 0)
    masks = mask.expand(len(observed), 8, 2)
    draws = UniPC(steps=30).sample(model, observed.shape, torch.Generator().manual_seed(1),
                                   cond={"observed": observed, "mask": masks})  # fmt: skip
    samples = torch.where(masks, observed, draws).reshape(cases, k, 8, 2)
    report = conditional_report(mix, x, mask, samples, seed=2)
    assert not report["shared_posterior"]  # a mixture's posterior is not one Gaussian: no residual KL
    assert report["crps_ratio"] == pytest.approx(1.0, abs=0.06)
    assert report["spread"] == pytest.approx(1.0, abs=0.1)


@pytest.mark.slow  # 16 s: 2 × 16000 samples through 60 UniPC steps (python -m pytest -m slow -k rare_mode)
def test_a_rare_modes_weight_is_moved_by_the_samplers_start_not_by_the_model():
    """The exact model of the rare preset's mixture through UniPC (60 steps): started from the true
    law at t_max (α(t_max)·μ_k = ±0.01 per coordinate, which along the modes' direction is 0.23
    standard deviations in d = 128) the rare mode keeps its weight 0.1; started from N(0, I), as
    every sampler starts, about 0.116 of the draws end there (at 25 steps the discretisation adds
    about 0.005 more). A weight error the exact model shares
    through the same sampler (``samples/exact_model_weights_tv``) is the start's, not training's."""
    mix = GPMixture([KroneckerGP(PoweredExponential(4.0, 1.0), RBF(1.0), 16, (8,), m) for m in (1.5, -1.5)], [0.9, 0.1])
    model, n = ExactDenoiser.from_gp(mix, SCHEDULE), 16000
    t_max = torch.tensor(SCHEDULE.t_max, dtype=torch.float64)
    alpha, sigma = SCHEDULE.alpha(t_max).item(), SCHEDULE.sigma(t_max).item()
    g = torch.Generator().manual_seed(0)
    true_start = alpha * mix.sample(n, g, dtype=torch.float64) + sigma * torch.randn(n, 16, 8, generator=g, dtype=torch.float64)
    plain_start = torch.randn(n, 16, 8, generator=g, dtype=torch.float64) * (alpha**2 + sigma**2) ** 0.5
    rare = {}
    for name, start in (("true", true_start), ("plain", plain_start)):
        x = UniPC(steps=60).sample(model, start.shape, dtype=torch.float64, start=start)
        rare[name] = mix.responsibilities(x)[:, 1].mean().item()
    se = math.sqrt(0.1 * 0.9 / n)
    assert abs(rare["true"] - 0.1) < 3 * se
    assert rare["plain"] - 0.1 > 5 * se
