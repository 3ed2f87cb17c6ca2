"""Experiment 1: error against the number of training samples n (the paper's sample-complexity
figure), for several temporal decays, with seeds and error bars, and the fitted log-log slope
against the theory's −1/2.

Each model trains on a fixed set of n samples (``data.num_train``) and is scored on held-out
data: the relative score error against the exact score (``val/score_rel_error``), and on generated
samples the excess Gaussian-fit KL and W2 over the same statistics of as many exact samples.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from stdiff.paper.common import figure, loglog_slope, metrics, run_overrides, save, train, write_csv

PE = "--data.init_args.temporal=PoweredExponential"
SETTINGS_FULL = {
    **{
        f"PE nu={nu} l={ell}": [
            PE,
            f"--data.init_args.temporal.init_args.power={nu}",
            f"--data.init_args.temporal.init_args.lengthscale={ell}",
        ]
        for nu in (0.5, 1.0, 2.0)
        for ell in (2.0, 8.0)
    },
    "Cauchy beta=1": [
        "--data.init_args.temporal=GeneralizedCauchy",
        "--data.init_args.temporal.init_args.lengthscale=4",
        "--data.init_args.temporal.init_args.alpha=2",
        "--data.init_args.temporal.init_args.beta=1",
    ],
}
FULL = {
    "n": [round(10**e) for e in (3.0, 3.5, 4.0, 4.5, 5.0)],
    "settings": list(SETTINGS_FULL),
    "seeds": 3,
    "overrides": [],
}
CPU = {
    # 600 steps of 64 samples: beyond n ≈ 10^3 the optimisation, not the data, limits the error
    "n": [round(10**e) for e in (1.5, 2.0, 2.5, 3.0)],
    "settings": ["PE nu=0.5 l=2.0", "PE nu=1.0 l=8.0", "PE nu=2.0 l=8.0", "Cauchy beta=1"],
    "seeds": 2,
    "steps": 600,
    "overrides": [],  # the CPU settings: configs/paper/cpu/sample_complexity.yaml
}
METRICS = {
    "score_rel_error": "val/score_rel_error",
    "kl_excess": "val/samples/kl_excess",
    "w2_excess": "val/samples/w2_excess",
}


def run(out, scale: dict, **_) -> dict:
    rows = []
    overrides = run_overrides(scale)
    total = len(scale["settings"]) * len(scale["n"]) * scale["seeds"]
    done = 0
    for setting in scale["settings"]:
        for n in scale["n"]:
            for seed in range(scale["seeds"]):
                tag = f"{setting.replace(' ', '_').replace('=', '')}/n{n}/seed{seed}"
                args = [
                    *SETTINGS_FULL[setting],
                    *overrides,
                    f"--data.init_args.num_train={n}",
                    f"--seed_everything={seed}",
                    f"--data.init_args.seed={seed}",
                ]
                run_dir, seconds = train(out, tag, scale["configs"], args)
                m = metrics(run_dir)
                rows.append(
                    {
                        "setting": setting,
                        "n": n,
                        "seed": seed,
                        "wall_s": round(seconds, 1),
                        **{k: m.get(v) for k, v in METRICS.items()},
                        "run": str(run_dir.relative_to(out)),
                    }
                )
                done += 1
                print(
                    f"[{done}/{total}] {setting} n={n} seed={seed}: score error {rows[-1]['score_rel_error']:.4g}, "
                    f"KL excess {rows[-1]['kl_excess']}, {seconds:.0f} s",
                    flush=True,
                )
                write_csv(out / "results.csv", rows)  # after every run: nothing lost if stopped
    return summarize(out, rows)


def summarize(out, rows: list[dict]) -> dict:
    summary = {"theory_slope": -0.5}
    fig, axes = figure(1, len(METRICS), size=(4.3, 3.4))
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["setting"]][r["n"]].append(r)
    for col, key in enumerate(METRICS):
        ax = axes[0, col]
        for setting, per_n in by.items():
            ns = sorted(per_n)
            values = [[r[key] for r in per_n[n] if r[key] is not None] for n in ns]
            mean = np.array([np.mean(v) if v else np.nan for v in values])
            std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
            ax.errorbar(ns, mean, yerr=std, marker="o", capsize=3, label=setting)
            ok = [(n, v) for n, v in zip(ns, mean) if np.isfinite(v) and v > 0]
            if len(ok) >= 2:
                slope, se = loglog_slope(*zip(*ok))
                summary.setdefault(key, {})[setting] = {
                    "slope": slope,
                    "slope_se": se,
                    "mean_by_n": dict(zip(map(str, ns), map(float, mean))),
                }
        ax.set(xscale="log", yscale="log", xlabel="n (training samples)", ylabel=key)
        ax.grid(alpha=0.3, which="both")
        ref_n = np.array(sorted({r["n"] for r in rows}), float)
        first = [v for v in (summary.get(key, {}).values())]
        if first:
            y0 = np.nanmean([next(iter(s["mean_by_n"].values())) for s in first])
            ax.plot(ref_n, y0 * (ref_n / ref_n[0]) ** -0.5, "k--", lw=0.8, label="n^(-1/2)")
    axes[0, 0].legend(fontsize=6)
    save(fig, out / "sample_complexity.png")
    for key in METRICS:
        slopes = [s["slope"] for s in summary.get(key, {}).values()]
        if slopes:
            summary[f"{key}/mean_slope"] = float(np.mean(slopes))
    return summary
