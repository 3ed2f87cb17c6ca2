"""The real CLI: the quickstart trains and writes its outputs, every shipped config instantiates,
and bad input exits with a message that names the problem (the battery: test_bad_inputs.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CONFIGS, FEW_SAMPLES, GPU_OVERLAYS, OVERLAYS, PAPER_OVERLAYS, QUICKSTART, ROOT

from stdiff.cli import StdiffCLI, main
from stdiff.data import GPDataModule
from stdiff.module import DiffusionModule

TINY = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--data.init_args.num_val=32",
    "--trainer.enable_progress_bar=false",
    "--diagnostics.figures=false",
    *FEW_SAMPLES,
]


def run_cli(args, cwd, timeout=240, env=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "stdiff", *args],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_quickstart_fit_writes_events_checkpoint_and_config(tmp_path):
    main(["fit", "--config", str(QUICKSTART), *TINY, f"--trainer.default_root_dir={tmp_path}"])
    run = tmp_path / "lightning_logs" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    assert sorted(p.name for p in run.glob("checkpoints/*.ckpt")) == ["best.ckpt", "last.ckpt"]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert (run / "config.yaml").read_text().startswith("# stdiff==")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    # The checkpoint rebuilds the model from its stored (plain) config.
    model = DiffusionModule.load_from_checkpoint(ckpt, weights_only=True)
    assert model.sample_shape == (32, 8)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    assert {"train/loss", "val/loss"} <= set(events.Tags()["scalars"])


GPU_SINGLE = ROOT / "configs" / "gpu" / "single.yaml"
CONFIG_ARGS = [[c] for c in CONFIGS] + [[QUICKSTART, o] for o in OVERLAYS] + [[GPU_SINGLE, o] for o in GPU_OVERLAYS]
CONFIG_ARGS += [[o.parents[1] / o.name, o] for o in PAPER_OVERLAYS]
# GPU presets are instantiated here on the CPU: the trainer is pointed at it, and the forward pass
# is not compiled (half a minute of inductor on the CPU; compiled runs have their own tests); all
# else is theirs.
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32",
          "--model.compile=false"]  # fmt: skip


@pytest.mark.parametrize("configs", CONFIG_ARGS, ids=[str(c[-1].relative_to(ROOT)) for c in CONFIG_ARGS])
def test_every_config_instantiates(configs):
    on_cpu = ON_CPU if any("gpu" in c.parts for c in configs) else []
    cli = StdiffCLI(args=[*(a for c in configs for a in ("--config", str(c))), *on_cpu], run=False)
    assert isinstance(cli.model, DiffusionModule)
    assert cli.model.sample_shape == cli.datamodule.sample_shape
    if isinstance(cli.datamodule, GPDataModule):
        x = cli.datamodule.truth.sample(2)
        assert cli.model(x, torch.zeros(2)).shape == x.shape


def test_lightning_tips_are_silenced_and_its_other_messages_kept():
    import logging

    from lightning.pytorch.utilities import rank_zero_info
    from lightning_utilities.core import rank_zero

    from stdiff.cli import silence_advertisements

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    rank_zero.log.addHandler(handler)
    level = rank_zero.log.level
    rank_zero.log.setLevel(logging.INFO)
    try:
        silence_advertisements()
        silence_advertisements()  # once is enough; twice adds nothing
        rank_zero_info("💡 Tip: For seamless cloud logging ... try installing [litlogger](https://pypi.org/project/litlogger/)")
        rank_zero_info("GPU available: False, used: False")
    finally:
        rank_zero.log.removeHandler(handler)
        rank_zero.log.setLevel(level)
    assert seen == ["GPU available: False, used: False"]


def test_the_error_meant_is_found_under_jsonargparse_wrappers():
    """Newer jsonargparse chains the constructor's error as the cause; 4.39 (the floor) chains only the
    Optional's "Expected a NoneType" and lists the real error inside the Union's message."""
    from stdiff.runs import innermost_message

    def chained(outer: str, inner: str) -> ValueError:
        try:
            try:
                raise ValueError(inner)
            except ValueError as err:
                raise ValueError(outer) from err
        except ValueError as err:
            return err

    real = "batch_size must be an integer >= 1, got -4"
    union = ("Does not validate against any of the Union subtypes\nSubtypes: [<class 'NoneType'>, <class 'X'>]\n"
             f"Errors:\n  - Expected a <class 'NoneType'>\n  - {real}\nGiven value type: <class 'N'>\nGiven value: N()")  # fmt: skip
    assert innermost_message(chained("Does not validate against any of the Union subtypes", real)) == real
    assert innermost_message(chained(union, "Expected a <class 'NoneType'>. Got value: N()")) == real
    try:
        try:
            raise ValueError("the magic string is not correct")  # numpy's, replaced by one naming the file
        except ValueError:
            raise ValueError("data.npy: not a .npy file") from None
    except ValueError as err:
        assert innermost_message(err) == "data.npy: not a .npy file"


def test_python_dash_m_and_help(tmp_path):
    out = run_cli(["fit", "--help"], tmp_path, timeout=120)
    assert out.returncode == 0 and "--data" in out.stdout


COMPOSITE = """
data:
  class_path: GPDataModule
  init_args:
    frames: 6
    space_shape: [3, 2]
    temporal:
      class_path: Sum
      init_args:
        kernels:
          - class_path: Scaled
            init_args: {kernel: {class_path: PoweredExponential, init_args: {lengthscale: 2.0, power: 1.5}}, scale: 2.0}
          - class_path: Product
            init_args:
              kernels:
                - {class_path: Periodic, init_args: {lengthscale: 0.5, period: 3.0}}
                - {class_path: stdiff.kernels.Matern, init_args: {nu: 2.5}}
    spatial: {class_path: White}
model:
  denoiser:
    class_path: Denoiser
    init_args: {backbone: {class_path: DiT, init_args: {width: 16, depth: 1, heads: 2}}}
"""


def test_composite_kernels_compose_from_yaml(tmp_path):
    from stdiff.kernels import Matern, Periodic, PoweredExponential, Product, Scaled, Sum, White

    path = tmp_path / "composite.yaml"
    path.write_text(COMPOSITE)
    cli = StdiffCLI(args=["--config", str(path)], run=False)
    gp = cli.datamodule.truth
    expected = Sum([Scaled(PoweredExponential(2.0, 1.5), 2.0), Product([Periodic(0.5, 3.0), Matern(nu=2.5)])])
    times = torch.arange(6.0)
    torch.testing.assert_close(gp.gamma, expected(times))
    assert isinstance(gp.spatial, White) and cli.model.sample_shape == (6, 3, 2)


def test_unknown_name_inside_a_composite_is_explained(tmp_path):
    path = tmp_path / "composite.yaml"
    path.write_text(COMPOSITE.replace("class_path: Periodic", "class_path: Periodik"))
    out = run_cli(["fit", "--config", str(path), f"--trainer.default_root_dir={tmp_path}"], tmp_path)
    assert out.returncode != 0
    assert "unknown kernel 'Periodik'. Did you mean 'Periodic'?" in out.stderr


def fit_tiny(tmp_path, *extra):
    main(["fit", "--config", str(QUICKSTART), *TINY, f"--trainer.default_root_dir={tmp_path}", *extra])
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    return ckpt


def test_validation_and_checkpoint_use_the_ema_weights(tmp_path):
    ckpt = fit_tiny(tmp_path)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "current_model_state" in state  # EMAWeightAveraging: state_dict holds the average
    key = "denoiser.backbone.blocks.0.attn.attn.qkv.weight"
    assert not torch.equal(state["state_dict"][key], state["current_model_state"][key])
    # The logged val/loss is the EMA model's: recompute it from the checkpoint's state_dict.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(ckpt.parents[1])).Reload().Scalars("val/loss")[-1].value
    model = DiffusionModule.load_from_checkpoint(ckpt, weights_only=True).eval()
    cli = StdiffCLI(args=["--config", str(QUICKSTART), "--data.init_args.num_val=32"], run=False)
    cli.datamodule.setup("validate")
    from stdiff.diffusion import denoising_loss

    total = 0.0
    with torch.no_grad():
        for i, batch in enumerate(cli.datamodule.val_dataloader()):
            x0, t, noise = model.evaluation_inputs(batch)
            total += denoising_loss(model, x0, t, noise).sum().item()
    assert total / 32 == pytest.approx(logged, rel=1e-5)


def test_predict_with_the_exact_model_needs_no_checkpoint(tmp_path):
    main(["predict", "--config", str(QUICKSTART), "--model.denoiser=ExactDenoiser", "--data.init_args.num_predict=70",
          "--data.init_args.batch_size=32", "--model.sampler=DDIM", "--model.sampler.init_args.steps=5",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    run = tmp_path / "lightning_logs" / "exact_predict_0"
    samples = np.load(run / "samples.npy")
    assert samples.shape == (70, 32, 8) and np.isfinite(samples).all() and 0.5 < samples.std() < 1.5  # drawn, not zeros
    meta = json.loads((run / "samples.json").read_text())
    assert (
        meta["denoiser"] == "ExactDenoiser"
        and meta["sampler"].startswith("DDIM(steps=5")
        and meta["checkpoint"] is None
    )
    assert (run / "config.yaml").exists()


def test_predict_from_a_checkpoint_writes_samples(tmp_path):
    ckpt = fit_tiny(tmp_path)
    main(["predict", "--config", str(QUICKSTART), f"--ckpt_path={ckpt}", "--data.init_args.num_predict=8",
          "--model.sampler.init_args.steps=3", "--sample_writer.format=pt", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    samples = torch.load(tmp_path / "lightning_logs" / "version_0" / "predict_0" / "samples.pt", weights_only=True)
    assert samples.shape == (8, 32, 8)
    # The sampler given here, not the one stored in the checkpoint's settings
    meta = json.loads((tmp_path / "lightning_logs" / "version_0" / "predict_0" / "samples.json").read_text())
    assert meta["sampler"].startswith("UniPC(steps=3")


def read_metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_validate_with_the_exact_model_has_zero_score_error(tmp_path):
    main(["validate", "--config", str(QUICKSTART), "--model.denoiser=ExactDenoiser", "--data.init_args.num_val=128",
          "--diagnostics.num_samples=600", "--model.sampler.init_args.steps=300", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    run = tmp_path / "lightning_logs" / "exact_validate_0"
    out = read_metrics(run)
    assert out["stage"] == "validate"
    m = out["metrics"]
    assert m["val/score_rel_error"] < 1e-10 and abs(m["val/excess_loss"]) < 1e-7
    # 600 samples in d = 256: the full-covariance KL is estimated, next to its floor
    assert {"val/samples/kl", "val/samples/kl_floor", "val/samples/w2_excess", "val/samples/ks_excess"} <= set(m)
    assert abs(m["val/samples/gamma_rel_frob_excess"]) < 0.05
    # Samples stop at t0, where the exact covariance is α²K + σ²I: the whitened norm is
    # (1/d) Σ (α²λ + σ²)/λ, far from 1 in K's smallest directions; the exact model reproduces it.
    cli = StdiffCLI(args=["--config", str(QUICKSTART)], run=False)
    gp, schedule = cli.datamodule.truth, cli.model.denoiser.schedule
    t0 = torch.tensor(schedule.t_min, dtype=torch.float64)
    lam = (gp.gamma_evals[:, None] * gp.sigma_evals[None, :]).reshape(-1)
    expected = ((schedule.alpha(t0) ** 2 * lam + schedule.sigma(t0) ** 2) / lam).mean().item()
    assert m["val/samples/whitened_norm"] == pytest.approx(expected, rel=0.03)
    assert m["val/samples/early_stopping_kl"] > 0
    figures = {p.name.split("_step")[0] for p in (run / "figures").glob("*.png")}
    assert {"val_covariances", "val_paths", "val_correlation_vs_lag", "val_score_error"} <= figures


def test_fit_and_test_write_diagnostics(tmp_path):
    ckpt = fit_tiny(tmp_path, "--diagnostics.sample_every=1", "--diagnostics.num_samples=64",
                    "--model.sampler.init_args.steps=4")  # fmt: skip
    fit = read_metrics(ckpt.parents[1])
    assert fit["stage"] == "fit" and fit["global_step"] == 4
    m = fit["metrics"]
    assert 0 < m["val/score_rel_error"] and "val/attention/pearson_best" in m
    assert "val/attention/random_init/pearson_best" in m
    assert any(k.endswith("/head0/pearson") for k in m)  # per layer and head in metrics.json
    assert "val/samples/gamma_kl_excess" in m and "val/samples/kl" not in m  # 64 samples: structured only
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(ckpt.parents[1])).Reload().Tags()["scalars"])
    assert {"val/score_rel_error", "val/excess_loss", "val/attention/pearson_best", "val/samples/ks_excess"} <= tags
    main(["test", "--config", str(QUICKSTART), f"--ckpt_path={ckpt}", "--data.init_args.num_val=64",
          "--diagnostics.num_samples=64", "--model.sampler.init_args.steps=4", "--trainer.enable_progress_bar=false",
          "--likelihood.num_samples=16", "--likelihood.steps=4", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    out = read_metrics(tmp_path / "lightning_logs" / "version_0" / "test_0")  # beside the run it tests
    assert out["stage"] == "test" and "test/score_rel_error" in out["metrics"] and "test/samples/ks" in out["metrics"]
    m = out["metrics"]  # the model's own likelihood, and the true KL of what it learned
    assert m["test/likelihood/samples"] == 16 and m["test/likelihood/evaluations"] == 9 + 5  # 4 steps and 2 (Richardson)
    assert m["test/likelihood/nll"] > 0 and m["test/likelihood/nll_se"] > 0
    assert m["test/likelihood/kl_true"] == pytest.approx(
        (m["test/likelihood/nll"] - m["test/likelihood/nll_truth"]) * 256, rel=1e-4
    )
    floor = m["test/likelihood/kl_true_floor"]  # the exact model's through the same (4) ODE steps
    assert m["test/likelihood/kl_true_excess"] == pytest.approx(m["test/likelihood/kl_true"] - floor)


@pytest.mark.slow  # 31 s; tests/test_scale.py runs a two-process DDP fit in the default suite
def test_two_process_validation_matches_one_process(tmp_path):
    """DDP on the CPU (the CLI in a subprocess, Lightning's own launcher): the loss, score error
    and attention metrics equal those of one process, since every sample carries its own noise
    and time and the metrics reduce across ranks."""
    ckpt = fit_tiny(tmp_path)
    args = ["validate", "--config", str(QUICKSTART), f"--ckpt_path={ckpt}", "--data.init_args.num_val=64",
            "--diagnostics.num_samples=64", "--diagnostics.figures=false", "--model.sampler.init_args.steps=3",
            "--trainer.enable_progress_bar=false", "--trainer.strategy=ddp", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    for devices in (1, 2):
        out = run_cli([*args, f"--trainer.devices={devices}"], tmp_path, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "💡 Tip" not in out.stdout + out.stderr and "litlogger" not in out.stdout + out.stderr  # no advertisement
    one, two = (read_metrics(tmp_path / "lightning_logs" / "version_0" / f"validate_{v}")["metrics"] for v in (0, 1))
    # samples differ (each rank draws its own); seconds are wall-clock timings, not metrics
    keys = [k for k in one if "/samples/" not in k and "/seconds" not in k]
    assert "val/score_rel_error" in keys and "val/attention/pearson_best" in keys
    for k in keys:
        assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-8), k


def test_training_loss_is_logged_at_the_same_steps_and_values_as_logging_every_step(tmp_path, monkeypatch):
    # training_step calls self.log only on steps Lightning writes (log_every_n_steps); the curve
    # must be the one Lightning writes when the loss is logged on every step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def curve(root):
        args = ["fit", "--config", str(QUICKSTART), *TINY, "--trainer.max_steps=7", "--trainer.log_every_n_steps=3",
                "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={root}"]  # fmt: skip
        main(args)
        events = EventAccumulator(str(root / "lightning_logs" / "version_0")).Reload()
        return [(e.step, e.value) for e in events.Scalars("train/loss")]

    ours = curve(tmp_path / "a")
    monkeypatch.setattr(DiffusionModule, "_logs_this_step", lambda self: True)
    assert ours == curve(tmp_path / "b")
    assert [step for step, _ in ours] == [2, 5, 6]  # every 3rd step, and the last (step 7, logged at 6)


def test_a_cpu_run_on_a_busy_machine_says_so_and_how_to_help_it(tmp_path, monkeypatch, capsys):
    """[S] 5: with more runnable work than cores, torch's threads wait on one another."""
    from stdiff.cli import busy_machine_note

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 9.0, 1.0, 1.0))
    assert busy_machine_note("cuda") is None
    main(["validate", "--config", str(QUICKSTART), "--model.denoiser=ExactDenoiser", "--data.init_args.num_val=16",
          "--diagnostics.num_samples=8", "--model.sampler.init_args.steps=2", "--diagnostics.figures=false",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    err = capsys.readouterr().err
    assert f"this machine is busy (load {cores + 9.0:.1f} on {cores} cores)" in err and "OMP_NUM_THREADS=1" in err
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 1.0, 1.0))
    assert busy_machine_note("cpu") is None
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 9.0, 1.0, 1.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user chose
    assert busy_machine_note("cpu") is None


def test_version_and_help_say_what_stdiff_is_in_its_own_words():
    run = [sys.executable, "-m", "stdiff"]
    from stdiff.cli import stdiff_version

    out = subprocess.run([*run, "--version"], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"stdiff {stdiff_version()}"
    text = subprocess.run([*run, "--help"], check=True, capture_output=True, text=True, timeout=120).stdout
    assert "Lightning Trainer command line tool" not in text and "against the" in text
    assert "It's" not in text and "This will call" not in text  # Lightning's docstrings, cut mid-sentence
    for sub in ("fit", "validate", "test", "predict"):
        assert f"    {sub} " in text


def test_stdiffs_own_warnings_print_as_plain_lines_and_others_keep_their_place():
    import warnings

    from stdiff._validation import StdiffWarning, format_warning

    assert format_warning("few windows", StdiffWarning, "/x/lightning/pytorch/cli.py", 12) == "stdiff: warning: few windows\n"
    other = format_warning("deprecated", DeprecationWarning, "/x/lib.py", 7)
    assert other == warnings._formatwarnmsg_impl(warnings.WarningMessage("deprecated", DeprecationWarning, "/x/lib.py", 7))


def test_warn_raises_a_stdiff_warning():
    from stdiff._validation import StdiffWarning, warn

    with pytest.warns(StdiffWarning, match="careful"):
        warn("careful")
