"""The DiT on the three mixture presets (``configs/mixtures/{regimes,modes,rare}.yaml``) at the
quickstart's budget: for each, ``stdiff fit`` with the preset as shipped, then ``stdiff test`` of its
last checkpoint (which adds the true KL by the likelihood ODE), and the exact mixture model's
``stdiff test`` beside it (the floor of every number through the same sampler and ODE), and once
more started as the quickstart starts (t_max = 10 and UniPC's own, later, first noise level; the
``modes`` and ``rare`` presets carry the noise on to t_max = 20 and start there, since a start
from N(0, I) where α·μ_k is not negligible moves the modes' weights).

    python -m stdiff.bench mixtures [--presets regimes modes rare] [--root /tmp/stdiff_mixtures]
        [--out stdiff/bench/results/mixtures] [any stdiff override, e.g. --trainer.max_steps=300]

Reported per preset, from the test's ``metrics.json``: the score error against the exact mixture
score (overall and by log-SNR), ``kl_true`` ± its SE with the exact model's through the same ODE,
the weights recovered from 2000 (rare: 4000) samples against the true ones and the noise of exact
samples, each component's Gaussian-fit KL beside its floor, the mixture KL by components, the
moment-matched Gaussian fit (which misleads), and attention on each component's samples against
each Γ_j. A preset whose run already finished under ``--root`` is read, not rerun. About 4 min a
preset on 2 CPU cores. Writes ``mixtures.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "mixtures"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _stdiff(args: list[str], log: Path) -> None:
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "stdiff", *args, *QUIET], check=True, stdout=f, stderr=subprocess.STDOUT)


def run_preset(name: str, root: Path, overrides: list[str]) -> dict:
    """Fit, test the last checkpoint, test the exact model; their metrics and wall times."""
    out, config = root / name, str(PRESETS / f"{name}.yaml")
    out.mkdir(parents=True, exist_ok=True)
    times_file = out / "wall.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    common = ["--config", config, f"--trainer.default_root_dir={out}", *overrides]
    fitted = sorted(out.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    if not fitted:
        start = time.perf_counter()
        _stdiff(["fit", *common], out / "fit.log")
        times["fit_s"] = time.perf_counter() - start
        fitted = sorted(out.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    run = fitted[-1].parents[1]
    if not list(run.glob("test_*/metrics.json")):
        start = time.perf_counter()
        _stdiff(["test", *common, f"--ckpt_path={fitted[-1]}"], out / "test.log")
        times["test_s"] = time.perf_counter() - start
    if not list(out.glob("lightning_logs/exact_test_*/metrics.json")):
        _stdiff(["test", *common, "--model.denoiser=ExactDenoiser"], out / "exact_test.log")
    short = out / "quickstart_start"  # the exact model started where the quickstart starts: t_max = 10, UniPC's own λ
    if not list(short.glob("lightning_logs/exact_test_*/metrics.json")):
        _stdiff(["test", "--config", config, f"--trainer.default_root_dir={short}", *overrides, "--model.denoiser=ExactDenoiser",
                 "--model.denoiser.init_args.schedule.init_args.t_max=10", "--model.sampler.init_args.lambda_start=null"],
                out / "exact_test_quickstart_start.log")  # fmt: skip
    times_file.write_text(json.dumps(times))
    tested = json.loads(max(run.glob("test_*/metrics.json")).read_text())
    exact = json.loads(max(out.glob("lightning_logs/exact_test_*/metrics.json")).read_text())
    early = json.loads(max(short.glob("lightning_logs/exact_test_*/metrics.json")).read_text())
    fit = json.loads((run / "metrics.json").read_text())
    return {"preset": name, "global_step": fit["global_step"], "test": tested["metrics"], "exact": exact["metrics"],
            "exact_quickstart_start": early["metrics"],
            "mixture": tested["data"]["mixture"], "num_samples": tested["diagnostics"]["num_samples"],
            "dim": tested["diagnostics"]["dim"], "wall": times, "run": str(run)}  # fmt: skip


def _get(m: dict, key: str, default=float("nan")):
    value = m.get(f"test/{key}")
    return default if value is None else value


def report(records: list[dict]) -> str:
    lines = [("Mixture presets at the quickstart's budget (`python -m stdiff.bench mixtures`): each DiT's last checkpoint "
             "under `stdiff test`, beside the exact mixture model's `stdiff test` (same sampler, same ODE). One seed "
             "per preset."), ""]  # fmt: skip
    head = "| | " + " | ".join(r["preset"] for r in records) + " |"
    lines += [head, "|---" * (len(records) + 1) + "|"]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in records) + " |")

    row("d, samples, training steps", lambda r: f"{r['dim']}, {r['num_samples']}, {r['global_step']}")
    row("weights (true)", lambda r: " / ".join(f"{w:.2f}" for w in r["mixture"]["weights"]))
    row("score error (all noise levels)", lambda r: f"{_get(r['test'], 'score_rel_error'):.4f}")
    row("excess ε-loss over the exact model", lambda r: f"{_get(r['test'], 'excess_loss'):.2e}")
    row("true KL ± SE (nats), DiT", lambda r: f"{_get(r['test'], 'likelihood/kl_true'):.2f} ± {_get(r['test'], 'likelihood/kl_true_se'):.2f}")
    row("true KL, exact model through the same ODE", lambda r: f"{_get(r['test'], 'likelihood/kl_true_floor'):.2f}")
    row("true KL excess over the exact model", lambda r: f"{_get(r['test'], 'likelihood/kl_true_excess'):.2f}")
    row("weights recovered, DiT", lambda r: " / ".join(f"{_get(r['test'], f'samples/weights/{k}'):.3f}"
                                                      for k in range(len(r["mixture"]["weights"]))))  # fmt: skip
    row("weights recovered, exact model", lambda r: " / ".join(f"{_get(r['exact'], f'samples/weights/{k}'):.3f}"
                                                              for k in range(len(r["mixture"]["weights"]))))  # fmt: skip
    row("weights recovered, exact model started as the quickstart", lambda r: " / ".join(
        f"{_get(r['exact_quickstart_start'], f'samples/weights/{k}'):.3f}" for k in range(len(r["mixture"]["weights"]))))  # fmt: skip
    row("weights TV: DiT / exact samples (noise)", lambda r: f"{_get(r['test'], 'samples/weights_tv'):.4f} / "
        f"{_get(r['test'], 'samples/weights_tv_floor'):.4f}")  # fmt: skip
    row("weights TV: exact model, as the preset / as the quickstart", lambda r: f"{_get(r['exact'], 'samples/weights_tv'):.4f} / "
        f"{_get(r['exact_quickstart_start'], 'samples/weights_tv'):.4f}")  # fmt: skip
    row("weights KL (nats): DiT / exact model, as the preset / as the quickstart", lambda r: " / ".join(
        f"{_get(m, 'samples/weights_kl'):.4f}" for m in (r["test"], r["exact"], r["exact_quickstart_start"])))  # fmt: skip
    row("mixture KL by components: excess ± noise, DiT", lambda r: f"{_get(r['test'], 'samples/kl_excess'):.2f} ± "
        f"{_get(r['test'], 'samples/kl_excess_noise'):.2f}")  # fmt: skip
    row("… the exact model's excess", lambda r: f"{_get(r['exact'], 'samples/kl_excess'):.2f}")
    for k in range(max(len(r["mixture"]["weights"]) for r in records)):
        row(f"component {k}: Gaussian-fit KL excess, DiT (exact model)",
            lambda r, k=k: f"{_get(r['test'], f'samples/component{k}/kl_excess'):.2f} "
            f"({_get(r['exact'], f'samples/component{k}/kl_excess'):.2f})" if k < len(r["mixture"]["weights"]) else "–")  # fmt: skip
    row("moment-matched Gaussian-fit KL excess (misleads)", lambda r: f"{_get(r['test'], 'samples/moment_matched_kl_excess'):.2f}")
    row("verdict level", lambda r: _level(r))
    row("fit / test wall time (s, 2 cores)", lambda r: f"{r['wall'].get('fit_s', float('nan')):.0f} / "
        f"{r['wall'].get('test_s', float('nan')):.0f}")  # fmt: skip
    lines.append("")
    for r in records:  # attention against each Γ_j on each component's samples (log-SNR +4, layers and heads averaged)
        k = len(r["mixture"]["weights"])
        lines += [(f"Attention Pearson with Γ_j on component k's samples, log-SNR +4 (layers and heads averaged), "
                  f"**{r['preset']}**:"), "", "| samples of \\ Γ of | " + " | ".join(f"component {j}" for j in range(k))
                  + " |", "|---" * (k + 1) + "|"]  # fmt: skip
        for i in range(k):
            lines.append(f"| component {i} | " + " | ".join(
                f"{_get(r['test'], f'attention/component{i}/gamma{j}/logsnr_+4.0/pearson'):.3f}" for j in range(k)) + " |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def _level(r: dict) -> str:
    from stdiff.callbacks.verdicts import verdict_level

    excess, noise = _get(r["test"], "samples/kl_excess"), _get(r["test"], "samples/kl_excess_noise", None)
    return verdict_level(excess, r["dim"], r["num_samples"], noise)


def figure(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for r in records:
        bins = sorted((k for k in r["test"] if "/score_rel_error/logsnr_" in k),
                      key=lambda k: float(k.split("logsnr_")[1].split("_")[0]))  # fmt: skip
        centre = [sum(map(float, k.split("logsnr_")[1].replace("_+", " +").replace("_-", " -").split())) / 2 for k in bins]
        axes[0].plot(centre, [r["test"][k] for k in bins], marker="o", label=r["preset"])
    axes[0].set_yscale("log")
    axes[0].set_xlabel("log-SNR")
    axes[0].set_ylabel("E‖ŝ − s*‖² / E‖s*‖²")
    axes[0].set_title("score error against the exact mixture score", fontsize=9)
    axes[0].legend(fontsize=8)
    labels, true, dit, exact = [], [], [], []
    for r in records:
        for k, w in enumerate(r["mixture"]["weights"]):
            labels.append(f"{r['preset']}\n{k}")
            true.append(w)
            dit.append(_get(r["test"], f"samples/weights/{k}"))
            exact.append(_get(r["exact"], f"samples/weights/{k}"))
    x = range(len(labels))
    for i, (values, label) in enumerate(((true, "true"), (dit, "DiT samples"), (exact, "exact model's samples"))):
        axes[1].bar([v + (i - 1) * 0.27 for v in x], values, 0.27, label=label)
    axes[1].set_xticks(list(x), labels, fontsize=7)
    axes[1].set_ylabel("weight")
    axes[1].set_title("weights recovered from the samples (mean exact responsibility)", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["regimes", "modes", "rare"])
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "stdiff_mixtures")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mixtures")
    args, overrides = p.parse_known_args()
    records = []
    for name in args.presets:
        print(f"mixtures: {name} ...", flush=True)
        records.append(run_preset(name, args.root, overrides))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mixtures.json").write_text(json.dumps(records, indent=1))
    text = report(records)
    (args.out / "mixtures.md").write_text(text + "\n")
    figure(records, args.out / "mixtures.png")
    print(text)


if __name__ == "__main__":
    main()
