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


def test_diagnostics_and_predict_sample_at_the_runs_precision_through_the_compiled_model(tmp_path, monkeypatch):
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
    seen.clear()
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["predict", "--config", str(QUICKSTART), *TINY, f"--trainer.default_root_dir={tmp_path}",
              "--trainer.precision=bf16-mixed", "--model.compile=true", f"--ckpt_path={ckpt}",
              "--data.init_args.num_predict=4"])  # fmt: skip
    assert seen and all(dtype == torch.bfloat16 for dtype in seen), seen  # predict too (Lightning's predict_step)


def test_float32_matmul_precision_is_a_run_option(tmp_path):
    before = torch.get_float32_matmul_precision()
    try:
        fit(tmp_path, "--trainer.max_steps=1", "--float32_matmul_precision=medium")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_time_to_truth_checks_on_a_geometric_grid_and_reports_training_time(tmp_path):
    from stdiff.bench.time_to_truth import grid
    from stdiff.bench.time_to_truth import main as time_to_truth

    assert grid(3000, 6) == (93, [93, 186, 372, 744, 1488, 3000])
    result = time_to_truth(["--config", str(QUICKSTART), "--trainer.max_steps=8", "--diagnostics.num_samples=600",
                            "--model.sampler.init_args.steps=2", "--data.init_args.num_val=32", "--checks=2",
                            "--stop-at=never", "--name=tiny", f"--out={tmp_path}", f"--root={tmp_path / 'runs'}"])  # fmt: skip
    checks = result["checks"]
    assert [c["step"] for c in checks] == result["grid"] == [4, 8]
    assert all(0 < c["training_s"] < c["wall_s"] for c in checks)  # validations left out of the training time
    assert checks[0]["training_s"] < checks[1]["training_s"]
    assert all(c["verdict"] == "not" and c["kl_excess"] > c["close_below"] for c in checks)  # 8 steps: far off
    assert result["first"] == {"close": None, "indistinguishable": None}
    assert "first *close*: not reached" in (tmp_path / "tiny.md").read_text()
    assert (tmp_path / "tiny.png").stat().st_size > 0 and (tmp_path / "tiny.log").stat().st_size > 0


@pytest.mark.parametrize(("kl", "stop_at", "stops"), [(0.1, "indistinguishable", True), (1.0, "indistinguishable", False),
                                                      (1.0, "close", True), (0.1, "never", False)])  # fmt: skip
def test_the_verdict_recorder_stops_at_the_first_verdict_asked_for(tmp_path, kl, stop_at, stops):
    from types import SimpleNamespace

    from stdiff.bench.time_to_truth import VerdictRecorder

    diagnostics = GPDiagnostics(num_samples=2000)
    diagnostics.truth, diagnostics.latest = SimpleNamespace(dim=256), {"val/samples/kl_excess": kl}
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), callbacks=[diagnostics],
                              log_dir=str(tmp_path), default_root_dir=str(tmp_path), global_step=10,
                              is_global_zero=True, should_stop=False)  # fmt: skip
    recorder = VerdictRecorder(stop_at)
    recorder.on_fit_start(trainer, None)
    recorder.on_validation_end(trainer, None)
    assert trainer.should_stop is stops  # noise 0.067 at d = 256, n = 2000: 0.1 is within 2 ×; 1.0 is close
    assert json.loads((tmp_path / "time_to_truth.jsonl").read_text())["kl_excess"] == kl


def test_the_throughput_callback_reports_its_last_window_at_the_end_of_training(tmp_path, capsys):
    m = fit(tmp_path, "--trainer.max_steps=12", "--trainer.callbacks+=stdiff.callbacks.Throughput",
            "--trainer.callbacks.window_size=5")["metrics"]  # fmt: skip
    out = capsys.readouterr().out
    tokens = m["train/device/items_per_sec"]
    assert tokens == pytest.approx(32 * m["train/device/samples_per_sec"])  # 32 frames, one token each
    assert f"throughput over the last 5 steps: {m['train/device/samples_per_sec']:.4g} samples/s, {tokens:.4g} " \
           "tokens/s, MFU unknown for this device" in out  # fmt: skip


def test_the_speed_benchmarks_fit_section_sets_a_real_fit_beside_the_plain_loop():
    from stdiff.bench.speed import main as speed

    row = speed(["--config", str(QUICKSTART), "--sections", "fit", "--fit-steps", "12", "--repeats", "1"])["fit"]
    assert row["precision"] == "32-true" and row["compile"] is False and row["steps"] == 12
    assert row["fit_tokens_per_s"] > 0 and row["plain_tokens_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["fit_tokens_per_s"] / row["plain_tokens_per_s"])


def test_gpu_check_fits_nine_minutes_and_its_stages_run_here_at_toy_size(tmp_path):
    """Each stage of gpu_check.sh, as written (configs, sections, flags), on the CPU with a toy model:
    the device run, when it comes, should need no fixing. The GPU tests' stage is the GPU suite."""
    import re
    import shlex
    import subprocess
    import sys

    from conftest import ROOT

    script = (ROOT / "stdiff" / "bench" / "gpu_check.sh").read_text().replace("\\\n", " ")
    stages = [shlex.split(line)[1:] for line in script.splitlines() if line.startswith("stage ")]
    assert sum(int(limit) for _, limit, *_ in stages) <= 540 - 10  # nine minutes, the start included
    gpu = re.search(r'^GPU="(.*)"$', script, re.MULTILINE).group(1).split()
    toy = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--data.init_args.generate_on=cpu",
           "--model.compile=false", "--model.denoiser.init_args.backbone.init_args.width=16",
           "--model.denoiser.init_args.backbone.init_args.depth=1", "--model.denoiser.init_args.backbone.init_args.heads=2",
           "--data.init_args.batch_size=4", "--data.init_args.num_val=8", "--trainer.max_steps=4",
           "--data.init_args.frames=8", "--data.init_args.space_shape=[8]", "--diagnostics.num_samples=200",
           "--model.sampler.init_args.steps=1"]  # fmt: skip
    own = {"speed": ["--fit-steps=8"], "time_to_truth": ["--checks=2"]}  # the benchmarks' own, shortened
    ran = []
    for name, _, *cmd in stages:
        if "pytest" in cmd:
            continue
        args = [a for c in cmd for a in (gpu if c == "$GPU" else [c.replace("$OUT", str(tmp_path))])]
        args = [sys.executable if a == "python3" else a for a in args] + toy + own[args[3]]
        out = subprocess.run(args, check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, f"stage {name}: {' '.join(args)}\n{out.stdout[-2000:]}{out.stderr[-3000:]}"
        ran.append(name)
    assert ran == ["dit_b", "time_to_truth"]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["dit_b.json", "time_to_truth_gpu.json", "time_to_truth_gpu.log", "time_to_truth_gpu.md",
                       "time_to_truth_gpu.png"]  # fmt: skip
    assert len(written) + 2 <= 8  # with gpu_check.md and gpu_check.log: what a device returns


def test_a_short_fit_whose_final_sampling_outweighs_its_training_says_how_to_make_it_cheaper():
    """[S] 6: a 50-step smoke run of the quickstart spends most of its time drawing 2000 samples."""
    from stdiff.callbacks import GPDiagnostics

    diagnostics = GPDiagnostics(num_samples=2000)
    note = diagnostics.sampling_note(50, 64, 50)
    assert "draws diagnostics.num_samples=2000 samples with 50 sampler steps: about 10× the" in note
    assert "--diagnostics.num_samples" in note and "--model.sampler.init_args.steps" in note
    assert diagnostics.sampling_note(3000, 64, 50) is None  # the quickstart itself: training dominates
    assert GPDiagnostics(num_samples=2000, sample_every=0).sampling_note(50, 64, 50) is None
