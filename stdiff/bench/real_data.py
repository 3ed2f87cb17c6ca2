"""Real data at a CPU budget: the residual DiT (``ResidualDenoiser``: the fitted Gaussian plus a
learned correction) and the plain DiT (``Denoiser``), CRPS against training steps from step 0,
beside the fitted Gaussian, climatology and persistence.

    python -m stdiff.bench real_data OUT [--examples nyc_temperature chicago_ridership] [--minutes 15]

For each example (``stdiff.examples.<name>``; its data prepared into ``OUT/<name>`` when not there
already) and each denoiser (``--variants``: ``ResidualDenoiser``, ``Denoiser``, and
``ResidualDenoiser_noisy``, the residual one whose backbone sees x_t rather than the prior's x̂₀),
one ``stdiff fit`` of the example's shipped config, with ``--model.denoiser`` set, every periodic
checkpoint kept and at most ``--minutes`` of wall time
(``trainer.max_time``). Every checkpoint, and the model as initialised (step 0), is then scored on
the example's test windows, and so is ``best.ckpt`` (``BestCheckpoint``: chosen by validation
forecasts, step 0 a candidate; the verdicts read it) (``stdiff.examples.scoring``: forecast and imputation, ``--samples``
per case): CRPS in the data's units, coverage, spread/skill, and the CRPS ratio to the fitted
Gaussian with its bootstrap standard error over the cases. The baselines are scored once (they do
not train). Training seconds per step are the fit's time less its validations'.

Writes ``stdiff/bench/results/real_data/<name>.json``, ``.md`` and ``.png`` (CRPS against steps).
About 12 min per fit and 2–5 min of scoring per example on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "real_data"
EXAMPLES = {"nyc_temperature": {"unit": "°C", "context": None, "data": "temperature.npy"},
            "chicago_ridership": {"unit": "(log ridership)", "context": 7, "data": "ridership.npy"}}  # fmt: skip
# label: (run folder, the fit's options); --variants picks by folder name
DENOISERS = {
    "residual DiT": ("ResidualDenoiser", ["--model.denoiser=ResidualDenoiser"]),
    "plain DiT": ("Denoiser", ["--model.denoiser=Denoiser"]),
    "residual DiT, x_t input": ("ResidualDenoiser_noisy", ["--model.denoiser=ResidualDenoiser",
                                                          "--model.denoiser.init_args.backbone_input=noisy"]),
}  # fmt: skip
DEFAULT_VARIANTS = ["ResidualDenoiser", "Denoiser"]
BASELINES = ("fitted Gaussian", "climatology", "persistence")


def train(example, out: Path, label: str, minutes: float, reuse: bool = False) -> tuple[Path, dict]:
    """One fit of the example with ``DENOISERS[label]``, every periodic checkpoint kept (``reuse``:
    a finished fit already there is scored again instead)."""
    folder, options = DENOISERS[label]
    root = out / "runs" / folder
    if reuse and (root / "timing.json").exists():
        timing = json.loads((root / "timing.json").read_text())
        return Path(timing.pop("run")), timing
    args = [a.replace(f"--trainer.default_root_dir={out}", f"--trainer.default_root_dir={root}")
            for a in example.fit_command(out)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "stdiff", "fit", *args, *options,
                           "--checkpoint.save_top_k=-1", f"--trainer.max_time=00:00:{int(minutes):02d}:{round(60 * (minutes % 1)):02d}",
                           "--trainer.enable_progress_bar=false"], check=False, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    root.mkdir(parents=True, exist_ok=True)
    (root / "fit.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: stdiff fit failed (exit {done.returncode}); see {root / 'fit.log'}:\n{done.stderr[-2000:]}")
    run = max((root / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    metrics = json.loads((run / "metrics.json").read_text())
    steps = metrics["global_step"]
    fit_seconds = metrics["metrics"]["fit/seconds"]
    training = fit_seconds - metrics["metrics"].get("fit/validation_seconds", 0.0)
    timing = {"steps": steps, "wall_seconds": wall, "fit_seconds": fit_seconds, "seconds_per_step": training / max(steps, 1)}
    (root / "timing.json").write_text(json.dumps({**timing, "run": str(run)}))
    return run, timing


def checkpoints(run: Path) -> list[tuple[int, str | None]]:
    """``(step, checkpoint)`` to score: the model as initialised, then the periodic checkpoints
    nearest 250, 500, 1000, … steps (doubling) and the last one."""
    found = sorted((int(re.search(r"step=(\d+)", p.name).group(1)), str(p)) for p in (run / "checkpoints").glob("*step=*.ckpt"))
    if not found:
        return [(0, None)]
    picked, target = [], 250
    while target < found[-1][0]:
        picked.append(min(found, key=lambda f: abs(f[0] - target)))
        target *= 2
    return [(0, None), *sorted(set(picked) | {found[-1]})]


def selected(run: Path) -> tuple[int, str] | None:
    """``(step, path)`` of the run's ``best.ckpt`` (``BestCheckpoint``'s choice), if any."""
    import torch

    path = run / "checkpoints" / "best.ckpt"
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"]), str(path)


def curve(example, spec: dict, run: Path, k: int, baselines: dict) -> list[dict]:
    """The model's scores at each checkpoint; fills ``baselines`` (once) from the first."""
    from stdiff.examples.scoring import evaluate, ratio
    from stdiff.paper.common import load_run

    rows = []
    best = selected(run)
    for step, checkpoint in [*checkpoints(run), *([best] if best else [])]:
        model, data = load_run(run, [], checkpoint=checkpoint)
        scored = evaluate(model, data, k, spec["context"], label="model", baselines=not baselines)
        row = {"step": step, "selected": checkpoint is not None and checkpoint.endswith("best.ckpt")}
        for task, methods in scored.items():
            methods.pop("_samples")
            if not baselines.get(task):
                baselines[task] = {m: methods[m] for m in BASELINES}
            r = methods["model"]
            value, se = ratio(r, baselines[task]["fitted Gaussian"])
            row[task] = {**{key: r[key] for key in ("crps", "rmse", "coverage50", "coverage90", "spread_skill")},
                         "crps_sum_by_case": r["crps_sum_by_case"], "ratio_to_gaussian": value, "ratio_se": se}  # fmt: skip
        print(f"  step {step}: " + ", ".join(f"{t} CRPS {row[t]['crps']:.4f} ({row[t]['ratio_to_gaussian']:.3f} ± "
                                             f"{row[t]['ratio_se']:.3f} × the fitted Gaussian)" for t in scored), flush=True)  # fmt: skip
        rows.append(row)
    return rows


def report(name: str, results: dict) -> str:
    from stdiff.examples.scoring import ratio

    spec = EXAMPLES[name]
    lines = [f"# {name}: CRPS against training steps", "",
             (f"`{results.get('command', f'python -m stdiff.bench real_data OUT --examples {name}')}`; "
              f"{results['samples_per_case']} samples per case, "
              f"{results['cases']} test cases; CRPS {spec['unit']}, lower is better; ratio: to the fitted Gaussian's "
              "exact posterior, ± a bootstrap standard error over the cases."), ""]  # fmt: skip
    for task, base in results["baselines"].items():
        lines += [f"## {task}", "", "| method | step | CRPS | ratio to fitted Gaussian | coverage 50 % | coverage 90 % | spread/skill |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for m, r in base.items():
            lines.append(f"| {m} | – | {r['crps']:.4f} | {ratio(r, base['fitted Gaussian'])[0]:.3f} | {r['coverage50']:.3f} | "
                         f"{r['coverage90']:.3f} | {r['spread_skill']:.3f} |")  # fmt: skip
        for label, run in results["runs"].items():
            for row in run["curve"]:
                r = row[task]
                step = f"best.ckpt (step {row['step']})" if row.get("selected") else row["step"]
                lines.append(f"| {label} | {step} | {r['crps']:.4f} | {r['ratio_to_gaussian']:.3f} ± {r['ratio_se']:.3f} | "
                             f"{r['coverage50']:.3f} | {r['coverage90']:.3f} | {r['spread_skill']:.3f} |")  # fmt: skip
        lines.append("")
    lines += ["## Training cost", "", (f"{results['training_windows']} training windows; {results['parameters']:,} parameters "
              "in each model."), "", "| model | steps | training s / step | fit wall time (s) | val/loss best (step) | final |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for label, run in results["runs"].items():
        t, v = run["timing"], run["val_loss"]
        wall = f"{t['wall_seconds']:.0f}" if t.get("wall_seconds") is not None else f"– (fit {t['fit_seconds']:.0f})"
        lines.append(f"| {label} | {t['steps']} | {t['seconds_per_step']:.3f} | {wall} | {v['best']:.4f} ({v['best_step']}) | "
                     f"{v['final']:.4f} ({100 * (v['final'] / v['best'] - 1):+.1f} %) |")  # fmt: skip
    lines += ["", "## Verdicts", ""] + [f"- {v}" for v in verdicts(results)]
    return "\n".join(lines) + "\n"


def verdicts(results: dict) -> list[str]:
    """The goal, checked: the residual DiT never worse than the fitted Gaussian beyond two
    standard errors at any step, and better than every baseline at its last."""
    from stdiff.examples.scoring import ratio

    out = []
    for label, run in results["runs"].items():
        for task, base in results["baselines"].items():
            worst = max(run["curve"], key=lambda row: row[task]["ratio_to_gaussian"] - 2 * row[task]["ratio_se"])
            w = worst[task]
            chosen = [row for row in run["curve"] if row.get("selected")]
            last = (chosen or [row for row in run["curve"] if not row.get("selected")])[-1][task]
            beaten = [m for m in BASELINES if ratio(last, base[m])[0] < 1]
            out.append(f"{label}, {task}: worst ratio to the fitted Gaussian {w['ratio_to_gaussian']:.3f} ± {w['ratio_se']:.3f} "
                       f"(step {worst['step']}: {'within' if w['ratio_to_gaussian'] - 2 * w['ratio_se'] <= 1 else 'beyond'} two "
                       f"standard errors of 1); {'best.ckpt' if chosen else 'at the last step'} {last['ratio_to_gaussian']:.3f} ± {last['ratio_se']:.3f}, "
                       f"below {len(beaten)} of {len(BASELINES)} baselines ({', '.join(beaten) or 'none'})")  # fmt: skip
    return out


def figure(name: str, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["baselines"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4))
    for ax, task in zip(axes, tasks):
        for (label, run), colour in zip(results["runs"].items(), ("tab:blue", "tab:red", "tab:cyan")):
            curve = [row for row in run["curve"] if not row.get("selected")]
            steps = [row["step"] for row in curve]
            crps = [row[task]["crps"] for row in curve]
            se = [row[task]["ratio_se"] * row[task]["crps"] / row[task]["ratio_to_gaussian"] for row in curve]
            ax.errorbar(steps, crps, yerr=se, marker="o", ms=3, capsize=2, color=colour, label=label)
        for (m, r), style in zip(results["baselines"][task].items(), ("-", "--", ":")):
            ax.axhline(r["crps"], color="grey" if m != "fitted Gaussian" else "black", ls=style, lw=1, label=m)
        ax.set(title=f"{name}: {task}", xlabel="training step", ylabel=f"CRPS {EXAMPLES[name]['unit']}")
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlim(left=0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_example(name: str, out: Path, minutes: float, k: int, reuse: bool = False,
                variants: list[str] = DEFAULT_VARIANTS) -> dict:  # fmt: skip
    example = importlib.import_module(f"stdiff.examples.{name}")
    spec = EXAMPLES[name]
    out = out / name
    if not (out / spec["data"]).exists():
        example.prepare(out)
    results: dict = {"example": name, "samples_per_case": k, "minutes": minutes, "runs": {}, "baselines": {}}
    for label in [label for label, (folder, _) in DENOISERS.items() if folder in variants]:
        print(f"{name}: training the {label} (at most {minutes:g} min)", flush=True)
        run, timing = train(example, out, label, minutes, reuse)
        print(f"{name}: {label}: {timing['steps']} steps, {timing['seconds_per_step']:.3f} s a step; scoring", flush=True)
        results["runs"][label] = {"run": str(run), "timing": timing, "val_loss": val_loss(run),
                                  "curve": curve(example, spec, run, k, results["baselines"])}  # fmt: skip
    from stdiff.paper.common import load_run

    model, data = load_run(Path(results["runs"]["residual DiT"]["run"]), [], checkpoint=None)
    results["cases"] = len(data.evaluation_rows("test"))
    results["training_windows"] = data.num_train
    results["parameters"] = sum(p.numel() for p in model.parameters())
    results["reference"] = data.reference_report if data.truth is not None else None  # the fit sets its report
    return results


def val_loss(run: Path) -> dict:
    """The run's val/loss: its best (and the step) and its last, from the TensorBoard log."""
    from stdiff.bench.overfitting import curve as loss_curve

    values = loss_curve(run)
    step, best = min(values, key=lambda v: v[1])
    return {"best": best, "best_step": step, "final": values[-1][1], "final_step": values[-1][0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stdiff.bench real_data", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for the prepared data and the runs")
    parser.add_argument("--examples", nargs="+", choices=sorted(EXAMPLES), default=list(EXAMPLES))
    parser.add_argument("--minutes", type=float, default=15.0, help="the most wall time of each fit (default 15)")
    parser.add_argument("--samples", type=int, default=50, help="samples per case (default 50)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where the results go (default {RESULTS})")
    parser.add_argument("--reuse", action="store_true", help="score the fits already under OUT instead of training again")
    parser.add_argument("--variants", nargs="+", choices=[f for f, _ in DENOISERS.values()], default=DEFAULT_VARIANTS,
                        help="the models to train (default: ResidualDenoiser Denoiser)")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 60 or args.samples < 2:
        parser.error(f"--minutes must be in (0, 60] and --samples >= 2; got {args.minutes}, {args.samples}")
    args.results.mkdir(parents=True, exist_ok=True)
    for name in args.examples:
        results = run_example(name, args.out.resolve(), args.minutes, args.samples, args.reuse, args.variants)
        results["command"] = " ".join(["python -m stdiff.bench real_data OUT", f"--examples {name}", f"--minutes {args.minutes:g}",
                                       f"--samples {args.samples}", f"--variants {' '.join(args.variants)}"])  # fmt: skip
        (args.results / f"{name}.json").write_text(json.dumps(results, indent=1))
        (args.results / f"{name}.md").write_text(report(name, results))
        figure(name, results, args.results / f"{name}.png")
        print(report(name, results))


if __name__ == "__main__":
    main()
