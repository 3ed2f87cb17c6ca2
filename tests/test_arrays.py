"""Your own data: arrays on disk as training data (ArrayDataModule) and the separable Gaussian
fitted to them (stdiff.truth.fitting), on files the tests write."""

import json
import warnings
import zipfile

import numpy as np
import pytest
import torch
from conftest import QUICKSTART

from stdiff.cli import StdiffCLI, main
from stdiff.data import ArrayDataModule, MovingBall
from stdiff.data.files import ArrayFileError
from stdiff.kernels import RBF, PoweredExponential
from stdiff.truth import KroneckerGP


def gp_file(path, n=6, frames=400, seed=0):
    gp = KroneckerGP(PoweredExponential(5.0, 1.0), RBF(1.5), frames=frames, space_shape=(4,), mean=2.0)
    x = 3.0 * gp.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    np.save(path, x.astype(np.float32))
    return x


def test_windows_come_from_disjoint_time_segments_and_statistics_from_training_only(tmp_path):
    x = gp_file(tmp_path / "a.npy")
    x[:, 330:] += 100.0  # a shift in the validation and test frames must not reach the statistics
    np.save(tmp_path / "a.npy", x.astype(np.float32))
    dm = ArrayDataModule(str(tmp_path / "a.npy"), frames=16, stride=8, split=[0.8, 0.1, 0.1])
    spans = {k: {(int(n), s) for _, n, s in v} for k, v in dm.index.items()}
    train_end = max(s + 16 for _, s in spans["train"])
    assert train_end <= 320 <= min(s for _, s in spans["val"]) and max(s + 16 for _, s in spans["val"]) <= 360
    assert min(s for _, s in spans["test"]) >= 360 and len(spans["train"]) == 6 * 39
    assert (dm.mean - 6.0).abs().max() < 2.0 and (dm.std - 3.0).abs().max() < 1.0  # mean 6, sd 3, not the shift
    window = dm.training_set()[0]
    np.testing.assert_allclose(dm.denormalize(window).numpy(), x[0, :16], rtol=1e-5, atol=1e-4)


def test_npz_members_are_read_in_place_and_compressed_ones_refused(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 80, 3)).astype(np.float32)
    np.savez(tmp_path / "plain.npz", series=x, other=x[:1])
    dm = ArrayDataModule(str(tmp_path / "plain.npz"), frames=8, key="series")
    np.testing.assert_allclose(dm.denormalize(dm.training_set()[1]).numpy(), x[0, 8:16], rtol=1e-5, atol=1e-5)
    np.savez_compressed(tmp_path / "packed.npz", series=x)
    with pytest.raises(ArrayFileError, match=r"packed.npz: array 'series' is compressed"):
        ArrayDataModule(str(tmp_path / "packed.npz"), frames=8)
    assert zipfile.is_zipfile(tmp_path / "plain.npz")


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: np.zeros((2, 3, 4, 5, 6), np.float32), r"bad.npy: has 5 axes \(2, 3, 4, 5, 6\); expected"),
        (lambda: np.zeros((2, 20, 4), np.float32), (r"bad.npy: too few frames for windows of T=16: its 20 frames give a "
         r"validation segment of 2 .*Give series of at least 158 frames, data.init_args.frames=2 or fewer")),
        (lambda: np.where(np.arange(400)[None, :, None] < 16, np.nan, 1.0).repeat(4, 2).astype(np.float32),
         r"bad.npy: series 0, frames 0:16 are all missing \(NaN\)"),
        (lambda: np.array([["a"]]), r"bad.npy: not a readable .npy array|bad.npy: holds <U1 values"),
    ],
    ids=["wrong ndim", "too few frames", "all-NaN window", "not numbers"],
)  # fmt: skip
def test_bad_files_get_one_line_naming_the_file(tmp_path, make, message):
    np.save(tmp_path / "bad.npy", make())
    with pytest.raises(ArrayFileError, match=message) as err:
        ArrayDataModule(str(tmp_path / "bad.npy"), frames=16)
    assert "\n" not in str(err.value)


def test_the_shortest_series_the_error_names_is_the_shortest_that_works(tmp_path):
    for total, works in ((157, False), (158, True)):
        np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, total, 4)).astype(np.float32))
        if works:
            with pytest.warns(UserWarning, match="metrics on so few are noise"):
                ArrayDataModule(str(tmp_path / "x.npy"), frames=16)
        else:
            with pytest.raises(ArrayFileError, match="at least 158 frames"):
                ArrayDataModule(str(tmp_path / "x.npy"), frames=16)


def test_files_with_other_spatial_shapes_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 64, 4), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((2, 64, 5), np.float32))
    with pytest.raises(ArrayFileError, match=r"the files disagree on the spatial shape .*a.npy: \(2, 64, 4\), .*b.npy"):
        ArrayDataModule([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], frames=16)


@pytest.mark.parametrize("method", ["kernels", "flip_flop"])
def test_the_reference_recovers_the_generating_gp(tmp_path, method):
    gp_file(tmp_path / "gp.npy", n=8, frames=2000)
    dm = ArrayDataModule(str(tmp_path / "gp.npy"), frames=16, normalize="none", reference=method,
                         reference_temporal=PoweredExponential(2.0, 1.0), reference_spatial=RBF(0.7))  # fmt: skip
    truth = dm.truth
    true = KroneckerGP(PoweredExponential(5.0, 1.0), RBF(1.5), frames=16, space_shape=(4,))
    # Γ ⊗ Σ fitted within 10 % (relative Frobenius) of the generating 9 · Γ ⊗ Σ; the mean 3 · 2 within 0.5
    fitted = torch.kron(truth.gamma, truth.sigma)
    assert (fitted - 9 * true.covariance()).norm() / (9 * true.covariance()).norm() < 0.1
    assert abs(truth.mean_value - 6.0) < 0.5
    if method == "kernels":  # lengthscales 5 and 1.5, within 10 %
        assert truth.temporal.lengthscale == pytest.approx(5.0, rel=0.1)
        assert truth.spatial.kernel.lengthscale == pytest.approx(1.5, rel=0.1)
    assert (
        dm.reference_report["held_out_log_likelihood_per_window"] < dm.reference_report["log_likelihood_per_window"] + 5
    )


ARGS = ["--config", str(QUICKSTART), "--data=ArrayDataModule", "--data.init_args.frames=16",
        "--model.denoiser.init_args.backbone.init_args.width=32", "--data.init_args.batch_size=8",
        "--trainer.val_check_interval=6", "--checkpoint.every_n_train_steps=6", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false"]  # fmt: skip


def last(root):
    (path,) = root.glob("lightning_logs/version_*/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_moving_ball_videos_on_disk_train_resume_exactly_and_predict_in_data_units(tmp_path):
    videos = MovingBall(frames=8, size=8).sample(12, torch.Generator().manual_seed(0)).reshape(3, 32, 8, 8)
    videos[0, 3, 2, 2] = float("nan")  # a missing pixel: out of the loss
    np.save(tmp_path / "ball.npy", (videos.numpy() * 10 + 5).astype(np.float32))
    data = [f"--data.init_args.paths={tmp_path / 'ball.npy'}", "--data.init_args.frames=8", "--data.init_args.stride=2",
            "--data.init_args.split=[0.5,0.25,0.25]", "--model.denoiser.init_args.backbone.init_args.patch_size=4"]  # fmt: skip
    main(["fit", *ARGS, *data, "--trainer.max_steps=12", f"--trainer.default_root_dir={tmp_path / 'a'}"])
    main(["fit", *ARGS, *data, "--trainer.max_steps=6", f"--trainer.default_root_dir={tmp_path / 'b'}"])
    main(
        [
            "fit",
            *ARGS,
            *data,
            "--trainer.max_steps=12",
            "--ckpt_path=last",
            f"--trainer.default_root_dir={tmp_path / 'b'}",
        ]
    )
    a, b = last(tmp_path / "a"), last(tmp_path / "b")
    assert a["global_step"] == b["global_step"] == 12 and all(torch.isfinite(v).all() for v in a["state_dict"].values())
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    stats = next(v for k, v in a.items() if k == "ArrayDataModule")  # the training split's statistics, kept
    assert set(stats) == {"mean", "std"} and stats["std"].shape == (8, 8)
    (ckpt,) = (tmp_path / "b").glob("lightning_logs/version_*/checkpoints/last.ckpt")
    main(["predict", *ARGS, *data, f"--ckpt_path={ckpt}", "--data.init_args.num_predict=6",
          "--model.sampler.init_args.steps=3", f"--trainer.default_root_dir={tmp_path / 'b'}"])  # fmt: skip
    (out,) = (tmp_path / "b").glob("lightning_logs/version_0/predict_0/samples.npy")
    samples = np.load(out)
    assert samples.shape == (6, 8, 8, 8) and np.isfinite(samples).all()
    assert (
        json.loads(next((tmp_path / "b").glob("lightning_logs/version_0/predict_0/samples.json")).read_text())["shape"][
            0
        ]
        == 6
    )


def test_predict_from_the_fitted_reference_writes_samples_in_the_files_units(tmp_path):
    gp_file(tmp_path / "gp.npy", n=8, frames=1000)  # mean 6, sd 3
    main(["predict", "--config", str(QUICKSTART), "--data=ArrayDataModule", f"--data.init_args.paths={tmp_path / 'gp.npy'}",
          "--data.init_args.frames=16", "--data.init_args.reference=flip_flop", "--model.denoiser=ExactDenoiser",
          "--data.init_args.num_predict=400", "--data.init_args.batch_size=200", "--model.sampler.init_args.steps=50",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    samples = np.load(next(tmp_path.glob("lightning_logs/exact_predict_*/samples.npy")))
    assert samples.shape == (400, 16, 4)
    assert abs(samples.mean() - 6.0) < 1.0 and abs(samples.std() - 3.0) < 0.5  # not the model's standard units


def test_zarr_through_xarray(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("zarr")
    x = np.random.default_rng(1).standard_normal((2, 80, 3)).astype(np.float32)
    xr.Dataset({"field": (("series", "time", "point"), x)}).to_zarr(tmp_path / "f.zarr")
    dm = ArrayDataModule(str(tmp_path / "f.zarr"), frames=8, normalize="none")
    np.testing.assert_allclose(dm.training_set()[9].numpy(), x[1, 8:16], rtol=1e-6)  # 8 windows a series


def test_conditional_scores_on_held_out_windows_against_the_fitted_reference(tmp_path):
    """With a reference and a task, `stdiff test` observes held-out windows in part and scores the
    model's conditional samples beside the fitted Gaussian's posterior (here the model is that
    Gaussian itself, so its CRPS must sit at the reference's)."""
    gp_file(tmp_path / "gp.npy", n=8, frames=1000)
    main(["test", "--config", str(QUICKSTART), "--data=ArrayDataModule", f"--data.init_args.paths={tmp_path / 'gp.npy'}",
          "--data.init_args.frames=16", "--data.init_args.reference=flip_flop", "--data.init_args.task=Forecast",
          "--data.init_args.task.init_args.context=8", "--model.denoiser=ExactDenoiser", "--model.conditioning=Replacement",
          "--model.conditioning.init_args.resample=3", "--diagnostics.conditional_cases=16",
          "--diagnostics.conditional_samples=32", "--diagnostics.num_samples=200", "--model.sampler=DPMSolver",
          "--model.sampler.init_args.steps=50", "--diagnostics.conditional_estimator=fair", "--data.init_args.num_val=64",
          "--likelihood.steps=50", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    # DPMSolver, with which the bound below was set (1.127); replacement's resampling with UniPC gives 1.151 here
    (path,) = tmp_path.glob("lightning_logs/exact_*/metrics.json")
    written = json.loads(path.read_text())
    metrics = written["metrics"]
    assert written["conditional_estimator"] == "fair"  # which CRPS / energy-score estimator the numbers use
    assert metrics["test/conditional/Forecast/cases"] == 16
    assert 0.9 < metrics["test/conditional/Forecast/crps_ratio"] < 1.15
    # the held-out likelihood beside the fitted reference's (the model is that reference: the same)
    assert "test/likelihood/kl_true" not in metrics  # no truth, only a fit
    assert abs(metrics["test/likelihood/nll_excess"]) < 0.01, metrics["test/likelihood/nll_excess"]
    assert metrics["test/likelihood/nll"] == pytest.approx(
        metrics["test/likelihood/nll_reference"] + metrics["test/likelihood/nll_excess"]
    )


def missing_file(path, fraction=0.036, **kwargs):
    """A GP file where ``fraction`` of the entries are missing at random: every window has a gap."""
    x = gp_file(path, **kwargs)
    x[np.random.default_rng(7).random(x.shape) < fraction] = np.nan
    np.save(path, x.astype(np.float32))
    return x


def test_fortran_order_files_from_pandas_read_the_same_windows(tmp_path):
    x = np.random.default_rng(2).standard_normal((300, 5)).astype(np.float32)  # one series (T_total, S)
    np.save(tmp_path / "c.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))  # what np.save(df.to_numpy()) writes for a DataFrame
    assert np.load(tmp_path / "f.npy").flags.f_contiguous
    c, f = (ArrayDataModule(str(tmp_path / n), frames=8, normalize="none") for n in ("c.npy", "f.npy"))
    for i in (0, 7, len(c.training_set()) - 1):
        np.testing.assert_array_equal(c.training_set()[i].numpy(), f.training_set()[i].numpy())
    np.save(tmp_path / "f3.npy", np.asfortranarray(np.stack([x, 2 * x])))
    f3 = ArrayDataModule(str(tmp_path / "f3.npy"), frames=8, normalize="none")
    np.testing.assert_array_equal(f3.training_set()[len(f3.training_set()) // 2].numpy(), 2 * x[:8])


def test_the_reference_fits_windows_that_all_have_missing_values(tmp_path):
    """Every training window has a gap (15 % missing): the fit uses the observed entries (EM)."""
    missing_file(tmp_path / "gp.npy", fraction=0.15, frames=600)
    dm = ArrayDataModule(str(tmp_path / "gp.npy"), frames=16, normalize="none", reference="kernels",
                         reference_temporal=PoweredExponential(2.0, 1.0), reference_spatial=RBF(0.7))  # fmt: skip
    windows = torch.stack([dm.training_set()[i] for i in range(len(dm.training_set()))])
    assert windows.flatten(1).isnan().any(1).all()  # no complete window at all
    truth = dm.truth
    assert dm.reference_report["converged"] and dm.reference_report["em_iterations"] > 0
    assert truth.temporal.lengthscale == pytest.approx(5.0, rel=0.15)
    assert truth.spatial.kernel.lengthscale == pytest.approx(1.5, rel=0.15)
    assert truth.spatial.scale == pytest.approx(9.0, rel=0.2)  # the file's variance (sd 3)


def test_station_coordinates_reach_the_reference_and_bad_ones_are_refused(tmp_path):
    gp_file(tmp_path / "gp.npy")
    coords = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    np.savetxt(tmp_path / "stations.csv", coords, delimiter=",")
    dm = ArrayDataModule(str(tmp_path / "gp.npy"), frames=16, reference="kernels", reference_nugget=True,
                         coordinates=str(tmp_path / "stations.csv"))  # fmt: skip
    assert torch.equal(dm.truth.coordinates, torch.from_numpy(coords))
    assert torch.allclose(dm.truth.sigma, dm.truth.spatial(torch.from_numpy(coords)))
    assert dm.reference_report["nugget"] > 0
    with pytest.raises(ArrayFileError, match=r"coordinates: .*has shape \(3, 2\); expected one row per spatial point, \(4, k\)"):
        ArrayDataModule(str(tmp_path / "gp.npy"), frames=16, coordinates=coords[:3].tolist())
    with pytest.raises(ArrayFileError, match=r"coordinates: .*nope.csv: no such file"):
        ArrayDataModule(str(tmp_path / "gp.npy"), frames=16, coordinates=str(tmp_path / "nope.csv"))


def test_a_split_with_few_held_out_windows_warns(tmp_path):
    gp_file(tmp_path / "gp.npy", n=1, frames=200)
    with pytest.warns(UserWarning, match=r"leaves 1 test window\(s\) of T=16: metrics on so few are noise"):
        ArrayDataModule(str(tmp_path / "gp.npy"), frames=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ArrayDataModule(str(tmp_path / "gp.npy"), frames=16, stride=2, split=[0.6, 0.2, 0.2])


def test_switching_the_quickstart_to_array_data_does_not_keep_its_kernels(tmp_path):
    gp_file(tmp_path / "gp.npy")
    cli = StdiffCLI(args=["--config", str(QUICKSTART), "--data=ArrayDataModule", f"--data.init_args.paths={tmp_path / 'gp.npy'}",
                          "--data.init_args.frames=16", "--data.init_args.reference=kernels"], run=False)  # fmt: skip
    assert isinstance(cli.datamodule, ArrayDataModule)
    assert cli.datamodule.temporal is None and cli.datamodule.spatial is None  # the fit's defaults, not the quickstart's


def test_train_stride_cuts_training_windows_at_every_offset(tmp_path):
    gp_file(tmp_path / "gp.npy", n=2)
    dm = ArrayDataModule(str(tmp_path / "gp.npy"), frames=16, train_stride=1)
    assert len(dm.index["train"]) == 2 * (320 - 16 + 1) and len(dm.index["test"]) == 2 * 2  # held-out: stride 16


def test_conditional_test_and_predict_with_missing_values(tmp_path):
    """3.6 % missing everywhere: `stdiff test` conditions each held-out window on what it observes
    and scores only really observed entries (the model is the fitted Gaussian: ratio ≈ 1); predict
    on the test windows records the normalisation and the windows it drew from."""
    missing_file(tmp_path / "gp.npy", n=8, frames=1000)
    common = ["--config", str(QUICKSTART), "--data=ArrayDataModule", f"--data.init_args.paths={tmp_path / 'gp.npy'}",
              "--data.init_args.frames=16", "--data.init_args.reference=kernels", "--data.init_args.task=Forecast",
              "--data.init_args.task.init_args.context=8", "--model.denoiser=ExactDenoiser",
              "--model.conditioning=Replacement", "--model.sampler.init_args.steps=30", "--data.init_args.num_val=64",
              "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    main(["test", *common, "--diagnostics.conditional_cases=16", "--diagnostics.conditional_samples=32",
          "--diagnostics.num_samples=200", "--likelihood.steps=30"])  # fmt: skip
    (path,) = tmp_path.glob("lightning_logs/exact_test_*/metrics.json")
    metrics = json.loads(path.read_text())["metrics"]
    prefix = "test/conditional/Forecast"
    assert metrics[f"{prefix}/cases"] == 16 and 0.85 < metrics[f"{prefix}/crps_ratio"] < 1.2
    assert f"{prefix}/crps_reference" in metrics and f"{prefix}/crps_exact" not in metrics  # a fit, not the truth
    assert metrics[f"{prefix}/scored"] < 16 * 8 * 4  # the missing held-out entries were not scored
    main(["predict", *common, "--data.init_args.observed=test", "--data.init_args.num_predict=4"])
    meta = json.loads(next(tmp_path.glob("lightning_logs/exact_predict_*/samples.json")).read_text())
    samples = np.load(next(tmp_path.glob("lightning_logs/exact_predict_*/samples.npy")))
    rows = meta["data"]["windows"]["rows"]
    assert samples.shape == (len(rows), 4, 16, 4) and meta["data"]["normalize"] == "point"
    assert len(meta["data"]["mean"]) == 4 and rows[0][2] >= 900  # test windows: the last 10 % of the frames


def test_a_bad_value_is_named_by_its_index_in_the_file(tmp_path):
    """One series ``(T_total, S)``: the index has no series axis; ``(N, T_total, S)``: it has one.
    Validation and test windows are checked at construction too, not when first read."""
    one = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    one[190, 3] = np.inf  # in the test segment
    np.save(tmp_path / "one.npy", one)
    with pytest.raises(ArrayFileError, match=r"one.npy: entry \[190, 3\] is infinite"):
        ArrayDataModule(str(tmp_path / "one.npy"), frames=8)
    many = np.stack([np.nan_to_num(one, posinf=0.0)] * 3)
    many[2, 170, 1] = 3e19  # in the validation segment
    np.save(tmp_path / "many.npy", many)
    with pytest.raises(ArrayFileError, match=r"many.npy: entry \[2, 170, 1\] is 3e\+19: beyond 1.8e\+19"):
        ArrayDataModule(str(tmp_path / "many.npy"), frames=8)
    many[2, 170, 1] = np.nan  # missing, not bad
    np.save(tmp_path / "many.npy", many)
    assert ArrayDataModule(str(tmp_path / "many.npy"), frames=8).missing_values is False  # val NaN: not in training


def test_a_fit_reads_no_test_window_and_its_conditional_metrics_come_from_validation_windows(tmp_path, monkeypatch):
    gp_file(tmp_path / "gp.npy", n=4, frames=400)
    read = []
    original = ArrayDataModule.evaluation_samples

    def recording(self, stage):
        read.append(stage)
        return original(self, stage)

    monkeypatch.setattr(ArrayDataModule, "evaluation_samples", recording)
    main(["fit", *ARGS, f"--data.init_args.paths={tmp_path / 'gp.npy'}", "--data.init_args.reference=kernels",
          "--data.init_args.task=Forecast", "--data.init_args.task.init_args.context=8", "--model.conditioning=Replacement",
          "--trainer.max_steps=6", "--diagnostics.num_samples=64", "--model.sampler.init_args.steps=4",
          "--diagnostics.conditional_cases=4", "--diagnostics.conditional_samples=4", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert "test" not in read and "val" in read  # the test split stays unseen until `stdiff test`
    (path,) = tmp_path.glob("lightning_logs/version_0/metrics.json")
    assert json.loads(path.read_text())["metrics"]["val/conditional/Forecast/cases"] == 4
    dm = ArrayDataModule(str(tmp_path / "gp.npy"), frames=16)
    assert torch.equal(dm.conditional_cases(3, torch.Generator(), "val"), dm.evaluation_samples("val")[:3])
    assert torch.equal(dm.conditional_cases(3, torch.Generator(), "test"), dm.evaluation_samples("test")[:3])
