"""Figures of a run against the truth (matplotlib, headless): each function returns a Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor


def write(fig: Figure, directory: str, name: str, step: int, writers: list, close: bool = True) -> None:
    """``fig`` drawn once, at 90 dpi, into ``<directory>/<name>_step<step>.png`` and into each
    TensorBoard ``SummaryWriter`` of ``writers`` (``add_figure`` would draw it a second time);
    closed unless ``close`` is False (a figure refilled and written again)."""
    import os

    import matplotlib.image
    import numpy as np

    os.makedirs(directory, exist_ok=True)
    fig.set_dpi(90)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if close:
        plt.close(fig)
    matplotlib.image.imsave(os.path.join(directory, f"{name}_step{step}.png"), image)
    for writer in writers:
        writer.add_image(name, image, global_step=step, dataformats="HWC")


def _heatmap(ax, m: Tensor, title: str, vmin=None, vmax=None, axes: tuple[str, str] = ("", "")) -> None:
    """``m`` as an image titled ``title``, rows labelled ``axes[0]`` and columns ``axes[1]``."""
    im = ax.imshow(m.detach().cpu().float().numpy(), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=8)
    ax.set_ylabel(axes[0], fontsize=7)
    ax.set_xlabel(axes[1], fontsize=7)
    ax.set_xticks([])  # tick labels on every small panel would double the figure's drawing time
    ax.set_yticks([])
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


FRAMES = ("frame", "frame")
LABELS = {"Γ": FRAMES, "Σ": ("spatial point", "spatial point")}


def attention_figure(maps: dict[str, Tensor], gamma: Tensor, log_snr: float) -> Figure:
    """One row per attention layer: each head's frame-to-frame map ``(T, T)`` on one shared colour
    scale (one colour bar), then Γ on its own."""
    return next(attention_figures({log_snr: maps}, gamma))[1]


def attention_figures(maps_by_level: dict[float, dict[str, Tensor]], gamma: Tensor):
    """``(log-SNR, Figure)`` for each level of ``maps_by_level`` as ``attention_figure`` draws it,
    all one Figure whose images are refilled level by level (save each before the next). Fixed
    margins, one colour bar, no ``tight_layout``, axes made once: drawn at every validation, so
    kept to a fifth of the time per-panel colour bars and a layout pass took."""
    fig, images = None, {}
    for log_snr, maps in maps_by_level.items():
        top = max((m.max().item() for m in maps.values()), default=1.0)
        if fig is None:
            rows = max(len(maps), 1)
            heads = max((m.shape[0] for m in maps.values()), default=1)
            fig, axes = plt.subplots(rows, heads + 1, figsize=(2.0 * (heads + 1) + 0.6, 1.9 * rows + 0.5), squeeze=False)
            for r, name in enumerate(maps):  # name: the module's path; the layer's number says it
                for h in range(heads):
                    images[name, h] = axes[r, h].imshow(maps[name][h].detach().cpu().float().numpy(), cmap="viridis")
                    axes[r, h].set_title(f"layer {r + 1}, head {h + 1}", fontsize=8)
                axes[r, heads].imshow(gamma.detach().cpu().float().numpy(), cmap="viridis")
                axes[r, heads].set_title("true Γ (own scale)", fontsize=8)
                axes[r, 0].set_ylabel("query frame", fontsize=7)
            for ax in axes.flat:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel("key frame", fontsize=7, labelpad=1)
            fig.subplots_adjust(left=0.04, right=0.9, bottom=0.06, top=1 - 0.45 / fig.get_figheight(), wspace=0.12,
                                hspace=0.3)  # fmt: skip
            if images:
                cax = fig.add_axes((0.92, 0.15, 0.015, 0.7), label="<colorbar>")
                bar = fig.colorbar(next(iter(images.values())), cax=cax)
                bar.ax.tick_params(labelsize=7)
        for (name, h), image in images.items():
            image.set_data(maps[name][h].detach().cpu().float().numpy())
            image.set_clim(0.0, top)
        fig.suptitle(f"temporal attention (frame to frame) beside the true kernel Γ, log-SNR {log_snr:+.1f}", fontsize=9)
        yield log_snr, fig


def covariance_figure(true: dict[str, Tensor], generated: dict[str, Tensor]) -> Figure:
    """True vs generated temporal (Γ) and spatial (Σ) covariance heatmaps on shared colour scales."""
    fig, axes = plt.subplots(len(true), 2, figsize=(6, 2.8 * len(true)), squeeze=False)
    for r, name in enumerate(true):
        lo, hi = (
            min(true[name].min(), generated[name].min()).item(),
            max(true[name].max(), generated[name].max()).item(),
        )
        _heatmap(axes[r, 0], true[name], f"true {name}", lo, hi, LABELS.get(name, ("", "")))
        _heatmap(axes[r, 1], generated[name], f"{name} of the generated samples", lo, hi, LABELS.get(name, ("", "")))
    fig.suptitle("covariances: truth and generated samples (time Γ, space Σ)", fontsize=9)
    fig.tight_layout()
    return fig


def paths_figure(true: Tensor, generated: Tensor, count: int = 5) -> Figure:
    """A few sample paths over time at the first spatial point: exact samples vs generated."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8), sharey=True)
    for ax, x, title in ((axes[0], true, "exact samples"), (axes[1], generated, "generated")):
        paths = x.reshape(len(x), x.shape[1], -1)[:count, :, 0].detach().cpu().float().numpy()
        ax.plot(paths.T, lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("frame")
    axes[0].set_ylabel("value at spatial point 0")
    fig.tight_layout()
    return fig


def correlation_figure(true: Tensor, generated: Tensor) -> Figure:
    """Temporal correlation against lag: γ(h) of the truth vs the generated samples."""
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(true.cpu().numpy(), "k-", label="true γ(h)")
    ax.plot(generated.cpu().numpy(), "o", ms=3, label="generated")
    ax.set_xlabel("lag h (frames)")
    ax.set_ylabel("correlation")
    ax.set_title("temporal correlation by lag", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def score_error_figure(bins: list[str], values: list[float]) -> Figure:
    """Relative score error per log-SNR bin."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), bins, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("E‖ŝ − s*‖² / E‖s*‖²")
    ax.set_xlabel("log-SNR bin (noisy on the left)")
    ax.set_title("score error against the exact score, by noise level", fontsize=9)
    fig.tight_layout()
    return fig


def fan_chart(x: Tensor, mask: Tensor, samples: Tensor, exact: Tensor, title: str, points: int = 3) -> Figure:
    """For a few spatial points of one case ``x (T, *space)``: the observed values, the true series,
    and the 50 % / 90 % bands of the model's conditional ``samples (k, T, *space)`` next to those of
    exact posterior samples ``exact (k, T, *space)``, over frames."""
    import torch

    t = x.shape[0]
    flat = lambda v: v.reshape(*v.shape[: v.ndim - x.ndim], t, -1).double()  # (…, T, S)
    xs, ms, ss, es = flat(x), flat(mask.expand_as(x)), flat(samples), flat(exact)
    chosen = torch.linspace(0, xs.shape[1] - 1, min(points, xs.shape[1])).round().long().tolist()
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 2.8), squeeze=False)
    frames = range(t)
    q = torch.tensor([0.05, 0.25, 0.75, 0.95], dtype=torch.float64)
    for ax, p in zip(axes[0], chosen):
        for draws, colour, label in ((es, "tab:gray", "exact posterior"), (ss, "tab:blue", "model")):
            lo90, lo50, hi50, hi90 = torch.quantile(draws[:, :, p], q, dim=0)
            ax.fill_between(frames, lo90, hi90, color=colour, alpha=0.18, label=f"{label} 90 %")
            ax.fill_between(frames, lo50, hi50, color=colour, alpha=0.35, label=f"{label} 50 %")
        ax.plot(frames, xs[:, p], "k-", lw=0.8, label="truth")
        seen = ms[:, p].bool()
        ax.plot([f for f in frames if seen[f]], xs[seen, p], "ko", ms=2.5, label="observed")
        ax.set(title=f"spatial point {p}", xlabel="frame", ylabel="value")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"conditional samples vs exact posterior: {title}", fontsize=9)
    fig.tight_layout()
    return fig


def weights_figure(true: list[float], recovered: list[float], exact: list[float]) -> Figure:
    """A mixture's weights: true, recovered from the generated samples (their exact
    responsibilities averaged) and from as many exact samples (the finite-sample noise)."""
    import numpy as np

    k = np.arange(len(true))
    fig, ax = plt.subplots(figsize=(1.2 * len(true) + 3, 2.8))
    for i, (values, label) in enumerate(((true, "true"), (recovered, "generated samples"), (exact, "exact samples"))):
        ax.bar(k + (i - 1) * 0.27, values, 0.27, label=label)
    ax.set_xticks(k, [f"component {i}" for i in k], fontsize=7)
    ax.set_ylabel("weight", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("mixture weights recovered from the samples (mean exact responsibility)", fontsize=9)
    fig.tight_layout()
    return fig


SPATIAL_FIGURE_LIMIT = 1024  # points of space whose Σ and Σ̂ are drawn


def sample_figures(truth, x: Tensor, floor_seed: int, values: dict[str, float]) -> dict[str, Figure]:
    """The figures of samples ``x (n, T, *space)`` against ``truth``, by name: sample paths beside
    exact ones (drawn with ``floor_seed``); for a Gaussian the estimated Γ and Σ and the correlation
    by lag beside the truth's; for a mixture the weights recovered (no single Γ and Σ to estimate)."""
    import torch

    from stdiff.metrics import correlation_by_lag, factor_covariances

    exact = truth.sample(len(x), torch.Generator().manual_seed(floor_seed), dtype=torch.float64)
    if not truth.is_gaussian:
        recovered = [values.get(f"weights/{k}", float("nan")) for k in range(len(truth.components))]
        exact_weights = truth.responsibilities(exact).mean(0).tolist()
        return {"weights": weights_figure(truth.weights.tolist(), recovered, exact_weights),
                "paths": paths_figure(exact, x)}  # fmt: skip
    spatial = truth.num_points <= SPATIAL_FIGURE_LIMIT  # beyond, an S × S image is neither cheap nor legible
    gamma_hat, sigma_hat = factor_covariances(truth, x, spatial)
    true, generated = {"Γ": truth.gamma}, {"Γ": gamma_hat}
    if spatial:
        true["Σ"], generated["Σ"] = truth.sigma, sigma_hat
    return {"covariances": covariance_figure(true, generated),
            "paths": paths_figure(exact, x),
            "correlation_vs_lag": correlation_figure(correlation_by_lag(truth.gamma), correlation_by_lag(gamma_hat))}  # fmt: skip
