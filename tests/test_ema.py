"""stdiff's EMA callback averages exactly as Lightning's EMAWeightAveraging (only faster)."""

import torch
from conftest import QUICKSTART
from lightning.pytorch.callbacks import EMAWeightAveraging

from stdiff.callbacks import EMA
from stdiff.cli import StdiffCLI


def trained_state(tmp_path, ema_callback) -> dict:
    # Validation every 2 steps: Lightning swaps the average in and out (in place) around it.
    args = ["--config", str(QUICKSTART), "--trainer.max_steps=6", "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1", "--data.init_args.num_val=8", "--diagnostics.figures=false",
            "--diagnostics.sample_every=0",
            "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            "--model.denoiser.init_args.backbone.init_args.depth=1", "--data.init_args.batch_size=8",
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    cli = StdiffCLI(args=args, run=False)
    cli.trainer.callbacks = [ema_callback if isinstance(cb, EMAWeightAveraging) else cb for cb in cli.trainer.callbacks]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {k: v.clone() for k, v in cli.model.state_dict().items()}  # the average, copied in at the end


def test_ema_matches_lightnings_average(tmp_path):
    ema = EMA(decay=0.7)
    ours = trained_state(tmp_path / "a", ema)
    assert ema._pairs is not None and int(ema._average_model.n_averaged) == 6  # the fast path ran
    theirs = trained_state(tmp_path / "b", EMAWeightAveraging(decay=0.7))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    # ... and the average is not simply the trained weights (six steps moved them).
    raw = trained_state(tmp_path / "c", EMA(decay=0.0))
    assert any(not torch.allclose(ours[k], raw[k]) for k in ours)


def test_ema_rejects_a_decay_outside_0_1():
    import pytest

    with pytest.raises(ValueError, match=r"EMA.decay must be in \[0, 1\], got 1.5"):
        EMA(decay=1.5)
