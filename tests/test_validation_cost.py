"""What validations cost a fit: exactly one at the end, sampling at the run's precision through the
compiled model, each validation's seconds by part and the fit's share in the summary."""

import json
import warnings

import pytest
import torch
from conftest import QUICKSTART
from lightning.pytorch.loops import evaluation_loop

from stdiff.callbacks import GPDiagnostics
from stdiff.cli import main
from stdiff.diffusion import Denoiser

TINY = ["--data.init_args.num_val=32", "--trainer.enable_progress_bar=false", "--diagnostics.num_samples=40",
        "--model.sampler.init_args.steps=2", "--diagnostics.figures=false"]  # fmt: skip


def fit(tmp_path, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["fit", "--config", str(QUICKSTART), *TINY, f"--trainer.default_root_dir={tmp_path}", *args])
    return json.loads((tmp_path / "lightning_logs" / "version_0" / "metrics.json").read_text())


@pytest.mark.parametrize(("max_steps", "interval", "sample_every"), [(20, 20, 6), (20, 10, 6), (20, 5, 2), (7, 5, 6),
                                                                     (3, 10, 6)])  # fmt: skip
def test_a_fit_validates_once_at_each_interval_and_once_at_its_end(tmp_path, monkeypatch, max_steps, interval,
                                                                  sample_every):  # fmt: skip
    runs, sampled = [], []
    run, samples = evaluation_loop._EvaluationLoop.run, GPDiagnostics._samples

    def counted_run(loop):
        if not loop.trainer.sanity_checking:
            runs.append(loop.trainer.global_step)
        return run(loop)

    def counted_samples(self, trainer, pl_module, stage):
        sampled.append(trainer.global_step)
        return samples(self, trainer, pl_module, stage)

    monkeypatch.setattr(evaluation_loop._EvaluationLoop, "run", counted_run)
    monkeypatch.setattr(GPDiagnostics, "_samples", counted_samples)
    fit(tmp_path, f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={interval}",
        f"--diagnostics.sample_every={sample_every}")  # fmt: skip
    expected = sorted({*range(interval, max_steps + 1, interval), max_steps})
    assert runs == expected  # the last step's validation once, whether or not it falls on the interval
    due = [s for i, s in enumerate(expected, 1) if i % sample_every == 0 or s == max_steps]
    assert sampled == due  # and its sampling once


def test_each_validation_reports_its_seconds_by_part_and_the_fit_its_share(tmp_path, capsys):
    m = fit(tmp_path, "--trainer.max_steps=10", "--trainer.val_check_interval=5", "--diagnostics.figures=true")["metrics"]
    parts = [m[f"val/seconds/{p}"] for p in ("sampling", "metrics", "figures", "batches")]
    assert all(p >= 0 for p in parts) and parts[0] > 0 and parts[2] > 0  # the last validation sampled, drew figures
    assert sum(parts) == pytest.approx(m["val/seconds"], rel=1e-6)
    assert m["val/seconds"] < m["fit/validation_seconds"] < m["fit/seconds"]  # two validations in the fit
    share = 100 * m["fit/validation_seconds"] / m["fit/seconds"]
    out = capsys.readouterr().out
    assert f"validations {m['fit/validation_seconds']:.3g} s of the fit's {m['fit/seconds']:.3g} s ({share:.0f} %)" in out


def test_diagnostics_sample_at_the_runs_precision_through_the_compiled_model(tmp_path, monkeypatch):
    seen = []
    forward = Denoiser.forward

    def recorded(self, x_t, t, **cond):
        if not torch.is_grad_enabled():  # the samplers' calls (no gradient), not the training step's
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return forward(self, x_t, t, **cond)

    compiled_calls = []

    def fake_compile(fn, *args, **kwargs):  # what nn.Module.compile hands to torch.compile: the module's call
        def call(*a, **k):
            compiled_calls.append(torch.is_grad_enabled())
            return fn(*a, **k)

        return call

    monkeypatch.setattr(Denoiser, "forward", recorded)
    monkeypatch.setattr(torch, "compile", fake_compile)
    fit(tmp_path, "--trainer.max_steps=3", "--trainer.precision=bf16-mixed", "--model.compile=true")
    assert seen and all(dtype == torch.bfloat16 for dtype in seen), seen  # every sampling step under bf16 autocast
    assert compiled_calls.count(False) >= len(seen)  # and through the compiled call


def test_float32_matmul_precision_is_a_run_option(tmp_path):
    before = torch.get_float32_matmul_precision()
    try:
        fit(tmp_path, "--trainer.max_steps=1", "--float32_matmul_precision=medium")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
