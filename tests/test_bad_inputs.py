"""The bad-input battery: each case runs the CLI in a process of its own next to an existing run and
must exit non-zero, name the problem in the first lines of its output (no traceback), write
nothing and leave the existing run untouched. The processes are forked from a server that has
imported stdiff once (``multiprocessing``'s forkserver): a fresh interpreter would spend most of
each case importing torch and Lightning.

``python tests/test_bad_inputs.py`` prints the table of cases and messages (what the suite checks).
"""

import concurrent.futures
import multiprocessing
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
import torch
from bad_input_cases import CASES, CKPT

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

FIRST_LINES = 8


def prepare(run: pathlib.Path) -> None:
    """An existing run (4 training steps, a checkpoint) and the bad files the cases point at."""
    out = invoke(
        ["fit", "--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0"], run
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (run / "corrupt.ckpt").write_bytes(os.urandom(4096))
    good = (run / CKPT.format(run=run)).read_bytes()
    (run / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    torch.save({"state_dict": {}, "payload": PickledCode(run / "code_ran")}, run / "pickled_code.ckpt")
    (run / "unknown_key.yaml").write_text("data:\n  init_args:\n    frame: 16\n")
    (run / "broken.yaml").write_text("data:\n  init_args:\n    space_shape: [8, 8\n")
    (run / "a_file").write_text("not a directory")
    (run / "empty.yaml").write_text("# nothing but a comment\n")
    (run / "tabs.yaml").write_text("data:\n\tinit_args:\n\t\tframes: 8\n")
    (run / "list.yaml").write_text("- data\n- model\n")
    (run / "binary.yaml").write_bytes(bytes(range(256)) * 16)
    (run / "trainr.yaml").write_text("trainr:\n  max_steps: 5\n")
    (run / "twice.yaml").write_text("data:\n  init_args:\n    batch_size: 8\n    frames: 16\n    batch_size: 16\n")
    (run / "two_trainers.yaml").write_text("trainer:\n  max_steps: 5\nmodel: {}\ntrainer:\n  max_epochs: 1\n")
    os.mkfifo(run / "fifo.yaml")
    points = np.random.default_rng(2).uniform(0, 10, (8, 2))
    for name, rows in (("coords_twice", {5: points[2]}), ("coords_one", {i: [1.0, 1.0] for i in range(8)}),
                       ("coords_huge", {3: [1e200, 0.0]})):  # fmt: skip
        bad = points.copy()
        for i, value in rows.items():
            bad[i] = value
        np.savetxt(run / f"{name}.csv", bad, delimiter=",")
    bad_arrays(run)


def bad_arrays(run: pathlib.Path) -> None:
    """Observation and data files with every class of bad content (issue P)."""
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((2, 32, 8)).astype(np.float32)
    obs[:, 20:] = np.nan  # a forecast of 12 frames
    np.save(run / "obs_good.npy", obs)
    for name, where, value in (("obs_inf", (1, 3, 2), np.inf), ("obs_huge", (0, 5, 7), 1e30)):
        bad = obs.copy()
        bad[where] = value
        np.save(run / f"{name}.npy", bad)
    np.save(run / "obs_strings.npy", np.full((2, 32, 8), "1.5"))
    np.save(run / "obs_shape.npy", obs[:, :16])
    np.save(run / "obs_all_nan.npy", np.full_like(obs, np.nan))
    np.save(run / "obs_complete.npy", np.nan_to_num(obs))
    (run / "obs_truncated.npy").write_bytes((run / "obs_good.npy").read_bytes()[:1000])
    (run / "text.npy").write_text("1.0,2.0,3.0\n4.0,5.0,6.0\n")
    os.symlink(run / "loop.npy", run / "loop.npy")
    os.symlink(run / "gone.npy", run / "dangling.npy")
    data = rng.standard_normal((4, 100, 8)).astype(np.float32)
    for name, where, value in (("arrays_inf", (2, 40, 3), np.inf), ("arrays_huge", (0, 90, 1), -1e30)):
        bad = data.copy()
        bad[where] = value
        np.save(run / f"{name}.npy", bad)
    np.save(run / "arrays_good.npy", data)
    (run / "arrays_truncated.npy").write_bytes((run / "arrays_good.npy").read_bytes()[:5000])
    (run / "random.npy").write_bytes(np.random.default_rng(1).bytes(4096))
    np.save(run / "arrays_constant.npy", np.full((4, 100, 8), 3.0, dtype=np.float32))
    np.save(run / "arrays_empty.npy", np.zeros((0, 100, 8), dtype=np.float32))


class PickledCode:
    """Unpickling this runs code (creates a file): what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def invoke(args, run):
    """``stdiff <args>`` on the quickstart config, in its own process; its exit code and output."""
    sub, rest = args[0], [a.format(run=run, root=ROOT) for a in args[1:]]
    argv = [sub, "--config", QUICKSTART, f"--trainer.default_root_dir={run}", "--trainer.enable_progress_bar=false",
            *rest]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:  # outside the run, which must stay untouched
        logs = pathlib.Path(tmp) / "out"
        process = FORKS.Process(target=console_script, args=(argv, run, logs))
        process.start()
        process.join(300)
        if process.exitcode is None:
            process.kill()
            process.join()
        out = {k: pathlib.Path(f"{logs}.{k}").read_text() for k in ("stdout", "stderr")}
    return subprocess.CompletedProcess(argv, process.exitcode, out["stdout"], out["stderr"])


def console_script(argv, cwd, logs):
    """What the ``stdiff`` command does, its output written to ``logs.stdout`` and ``logs.stderr``."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(f"{logs}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(cwd)
    warnings.simplefilter("ignore")
    sys.argv = ["stdiff", *argv]
    from stdiff.cli import main

    main()  # exits through SystemExit: its message goes to stderr and its code to the exit code


FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(["stdiff.cli"])


def snapshot(run: pathlib.Path) -> dict:
    return {str(p.relative_to(run)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in run.rglob("*")}


def first_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()][:FIRST_LINES]


def run_all(run: pathlib.Path) -> list:
    """Every case against the existing run in ``run``, three at a time."""
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda c: invoke(c[1], run), CASES))


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """Every case, three at a time, against one existing run; its files before and after."""
    run = tmp_path_factory.mktemp("existing_run")
    prepare(run)
    before = snapshot(run)
    results = dict(zip([c[0] for c in CASES], run_all(run)))
    return run, before, results


@pytest.mark.parametrize("name,args,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_in_the_first_lines(battery, name, args, expected):
    run, _, results = battery
    out = results[name]
    assert out.returncode != 0
    head = "\n".join(first_lines(out.stderr))
    assert expected.format(run=run) in head, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


def test_the_battery_writes_nothing_and_runs_no_pickled_code(battery):
    run, before, _ = battery
    assert len(CASES) >= 30
    assert snapshot(run) == before  # the existing run untouched, no new run directory, no file
    assert not (run / "code_ran").exists()


if __name__ == "__main__":  # the table of cases and the first line of each message
    with tempfile.TemporaryDirectory() as tmp:
        run = pathlib.Path(tmp)
        prepare(run)
        outs = run_all(run)
        print(f"{len(CASES)} bad inputs, each through the real CLI\n")
        print("| case | arguments | exit | first line of the message |\n|---|---|---|---|")
        for (name, args, _), out in zip(CASES, outs):
            line = next((x for x in first_lines(out.stderr) if "error" in x), first_lines(out.stderr)[:1])
            shown, message = (str(x).replace(str(run), "<run>").replace("|", "/") for x in (" ".join(args), line))
            shown = shown.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")  # non-UTF-8 bytes
            print(f"| {name} | `{shown}` | {out.returncode} | {message} |")
