"""The committed sampler comparison (``stdiff/bench/results/diffusers_kl.csv``, written by
``python -m stdiff.bench diffusers_kl``) holds: stdiff's default reproduces its exact KLs, and the
table says where it is ahead of diffusers' best setting and where not; with diffusers installed,
diffusers' own rows reproduce too."""

import csv
import importlib.util
import math

import pytest
import torch

from stdiff.bench import RESULTS
from stdiff.bench.diffusers_kl import (
    BUDGETS,
    STDIFF_DEFAULT,
    diffusers_draw,
    diffusers_settings,
    exact_kl,
    problems,
    schedule,
    stdiff_draw,
)
from stdiff.diffusion import ExactDenoiser
from stdiff.metrics import gaussian_fit_kl, gaussian_fit_kl_floor
from stdiff.sampling import UniPC

with open(RESULTS / "diffusers_kl.csv") as _f:
    ROWS = list(csv.DictReader(_f))


def committed(problem: str, library: str, setting: str, budget: int) -> float:
    (row,) = [r for r in ROWS if (r["problem"], r["library"], r["setting"], int(r["budget"])) == (problem, library, setting, budget)]
    return float(row["exact_kl"])


def diffusers_best(problem: str, budget: int) -> dict:
    mine = [r for r in ROWS if r["problem"] == problem and r["library"] == "diffusers" and int(r["budget"]) == budget]
    return min(mine, key=lambda r: float(r["exact_kl"]))


@pytest.mark.parametrize("problem", sorted(problems()))
def test_the_default_sampler_reproduces_the_table_and_is_ahead_of_diffusers_best(problem):
    gp = problems()[problem]
    model = ExactDenoiser.from_gp(gp, schedule())
    for budget in BUDGETS:
        sampler = UniPC(steps=budget)  # what a user gets: nothing but the budget chosen
        got = exact_kl(stdiff_draw(sampler, model), gp)
        assert sampler.evaluations <= budget
        assert got == pytest.approx(committed(problem, "stdiff", STDIFF_DEFAULT, budget), rel=1e-6, abs=1e-12)
    ratios = [committed(problem, "stdiff", STDIFF_DEFAULT, b) / float(diffusers_best(problem, b)["exact_kl"]) for b in BUDGETS]
    said = "ahead of" if max(ratios) < 1 else "NOT ahead of"
    assert (f"stdiff's default is {said} diffusers' best setting at every budget here (largest ratio {max(ratios):.2g})"
            in (RESULTS / "diffusers_kl.md").read_text()), (problem, ratios)


def test_the_table_covers_every_diffusers_setting_at_every_budget():
    settings = diffusers_settings()
    for problem in problems():
        for budget in BUDGETS:
            have = {r["setting"] for r in ROWS if r["problem"] == problem and r["library"] == "diffusers"
                    and int(r["budget"]) == budget}  # fmt: skip
            assert have == set(settings), (problem, budget, set(settings) ^ have)
    # diffusers' network calls counted by the wrapper; UniPC's plan may spend fewer than its budget, never more
    wrong = [r for r in ROWS if int(r["evaluations"]) != int(r["budget"]) and not (
        r["library"] == "stdiff" and r["setting"].startswith("UniPC") and int(r["evaluations"]) < int(r["budget"]))]  # fmt: skip
    assert not wrong, wrong[:3]


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers not installed (pip install -e '.[bench]')")
@pytest.mark.parametrize("budget", [4, 8, 15, 50])
def test_diffusers_rows_reproduce(budget):
    """diffusers' defaults and its best setting at this budget, run again on sampler_kl.md's GP."""
    gp, sched = problems()["sampler_kl"], schedule()
    model = ExactDenoiser.from_gp(gp, sched)
    settings = diffusers_settings()
    for name in ("DPMSolverMultistep (defaults)", "UniPCMultistep (defaults)", diffusers_best("sampler_kl", budget)["setting"]):
        counter = [0]
        got = exact_kl(diffusers_draw(*settings[name], budget, model, sched, counter), gp)
        assert counter[0] == budget
        want = committed("sampler_kl", "diffusers", name, budget)
        assert (math.isinf(got) and math.isinf(want)) or got == pytest.approx(want, rel=1e-4), (name, got, want)


def test_pushforward_kl_agrees_with_monte_carlo():
    """The exact KL of a sampler's law and the Gaussian-fit KL of its samples (in excess of exact
    samples') measure the same thing: at 4 evaluations, where the KL is far above the noise."""
    gp = problems()["sampler_kl"]
    model = ExactDenoiser.from_gp(gp, schedule())
    draw = stdiff_draw(UniPC(steps=4, endpoint="ode", order=1), model)
    exact = exact_kl(draw, gp)
    n = 20_000
    z = torch.randn(n, *gp.sample_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mc = gaussian_fit_kl(draw(z), gp.mean, gp.covariance()) - gaussian_fit_kl_floor(gp, n, seed=1)
    assert exact > 0.2 and mc == pytest.approx(exact, rel=0.1), (exact, mc)


def test_the_benchmark_runs_by_name(tmp_path):
    """``python -m stdiff.bench diffusers_kl`` as documented, at one budget: stdiff's rows always;
    diffusers' and the written tables where diffusers is installed."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "stdiff.bench", "diffusers_kl", "--budgets", "4", "--n", "300",
                           "--out", str(tmp_path)], check=False, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stdiff UniPC (stdiff default)" in done.stdout
    if importlib.util.find_spec("diffusers") is None:
        assert "diffusers is not installed" in done.stdout and not list(tmp_path.iterdir())
    else:
        assert "ahead of diffusers' best setting at every budget" in (tmp_path / "diffusers_kl.md").read_text()


@pytest.mark.slow
def test_the_trained_model_benchmark_runs_on_a_fit(tmp_path):
    """``python -m stdiff.bench trained_sampler_kl <run>`` on a 5-step quickstart fit."""
    import subprocess
    import sys

    from conftest import QUICKSTART

    from stdiff.cli import main

    main(["fit", "--config", str(QUICKSTART), "--trainer.max_steps=5", "--trainer.enable_progress_bar=false",
          "--data.init_args.num_val=16", "--diagnostics.num_samples=16", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    done = subprocess.run([sys.executable, "-m", "stdiff.bench", "trained_sampler_kl", str(run), "--samples", "300",
                           "--budgets", "4", "8", "--out", str(tmp_path)], check=False, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "trained_sampler_kl.md").read_text()
    assert "| stdiff UniPC (default) |" in table
