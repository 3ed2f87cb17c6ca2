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
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*")}


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
            print(f"| {name} | `{shown}` | {out.returncode} | {message} |")
