"""The lowest versions ``pyproject.toml`` allows really work: every dependency's floor (``>=X``) as
``==X``, on the lowest Python allowed, with the whole default suite.

The job itself (``-m lowest``) builds a fresh virtual environment, so it is run on purpose:

    python -m pytest -m lowest -s      # about 10 min: installs torch (a CUDA build from PyPI) and runs the suite

It writes what it installed and the suite's last lines to ``stdiff/bench/results/lowest_versions.md``.
The default suite checks what the job relies on: every dependency has a floor, and the Docker
image's torch is the tested floor.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

RESULTS = ROOT / "stdiff" / "bench" / "results" / "lowest_versions.md"


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def floor(requirement: str) -> str:
    """``name[extras]>=X,<Y`` as ``name[extras]==X``; refuses a dependency without a floor."""
    req = Requirement(requirement)
    lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
    if len(lows) != 1:
        raise ValueError(f"dependency {requirement!r} must have exactly one lower bound (>=), found {len(lows)}")
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}=={lows[0]}"


def lowest_requirements() -> list[str]:
    """The runtime and test dependencies, each at its floor."""
    meta = project()
    return [floor(r) for r in meta["dependencies"] + meta["optional-dependencies"]["test"]]


def lowest_python() -> str:
    return re.fullmatch(r">=\s*(\d+\.\d+)", project()["requires-python"]).group(1)


def test_every_dependency_has_a_floor_and_the_docker_image_runs_the_tested_torch():
    pins = lowest_requirements()
    assert all("==" in p for p in pins) and any(p.startswith("torch==") for p in pins)
    with pytest.raises(ValueError, match="must have exactly one lower bound"):
        floor("numpy")
    assert floor("jsonargparse[signatures]>=4.35") == "jsonargparse[signatures]==4.35"
    assert floor("lightning>=2.5,<3") == "lightning==2.5"
    torch_floor = next(p for p in pins if p.startswith("torch==")).split("==")[1]
    base = re.search(r"^FROM pytorch/pytorch:([\d.]+)-", (ROOT / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert base == torch_floor, f"the Docker image's torch {base} is not the lowest-versions job's {torch_floor}"


def interpreter(version: str) -> str:
    """The lowest Python allowed: ``$STDIFF_LOWEST_PYTHON``, ``pythonX.Y`` on PATH or under pyenv,
    else this interpreter (the results say which ran)."""
    candidates = [os.environ.get("STDIFF_LOWEST_PYTHON"), shutil.which(f"python{version}"),
                  *map(str, sorted(Path("~/.pyenv/versions").expanduser().glob(f"{version}.*/bin/python{version}")))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "--version"], capture_output=True, check=False).returncode == 0:  # a pyenv
            return candidate  # shim of a version not selected exits 127
    return sys.executable


def run(cmd: list[str], log: Path, **kwargs) -> None:
    """``cmd``, its output appended to ``log``; on failure, an error with the log's last lines."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False, **kwargs).returncode
    if code:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise AssertionError(f"{' '.join(cmd)} exited with {code}:\n{tail}")


@pytest.mark.lowest
def test_the_suite_passes_with_the_lowest_versions_allowed(tmp_path):
    python = interpreter(lowest_python())
    venv = Path(os.environ.get("STDIFF_LOWEST_VENV", tmp_path / "venv"))
    pins = lowest_requirements()
    (tmp_path / "lowest.txt").write_text("".join(re.sub(r"\[.*\]", "", p) + "\n" for p in pins))  # no extras
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_CONSTRAINT"] = ""  # the floors below are the only constraints
    start = time.time()
    # a copy of the working tree, so that editing the checkout while the job runs changes nothing
    tree = tmp_path / "stdiff"
    shutil.copytree(ROOT, tree, symlinks=True, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "lightning_logs", "__pycache__",
                                                              "*.egg-info", ".pytest_cache", ".ruff_cache"))  # fmt: skip
    log = tmp_path / "install.log"
    run([python, "-m", "venv", "--clear", str(venv)], log)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "-c", str(tmp_path / "lowest.txt"), "-e", f"{tree}[test]"], log, env=env)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True,
                               env=env, check=True).stdout  # fmt: skip
    version = subprocess.run([str(venv / "bin" / "python"), "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
    # the warnings summary left out, each failure's reason and the slowest tests kept in the results' tail
    suite = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "--disable-warnings", "-rfE", "--tb=short", "--durations=15"],
                           cwd=tree, env=env, capture_output=True, text=True, check=False)  # fmt: skip
    tail = "\n".join((suite.stdout + suite.stderr).strip().splitlines()[-60:])
    names = {p.split("==")[0].split("[")[0].lower() for p in pins}
    chosen = [line for line in installed.splitlines() if line.split("==")[0].lower() in names]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        f"# Lowest versions allowed\n\n`python -m pytest -m lowest -s` ({time.strftime('%Y-%m-%d')}, "
        f"{time.time() - start:.0f} s): {version}, every dependency at its floor:\n\n"
        + "\n".join(f"- `{line}`" for line in chosen)
        + f"\n\nThe default suite in that environment (exit status {suite.returncode}):\n\n```\n{tail}\n```\n"
    )  # fmt: skip
    assert suite.returncode == 0, f"the suite failed with the lowest versions:\n{tail}"
