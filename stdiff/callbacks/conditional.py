"""The conditional part of ``GPDiagnostics``: a model's conditional samples of cases against the
truth's exact posterior, with a fan chart; and the precision sampling outside the steps runs at."""

from __future__ import annotations

import torch

from stdiff.callbacks.reliability import stop_if_signalled
from stdiff.seeding import DIAGNOSTICS, derive_seed, generator


def run_precision(trainer):
    """The run's precision for sampling outside the training and evaluation steps, where Lightning
    does not apply it: ``bf16-mixed`` autocasts the network's matmuls to bf16 (as in training),
    while the sampler's state and updates stay in float32 (the network's bf16 output is promoted
    when it meets them). The likelihood ODE does not use this (``LikelihoodReport``)."""
    return trainer.precision_plugin.forward_context()


def conditional_metrics(diagnostics, trainer, pl_module, stage: str, task) -> dict[str, float]:
    """Conditional samples of cases (exact draws, or held-out windows where the truth is a fitted
    reference), observed at one mask of the task and wherever present, against the posterior
    (``stdiff.metrics.conditional_report``); a fan chart of the first case. Against a fitted
    reference the ``…_exact`` statistics are logged as ``…_reference``."""
    from stdiff.metrics import conditional_report

    n, k, shape = diagnostics.conditional_cases, diagnostics.conditional_samples, diagnostics.truth.sample_shape
    x = trainer.datamodule.conditional_cases(n, generator(diagnostics.seed, DIAGNOSTICS, 4), stage)
    n = len(x)
    mask = task.draw(1, shape, generator(diagnostics.seed, DIAGNOSTICS, 5))[0]
    if x.isnan().any():  # missing values: each case observes what the task shows and the data has
        mask = mask.expand(n, *shape) & ~x.isnan()
    cases = torch.nan_to_num(x)
    observed = cases.repeat_interleave(k, 0)  # (n·k, T, *space): case i's k samples together
    masks = mask.repeat_interleave(k, 0) if mask.ndim == len(shape) + 1 else mask.expand(len(observed), *shape)
    g = generator(diagnostics.seed, DIAGNOSTICS, 6, device=pl_module.device)
    with diagnostics.clock.part("sampling"), run_precision(trainer):
        chunks = []
        for o, m in zip(observed.split(512), masks.split(512)):
            stop_if_signalled(trainer)
            chunks.append(pl_module.sample_conditional(o, m, g).float().cpu())
    samples = torch.cat(chunks).reshape(n, k, *shape)
    report = conditional_report(diagnostics.truth, x, mask, samples, derive_seed(diagnostics.seed, DIAGNOSTICS, 7),
                                diagnostics.conditional_estimator)  # fmt: skip
    if diagnostics.figures and trainer.is_global_zero:
        from stdiff.callbacks.figures import fan_chart
        from stdiff.metrics.conditional import posterior_samples

        first = mask[0] if mask.ndim == len(shape) + 1 else mask
        with diagnostics.clock.part("figures"):
            exact = posterior_samples(diagnostics.truth, x[:1], first, k, generator(diagnostics.seed, DIAGNOSTICS, 8))[0]
            fan = fan_chart(cases[0], first, samples[0], exact, repr(task))
            diagnostics.save_figure(trainer, f"{stage}_conditional_fan", fan)
    prefix = f"{stage}/conditional/{type(task).__name__}"
    exact_name = "_exact" if getattr(trainer.datamodule, "truth_is_exact", True) else "_reference"
    values = {f"{prefix}/{key.replace('_exact', exact_name)}": float(v) for key, v in report.items()
              if isinstance(v, (int, float))}  # fmt: skip
    for key in ("crps_by_frame", "spread_by_frame"):
        values.update({f"{prefix}/{key}/{f}": c for f, c in zip(report["frames"], report[key])})
    return values

