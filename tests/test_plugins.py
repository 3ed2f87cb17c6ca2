"""Plug-ins from another installed distribution, found through the ``stdiff.plugins`` entry points."""

import os
import subprocess
import sys
import textwrap

from conftest import FEW_SAMPLES, QUICKSTART

PLUGIN = '''
import torch
from stdiff.kernels import StationaryKernel


class Triangle(StationaryKernel):
    """max(0, 1 - h/l): positive definite in 1-D (Polya)."""

    def profile(self, r):
        return torch.clamp(1 - r, min=0)
'''


def install(site, name, module_source, target):
    """A minimal installed distribution on ``site``: a module and a dist-info with an entry point."""
    (site / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[stdiff.plugins]\n{name} = {target}\n")


def run(args, site, cwd):
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "stdiff", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


def test_kernel_from_an_installed_plugin_is_used_by_short_name(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "triangle_kernels", PLUGIN, "triangle_kernels")
    config = tmp_path / "plugin.yaml"
    config.write_text(
        "data:\n  init_args:\n    temporal:\n      class_path: Triangle\n      init_args: {lengthscale: 6.0}\n"
    )
    out = run(["fit", "--config", str(QUICKSTART), "--config", str(config), "--trainer.max_steps=2",
               "--trainer.val_check_interval=2", "--data.init_args.num_val=16", "--diagnostics.figures=false",
               *FEW_SAMPLES,
               "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"], site, tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    used = (tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "class_path: triangle_kernels.Triangle" in used and "lengthscale: 6.0" in used
    # a misspelt plug-in name is suggested too
    bad = run(["fit", "--config", str(QUICKSTART), "--data.init_args.temporal=Triangel"], site, tmp_path)
    assert "Did you mean 'Triangle'?" in bad.stderr


def test_a_broken_plugin_names_its_entry_point_and_package(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "broken_plugin", "raise RuntimeError('missing dependency foo')\n", "broken_plugin")
    out = run(["fit", "--help"], site, tmp_path)
    assert out.returncode != 0
    first = out.stderr.strip().splitlines()[0]
    assert "entry point 'broken_plugin = broken_plugin' from package 'broken_plugin' failed to import" in first
    assert "missing dependency foo" in first
