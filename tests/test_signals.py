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


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
@pytest.mark.parametrize("how,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
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
