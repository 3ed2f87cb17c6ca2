"""Every paper experiment runs end to end at a few steps (so configs and code cannot rot) and
writes its CSV, summary and figures; the training-free theory is checked against its bound."""

import csv
import json

import pytest

from stdiff.paper import (
    EXPERIMENTS,
    attention,
    conditional,
    dit_vs_unet,
    moving_ball,
    regimes,
    sample_complexity,
    theory,
)
from stdiff.paper.__main__ import main

FAST = ["--diagnostics.num_samples=150", "--model.sampler.init_args.steps=2", "--data.init_args.num_val=32"]
TINY = {
    "theory": {"frames": 8, "points": 2, "steps": 30, "samples": 8, "truncation_frames": [8, 16]},
    "sample_complexity": {**sample_complexity.CPU, "settings": ["PE nu=2.0 l=8.0"], "n": [100, 300], "seeds": 1,
                          "steps": 3, "overrides": [*sample_complexity.CPU["overrides"], *FAST]},
    "attention": {**attention.CPU, "kernels": ["generalized Cauchy"], "steps": 3, "overrides": [*attention.CPU["overrides"], *FAST]},
    "dit_vs_unet": {**dit_vs_unet.CPU, "frames": [8], "samples": 40, "steps": 3, "overrides": [*dit_vs_unet.CPU["overrides"], *FAST]},
    "moving_ball": {**moving_ball.CPU, "samples": 4, "steps": 3,
                    "overrides": [*moving_ball.CPU["overrides"], "--model.sampler.init_args.steps=2", "--model.denoiser.init_args.backbone.init_args.depth=1"]},
    "conditional": {**conditional.CPU, "cases": 3, "samples": 6, "steps": 3, "overrides": FAST},
    "regimes": {**regimes.CPU, "seeds": 1, "samples": 8, "steps": 3, "overrides": FAST},
}  # fmt: skip
FIGURES = {
    "theory": ["theory.png"],
    "sample_complexity": ["sample_complexity.png"],
    "attention": ["attention_vs_kernel.png"],
    "dit_vs_unet": ["dit_vs_unet.png"],
    "moving_ball": ["trajectory_and_attention.png", "frames.png"],
    "conditional": ["conditional.png", "fan_forecast.png", "fan_interpolation.png", "fan_imputation.png"],
    "regimes": ["regimes_attention.png"],
}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_and_writes_csv_and_figures(tmp_path, monkeypatch, name):
    module = {"theory": theory, "sample_complexity": sample_complexity, "attention": attention,
              "dit_vs_unet": dit_vs_unet, "moving_ball": moving_ball, "conditional": conditional,
              "regimes": regimes}[name]  # fmt: skip
    monkeypatch.setattr(module, "CPU", TINY[name])
    main([name, "--root", str(tmp_path)])
    (out,) = (tmp_path / "paper" / name).glob("version_*")
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert rows
    for figure in FIGURES[name]:
        assert (out / figure).stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == name and summary["wall_time_s"] > 0
    if name == "theory":  # gradient descent on the score's quadratic never beats its bound
        for t in theory.TIMES:
            gd = summary[f"gd_t{t}"]
            assert gd["measured_rate"] <= gd["bound_rate"] + 1e-9
        unrolled = [r for r in rows if r["part"] == "unrolled_gd"]
        assert all(float(r["rel_error"]) <= float(r["bound"]) * 1.0001 + 1e-12 for r in unrolled)
        truncation = [r for r in rows if r["part"] == "truncation"]
        assert all(float(r["rel_error"]) < 1e-20 for r in truncation if int(r["J"]) == int(r["T"]) - 1)
