"""Experiment 2: temporal attention maps beside Γ for several kernels (the paper's heatmaps), with
the alignment numbers of the diagnostics and two controls: the same network at random
initialisation, and a network trained on temporally white data (Γ = I) compared with the kernel.
"""

from __future__ import annotations

import torch

from stdiff.kernels import PoweredExponential
from stdiff.metrics.attention import attention_alignment
from stdiff.paper.common import attention_maps, figure, load, metrics, run_overrides, save, train, write_csv

T = "--data.init_args.temporal"
KERNELS = {
    "exponential (PE nu=1, l=4)": [f"{T}=PoweredExponential", f"{T}.init_args.lengthscale=4", f"{T}.init_args.power=1"],
    "PE nu=0.5, l=8": [f"{T}=PoweredExponential", f"{T}.init_args.lengthscale=8", f"{T}.init_args.power=0.5"],
    "generalized Cauchy": [f"{T}=GeneralizedCauchy", f"{T}.init_args.lengthscale=4", f"{T}.init_args.beta=1"],
    "periodic x exponential": [
        f"{T}=Product",
        (
            f"{T}.init_args.kernels=[{{class_path: Periodic, init_args: {{period: 8}}}}, "
            f"{{class_path: PoweredExponential, init_args: {{lengthscale: 16}}}}]"
        ),
    ],
}
REFERENCE = PoweredExponential(4.0, 1.0)  # the control's data are white; its attention is compared with this
CONTROL = "control: white data (Γ = I) vs exponential"
CONTROL_ARGS = [
    f"{T}=White",
    "--diagnostics.reference_kernel=PoweredExponential",
    "--diagnostics.reference_kernel.init_args.lengthscale=4",
    "--diagnostics.reference_kernel.init_args.power=1",
]
FULL = {"overrides": []}
CPU = {
    "steps": 1000,
    "overrides": [],  # the CPU settings: configs/paper/cpu/attention.yaml
}


def run(out, scale: dict, **_) -> dict:
    common = run_overrides(scale)
    rows, panels = [], []
    kernels = {k: v for k, v in KERNELS.items() if k in scale.get("kernels", KERNELS)}
    settings = {**kernels, CONTROL: CONTROL_ARGS}
    for i, (name, args) in enumerate(settings.items()):
        run_dir, seconds = train(out, f"setting{i}", scale["configs"], [*args, *common])
        m = metrics(run_dir)
        model, data = load(run_dir, scale["configs"], [*args, *common])
        frames = torch.arange(model.sample_shape[0], dtype=torch.float64)[:, None]
        reference = data.truth.gamma if name != CONTROL else REFERENCE(frames)
        data.setup("validate")
        maps = attention_maps(model, next(iter(data.val_dataloader()))[0])
        scores = {k: attention_alignment(v[None], reference)["pearson"].item() for k, v in maps.items()}
        best = max(scores, key=scores.get)
        rows.append(
            {
                "kernel": name,
                "pearson_best": m.get("val/attention/pearson_best"),
                "pearson_best_random_init": m.get("val/attention/random_init/pearson_best"),
                "score_rel_error": m.get("val/score_rel_error"),
                "best_layer_logsnr0": best,
                "pearson_logsnr0": scores[best],
                "wall_s": round(seconds, 1),
            }
        )
        print(
            f"{name}: Pearson {rows[-1]['pearson_best']:.3f} (random init {rows[-1]['pearson_best_random_init']:.3f})",
            flush=True,
        )
        panels.append((name, reference, maps[best], scores[best]))
        write_csv(out / "results.csv", rows)
    fig, axes = figure(2, len(panels), size=(2.9, 2.8))
    for col, (name, gamma, attn, r) in enumerate(panels):
        axes[0, col].imshow(gamma.numpy(), cmap="viridis")
        axes[0, col].set_title(f"Γ: {name}", fontsize=7)
        axes[1, col].imshow(attn.numpy(), cmap="viridis")
        axes[1, col].set_title(f"attention (λ=0), r={r:.2f}", fontsize=7)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    save(fig, out / "attention_vs_kernel.png")
    return {"alignment": {r["kernel"]: {k: r[k] for k in ("pearson_best", "pearson_best_random_init")} for r in rows}}
