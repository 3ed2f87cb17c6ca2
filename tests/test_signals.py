"""Every subcommand stops on SIGTERM and Ctrl+C within seconds with a clear exit status (fit's own
signal handling, with its checkpoint, is tested in test_reliability.py); failed runs leave no run
directory behind; runs of a checkpoint write under its run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import QUICKSTART, ROOT

from stdiff.cli import main

BASE = ["--config", str(QUICKSTART), "--trainer.enable_progress_bar=false", "--data.init_args.num_val=64",
        "--model.denoiser=ExactDenoiser", "--data.init_args.num_predict=64", "--model.sampler.init_args.steps=2"]  # fmt: skip


def start(root, subcommand):
    marker = root / "stalled"
    args = [sys.executable, "-m", "stdiff", subcommand, *BASE, f"--trainer.default_root_dir={root}",
            "--trainer.callbacks+=hooks.StallEvaluation", f"--trainer.callbacks.marker={marker}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(args, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    return proc


# Ctrl+C goes through the same handler as SIGTERM: one subcommand checks it in the default suite.
CASES = [pytest.param(sub, how, code, id=f"{how.name}-{sub}", marks=[pytest.mark.slow] if how == signal.SIGINT and sub != "test"
                      else []) for how, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130))
         for sub in ("validate", "test", "predict")]  # fmt: skip


@pytest.mark.parametrize("subcommand,how,code", CASES)
def test_a_signal_stops_a_subcommand_at_once(tmp_path, subcommand, how, code):
    proc = start(tmp_path, subcommand)
    sent = time.monotonic()
    proc.send_signal(how)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out[-3000:]
    assert time.monotonic() - sent < 10  # the batch sleeps 30 s: stopped in it, not after it
    assert f"stdiff: stopped by {how.name}" in out
    if subcommand == "predict":  # what was written so far is kept, and said to be partial
        (meta,) = tmp_path.glob("lightning_logs/exact_predict_*/samples.json")
        assert json.loads(meta.read_text())["complete"] is False
        assert (meta.parent / "samples.npy.partial").is_file()


def signalled_after(marker, args, root):
    """Start ``stdiff <args>``, send SIGTERM once ``marker`` exists (and a second more), and return
    (exit status, seconds from the signal to the exit, output)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "stdiff", *args], env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, time.monotonic() - sent, out


def test_sigterm_stops_a_fit_while_it_sets_up_and_leaves_no_run(tmp_path):
    """Before the training loop (the data, a reference fit: minutes on large files) a fit has no
    step to finish: SIGTERM stops it at once, exit 143, and the run it had claimed is removed."""
    marker = tmp_path / "setting_up"
    args = ["fit", "--config", str(QUICKSTART), "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks+=hooks.StallSetup", f"--trainer.callbacks.marker={marker}"]  # fmt: skip
    code, seconds, out = signalled_after(marker, args, tmp_path)
    assert code == 143 and seconds < 10, out[-3000:]
    assert "stdiff: stopped by SIGTERM" in out
    assert not list(tmp_path.glob("lightning_logs/version_*"))


def test_sigterm_stops_the_likelihood_of_a_test_within_seconds(tmp_path):
    """The likelihood ODE (after the test batches) stops within a step on SIGTERM."""
    marker = tmp_path / "integrating"
    args = ["test", *BASE, f"--trainer.default_root_dir={tmp_path}", "--diagnostics.num_samples=64",
            "--likelihood.steps=50000", "--likelihood.num_samples=64", "--trainer.callbacks+=hooks.MarkTestEnd",
            f"--trainer.callbacks.marker={marker}"]  # fmt: skip
    code, seconds, out = signalled_after(marker, args, tmp_path)
    assert code == 143 and seconds < 10, out[-3000:]
    assert "stdiff: stopped by SIGTERM" in out


SLOW_VALIDATION = ["--trainer.enable_progress_bar=false", "--data.init_args.num_val=16", "--diagnostics.num_samples=8",
                   "--trainer.max_steps=6", "--trainer.val_check_interval=3", "--diagnostics.sample_every=1",
                   "--checkpoint.every_n_train_steps=100", "--model.sampler=hooks.SlowSampler",
                   "--model.sampler.init_args.steps=60"]  # fmt: skip


def fit_process(root, *extra, marker=None):
    marker = marker or root / "sampling"
    args = [sys.executable, "-m", "stdiff", "fit", "--config", str(QUICKSTART), *SLOW_VALIDATION,
            f"--model.sampler.init_args.marker={marker}", f"--trainer.default_root_dir={root}", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(args, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("how,code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])  # fmt: skip
def test_a_signal_stops_a_fit_within_a_sampler_step_of_its_validation_and_resuming_is_bit_identical(tmp_path, how, code):
    """[S] 5: a fit signalled while its validation samples (60 sampler steps of 0.5 s) stops within a
    step, not after the validation, with a checkpoint of the step reached; resumed from it, the fit
    ends where an uninterrupted one does."""
    cut, straight = tmp_path / "cut", tmp_path / "straight"
    cut.mkdir(), straight.mkdir()
    proc = fit_process(cut)
    deadline = time.monotonic() + 120
    while not (cut / "sampling").exists():  # the validation at step 3
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(how)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == code and time.monotonic() - sent < 10, out[-2000:]
    assert "during validation: stopped at step 3, checkpoint" in out, out[-2000:]
    last = cut / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    faster = ["--model.sampler.init_args.seconds=0"]
    for root, extra in ((cut, ["--ckpt_path=last"]), (straight, [])):
        proc = fit_process(root, *faster, *extra, marker=root / "unused")
        assert proc.wait(timeout=300) == 0, proc.communicate()[0][-2000:]
    a, b = (torch.load(r / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
            for r in (straight, cut))  # fmt: skip
    assert a["global_step"] == b["global_step"] == 6
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_a_run_that_fails_at_start_leaves_no_run_directory(tmp_path):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}",
              "--trainer.callbacks+=hooks.FailAtStart", "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert not list((tmp_path / "lightning_logs").glob("version_*"))


def test_predict_and_test_of_a_checkpoint_write_under_its_run(tmp_path):
    tiny = [
        "--config",
        str(QUICKSTART),
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    main(["fit", *tiny, "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0"])
    for _ in range(2):
        main(
            [
                "predict",
                *tiny,
                "--ckpt_path=last",
                "--data.init_args.num_predict=4",
                "--model.sampler.init_args.steps=2",
            ]
        )
    main(["test", *tiny, "--ckpt_path=last", "--data.init_args.num_val=16", "--diagnostics.num_samples=20",
          "--model.sampler.init_args.steps=2"])  # fmt: skip
    (run,) = (tmp_path / "lightning_logs").iterdir()
    assert {p.name for p in run.iterdir() if p.is_dir()} == {"checkpoints", "predict_0", "predict_1", "test_0"}
    assert np.load(run / "predict_1" / "samples.npy").shape == (4, 32, 8)
    assert (run / "test_0" / "metrics.json").is_file()


def test_non_finite_samples_are_counted_and_reported(tmp_path):
    """A diverging sampler is reported (the count in samples.json and a warning), not silent."""
    import json
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["predict", *BASE, "--data.init_args.batch_size=16", "--model.sampler=hooks.HalfNaN",
              f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    (meta,) = tmp_path.glob("lightning_logs/exact_predict_*/samples.json")
    assert json.loads(meta.read_text())["non_finite_samples"] == 32  # half of each batch of 16, 64 samples
    assert any("32 of 64 samples hold non-finite values" in str(w.message) for w in caught)
