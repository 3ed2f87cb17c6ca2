"""Every documented entry point answers ``--help`` when run as a user runs it: as ``python -m …``
does, by ``runpy.run_module`` in a fresh interpreter (an import in the test process would not see a
package that cannot be executed, as ``stdiff.bench.speed`` once could not). One interpreter runs
them all, one after another: thirty interpreters each importing torch took a minute."""

import json
import subprocess
import sys

import pytest

from stdiff.bench import BENCHMARKS
from stdiff.paper import EXPERIMENTS

EXAMPLES = ["nyc_temperature", "chicago_ridership"]
COMMANDS = ([["stdiff.bench", name] for name in BENCHMARKS] + [["stdiff.paper", name] for name in EXPERIMENTS]
            + [[f"stdiff.examples.{name}"] for name in EXAMPLES] + [["stdiff.bench.speed"]])  # fmt: skip


# What `python -m <module> <args> --help` does, for each command in turn, in one interpreter: the
# module run as __main__ (a package through its __main__), its output and exit status kept.
RUNNER = """
import contextlib, io, json, runpy, sys
results = []
for cmd in json.loads(sys.argv[1]):
    out, code = io.StringIO(), 0
    sys.argv = [cmd[0], *cmd[1:], "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_module(cmd[0], run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code or 0
    except BaseException as err:
        code = f"{type(err).__name__}: {err}"
    results.append([cmd, code, out.getvalue()])
print(json.dumps(results))
"""


def test_every_benchmark_experiment_and_example_answers_help_as_a_subprocess():
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(COMMANDS)], capture_output=True, text=True,
                          timeout=600, check=True)  # fmt: skip
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [cmd for cmd, _, _ in results] == COMMANDS
    failures = [f"python -m {' '.join(cmd)} --help: exit {code}\n{out[-1000:]}" for cmd, code, out in results
                if code != 0 or "usage" not in out.lower()]  # fmt: skip
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("name", ["gpu_check", "wheel_check"])
def test_the_shell_benchmarks_help_says_what_they_do_without_running(name):
    out = subprocess.run([sys.executable, "-m", "stdiff.bench", name, "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout  # fmt: skip
    assert f"python -m stdiff.bench {name}" in out and "set -e" not in out
