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

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SPATIAL_2D = str(ROOT / "configs" / "spatial_2d.yaml")
CKPT = "{run}/lightning_logs/version_0/checkpoints/last.ckpt"

# (case, arguments after `stdiff`, text that must appear in the first lines of stderr)
CASES = [
    (
        "wrong type: int",
        ["fit", "--data.init_args.frames=abc"],
        "data.init_args.frames: Expected a <class 'int'>. Got value: abc",
    ),
    (
        "wrong type: float for int",
        ["fit", "--data.init_args.batch_size=1.5"],
        "data.init_args.batch_size: Expected a <class 'int'>. Got value: 1.5",
    ),
    (
        "wrong type: trainer",
        ["fit", "--trainer.max_steps=abc"],
        "trainer.max_steps: Expected a <class 'int'>. Got value: abc",
    ),
    ("negative size", ["fit", "--data.init_args.batch_size=-4"], "batch_size must be an integer >= 1, got -4"),
    ("zero size", ["fit", "--data.init_args.num_val=0"], "num_val must be an integer >= 1, got 0"),
    ("too few frames", ["fit", "--data.init_args.frames=1"], "frames must be an integer >= 2, got 1"),
    (
        "empty grid",
        ["fit", "--data.init_args.space_shape=[0]"],
        "space_shape entry (in (0,)) must be an integer >= 1, got 0",
    ),
    ("negative seed", ["fit", "--data.init_args.seed=-1"], "seed must be an integer >= 0, got -1"),
    (
        "space not divisible by patch",
        ["fit", "--model.denoiser.init_args.backbone.init_args.patch_size=3"],
        "patch_size 3 must be a positive divisor of the spatial size 8",
    ),
    (
        "2-D grid not divisible by patch",
        ["fit", "--config", SPATIAL_2D, "--model.denoiser.init_args.backbone.init_args.patch_size=[5,5]"],
        "patch_size 5 must be a positive divisor of the spatial size 16",
    ),
    (
        "heads do not divide width",
        ["fit", "--model.denoiser.init_args.backbone.init_args.heads=5"],
        "heads must be >= 1 and divide width=64, got heads=5",
    ),
    (
        "width not divisible by 4",
        ["fit", "--model.denoiser.init_args.backbone.init_args.width=30"],
        "width must be divisible by 4 (sinusoidal positions), got 30",
    ),
    ("zero depth", ["fit", "--model.denoiser.init_args.backbone.init_args.depth=0"], "depth must be an integer >= 1, got 0"),
    (
        "unknown kernel",
        ["fit", "--data.init_args.temporal=PoweredExp"],
        "unknown kernel 'PoweredExp'. Did you mean 'PoweredExponential'?",
    ),
    ("unknown schedule", ["fit", "--model.denoiser.init_args.schedule=Cosin"], "unknown schedule 'Cosin'. Did you mean 'Cosine'?"),
    ("unknown sampler", ["fit", "--model.sampler=Hune"], "unknown sampler 'Hune'. Did you mean 'Heun'?"),
    (
        "unknown attention",
        ["fit", "--model.denoiser.init_args.backbone.init_args.attention=Factorised"],
        "unknown attention 'Factorised'. Did you mean 'FactorizedAttention'?",
    ),
    (
        "unknown data module",
        ["fit", "--data=GPDataModul"],
        "unknown data module 'GPDataModul'. Did you mean 'GPDataModule'?",
    ),
    (
        "misspelt option",
        ["fit", "--trainer.max_stesp=10"],
        "unknown option --trainer.max_stesp. Did you mean --trainer.max_steps?",
    ),
    (
        "option the class lacks",
        ["fit", "--data.init_args.temporal.init_args.nu=1"],
        "data.init_args.temporal: Option 'nu' is not accepted",
    ),
    ("misspelt key in a YAML file", ["fit", "--config", "{run}/unknown_key.yaml"], "Option 'frame' is not accepted"),
    (
        "YAML syntax error",
        ["fit", "--config", "{run}/broken.yaml"],
        "Problems parsing config: while parsing a flow sequence",
    ),
    ("missing config file", ["fit", "--config", "{run}/nope.yaml"], "config: File does not exist: '{run}/nope.yaml'"),
    (
        "literal not allowed",
        ["fit", "--model.denoiser.init_args.parameterization=velocity"],
        "Expected a typing.Literal['eps', 'x0', 'v', 'score']. Got value: velocity",
    ),
    (
        "kernel parameter out of range",
        ["fit", "--data.init_args.temporal.init_args.power=3"],
        "PoweredExponential.power must lie in (0.0, 2.0], got 3.0",
    ),
    (
        "zero lengthscale",
        ["fit", "--data.init_args.temporal.init_args.lengthscale=0"],
        "PoweredExponential.lengthscale must be a finite number > 0",
    ),
    (
        "kernel not positive definite",
        ["fit", "--data.init_args.spatial.init_args.lengthscale=40"],
        "spatial kernel RBF(lengthscale=40.0) is not positive definite",
    ),
    (
        "negative jitter",
        ["fit", "--data.init_args.jitter=-1"],
        "jitter must be a finite number >= 0 or 'auto', got -1.0",
    ),
    (
        "sampler with no steps",
        ["fit", "--model.sampler.init_args.steps=0"],
        "Heun.steps must be an integer >= 1, got 0",
    ),
    (
        "t_min above t_max",
        ["fit", "--model.denoiser.init_args.schedule.init_args.t_min=20"],
        "OrnsteinUhlenbeck.t_max must be > t_min=20.0, got 10.0",
    ),
    ("negative learning rate", ["fit", "--model.optimizer.init_args.lr=-1"], "Invalid learning rate: -1.0"),
    (
        "negative checkpoint interval",
        ["fit", "--checkpoint.every_n_train_steps=-1"],
        "Invalid value for every_n_train_steps=-1",
    ),
    (
        "unknown non-finite policy",
        ["fit", "--nonfinite.policy=ignore"],
        "nonfinite.policy: Expected a typing.Literal['stop', 'skip', 'off']",
    ),
    ("unknown precision", ["fit", "--trainer.precision=bf15"], "trainer.precision: not an accepted value"),
    (
        "GPU requested, none present",
        ["fit", "--trainer.accelerator=gpu"],
        "invalid configuration: No supported gpu backend found!",
    ),
    (
        "zero devices",
        ["fit", "--trainer.devices=0"],
        "`Trainer(devices='0')` value is not a valid input using cpu accelerator",
    ),
    (
        "training the exact model",
        ["fit", "--model.denoiser=ExactDenoiser"],
        "model.oracle=true uses the exact model, which has nothing to train",
    ),
    ("missing checkpoint", ["fit", "--ckpt_path={run}/nope.ckpt"], "checkpoint '{run}/nope.ckpt' does not exist"),
    ("checkpoint is a directory", ["validate", "--ckpt_path={run}"], "checkpoint '{run}' is not a file"),
    (
        "corrupt checkpoint",
        ["fit", "--ckpt_path={run}/corrupt.ckpt"],
        "checkpoint '{run}/corrupt.ckpt' is corrupt or not a PyTorch checkpoint",
    ),
    (
        "truncated checkpoint",
        ["test", "--ckpt_path={run}/truncated.ckpt"],
        "checkpoint '{run}/truncated.ckpt' is corrupt or not a PyTorch checkpoint",
    ),
    (
        "checkpoint with pickled code",
        ["fit", "--ckpt_path={run}/pickled_code.ckpt"],
        "contains pickled objects other than tensors and plain data, and is not loaded",
    ),
    (
        "checkpoint of another model",
        ["fit", f"--ckpt_path={CKPT}", "--model.denoiser.init_args.backbone.init_args.width=32"],
        "was trained with another model configuration: 39 parameter(s) do not fit, e.g. backbone.embed.weight: (64, 8) in the checkpoint, (32, 8) in this model",
    ),
    (
        "data/model shape mismatch",
        ["predict", f"--ckpt_path={CKPT}", "--data.init_args.frames=16"],
        "the checkpoint was trained on samples of shape (32, 8) (T, *space_shape), but the data gives (16, 8)",
    ),
    (
        "unwritable output directory",
        ["fit", "--trainer.default_root_dir={run}/a_file/sub"],
        "output directory '{run}/a_file/sub/lightning_logs' cannot be created: '{run}/a_file' is a file",
    ),
    (
        "predict without samples requested",
        ["predict", "--model.denoiser=ExactDenoiser", "--data.init_args.num_predict=0"],
        "predict needs a number of samples: set data.init_args.num_predict",
    ),
    ("predict without a model", ["predict"], "predict needs a trained model: pass --ckpt_path"),
]
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


class PickledCode:
    """Unpickling this runs code (creates a file): what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def invoke(args, run):
    """``stdiff <args>`` on the quickstart config, in its own process; its exit code and output."""
    sub, rest = args[0], [a.format(run=run) for a in args[1:]]
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
