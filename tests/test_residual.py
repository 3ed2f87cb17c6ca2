"""ResidualDenoiser: a Gaussian prior's exact (conditional) denoiser plus a learned correction,
held to oracles: the dense joint-Gaussian posterior, the prior itself at initialisation (its
samples, likelihood and conditional scores), and data the prior cannot express."""

import functools
import json
import math

import numpy as np
import pytest
import torch
from conftest import FEW_SAMPLES, QUICKSTART

from stdiff.cli import main
from stdiff.conditioning import Trained
from stdiff.diffusion import PARAMETERIZATIONS, ExactDenoiser, ResidualDenoiser
from stdiff.kernels import RBF, Matern, PoweredExponential, Separable
from stdiff.metrics import conditional_report
from stdiff.nn import DiT
from stdiff.nn.conditional import ConditionalDiT
from stdiff.sampling import UniPC
from stdiff.schedules import OrnsteinUhlenbeck
from stdiff.truth import KroneckerGP

GP = KroneckerGP(Matern(3.0, 1.5), RBF(2.0), frames=8, space_shape=(4,), nugget=0.05, mean=0.3)
SCHEDULE = OrnsteinUhlenbeck(t_min=1e-3, t_max=10.0)


def dense_posterior_mean(gp, x0, x_t, mask, a, s):
    """E[x0 | x0[mask], x_t[~mask]] from the dense joint Gaussian of (x0, observations)."""
    k, d = gp.covariance(), gp.dim
    o, m = mask.reshape(-1), ~mask.reshape(-1)
    eye = torch.eye(d, dtype=torch.float64)
    a_obs = torch.cat([eye[o], a * eye[m]])  # observations = A x0 + noise
    noise = torch.block_diag(torch.zeros(int(o.sum()), int(o.sum()), dtype=torch.float64), s**2 * torch.eye(int(m.sum()), dtype=torch.float64))
    z = torch.cat([x0.reshape(-1)[o], x_t.reshape(-1)[m]]) - a_obs @ torch.full((d,), gp.mean_value, dtype=torch.float64)
    return gp.mean_value + k @ a_obs.T @ torch.linalg.solve(a_obs @ k @ a_obs.T + noise, z)


@pytest.mark.parametrize("gp", [GP, KroneckerGP(PoweredExponential(4.0, 1.0), RBF(1.0), frames=12, space_shape=(3,)),
                                KroneckerGP(Matern(8.0, 2.5), RBF(3.0), frames=10, space_shape=(5,), jitter="auto")],
                         ids=["nugget and mean", "quickstart's kernels", "ill-conditioned"])  # fmt: skip
def test_the_exact_denoiser_is_the_dense_posterior_mean(gp):
    g = torch.Generator().manual_seed(0)
    x0 = gp.sample(5, g, dtype=torch.float64)
    a = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.01], dtype=torch.float64)
    s = (1 - a**2).sqrt()
    x_t = a[:, None, None] * x0 + s[:, None, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    mask = torch.rand(x0.shape, generator=g) < 0.4
    conditional = gp.denoise(x_t, a, s, x0, mask)
    unconditional = gp.denoise(x_t, a, s)
    nothing = torch.zeros_like(mask)
    for i in range(5):
        want = dense_posterior_mean(gp, x0[i], x_t[i], mask[i], a[i].item(), s[i].item())
        scale = want.abs().max()
        assert (conditional[i].reshape(-1) - want).abs().max() < 1e-7 * scale
        assert torch.equal(conditional[i][mask[i]], x0[i][mask[i]])  # observed entries are known exactly
        want = dense_posterior_mean(gp, x0[i], x_t[i], nothing[i], a[i].item(), s[i].item())
        assert (unconditional[i].reshape(-1) - want).abs().max() < 1e-7 * scale


def residual(parameterization, conditional=False):
    backbone = functools.partial(ConditionalDiT if conditional else DiT, width=32, depth=1, heads=2)
    model = ResidualDenoiser(GP.sample_shape, backbone, SCHEDULE, parameterization)
    model.attach_truth(GP)
    return model


@pytest.mark.parametrize("parameterization", sorted(PARAMETERIZATIONS))
def test_at_initialisation_it_is_the_prior_and_training_moves_only_the_correction(parameterization):
    exact = ExactDenoiser.from_gp(GP, SCHEDULE)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(6, *GP.sample_shape, generator=g), torch.rand(6, generator=g) * 5 + 1e-3
    mask = torch.rand(x.shape, generator=g) < 0.5
    cond = {"observed": torch.where(mask, x, 0.0), "mask": mask}
    for model, kwargs in ((residual(parameterization), {}), (residual(parameterization, True), cond)):
        eps, prior = model.forward_parts(x, t, **kwargs)
        assert torch.equal(eps, prior) and torch.allclose(eps, exact(x, t, **kwargs), atol=1e-6)
        with torch.no_grad():
            model.backbone.final.linear.weight.normal_(0, 0.1)
        eps, prior = model.forward_parts(x, t, **kwargs)
        assert torch.equal(prior.float(), exact(x, t, **kwargs).float()) and (eps - prior).abs().max() > 1e-3


def test_at_initialisation_its_samples_and_conditional_scores_are_the_priors():
    exact, model = ExactDenoiser.from_gp(GP, SCHEDULE), residual("v", conditional=True)
    sampler = UniPC(steps=10)
    shape = (64, *GP.sample_shape)
    ours = sampler.sample(model, shape, torch.Generator().manual_seed(2))
    theirs = sampler.sample(exact, shape, torch.Generator().manual_seed(2))
    assert torch.allclose(ours, theirs, atol=1e-5)  # the same function: the same samples
    # conditional: the last 3 frames forecast from the first 5, 16 cases × 64 samples, against the exact posterior
    cases = GP.sample(16, torch.Generator().manual_seed(3))
    mask = torch.zeros(GP.sample_shape, dtype=torch.bool)
    mask[:5] = True
    observed = cases.repeat_interleave(64, 0)
    masks = mask.expand(len(observed), *GP.sample_shape)
    with torch.no_grad():
        drawn = Trained().sample(UniPC(steps=25), model, observed, masks, torch.Generator().manual_seed(4))
    report = conditional_report(GP, cases, mask, drawn.reshape(16, 64, *GP.sample_shape), seed=5)
    assert torch.equal(drawn.reshape(16, 64, *GP.sample_shape)[:, :, :5], cases[:, None, :5].expand(16, 64, 5, 4))
    assert abs(report["crps_ratio"] - 1) < 0.05, report["crps_ratio"]
    assert abs(report["coverage90"] - report["coverage90_exact"]) < 0.03


def gp_windows(path, transform=None, n=4, frames=400, seed=0):
    gp = KroneckerGP(Matern(3.0, 1.5), RBF(1.5), frames=frames, space_shape=(4,))
    x = gp.sample(n, torch.Generator().manual_seed(seed)).numpy()
    if transform is not None:
        x = transform(x)
    np.save(path, x.astype(np.float32))


ARRAY = ["--config", str(QUICKSTART), "--data=ArrayDataModule", "--data.init_args.frames=8", "--data.init_args.stride=4",
         "--data.init_args.reference=kernels", "--model.denoiser=ResidualDenoiser",
         "--model.denoiser.init_args.backbone.init_args.width=32", "--model.denoiser.init_args.backbone.init_args.depth=2",
         "--data.init_args.batch_size=32", "--data.init_args.num_val=64", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", *FEW_SAMPLES]  # fmt: skip


def test_its_prior_travels_in_the_checkpoint_and_predict_fits_no_reference(tmp_path, monkeypatch):
    gp_windows(tmp_path / "x.npy")
    data = f"--data.init_args.paths={tmp_path / 'x.npy'}"
    main(["fit", *ARRAY, data, "--trainer.max_steps=4", "--trainer.val_check_interval=4", f"--trainer.default_root_dir={tmp_path}"])
    (ckpt,) = tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    prior = torch.load(ckpt, weights_only=True)["stdiff_prior"]
    assert prior["gamma"].shape == (8, 8) and prior["sigma"].shape == (4, 4) and "Matern" in prior["description"]
    import stdiff.data.reference

    def refuse(*args, **kwargs):
        raise AssertionError("predict fitted the reference")

    monkeypatch.setattr(stdiff.data.reference, "fit_reference", refuse)
    for denoiser in ("ResidualDenoiser", "Denoiser"):  # neither needs the data's reference to sample
        root = tmp_path / denoiser
        if denoiser == "Denoiser":
            monkeypatch.undo()
            main(["fit", *ARRAY, data, "--model.denoiser=Denoiser", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                  f"--trainer.default_root_dir={root}"])  # fmt: skip
            monkeypatch.setattr(stdiff.data.reference, "fit_reference", refuse)
        else:
            root = tmp_path
        main(["predict", *ARRAY, data, f"--model.denoiser={denoiser}", "--ckpt_path=last", "--data.init_args.num_predict=8",
              f"--trainer.default_root_dir={root}"])  # fmt: skip
        (samples,) = root.glob("lightning_logs/version_0/predict_*/samples.npy")
        assert np.load(samples).shape == (8, 8, 4)


def test_untrained_its_likelihood_is_the_references(tmp_path):
    gp_windows(tmp_path / "x.npy")
    args = [*ARRAY, f"--data.init_args.paths={tmp_path / 'x.npy'}", f"--trainer.default_root_dir={tmp_path}",
            "--model.optimizer.init_args.lr=0"]  # fmt: skip
    main(["fit", *args, "--trainer.max_steps=2", "--trainer.val_check_interval=2"])
    main(["test", *args, "--ckpt_path=last"])
    main(["test", *args, "--model.denoiser=ExactDenoiser"])  # the fitted reference itself, through the same ODE
    ours, exact = (json.loads(next(tmp_path.glob(f"lightning_logs/{pattern}/metrics.json")).read_text())["metrics"]
                   for pattern in ("version_0/test_*", "exact_*"))  # fmt: skip
    assert ours["test/likelihood/nll"] == pytest.approx(exact["test/likelihood/nll"], abs=1e-6)
    # and the reference's closed-form density, within the estimate's standard error
    assert abs(ours["test/likelihood/nll_excess"]) < 2 * ours["test/likelihood/nll_se"]


def sparse(x):
    """A spike-and-slab field: the GP where a coin (one in four) shows, 0 elsewhere; no Gaussian is close."""
    return x * (np.random.default_rng(1).random(x.shape) < 0.25)


def test_it_improves_on_the_prior_where_the_data_is_not_gaussian(tmp_path):
    gp_windows(tmp_path / "x.npy", sparse, frames=800)
    main(["fit", *ARRAY, f"--data.init_args.paths={tmp_path / 'x.npy'}", "--data.init_args.stride=8",
          "--trainer.max_steps=500", "--trainer.val_check_interval=500",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    (path,) = tmp_path.glob("lightning_logs/version_0/metrics.json")
    metrics = json.loads(path.read_text())["metrics"]
    assert metrics["val/loss"] < 0.9 * metrics["val/prior_loss"], (metrics["val/loss"], metrics["val/prior_loss"])


def test_with_the_true_prior_the_correction_stays_small(tmp_path):
    main(["fit", "--config", str(QUICKSTART), "--model.denoiser=ResidualDenoiser", "--trainer.max_steps=100",
          "--trainer.val_check_interval=100", "--data.init_args.num_val=128", "--trainer.enable_progress_bar=false",
          *FEW_SAMPLES, f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    (path,) = tmp_path.glob("lightning_logs/version_0/metrics.json")
    metrics = json.loads(path.read_text())["metrics"]
    # the loss of the exact model is the floor: the correction can only add to it, and adds almost nothing
    assert metrics["val/loss"] == pytest.approx(metrics["val/prior_loss"], rel=0.01)
    assert metrics["val/correction"] < 0.1 * metrics["val/prior_loss"] ** 0.5


def test_data_without_a_gaussian_is_refused_before_anything_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(QUICKSTART), "--model.denoiser=ResidualDenoiser", "--data=stdiff.data.MovingBall",
              f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert done.value.code == 2
    assert "ResidualDenoiser needs data whose exact distribution is known" in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs").exists()
    with pytest.raises(ValueError, match="backbone_input must be 'noisy' or 'denoised'"):
        ResidualDenoiser(GP.sample_shape, backbone_input="clean")


@pytest.mark.slow
def test_a_conditional_residual_model_trains_on_own_windows_of_16384_values(tmp_path):
    """Own data with windows of T·S = 16 × 32 × 32 = 16,384 values (beyond the dense limit of
    4096): the fitted separable reference as prior, trained on scattered (Imputation: conjugate
    gradients) and whole-frame (Forecast: Kronecker) masks, validated against the reference's exact
    posterior. ~25 s on 2 cores."""
    gp = KroneckerGP(Matern(4.0, 0.5), Separable([Matern(6.0, 0.5), Matern(6.0, 0.5)]), 160, (32, 32))
    np.save(tmp_path / "x.npy", gp.sample(2, torch.Generator().manual_seed(0)).numpy().astype(np.float32))
    axis = "{class_path: Matern, init_args: {nu: 0.5}}"
    main(["fit", "--config", str(QUICKSTART), "--config", str(QUICKSTART.parent / "conditional" / "trained.yaml"),
          "--data=ArrayDataModule", f"--data.init_args.paths={tmp_path / 'x.npy'}", "--data.init_args.frames=16",
          "--data.init_args.stride=8", "--data.init_args.reference=kernels", "--data.init_args.reference_temporal=Matern",
          "--data.init_args.reference_spatial=Separable", f"--data.init_args.reference_spatial.init_args.kernels=[{axis}, {axis}]",
          "--model.denoiser=ResidualDenoiser", "--model.denoiser.init_args.backbone=ConditionalDiT",
          "--model.denoiser.init_args.backbone.init_args.patch_size=8", "--model.denoiser.init_args.backbone.init_args.width=32",
          "--model.denoiser.init_args.backbone.init_args.depth=1", "--data.init_args.batch_size=2",
          "--data.init_args.num_val=4", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
          "--diagnostics.num_samples=8", "--model.sampler.init_args.steps=4", "--trainer.enable_progress_bar=false",
          ("--model.mask.init_args.masks=[{class_path: Imputation, init_args: {missing: 0.5}}, "
          "{class_path: Forecast, init_args: {context: 8}}]"), "--data.init_args.task=Imputation",
          "--diagnostics.conditional_cases=4", "--diagnostics.conditional_samples=8",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    (path,) = tmp_path.glob("lightning_logs/version_0/metrics.json")
    metrics = json.loads(path.read_text())["metrics"]
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["val/conditional/Imputation/crps_ratio"])
    assert torch.load(next(tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt")),
                      weights_only=True)["stdiff_prior"]["sigma_axes"][0].shape == (32, 32)  # fmt: skip
