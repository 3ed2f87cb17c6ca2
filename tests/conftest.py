import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture
def quickstart():
    return QUICKSTART
