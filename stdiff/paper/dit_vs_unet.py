"""Experiment 3: DiT against a temporal UNet of similar size on the same GP data: the temporal
correlation by lag of generated samples against the truth, the diagnostics, and how each degrades
as the sequence grows (T ∈ {16, 32, 64, 128})."""

from __future__ import annotations

from collections import defaultdict

from stdiff.metrics.distances import correlation_by_lag, factor_covariances
from stdiff.paper.common import figure, generate, load, metrics, run_overrides, save, train, write_csv

BACKBONE = "--model.denoiser.init_args.backbone"
BACKBONES = {
    "DiT": [f"{BACKBONE}=DiT"],
    "UNet": [f"{BACKBONE}=UNet", f"{BACKBONE}.init_args.width=64", f"{BACKBONE}.init_args.levels=3"],
}
FULL = {"frames": [16, 32, 64, 128], "samples": 2000, "overrides": []}
CPU = {
    "frames": [16, 32, 64],
    "samples": 600,
    "steps": 800,
    "overrides": [],  # the CPU settings: configs/paper/cpu/dit_vs_unet.yaml
    "dit": [f"{BACKBONE}.init_args.width=64", f"{BACKBONE}.init_args.depth=3"],
    "unet": [f"{BACKBONE}.init_args.width=32"],
}
METRICS = {
    "score_rel_error": "val/score_rel_error",
    "gamma_rel_frob_excess": "val/samples/gamma_rel_frob_excess",
    "corr_lag_max_error_excess": "val/samples/corr_lag_max_error_excess",
    "kl_excess": "val/samples/kl_excess",
}


def run(out, scale: dict, **_) -> dict:
    common = run_overrides(scale)
    rows, curves = [], defaultdict(dict)
    for frames in scale["frames"]:
        for name, args in BACKBONES.items():
            extra = [*args, *scale.get(name.lower(), []), *common, f"--data.init_args.frames={frames}"]
            run_dir, seconds = train(out, f"{name}_T{frames}", scale["configs"], extra)
            m = metrics(run_dir)
            model, data = load(run_dir, scale["configs"], extra)
            samples = generate(model, scale["samples"]).double()
            gamma_hat, _ = factor_covariances(data.truth, samples)
            curves[frames][name] = correlation_by_lag(gamma_hat)
            curves[frames]["truth"] = correlation_by_lag(data.truth.gamma)
            params = sum(p.numel() for p in model.denoiser.backbone.parameters())
            rows.append(
                {
                    "backbone": name,
                    "T": frames,
                    "params": params,
                    "wall_s": round(seconds, 1),
                    **{k: m.get(v) for k, v in METRICS.items()},
                }
            )
            print(f"{name} T={frames}: score error {rows[-1]['score_rel_error']:.4g}", flush=True)
            write_csv(out / "results.csv", rows)
    lag_rows = [
        {"T": f, "lag": h, **{k: float(v[h]) for k, v in c.items()}} for f, c in curves.items() for h in range(f)
    ]
    write_csv(out / "correlation_by_lag.csv", lag_rows)
    fig, axes = figure(1, len(curves) + 2, size=(3.6, 3.0))
    for col, (frames, c) in enumerate(curves.items()):
        ax = axes[0, col]
        for name, curve in c.items():
            ax.plot(curve.numpy(), "k--" if name == "truth" else "-", label=name)
        ax.set(title=f"T = {frames}", xlabel="lag", ylabel="temporal correlation")
        ax.legend(fontsize=7)
    for ax, key, label in (
        (axes[0, -2], "score_rel_error", "score error (all noise levels)"),
        (axes[0, -1], "corr_lag_max_error_excess", "correlation-by-lag error of samples"),
    ):
        for name in BACKBONES:
            pts = [(r["T"], r[key]) for r in rows if r["backbone"] == name]
            ax.plot(*zip(*pts), "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(scale["frames"], [str(f) for f in scale["frames"]])
        ax.minorticks_off()
        ax.set(xlabel="T", title=label)
        ax.legend(fontsize=7)
    save(fig, out / "dit_vs_unet.png")
    return {"by_T": {f"{r['backbone']} T={r['T']}": {k: r[k] for k in METRICS} for r in rows}}
