"""Conditional generation against the exact posterior (an extension of the paper): forecasting,
interpolation and imputation, each by

- a conditional DiT trained on a mixture of the three tasks (``configs/conditional/trained.yaml``),
  sampled with the experiment's stochastic sampler and with Heun's ODE sampler at the same number
  of network evaluations (the two give intervals of different widths),
- replacement (RePaint) and reconstruction guidance on an unconditional DiT of the same size,
- the same two methods with the exact model: their bias when the score is perfect,
- exact posterior samples: the floor of every statistic.

Each method's k samples of n cases are scored by ``stdiff.metrics.conditional_report``.
"""

from __future__ import annotations

import torch

from stdiff.conditioning import Forecast, Imputation, Interpolation, ReconstructionGuidance, Replacement, Trained
from stdiff.diffusion import ExactDenoiser
from stdiff.metrics import conditional_report, posterior_samples
from stdiff.paper.common import CONFIGS, figure, load, run_overrides, save, train, write_csv
from stdiff.sampling import Heun
from stdiff.seeding import SWEEP, generator

FULL = {"cases": 64, "samples": 100, "guidance_scale": 10.0, "overrides": []}
# At CPU scale the conditional model trains `conditional_factor` times as many steps as the
# unconditional one: it learns three tasks, and after the quickstart's 3000 steps its first
# forecast frame still has spread 1.64 (stdiff/guide/conditional.md).
CPU = {"steps": 3000, "conditional_factor": 4, "cases": 16, "samples": 64, "guidance_scale": 10.0, "overrides": []}
TASKS = {"forecast": Forecast(16), "interpolation": Interpolation(4), "imputation": Imputation(0.5)}
COLUMNS = ["crps", "crps_exact", "crps_ratio", "energy", "energy_exact", "coverage50", "coverage90", "spread", "kl",
           "kl_exact", "kl_excess", "w2", "w2_excess", "bias"]  # fmt: skip
FAN = "trained conditional DiT, Heun"  # the row whose samples are drawn as fan charts


def methods(conditional, unconditional, truth, scale: float) -> dict:
    """name -> (noise model, conditioning method, sampler); the unconditional run's sampler unless
    named (Heun with half the steps: as many network evaluations)."""
    exact, sampler = ExactDenoiser.from_gp(truth, unconditional.schedule), unconditional.sampler
    heun = Heun(max(sampler.steps // 2, 1), sampler.spacing, sampler.rho)
    return {
        f"trained conditional DiT, {type(sampler).__name__}": (conditional.denoiser, Trained(), sampler),
        FAN: (conditional.denoiser, Trained(), heun),
        "replacement, DiT": (unconditional.denoiser, Replacement(1), sampler),
        "guidance, DiT": (unconditional.denoiser, ReconstructionGuidance(scale), sampler),
        "replacement, exact model": (exact, Replacement(1), sampler),
        "guidance, exact model": (exact, ReconstructionGuidance(scale), sampler),
    }


def run(out, scale: dict, **_) -> dict:
    common = run_overrides(scale)
    factor = scale.get("conditional_factor", 1)
    longer = run_overrides({**scale, "steps": scale["steps"] * factor}) if scale.get("steps") else common
    conditional_cfg = [*scale["configs"], str(CONFIGS.parent / "conditional" / "trained.yaml")]
    cond_dir, cond_s = train(out, "conditional", conditional_cfg, longer)
    uncond_dir, uncond_s = train(out, "unconditional", scale["configs"], common)
    conditional, _ = load(cond_dir, conditional_cfg, longer)
    unconditional, data = load(uncond_dir, scale["configs"], common)
    truth, n, k = data.truth, scale["cases"], scale["samples"]
    rows, summary, fans = [], {"train_seconds": {"conditional": cond_s, "unconditional": uncond_s}}, {}
    for t, (task_name, task) in enumerate(TASKS.items()):
        x = truth.sample(n, generator(0, SWEEP, 10, t))
        mask = task.draw(1, truth.sample_shape, generator(0, SWEEP, 11, t))[0]
        observed = x.repeat_interleave(k, 0)
        for m, (name, (model, method, sampler)) in enumerate(
            methods(conditional, unconditional, truth, scale["guidance_scale"]).items()
        ):
            g = generator(0, SWEEP, 12, t, m)
            with torch.no_grad():
                draws = torch.cat([method.sample(sampler, model, o, mask.expand_as(o), g) for o in observed.split(512)])
            samples = draws.reshape(n, k, *truth.sample_shape)
            report = conditional_report(truth, x, mask, samples, seed=t)
            rows.append({"task": task_name, "method": name, **{c: report.get(c) for c in COLUMNS}})
            print(f"{task_name:13s} {name:34s} CRPS/Bayes {report['crps_ratio']:.3f}  coverage50 "
                  f"{report['coverage50']:.3f}  coverage90 {report['coverage90']:.3f}  spread {report['spread']:.3f}  KL excess "
                  f"{report.get('kl_excess', float('nan')):.3g}", flush=True)  # fmt: skip
            if name == FAN:
                fans[task_name] = (x[0], mask, samples[0])
                summary[f"{task_name}_lead_time_crps"] = dict(zip(report["frames"], report["crps_by_frame"]))
                summary[f"{task_name}_lead_time_spread"] = dict(zip(report["frames"], report["spread_by_frame"]))
                summary[f"{task_name}_lead_time_crps_exact"] = dict(
                    zip(report["frames"], report["crps_by_frame_exact"])
                )
        exact = posterior_samples(truth, x, mask, k, generator(0, SWEEP, 13, t))
        report = conditional_report(truth, x, mask, exact, seed=t)
        rows.append({"task": task_name, "method": "exact posterior", **{c: report.get(c) for c in COLUMNS}})
    write_csv(out / "results.csv", rows)
    _figures(out, rows, fans, truth, k)
    for row in rows:
        summary[f"{row['task']}/{row['method']}"] = {
            c: row[c] for c in ("crps_ratio", "coverage50", "coverage90", "spread", "kl_excess")
        }
    return summary


def _figures(out, rows, fans, truth, k) -> None:
    from stdiff.callbacks.figures import fan_chart

    bars(out, rows)
    for task_name, (x, mask, samples) in fans.items():
        exact = posterior_samples(truth, x[None], mask, k, generator(0, SWEEP, 14))[0]
        fan = fan_chart(x, mask, samples, exact, f"{FAN}, {task_name}")
        save(fan, out / f"fan_{task_name}.png")


def bars(out, rows) -> None:
    """``conditional.png``: CRPS ratio, 90 % coverage and spread of every method and task (``rows``
    as in ``results.csv``)."""
    names = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = figure(1, 3, size=(5.0, 3.4))
    width = 0.8 / len(names)
    panels = (("crps_ratio", "CRPS / Bayes-optimal CRPS", 1.0), ("coverage90", "coverage of 90 % intervals", 0.9),
              ("spread", "spread / posterior spread", 1.0))  # fmt: skip
    for ax, (key, ylabel, ref) in zip(axes[0], panels):
        for i, name in enumerate(names):
            mine = [r for r in rows if r["method"] == name]
            ax.bar([j + i * width for j in range(len(mine))], [float(r[key]) for r in mine], width, label=name)
        ax.axhline(ref, color="k", lw=0.8, ls="--")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(TASKS))], list(TASKS))
        ax.set_ylabel(ylabel)
    axes[0, 0].set_ylim(0.95, None)
    axes[0, 1].set_ylim(0.75, 0.95)
    axes[0, 2].set_ylim(0.8, None)
    axes[0, 0].legend(fontsize=6)
    save(fig, out / "conditional.png")
