"""How the real-data examples score a model: two tasks on held-out windows, four methods, the same
proper scores.

- **Tasks** (``tasks``): *forecast* the last frames of each window from its first ``context``
  frames, and *impute* one spatial point (drawn per case) hidden for the whole window with the
  others seen. Each case observes what the mask shows *and* the data has; only hidden entries
  that were really observed are scored.
- **Methods**: the model (``model.sample_conditional``), the fitted Gaussian reference's exact
  posterior (``stdiff.metrics.conditional.posterior_samples``), climatology (each hidden entry a
  random training value of its point) and persistence (the last observed value of its point plus
  a training change over that lead; climatology where nothing came before).
- **Scores** (``score``): CRPS, RMSE of the ensemble mean, 50 % / 90 % interval coverage and
  spread/skill, in the data's units (standardised values times the point's ``std``); CRPS by lead
  and per case, for ``ratio``'s bootstrap standard error over the cases.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def tasks(x: torch.Tensor, generator: torch.Generator, context: int | None = None) -> dict[str, torch.Tensor]:
    """Per-case masks (True = observed) of the two tasks on cases ``x (n, T, S)``: forecast the
    frames after the first ``context`` (default T // 2); impute one point (drawn per case) for the
    whole window."""
    n, t, s = x.shape
    forecast = torch.zeros(n, t, s, dtype=torch.bool)
    forecast[:, : t // 2 if context is None else context] = True
    hidden = torch.randint(s, (n,), generator=generator)
    impute = torch.ones(n, t, s, dtype=torch.bool)
    impute[torch.arange(n), :, hidden] = False
    return {"forecast": forecast, "impute": impute}


def climatology(train: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` samples per case: each hidden entry a random training value of its point."""
    n, t, s = x.shape
    out = torch.empty(n, k, t, s)
    for j in range(s):
        pool = train[..., j][~train[..., j].isnan()]
        out[..., j] = pool[torch.randint(len(pool), (n, k, t), generator=g)]
    return out


def persistence(train: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` samples per case: each hidden entry the last observed value of its point before it
    plus a training change over that lead (climatology where nothing came before)."""
    n, t, s = x.shape
    out = climatology(train, x, mask, k, g)
    seen = mask & ~x.isnan()
    for j in range(s):
        series = train[..., j]
        changes_at: dict[int, torch.Tensor] = {}  # training changes over each lead, made once
        for i in range(n):
            last = None
            for h in range(t):
                if seen[i, h, j]:
                    last = h
                    continue
                if last is None:
                    continue
                lead = h - last
                if lead not in changes_at:
                    diff = (series[:, lead:] - series[:, :-lead]).reshape(-1)
                    changes_at[lead] = diff[~diff.isnan()]
                changes = changes_at[lead]
                out[i, :, h, j] = x[i, last, j] + changes[torch.randint(len(changes), (k,), generator=g)]
    return out


def score(samples: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, std: torch.Tensor) -> dict:
    """CRPS, coverage and spread/skill of ``samples (n, k, T, S)`` on the hidden, really observed
    entries of ``x (n, T, S)`` (standardised units; ``std (S,)`` back to the data's units)."""
    from stdiff.metrics import crps

    scored = ~mask & ~x.isnan()
    n, k, t, s = samples.shape
    per = samples.permute(0, 2, 3, 1)[scored].double() * std.expand(n, t, s)[scored][:, None]  # (N, k), data units
    target = x[scored].double() * std.expand(n, t, s)[scored]
    per_entry = crps(per, target)
    lead = torch.arange(t)[None, :, None].expand(n, t, s)[scored]
    case = torch.arange(n)[:, None, None].expand(n, t, s)[scored]
    lo50, hi50, lo90, hi90 = torch.quantile(per, torch.tensor([0.25, 0.75, 0.05, 0.95], dtype=per.dtype), 1)
    rmse = (per.mean(1) - target).pow(2).mean().sqrt()
    return {"crps": per_entry.mean().item(), "coverage50": ((target >= lo50) & (target <= hi50)).double().mean().item(),
            "coverage90": ((target >= lo90) & (target <= hi90)).double().mean().item(),
            "spread_skill": (per.var(1).mean().sqrt() / rmse).item() * math.sqrt((k + 1) / k) if k > 1 else math.nan,
            "rmse": rmse.item(), "entries": int(scored.sum()),
            "crps_by_lead": [per_entry[lead == h].mean().item() for h in torch.unique(lead).tolist()],
            "crps_sum_by_case": torch.zeros(n, dtype=torch.float64).index_add_(0, case, per_entry).tolist(),
            "entries_by_case": torch.bincount(case, minlength=n).tolist()}  # fmt: skip


def training_windows(data, every: int) -> torch.Tensor:
    """Every ``every``-th training window of ``data`` (the baselines' pool of values and changes)."""
    windows = data.training_set()
    return torch.stack([windows[i] for i in range(0, len(windows), every)])


def evaluate(model, data, k: int = 100, context: int | None = None, label: str = "DiT", seed: int = 0,
             baselines: bool = True, stage: str = "test") -> dict:  # fmt: skip
    """Scores of ``model`` (and, with ``baselines``, the fitted Gaussian, climatology and
    persistence) on both tasks over the ``stage`` windows of ``data``: ``{task: {method: score}}``
    and the model's sampling seconds per task."""
    from stdiff.metrics.conditional import posterior_samples

    x = data.evaluation_samples(stage)  # (n, T, S), standardised, NaN = missing
    std = data.std.reshape(1, 1, -1)
    train = training_windows(data, data.frames) if baselines else None
    out: dict = {}
    for name, mask in tasks(x, torch.Generator().manual_seed(seed), context).items():
        masks = mask & ~x.isnan()
        observed = torch.nan_to_num(x)
        start = time.perf_counter()
        with torch.no_grad():
            drawn = model.sample_conditional(observed.repeat_interleave(k, 0), masks.repeat_interleave(k, 0),
                                             torch.Generator().manual_seed(seed + 1)).reshape(len(x), k, *x.shape[1:])  # fmt: skip
        methods = {label: drawn.float().cpu()}
        if baselines:
            methods["fitted Gaussian"] = posterior_samples(data.truth, x, masks, k, torch.Generator().manual_seed(seed + 2)).float()
            methods["climatology"] = climatology(train, x, masks, k, torch.Generator().manual_seed(seed + 3))
            methods["persistence"] = persistence(train, x, masks, k, torch.Generator().manual_seed(seed + 4))
        out[name] = {m: score(s, x, mask, std) for m, s in methods.items()}
        out[name][label]["seconds"] = time.perf_counter() - start
        out[name]["_samples"] = methods
    return out


def ratio(a: dict, b: dict, resamples: int = 2000) -> tuple[float, float]:
    """CRPS ratio a / b and its standard error from resampling the cases (both scored on the same entries)."""
    sa, sb = np.array(a["crps_sum_by_case"]), np.array(b["crps_sum_by_case"])
    picks = np.random.default_rng(0).integers(len(sa), size=(resamples, len(sa)))
    boot = sa[picks].sum(1) / sb[picks].sum(1)
    return float(sa.sum() / sb.sum()), float(boot.std())


def table(results: dict, unit: str, model: str = "DiT") -> str:
    """``{task: {method: score}}`` as a markdown table, and the model's CRPS ratios to each method."""
    lines = [f"| task | method | CRPS {unit} | RMSE {unit} | coverage 50 % | coverage 90 % | spread/skill |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, methods in results.items():
        for m, r in methods.items():
            if m.startswith("_"):
                continue
            lines.append(f"| {task} | {m} | {r['crps']:.4f} | {r['rmse']:.4f} | {r['coverage50']:.3f} | "
                         f"{r['coverage90']:.3f} | {r['spread_skill']:.3f} |")  # fmt: skip
    lines.append("")
    for task, methods in results.items():
        parts = [f"{r:.3f} ± {se:.3f} × {m}" for m in methods if m != model and not m.startswith("_")
                 for r, se in [ratio(methods[model], methods[m])]]  # fmt: skip
        lines.append(f"- {task}: {model} CRPS = {', '.join(parts)} (± a bootstrap standard error over the cases)")
    return "\n".join(lines) + "\n"


def main(example, argv: list[str] | None, write: Callable[[dict, Path], list[Path]]) -> None:
    """The command line of an example module (``prepare``, ``fit_command``, ``evaluate``):
    ``all`` | ``prepare`` | ``score`` OUT, the rest of the arguments passed to ``stdiff fit``;
    ``write(results, out)`` writes the scores and returns the files written."""
    name = example.__spec__.name if example.__spec__ is not None else example.__name__  # run as __main__ too
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=example.__doc__.split("\n")[0])
    parser.add_argument("step", choices=["all", "prepare", "score"])
    parser.add_argument("out", type=Path, help="folder for the data, the run and the results")
    parser.add_argument("--samples", type=int, default=100, help="samples per case (default 100)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"],
                        help="the checkpoint scored: best (default: chosen by validation forecasts, the fitted Gaussian "
                        "at step 0 a candidate; stdiff.callbacks.BestCheckpoint) or last (the end of the fit)")
    args, fit_args = parser.parse_known_args(argv)  # the rest: `stdiff fit` options, e.g. --trainer.max_steps=500
    out = args.out.resolve()
    if args.step in ("all", "prepare"):
        example.prepare(out)
    if args.step == "all":
        from stdiff.cli import main as stdiff

        stdiff(["fit", *example.fit_command(out), *fit_args])
    if args.step in ("all", "score"):
        runs = sorted((out / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        if not runs:
            sys.exit(f"no run in {out / 'lightning_logs'}: fit first (`all`, or stdiff fit {' '.join(example.fit_command(out))})")
        results = example.evaluate(out, runs[-1], args.samples, args.checkpoint)
        results["run"] = str(runs[-1])
        written = write(results, out)
        print(f"wrote {', '.join(map(str, written))}")
