"""The few lines printed at the end of ``fit``, ``validate`` and ``test``: how far the model is
from the truth, in plain words, and where the rest is written. Again for a finished run:

    python -m stdiff.callbacks.summary lightning_logs/version_0      # or …/test_0, or a metrics.json

The verdict reads the Gaussian-fit KL excess of the generated samples (their KL to the truth
minus that of as many exact samples, ``samples/kl_excess``) against two yardsticks:

- the noise of the KL of ``n`` exact samples in dimension ``d``: its standard deviation
  (``kl_noise``, about ``sqrt(d(d+3)) / (2n)``; its mean, the floor, is about ``d(d+3)/(4n)``): an
  excess within two of these is *indistinguishable from exact samples* at this sample size;
- one hundredth of a nat per dimension (``0.01·d``): below it the samples are *close to the
  truth* (the quickstart's 2000 samples in d = 256: 2.56 nats; what its seeds reach is in the
  README's "Expected result"); above it they are *not at the truth yet*.
"""

from __future__ import annotations

import math

import torch

CLOSE_PER_DIM = 0.01  # nats per dimension


def kl_noise(d: int, n: int) -> float:
    """Standard deviation of the Gaussian-fit KL of ``n`` exact samples in dimension ``d``.

    Exact for ``stdiff.metrics.gaussian_fit_kl`` (empirical mean, unbiased covariance): in whitened
    coordinates 2·KL = tr Ĉ − log det Ĉ − d + ‖m̂‖², with Ĉ Wishart of m = n − 1 degrees of freedom
    scaled by 1/m, independent of m̂ ~ N(0, I/n); Var(log det Ĉ) = Σᵢ ψ′((m − i + 1)/2),
    Var(tr Ĉ) = Cov(tr Ĉ, log det Ĉ) = 2d/m and Var ‖m̂‖² = 2d/n². To first order in d/n this is
    √(d(d+3))/(2n)."""
    m = n - 1
    i = torch.arange(1, d + 1, dtype=torch.float64)
    var_cov = torch.special.polygamma(1, (m - i + 1) / 2).sum().item() - 2 * d / m
    return 0.5 * math.sqrt(var_cov + 2 * d / n**2)


def verdict_level(kl_excess: float, d: int, n: int) -> str:
    """``indistinguishable``, ``close`` or ``not``: the verdict's level, as ``verdict`` words it."""
    if not math.isfinite(kl_excess):
        return "not"
    if kl_excess <= 2 * kl_noise(d, n):
        return "indistinguishable"
    return "close" if kl_excess <= CLOSE_PER_DIM * d else "not"


def verdict(kl_excess: float, d: int, n: int) -> str:
    """One sentence: whether samples with this Gaussian-fit KL excess reached the truth."""
    noise, level = kl_noise(d, n), verdict_level(kl_excess, d, n)
    if not math.isfinite(kl_excess):
        return "NOT at the truth: the samples hold NaN or inf"
    if level == "indistinguishable":
        return (f"reached the truth: the samples are indistinguishable from exact ones at n = {n} "
                f"(KL excess {kl_excess:.3g} within 2 × its noise {noise:.2g})")  # fmt: skip
    if level == "close":
        return (f"close to the truth: KL excess {kl_excess:.3g} nats ({kl_excess / d:.2g} per dimension, below "
                f"{CLOSE_PER_DIM} × d = {CLOSE_PER_DIM * d:.3g}), though more than its noise ({noise:.2g}) above "
                "exact samples")  # fmt: skip
    return (f"NOT at the truth yet: KL excess {kl_excess:.3g} nats is above {CLOSE_PER_DIM} × d = "
            f"{CLOSE_PER_DIM * d:.3g}; train longer (trainer.max_steps) or see \"Why a well-fitted score gave poor "
            "samples\" in stdiff/guide/models.md")  # fmt: skip


def summary(results: dict[str, float], stage: str, d: int, num_samples: int, run_dir: str, exact_truth: bool = True,
            checkpoint: dict | None = None, step: int | None = None, model: str = "the model") -> str:  # fmt: skip
    """The end-of-run lines from the diagnostics' ``results`` (keys ``val/…`` or ``test/…``)."""
    prefix = "test" if stage == "test" else "val"

    def get(name: str) -> float | None:
        value = results.get(f"{prefix}/{name}")
        return None if value is None else float(value)

    against = "the exact GP" if exact_truth else "the fitted Gaussian reference (not the data's law)"
    if checkpoint:
        where = f"checkpoint {checkpoint['path']} (step {checkpoint['global_step']})"
    else:
        where = f"step {step}" if stage == "fit" else f"{model}, no checkpoint"
    lines = [f"stdiff {stage}: {where}, against {against}"]
    score, excess_loss = get("score_rel_error"), get("excess_loss")
    if score is not None:
        lines.append(f"  score error       {score:.4g}   E‖ŝ − s*‖² / E‖s*‖² over noise levels (0: the exact score)")
    if excess_loss is not None:
        loss, exact = get("loss"), get("loss_exact")
        beside = f" ({prefix}/loss {loss:.4g} − exact model's {exact:.4g})" if None not in (loss, exact) else ""
        lines.append(f"  excess loss       {excess_loss:.3g}{beside}: what is left to learn")
    kl, kl_floor, kl_excess = get("samples/kl"), get("samples/kl_floor"), get("samples/kl_excess")
    if kl_excess is not None and kl is not None and kl_floor is not None:
        lines.append(f"  sample KL excess  {kl_excess:.3g}   Gaussian-fit KL {kl:.4g} of {num_samples} samples, "
                     f"{kl_floor:.4g} for as many exact samples (noise ±{kl_noise(d, num_samples):.2g})")  # fmt: skip
        white = get("samples/whitened_norm_excess")
        if white is not None:
            lines.append(f"  whitened norm     {white:+.3g}   excess of ‖K^(-1/2)(x − μ)‖²/d over exact samples' (0 ideal)")
        lines.append(f"  verdict: {verdict(kl_excess, d, num_samples)}")
    elif get("samples/whitened_norm_excess") is not None:
        lines.append(f"  whitened norm     {get('samples/whitened_norm_excess'):+.3g}   (no full-covariance KL: it needs "
                     f"more than 2·d = {2 * d} samples and d ≤ 1024; see the structured metrics)")  # fmt: skip
    tasks = sorted({k.split("/")[2] for k in results if k.startswith(f"{prefix}/conditional/") and
                    k.endswith("/crps_ratio")})  # fmt: skip
    for task in tasks:
        c = {k.rsplit("/", 1)[1]: v for k, v in results.items() if k.startswith(f"{prefix}/conditional/{task}/")}
        lines.append(f"  {task:<17} CRPS / {'Bayes' if exact_truth else 'reference'} {c['crps_ratio']:.4g}, coverage "
                     f"50 % {c.get('coverage50', math.nan):.3g} and 90 % {c.get('coverage90', math.nan):.3g}, spread "
                     f"{c.get('spread', math.nan):.3g} (1: intervals of the right width)")  # fmt: skip
    if kl_excess is None and get("samples/whitened_norm_excess") is None and not tasks:
        lines.append("  no sample metrics this time (diagnostics.sample_every=0, or a conditional model without "
                     "data.init_args.task)")  # fmt: skip
    cost = _cost_line(results, stage, prefix)
    if cost:
        lines.append(cost)
    lines.append(f"  all metrics: {run_dir}/metrics.json; figures: {run_dir}/figures/; tensorboard --logdir "
                 f"{_logdir(run_dir)}")  # fmt: skip
    return "\n".join(lines)


def _cost_line(results: dict[str, float], stage: str, prefix: str) -> str | None:
    """Where the wall time went: the fit's validations against the whole fit, or this validation's parts."""
    key = "fit/validation_seconds" if stage == "fit" else f"{prefix}/seconds"
    if key not in results:
        return None
    names = [("sampling", "sampling"), ("metrics", "metrics"), ("figures", "figures"), ("batches", "loss batches"),
             ("other", "checkpoints and the rest")]  # fmt: skip
    parts = ", ".join(f"{name} {results[f'{key}/{part}']:.3g} s" for part, name in names if f"{key}/{part}" in results)
    total = results[key]
    if stage == "fit" and "fit/seconds" in results:
        wall = results["fit/seconds"]
        return (f"  time              validations {total:.3g} s of the fit's {wall:.3g} s ({100 * total / wall:.0f} %): "
                f"{parts}")  # fmt: skip
    return f"  time              {total:.3g} s: {parts}"


def _logdir(run_dir: str) -> str:
    """The folder of runs above ``run_dir`` (``lightning_logs`` for ``lightning_logs/version_0/test_0``)."""
    parts = run_dir.replace("\\", "/").rstrip("/").split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "lightning_logs":
            return "/".join(parts[: i + 1])
    return run_dir


def summary_of_run(path: str) -> str:
    """The summary of a finished run, from its ``metrics.json`` (and, for runs written before
    ``metrics.json`` recorded them, the dimension and sample count from its ``config.yaml``)."""
    import json
    from pathlib import Path

    import yaml

    file = Path(path) / "metrics.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise SystemExit(f"no metrics.json at {path}: pass a run directory (lightning_logs/version_N) or its metrics.json")
    written = json.loads(file.read_text())
    info = written.get("diagnostics") or {}
    if "dim" not in info:
        config = yaml.safe_load((file.parent / "config.yaml").read_text())
        data = config["data"]["init_args"]
        info = {"dim": data["frames"] * math.prod(data.get("space_shape") or [1]),
                "num_samples": config["diagnostics"]["num_samples"]}  # fmt: skip
    metrics = {k: v for k, v in written["metrics"].items() if v is not None}
    stage = written["stage"]
    return summary(metrics, stage, info["dim"], info["num_samples"], str(file.parent), info.get("exact_truth", True),
                   written.get("checkpoint"), written["global_step"], written.get("model") or "the model")  # fmt: skip


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m stdiff.callbacks.summary <run directory or metrics.json>")
    print(summary_of_run(sys.argv[1]))
