"""Per-step cost of what stdiff's training step adds to a hand-written one, piece by piece, on
the configured model (milliseconds per step; median over the steps of a short run):

    python -m stdiff.bench step_hooks [--config configs/quickstart.yaml] [--steps 200]

- ``ema_lightning`` / ``ema_hand_written`` / ``ema_stdiff``: one EMA update as Lightning's
  ``EMAWeightAveraging`` does it (``AveragedModel`` with a per-tensor ``avg_fn``), as the
  hand-written loop of ``python -m stdiff.bench`` does it (``AveragedModel`` with the foreach
  ``multi_avg_fn``), and as ``stdiff.callbacks.EMA`` does it (one foreach lerp on lists made once);
- ``guard_walk_module`` / ``guard_walk_cached``: listing the gradients by walking the module tree
  on every step (as NonFiniteGuard did) and from a list made once (as it does now);
- ``guard_check_total_norm`` / ``guard_check``: the non-finite check itself (one reduction,
  isfinite, one host sync) through ``torch.nn.utils.get_total_norm`` (as NonFiniteGuard did) and
  through the stacked per-tensor norms it uses now;
- ``log_call``: one ``LightningModule.log`` call inside a running ``Trainer`` (stdiff now makes
  it only on the steps Lightning writes, every ``log_every_n_steps``);
- ``progress_bar_lightning`` / ``progress_bar_stdiff``: the progress bar's work after each step,
  Lightning's TQDM bar (a redraw every step) and stdiff's ``ProgressBar`` (a redraw at most every
  0.25 s), output to /dev/null.

Prints one JSON line.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import lightning as L
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

from stdiff.bench.speed.training import TRAINING_ONLY, build
from stdiff.callbacks import EMA
from stdiff.callbacks.reliability import _total_norm


def per_call_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


class _Probe(L.Callback):
    """Times one extra ``log`` call per step and the progress bar's per-step update."""

    def __init__(self) -> None:
        self.log_ms, self.bar_ms = [], []

    def on_train_start(self, trainer, pl_module):
        bar = trainer.progress_bar_callback
        original = bar.on_train_batch_end

        def timed(*args, **kwargs):
            start = time.perf_counter()
            original(*args, **kwargs)
            self.bar_ms.append(1000 * (time.perf_counter() - start))

        bar.on_train_batch_end = timed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"].detach()
        start = time.perf_counter()
        pl_module.log("probe/loss", loss)
        self.log_ms.append(1000 * (time.perf_counter() - start))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    root = tempfile.mkdtemp(prefix="stdiff-hooks-")
    overrides = [f"--trainer.max_steps={args.steps}", f"--trainer.default_root_dir={root}",
                 "--trainer.enable_progress_bar=true", *TRAINING_ONLY]  # fmt: skip

    def probed_fit(extra: list[str]):
        cli = build([args.config], [*overrides, *extra])
        probe = _Probe()
        cli.trainer.callbacks.append(probe)
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return cli, probe

    _, lightning_bar = probed_fit(["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"])
    cli, probe = probed_fit([])
    module = cli.model
    ema = next(cb for cb in cli.trainer.callbacks if isinstance(cb, EMA))
    for p_ in module.parameters():  # gradients as after a backward pass
        p_.grad = torch.randn_like(p_)
    slow = AveragedModel(module, avg_fn=get_ema_avg_fn(0.999), use_buffers=True)
    fast = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    slow.update_parameters(module), fast.update_parameters(module)  # the first update only copies
    cached = [p_ for p_ in module.parameters() if p_.requires_grad]
    n = args.steps

    def check():
        norm = _total_norm([p_.grad for p_ in cached if p_.grad is not None])
        return bool(~torch.isfinite(norm).all())

    def check_total_norm():
        norm = torch.nn.utils.get_total_norm([p_.grad for p_ in cached if p_.grad is not None])
        return bool(~torch.isfinite(norm))

    result = {
        "config": args.config,
        "parameters": sum(p_.numel() for p_ in cached),
        "tensors": len(cached),
        "ema_lightning": per_call_ms(lambda: slow.update_parameters(module), n),
        "ema_hand_written": per_call_ms(lambda: fast.update_parameters(module), n),
        "ema_stdiff": per_call_ms(lambda: ema._update(module), n),
        "guard_walk_module": per_call_ms(lambda: [p_.grad for p_ in module.parameters() if p_.grad is not None], n),
        "guard_walk_cached": per_call_ms(lambda: [p_.grad for p_ in cached if p_.grad is not None], n),
        "guard_check_total_norm": per_call_ms(check_total_norm, n),
        "guard_check": per_call_ms(check, n),
        "log_call": statistics.median(probe.log_ms + lightning_bar.log_ms),
        "progress_bar_lightning": statistics.mean(lightning_bar.bar_ms),
        "progress_bar_stdiff": statistics.mean(probe.bar_ms),  # means: stdiff skips most redraws
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), file=sys.stdout)


if __name__ == "__main__":
    main()
