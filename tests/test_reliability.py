"""Nothing lost when a run is killed, signalled or goes non-finite: SIGKILL, SIGTERM and Ctrl+C
mid-training, then ``--ckpt_path last``, end bit-identical to an uninterrupted run, on streamed
data and on a fixed training set, mid-epoch and at an epoch's end; a NaN is
caught at its step; concurrent runs get their own directories."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import QUICKSTART, ROOT

from stdiff.cli import main
from stdiff.module import DiffusionModule
from stdiff.runs import claim_version

STEPS = 40
# Small and fast: no validation, a checkpoint every 10 steps.
RUN = [
    "fit",
    "--config",
    str(QUICKSTART),
    "--data.init_args.batch_size=16",
    "--trainer.limit_val_batches=0",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--checkpoint.every_n_train_steps=10",
]


def cli(root, *extra, log=None):
    """The real CLI in a subprocess (signals reach it as they would a user's run)."""
    args = [*RUN, f"--trainer.default_root_dir={root}", *extra]
    if log is not None:
        args += ["--trainer.callbacks+=hooks.BatchLog", f"--trainer.callbacks.path={log}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "stdiff", *args],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def last(root):
    (path,) = (root / "lightning_logs").glob("version_*/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a, b):
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # the EMA weights, and the trained weights
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}/{name}"
    ema = [next(v for k, v in c["callbacks"].items() if k.startswith("EMA")) for c in (a, b)]
    assert ema[0] == ema[1]
    for x, y in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)


# The streamed data, and a fixed set of 40 samples: 3 batches an epoch, so that the kill after step
# 20 falls in the middle of an epoch and the stop at step 15 at the end of one.
DATA = {"stream": [], "fixed set": ["--data.init_args.num_train=40"]}


@pytest.fixture(scope="module", params=list(DATA))
def straight(tmp_path_factory, request):
    """The uninterrupted run: its final checkpoint, the batches it trained on, its data arguments."""
    root = tmp_path_factory.mktemp("straight")
    data = DATA[request.param]
    proc = cli(root, f"--trainer.max_steps={STEPS}", *data, log=root / "batches.log")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return last(root), (root / "batches.log").read_text().splitlines(), data


def interrupt(root, how, stall_at, data):
    """Start a run that stalls from step ``stall_at`` on, send ``how`` once it does, wait for it."""
    marker = root / "stalled"
    proc = cli(root, f"--trainer.max_steps={STEPS}", *data, "--trainer.callbacks+=hooks.Stall",
               f"--trainer.callbacks.at={stall_at}", f"--trainer.callbacks.marker={marker}",
               "--trainer.callbacks.seconds=2", log=root / "batches.log")  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(how)
    out, _ = proc.communicate(timeout=240)
    return proc.returncode, out


def resume(root, data):
    proc = cli(root, f"--trainer.max_steps={STEPS}", *data, "--ckpt_path=last", log=root / "resumed.log")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "--ckpt_path last: resuming from" in out
    assert "not resumable" not in out  # Lightning's warning for loaders that restart an interrupted epoch
    return out


def test_sigkill_then_resume_from_the_last_periodic_checkpoint_is_bit_identical(tmp_path, straight):
    final, batches, data = straight
    code, _ = interrupt(tmp_path, signal.SIGKILL, stall_at=21, data=data)  # killed after the step-20 checkpoint
    assert code == -signal.SIGKILL
    assert last(tmp_path)["global_step"] == 20
    resume(tmp_path, data)
    assert_same_state(final, last(tmp_path))
    # The same training batches, in order: 20 before the kill, the other 20 after it.
    before = (tmp_path / "batches.log").read_text().splitlines()
    after = (tmp_path / "resumed.log").read_text().splitlines()
    assert before[:20] + after == batches
    # One run directory, continued: the resumed run's settings are saved beside the original's.
    (run,) = (tmp_path / "lightning_logs").iterdir()
    assert {"config.yaml", "config.resumed_step20.yaml"} <= {p.name for p in run.iterdir()}


# Another SequenceDataModule (videos, no truth) with two batches per optimizer step: the stream must
# skip 2 × the restored step count.
BALL = ["--data=stdiff.data.MovingBall", "--data.init_args.size=8", "--data.init_args.frames=8",
        "--model.denoiser.init_args.backbone.init_args.patch_size=4", "--trainer.accumulate_grad_batches=2"]  # fmt: skip


@pytest.mark.slow  # 35 s; test_arrays resumes MovingBall-like videos exactly in the default suite
def test_moving_ball_with_gradient_accumulation_resumes_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    proc = cli(straight, "--trainer.max_steps=20", *BALL, log=straight / "batches.log")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    code, _ = interrupt(tmp_path, signal.SIGKILL, stall_at=11, data=[*BALL, "--trainer.max_steps=20"])
    assert code == -signal.SIGKILL and last(tmp_path)["global_step"] == 10
    resume(tmp_path, [*BALL, "--trainer.max_steps=20"])
    assert_same_state(last(straight), last(tmp_path))
    batches = (straight / "batches.log").read_text().splitlines()
    before = (tmp_path / "batches.log").read_text().splitlines()
    after = (tmp_path / "resumed.log").read_text().splitlines()
    assert len(batches) == 40 and before[:20] + after == batches  # 2 batches a step


@pytest.mark.parametrize("how,code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])  # SIGINT takes the same path (and is tested at once in test_signals)
def test_a_stop_signal_writes_a_checkpoint_and_resuming_from_it_is_bit_identical(tmp_path, straight, how, code):
    final, batches, data = straight
    status, out = interrupt(tmp_path, how, stall_at=14, data=data)
    assert status == code, out[-3000:]
    # The step in progress is finished, then checkpointed (not the step-10 periodic one).
    stopped = last(tmp_path)["global_step"]
    assert stopped == 15, out[-3000:]
    assert f"{how.name}: stopped at step 15, checkpoint" in out
    resume(tmp_path, data)
    assert_same_state(final, last(tmp_path))
    before = (tmp_path / "batches.log").read_text().splitlines()
    after = (tmp_path / "resumed.log").read_text().splitlines()
    assert before[:stopped] + after == batches


TINY = [*RUN[1:], "--trainer.max_steps=20", "--checkpoint.every_n_train_steps=5"]


def fit_in_process(root, *extra):
    main(["fit", *TINY, f"--trainer.default_root_dir={root}", *extra])


@pytest.mark.parametrize("where,what", [("batch", "loss"), ("grad", "gradient")])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, where, what):
    with pytest.raises(SystemExit) as stop:
        fit_in_process(tmp_path, "--trainer.callbacks+=hooks.InjectNaN", "--trainer.callbacks.steps=[12]",
                       f"--trainer.callbacks.where={where}")  # fmt: skip
    message = str(stop.value.code)
    assert message.startswith(f"stdiff: error: non-finite {what} at step 12"), message
    assert "The step was not taken. Last good checkpoint:" in message and "last.ckpt (step 10)" in message
    (path,) = tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["global_step"] == 10
    model = DiffusionModule.load_from_checkpoint(path, weights_only=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_fit_stopped_by_a_signal_still_prints_its_last_verdicts(tmp_path):
    status, out = interrupt(tmp_path, signal.SIGTERM, stall_at=8, data=["--trainer.limit_val_batches=2",
                            "--trainer.val_check_interval=5", "--diagnostics.num_samples=64"])  # fmt: skip
    assert status == 143, out[-3000:]
    assert "stdiff fit: step 9, against the exact GP" in out and "best checkpoint" in out, out[-3000:]
    assert "stopped by a signal: the verdicts below are of the validation at step 5" in " ".join(out.split())
    (run,) = (tmp_path / "lightning_logs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["metrics"]["fit/verdict_step"] == 5


def test_skip_policy_skips_and_counts_and_stops_past_the_limit(tmp_path):
    fit_in_process(tmp_path / "a", "--nonfinite.policy=skip", "--nonfinite.max_skips=2",
                   "--trainer.callbacks+=hooks.InjectNaN", "--trainer.callbacks.steps=[12,13]")  # fmt: skip
    state = torch.load(next((tmp_path / "a").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert state["global_step"] == 20
    assert next(v for k, v in state["callbacks"].items() if k.startswith("NonFiniteGuard")) == {"skipped": 2}
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    with pytest.raises(SystemExit) as stop:
        fit_in_process(tmp_path / "b", "--nonfinite.policy=skip", "--nonfinite.max_skips=2",
                       "--trainer.callbacks+=hooks.InjectNaN", "--trainer.callbacks.steps=[12,13,14]")  # fmt: skip
    assert "non-finite loss at step 14" in str(stop.value.code)
    assert "3 steps skipped, more than nonfinite.max_skips=2" in str(stop.value.code)


def test_the_final_step_is_checkpointed_between_periodic_ones(tmp_path):
    fit_in_process(tmp_path, "--trainer.max_steps=7")
    assert last(tmp_path)["global_step"] == 7


def _claim(args):
    root, barrier = args
    barrier.wait()
    return claim_version(root)


def test_concurrent_runs_never_share_a_version_directory(tmp_path):
    (tmp_path / "version_3").mkdir()  # an existing run: new ones go above it
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(8)
        with multiprocessing.Pool(8) as pool:
            versions = pool.map(_claim, [(tmp_path, barrier)] * 8)
    assert sorted(versions) == list(range(4, 12))


def test_best_checkpoint_warns_once_when_validation_loss_keeps_rising():
    from stdiff.callbacks import BestCheckpoint

    watch = BestCheckpoint(patience=2, tolerance=0.05)
    for step, loss in [(500, 0.40), (1000, 0.41), (1500, 0.43)]:  # within 5 % + noise: no warning
        watch.history.append((step, loss))
        watch._check_rise()
    assert not watch._warned
    rise = r"risen from its best 0.4 \(step 500\) to 0.55 \(step 2000\).*train_stride=1"
    watch.history.append((2000, 0.55))
    with pytest.warns(UserWarning, match=rise):
        watch._check_rise()
    assert watch._warned
    watch.history.append((2500, 0.68))
    watch._check_rise()  # already warned: no second warning
    with pytest.raises(ValueError, match="BestCheckpoint.tolerance must be a number >= 0"):
        BestCheckpoint(tolerance=-1)
