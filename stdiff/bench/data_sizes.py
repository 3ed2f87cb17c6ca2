"""The residual DiT against the fitted Gaussian as the data grows: the real-data examples trained on
a share of their training windows (``data.init_args.train_fraction``: 1/30, 1/10, 1/3, all; the
last windows of each series, validation and test unchanged), each with its own reference fitted to
that share, and ``checkpoints/best.ckpt`` (``BestCheckpoint``: chosen by validation forecasts, the
prior a candidate) scored on the test windows, beside ``last.ckpt``.

    python -m stdiff.bench data_sizes OUT [--examples nyc_temperature chicago_ridership]
        [--fractions 0.0333 0.1 0.333 1] [--steps 2000] [--samples 32]

Each fit is the example's shipped recipe (its config, ``EarlyStopping`` included) stopped at
``--steps`` training steps (the same on any machine; ``--minutes`` caps the wall time too). Scoring (``stdiff.examples.scoring``): forecast and imputation on the
test windows, ``--samples`` per case, CRPS in the data's units; the ratio to the fitted Gaussian's
exact posterior with a bootstrap standard error over the cases. A ratio is *worse* or *better*
only beyond 2 standard errors, otherwise *level*. The goal: best.ckpt never worse at any size.

Writes ``stdiff/bench/results/data_sizes.json`` and ``.md``. About 4 to 6 min per fit and scoring on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from stdiff.bench import RESULTS

FRACTIONS = (1 / 30, 1 / 10, 1 / 3, 1.0)
CONTEXT = {"nyc_temperature": None, "chicago_ridership": 7}  # the forecast task's observed frames


def verdict(ratio: float, se: float) -> str:
    """``worse`` / ``better`` beyond two standard errors of 1, else ``level``."""
    return "worse" if ratio - 2 * se > 1 else "better" if ratio + 2 * se < 1 else "level"


def fit(example, data: Path, root: Path, fraction: float, steps: int, minutes: float) -> tuple[Path, float]:
    """One ``stdiff fit`` of the example on ``fraction`` of its training windows; its run and wall time."""
    args = [a for a in example.fit_command(data) if not a.startswith("--trainer.default_root_dir=")]
    stamp = f"00:00:{int(minutes):02d}:{round(60 * (minutes % 1)):02d}"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "stdiff", "fit", *args, f"--trainer.default_root_dir={root}",
                           f"--data.init_args.train_fraction={fraction}", f"--trainer.max_steps={steps}",
                           f"--trainer.max_time={stamp}",
                           "--trainer.enable_progress_bar=false"], check=False, capture_output=True, text=True)  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "fit.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"stdiff fit failed (exit {done.returncode}); see {root / 'fit.log'}:\n{done.stderr[-2000:]}")
    run = max((root / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return run, time.perf_counter() - start


def score(name: str, run: Path, k: int) -> dict:
    """best.ckpt and last.ckpt on the test windows, beside the run's own fitted Gaussian."""
    from stdiff.examples.scoring import evaluate, ratio
    from stdiff.paper.common import load_run

    out: dict = {}
    steps = {c: torch.load(run / "checkpoints" / f"{c}.ckpt", map_location="cpu", weights_only=True)["global_step"]
             for c in ("best", "last")}  # fmt: skip
    for checkpoint in ("best", "last"):
        if checkpoint == "last" and steps["last"] == steps["best"]:  # the same weights: scored once
            for task in ("forecast", "impute"):
                out[task]["last"] = out[task]["best"]
            break
        model, data = load_run(run, [], checkpoint=checkpoint)
        scored = evaluate(model, data, k, CONTEXT[name], label="model", baselines=True)
        for task, methods in scored.items():
            methods.pop("_samples")
            value, se = ratio(methods["model"], methods["fitted Gaussian"])
            row = out.setdefault(task, {"fitted Gaussian": methods["fitted Gaussian"]["crps"]})
            row[checkpoint] = {"crps": methods["model"]["crps"], "ratio": value, "se": se, "verdict": verdict(value, se),
                               "coverage90": methods["model"]["coverage90"]}  # fmt: skip
    out["training_windows"] = data.num_train
    out["distinct_values"] = data.training_values
    out["cases"] = len(data.evaluation_rows("test"))
    return out


def run_one(name: str, out: Path, fraction: float, steps: int, minutes: float, k: int) -> dict:
    example = importlib.import_module(f"stdiff.examples.{name}")
    data = out / name
    marker = {"nyc_temperature": "temperature.npy", "chicago_ridership": "ridership.npy"}[name]
    if not (data / marker).exists():
        example.prepare(data)
    root = data / "sizes" / f"fraction_{fraction:.4f}"
    run, wall = fit(example, data, root, fraction, steps, minutes)
    fitted = json.loads((run / "metrics.json").read_text())
    row = {"example": name, "fraction": fraction, "run": str(run), "wall_seconds": wall, "steps": fitted["global_step"],
           "selection": {k: v for k, v in fitted["metrics"].items() if k.startswith("fit/best/")}, **score(name, run, k)}  # fmt: skip
    print(json.dumps({key: row[key] for key in ("example", "fraction", "steps", "selection")}), flush=True)
    return row


def report(rows: list[dict], command: str) -> str:
    lines = ["# The residual DiT against the fitted Gaussian by data size", "",
             (f"`{command}`. Each row: one fit on that share of the training windows (its own fitted Gaussian), "
              "scored on the same test windows; ratio = CRPS / the fitted Gaussian's, ± a bootstrap standard error "
              "over the cases; *worse* / *better* only beyond 2 standard errors, else *level*. best.ckpt: chosen by "
              "validation forecasts with the prior (step 0) a candidate; last.ckpt: the end of the fit."), ""]  # fmt: skip
    for task in ("forecast", "impute"):
        lines += [f"## {task}", "", ("| example | share | training windows | distinct values | steps | best step | "
                  "fitted Gaussian CRPS | best.ckpt ratio | verdict | last.ckpt ratio | verdict |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            t = r[task]
            best_step = r["selection"].get("fit/best/step")
            lines.append(f"| {r['example']} | {r['fraction']:.3g} | {r['training_windows']} | {r['distinct_values']:,} | "
                         f"{r['steps']} | {'–' if best_step is None else int(best_step)} | {t['fitted Gaussian']:.4f} | "
                         f"{t['best']['ratio']:.3f} ± {t['best']['se']:.3f} | {t['best']['verdict']} | "
                         f"{t['last']['ratio']:.3f} ± {t['last']['se']:.3f} | {t['last']['verdict']} |")  # fmt: skip
        lines.append("")
    worse = [(r["example"], r["fraction"], task) for r in rows for task in ("forecast", "impute") if r[task]["best"]["verdict"] == "worse"]
    lines.append(f"best.ckpt worse than the fitted Gaussian beyond 2 standard errors: {len(worse)} of {2 * len(rows)} "
                 f"(example, share, task) cells" + (f": {worse}" if worse else "") + ".")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stdiff.bench data_sizes", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for the prepared data and the runs")
    parser.add_argument("--examples", nargs="+", choices=sorted(CONTEXT), default=list(CONTEXT))
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each fit (default 2000)")
    parser.add_argument("--minutes", type=float, default=30.0, help="the most wall time of each fit (default 30)")
    parser.add_argument("--samples", type=int, default=32, help="samples per test case (default 32)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where the results go (default {RESULTS})")
    args = parser.parse_args(argv)
    bad = [f for f in args.fractions if not 0 < f <= 1]
    if bad or not 0 < args.minutes <= 60 or args.samples < 2 or args.steps < 1:
        parser.error(f"--fractions must be in (0, 1], --minutes in (0, 60], --samples >= 2, --steps >= 1; got "
                     f"{bad or args.fractions}, {args.minutes}, {args.samples}, {args.steps}")  # fmt: skip
    command = (f"python -m stdiff.bench data_sizes OUT --examples {' '.join(args.examples)} --fractions "
               f"{' '.join(f'{f:g}' for f in args.fractions)} --steps {args.steps} --samples {args.samples}")
    rows = []
    for name in args.examples:
        for fraction in args.fractions:
            print(f"{name}: {fraction:g} of the training windows, {args.steps} steps", flush=True)
            rows.append(run_one(name, args.out.resolve(), fraction, args.steps, args.minutes, args.samples))
            args.results.mkdir(parents=True, exist_ok=True)  # written after every row: nothing lost on failure
            (args.results / "data_sizes.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
            (args.results / "data_sizes.md").write_text(report(rows, command))
    print(report(rows, command))


if __name__ == "__main__":
    main()
