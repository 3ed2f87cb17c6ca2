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
    out = subprocess.run(["bash", str(ROOT / "stdiff" / "bench" / "wheel_check.sh"), "--trainer.max_steps=20",
                          "--trainer.val_check_interval=20", "--diagnostics.num_samples=300",
                          "--model.sampler.init_args.steps=5"], capture_output=True, text=True, timeout=1200, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "wheel check passed" in out.stdout


def test_the_top_level_holds_what_the_project_card_lists():
    card = {"stdiff", "configs", "tests", "lightning_logs", "pyproject.toml", "Dockerfile", "README.md"}
    built = {"build", "dist"}  # git-ignored outputs of pip wheel / setuptools, like *.egg-info
    here = {p.name for p in ROOT.iterdir()
            if not p.name.startswith(".") and not p.name.endswith(".egg-info") and p.name not in built}  # fmt: skip
    assert here - card == set(), f"not on the project card: {sorted(here - card)}"
    assert card - here <= {"lightning_logs"}  # output, made by the first run


def test_the_wheel_ships_the_benchmarks_and_presets_but_not_their_results(tmp_path):
    import shutil
    import zipfile

    # built from a copy: setuptools would leave build/ in the checkout
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "lightning_logs",
                                                                 "*.egg-info", "__pycache__", ".*_cache"))  # fmt: skip
    built = set(ROOT.iterdir())
    subprocess.run(["pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)], check=True, timeout=600,
                   capture_output=True)  # fmt: skip
    assert set(ROOT.iterdir()) == built  # nothing left in the checkout
    (wheel,) = tmp_path.glob("stdiff-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stdiff/bench/__init__.py" in names and "stdiff/bench/speed/training.py" in names
    assert "stdiff/configs/quickstart.yaml" in names
    assert not [n for n in names if n.startswith("stdiff/bench/results/")]



def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings."""
    import re

    heads = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_of_the_readme_and_the_guide_leads_somewhere():
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "stdiff" / "guide").glob("*.md"))]
    assert len(pages) > 5
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            goal = (page.parent / path).resolve() if path else page
            if not goal.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and anchor not in _anchors(goal.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
