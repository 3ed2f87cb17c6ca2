"""Every documented entry point answers ``--help`` when run as a user runs it: a subprocess
``python -m …`` (an import in the test process would not see a package that cannot be executed,
as ``stdiff.bench.speed`` once could not)."""

import subprocess
import sys

import pytest

from stdiff.bench import BENCHMARKS
from stdiff.paper import EXPERIMENTS

EXAMPLES = ["nyc_temperature", "chicago_ridership"]
COMMANDS = ([["stdiff.bench", name] for name in BENCHMARKS] + [["stdiff.paper", name] for name in EXPERIMENTS]
            + [[f"stdiff.examples.{name}"] for name in EXAMPLES] + [["stdiff.bench.speed"]])  # fmt: skip


def test_every_benchmark_experiment_and_example_answers_help_as_a_subprocess():
    # started together (each is mostly an interpreter and torch's import), read one by one
    running = [(cmd, subprocess.Popen([sys.executable, "-m", *cmd, "--help"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)) for cmd in COMMANDS]  # fmt: skip
    failures = []
    for cmd, proc in running:
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0 or "usage" not in out.lower():
            failures.append(f"python -m {' '.join(cmd)} --help: exit {proc.returncode}\n{out[-300:]}{err[-800:]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("name", ["gpu_check", "wheel_check"])
def test_the_shell_benchmarks_help_says_what_they_do_without_running(name):
    out = subprocess.run([sys.executable, "-m", "stdiff.bench", name, "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout  # fmt: skip
    assert f"python -m stdiff.bench {name}" in out and "set -e" not in out
