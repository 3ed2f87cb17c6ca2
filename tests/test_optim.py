"""``WarmupCosine``: its factors in closed form, and the run length filled in from the trainer."""

import math

import pytest
import torch
from conftest import QUICKSTART

from stdiff.cli import StdiffCLI
from stdiff.optim import WarmupCosine


def optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_warmup_then_cosine_to_the_final_ratio():
    s = WarmupCosine(optimizer(), warmup_steps=10, total_steps=110, final_ratio=0.1)
    assert s.factor(0) == pytest.approx(0.1) and s.factor(9) == pytest.approx(1.0)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert s.factor(110) == pytest.approx(0.1) and s.factor(500) == pytest.approx(0.1)


def test_run_length_comes_from_the_trainer():
    cli = StdiffCLI(args=["--config", str(QUICKSTART), "--trainer.max_steps=40",
                          "--model.lr_scheduler=stdiff.optim.WarmupCosine"], run=False)  # fmt: skip
    cli.trainer.strategy.connect(cli.model)
    cli.model.trainer = cli.trainer
    scheduler = cli.model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, WarmupCosine) and scheduler.total_steps == 40


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"warmup_steps": -1}, "WarmupCosine.warmup_steps must be an integer >= 0, got -1"),
        ({"total_steps": 0}, "WarmupCosine.total_steps must be an integer >= 1, got 0"),
        ({"final_ratio": 2.0}, r"WarmupCosine.final_ratio must lie in \[0.0, 1.0\], got 2.0"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosine(optimizer(), **kwargs)
