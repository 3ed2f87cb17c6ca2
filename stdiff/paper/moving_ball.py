"""Experiment 4: semi-synthetic moving-ball video. The trajectory's autocorrelation recovered from
generated videos (intensity centroid) against γ, the temporal attention maps beside Γ, and a strip
of generated frames."""

from __future__ import annotations

from stdiff.data import trajectory_autocorrelation
from stdiff.metrics.attention import attention_alignment
from stdiff.paper.common import attention_maps, figure, generate, load, run_overrides, save, train, write_csv
from stdiff.seeding import SWEEP, generator

FULL = {"samples": 1000, "overrides": []}
CPU = {
    "samples": 200,
    "steps": 3000,
    "overrides": [],  # the CPU settings: configs/paper/cpu/moving_ball.yaml
}


def run(out, scale: dict, **_) -> dict:
    extra = run_overrides(scale)
    run_dir, seconds = train(out, "moving_ball", scale["configs"], extra)
    model, data = load(run_dir, scale["configs"], extra)
    videos = generate(model, scale["samples"], batch=50)
    real = data.sample(scale["samples"], generator(0, SWEEP, 1))
    truth = (data.gamma[0] / data.gamma[0, 0]).float()  # γ(h)/γ(0), h = 0..T−1
    generated, from_data = trajectory_autocorrelation(videos, data), trajectory_autocorrelation(real, data)
    # attention over frames at a middle noise level, each layer's temporal unit, heads averaged
    data.setup("validate")
    x0, _, _ = next(iter(data.val_dataloader()))
    temporal = attention_maps(model, x0[:16])  # the units attending over frames (each declares its axis)
    pearson = {k: attention_alignment(v[None], data.gamma)["pearson"].item() for k, v in temporal.items()}
    best = max(pearson, key=pearson.get)
    rows = [
        {"lag": h, "gamma": truth[h].item(), "generated": generated[h].item(), "data": from_data[h].item()}
        for h in range(data.frames)
    ]
    write_csv(out / "results.csv", rows)
    write_csv(out / "attention.csv", [{"layer": k, "pearson": v} for k, v in pearson.items()])
    fig, axes = figure(1, 3, size=(3.8, 3.2))
    axes[0, 0].plot(truth.numpy(), "k--", label="γ(h)/γ(0)")
    axes[0, 0].plot(from_data.numpy(), ":", label="recovered from data")
    axes[0, 0].plot(generated.numpy(), "-", label="recovered from generated")
    axes[0, 0].set(xlabel="lag (frames)", ylabel="trajectory autocorrelation")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].imshow(data.gamma.numpy())
    axes[0, 1].set_title("Γ of the trajectory", fontsize=8)
    axes[0, 2].imshow(temporal[best].numpy())
    axes[0, 2].set_title(f"temporal attention, layer {best.split('.')[-3]}, r={pearson[best]:.2f}", fontsize=8)
    save(fig, out / "trajectory_and_attention.png")
    fig, axes = figure(2, data.frames, size=(1.0, 1.0))
    for row, (label, video) in enumerate((("data", real[0]), ("generated", videos[0]))):
        for f in range(data.frames):
            axes[row, f].imshow(video[f].numpy(), cmap="gray")
            axes[row, f].axis("off")
        axes[row, 0].set_title(label, fontsize=7, loc="left")
    save(fig, out / "frames.png")
    err = (generated - truth).abs().max().item()
    return {
        "autocorr_max_error_generated": err,
        "autocorr_max_error_data": (from_data - truth).abs().max().item(),
        "attention_pearson_best": pearson[best],
        "train_wall_s": round(seconds, 1),
    }
