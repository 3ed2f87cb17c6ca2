"""The presets ship inside the package, so documented commands work after a non-editable install."""

import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from stdiff.config_files import packaged_configs


def test_every_preset_is_package_data_and_configs_links_to_it():
    shipped = {p.relative_to(ROOT / "stdiff" / "configs") for p in (ROOT / "stdiff" / "configs").rglob("*.yaml")}
    linked = {p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped == linked and len(shipped) > 15
    setup = (ROOT / "pyproject.toml").read_text()
    assert all(f'"configs/{"*/" * len(p.parts[:-1])}*.yaml"' in setup for p in shipped)


def test_a_config_path_missing_here_is_found_in_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    (resolved,) = packaged_configs(["--config=configs/paper/cpu/attention.yaml"])
    assert Path(resolved.split("=", 1)[1]).is_file()
    assert packaged_configs(["--config", "configs/nope.yaml"]) == ["--config", "configs/nope.yaml"]  # then named


@pytest.mark.slow
def test_a_wheel_install_runs_the_quickstart_and_the_theory_from_an_empty_directory():
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "wheel_check.sh"), "--trainer.max_steps=20",
                          "--trainer.val_check_interval=20", "--diagnostics.num_samples=300",
                          "--model.sampler.init_args.steps=5"], capture_output=True, text=True, timeout=1200, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "wheel check passed" in out.stdout
