"""Time to truth: how long a configured fit takes until its samples are *close to the truth*, and
until they are *indistinguishable* from exact samples, in the end-of-fit verdict's own terms
(``stdiff.callbacks.verdicts.verdict``).

    python -m stdiff.bench time_to_truth --config configs/quickstart.yaml [--name quickstart]
        [--stop-at indistinguishable|close|never] [--checks 6] [--out stdiff/bench/results/time_to_truth]
        [any stdiff fit override, e.g. --trainer.max_steps=1000]

It runs ``stdiff fit`` as configured (a subprocess; its output in ``<out>/<name>.log``), with a
sampling validation (``diagnostics.num_samples`` samples, the verdict) at a geometric grid of steps
``u, 2u, 4u, … , max_steps`` (``u = max_steps // 2^(checks-1)``: 93, 186, 372, 744, 1488, 3000 for the quickstart; a plain validation every ``u``
steps, figures off), and stops at the first verdict of ``--stop-at``. The time to truth is the
training time: the wall time since the fit started less every validation's (``fit/validation_seconds``),
so that the grid's extra validations do not count; the wall time is reported beside it.

Writes ``<name>.json`` (every check: step, training and wall seconds, KL excess, its noise, the
verdict), ``<name>.md`` (the table and the first steps and times of each verdict) and
``<name>.png`` (KL excess against training time, with the two thresholds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from lightning.pytorch.callbacks import Callback

from stdiff.callbacks.verdicts import CLOSE_PER_DIM, verdict_level
from stdiff.metrics.distances import excess_noise, kl_noise

LEVELS = ("not", "close", "indistinguishable")


class VerdictRecorder(Callback):
    """Appends each sampling validation's verdict to ``<run>/time_to_truth.jsonl`` and stops the fit
    at the first verdict of ``stop_at`` (``never``: train to the end)."""

    def __init__(self, stop_at: Literal["close", "indistinguishable", "never"] = "indistinguishable") -> None:
        if stop_at not in ("close", "indistinguishable", "never"):
            raise ValueError(f"VerdictRecorder.stop_at must be close, indistinguishable or never, got {stop_at!r}")
        self.stop_at = stop_at

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        from stdiff.callbacks import GPDiagnostics

        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        diagnostics = next(cb for cb in trainer.callbacks if isinstance(cb, GPDiagnostics))
        kl = diagnostics.latest.get("val/samples/kl_excess")
        run = trainer.log_dir or trainer.default_root_dir  # every rank: it broadcasts
        if kl is None:
            return  # a validation without samples
        d, n = diagnostics.truth.dim, diagnostics.num_samples
        level = verdict_level(kl, d, n)
        wall = time.perf_counter() - self._start
        validation = diagnostics.fit_validation_seconds  # every validation so far, this one's until now
        record = {"step": trainer.global_step, "training_s": wall - validation, "wall_s": wall, "kl_excess": kl,
                  "kl_noise": kl_noise(d, n), "excess_noise": excess_noise(d, n), "close_below": CLOSE_PER_DIM * d,
                  "verdict": level, "exact_model_kl_excess": diagnostics.latest.get("val/samples/exact_model_kl_excess"),
                  "score_error": diagnostics.latest.get("val/score_rel_error"), "d": d, "num_samples": n,
                  # the eigen-direction KL beside it: the headline beyond d = 1024, here checked against the full one
                  "eigen_kl_excess": diagnostics.latest.get("val/samples/eigen_kl_excess"),
                  "eigen_kl_noise": diagnostics.latest.get("val/samples/eigen_kl_noise")}  # fmt: skip
        if trainer.is_global_zero:
            with open(os.path.join(run, "time_to_truth.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"time_to_truth: step {record['step']}, {record['training_s']:.0f} s of training: KL excess "
                  f"{kl:.3g} -> {level}", flush=True)  # fmt: skip
        if self.stop_at != "never" and LEVELS.index(level) >= LEVELS.index(self.stop_at):
            trainer.should_stop = True


def grid(max_steps: int, checks: int) -> tuple[int, list[int]]:
    """``(u, steps)``: the validation interval and the geometric grid of sampling validations."""
    u = max(1, max_steps // 2 ** (checks - 1))
    steps, s = [], u
    while s * 1.5 <= max_steps:  # (the fit's last step validates anyway: no check just before it)
        steps.append(s)
        s *= 2
    return u, [*steps, max_steps]


def firsts(records: list[dict]) -> dict[str, dict | None]:
    """The first check at each verdict level or better."""
    return {level: next((r for r in records if LEVELS.index(r["verdict"]) >= LEVELS.index(level)), None)
            for level in ("close", "indistinguishable")}  # fmt: skip


def figure(records: list[dict], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    t = [r["training_s"] for r in records]
    kl = [max(r["kl_excess"], 1e-3) for r in records]
    ax.plot(t, kl, "o-", label="sample KL excess")
    for r, x, y in zip(records, t, kl):
        ax.annotate(f"{r['step']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(records[0]["close_below"], color="tab:orange", ls="--", label=f"close: {CLOSE_PER_DIM} × d")
    ax.axhline(2 * _excess_noise(records[0]), color="tab:green", ls=":", label="indistinguishable: 2 × the excess's noise")
    ax.set_yscale("log")
    ax.set_xlabel("training time, s (validations excluded); labels: steps")
    ax.set_ylabel("KL excess, nats")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _excess_noise(record: dict) -> float:
    """The noise of a check's KL excess (records written before it was stored: √2 × one KL's)."""
    return record.get("excess_noise") or math.sqrt(2) * record["kl_noise"]


def report(records: list[dict], name: str, command: str) -> str:
    first = firsts(records)
    lines = [(f"Time to truth, `{name}` (`{command}`; d = {records[0]['d']}, {records[0]['num_samples']} samples "
             f"a check).\n"), ("| step | training s | wall s | KL excess | its noise | eigen KL excess | its noise | "
             "score error | verdict |"), "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        score = f"{r['score_error']:.4g}" if r.get("score_error") is not None else ""
        eigen = (f"{r['eigen_kl_excess']:.4g} | {r['eigen_kl_noise']:.2g}" if r.get("eigen_kl_excess") is not None
                 else " | ")  # fmt: skip
        lines.append(f"| {r['step']} | {r['training_s']:.1f} | {r['wall_s']:.1f} | {r['kl_excess']:.4g} | "
                     f"{_excess_noise(r):.2g} | {eigen} | {score} | {r['verdict']} |")  # fmt: skip
    lines.append("")
    lines.extend(_tracking(records))
    for level, r in first.items():
        lines.append(f"- first *{level}*: " + (f"step {r['step']}, {r['training_s']:.1f} s of training "
                                                f"({r['wall_s']:.1f} s wall)" if r else "not reached"))  # fmt: skip
    return "\n".join(lines) + "\n"


def _tracking(records: list[dict]) -> list[str]:
    """Whether the eigen-direction KL excess (the headline beyond d = 1024) tracks the full one along
    the fit: their rank correlation over the checks, and how often the two verdict levels agree."""
    both = [r for r in records if r.get("eigen_kl_excess") is not None]
    if len(both) < 2:
        return []

    def ranks(values: list[float]) -> list[int]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0] * len(values)
        for rank, i in enumerate(order):
            out[i] = rank
        return out

    a, b = ranks([r["kl_excess"] for r in both]), ranks([r["eigen_kl_excess"] for r in both])
    n = len(both)
    rho = 1 - 6 * sum((x - y) ** 2 for x, y in zip(a, b)) / (n * (n * n - 1))
    levels = [verdict_level(r["eigen_kl_excess"], r["d"], r["num_samples"], r["eigen_kl_noise"]) for r in both]
    agree = sum(level == r["verdict"] for level, r in zip(levels, both))
    return [(f"- the eigen-direction KL excess against the full one over {n} checks: rank correlation {rho:.2f}; "
            f"verdict levels agree at {agree} of {n} (eigen: {', '.join(levels)})")]


def max_steps_of(configs: list[str], overrides: list[str]) -> int:
    from stdiff.bench.speed.training import build

    steps = build(configs, overrides).trainer.max_steps
    if not steps or steps < 1:
        raise SystemExit("python -m stdiff.bench time_to_truth: the fit needs trainer.max_steps >= 1")
    return steps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m stdiff.bench time_to_truth", description=__doc__.split("\n\n")[0],
                                epilog="Any other argument goes to stdiff fit.")  # fmt: skip
    p.add_argument("--config", action="append", required=True, help="config file(s), as for stdiff fit")
    p.add_argument("--name", default=None, help="result files' name (default: the last config's stem)")
    p.add_argument("--stop-at", choices=("close", "indistinguishable", "never"), default="indistinguishable")
    p.add_argument("--checks", type=int, default=6, help="sampling validations on the geometric grid (>= 2)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "time_to_truth")
    p.add_argument("--root", type=Path, default=None, help="the fit's default_root_dir (default: a temporary one)")
    args, overrides = p.parse_known_args(argv)
    if args.checks < 2:
        p.error(f"--checks must be >= 2, got {args.checks}")
    name = args.name or Path(args.config[-1]).stem
    max_steps = max_steps_of(args.config, overrides)
    every, steps = grid(max_steps, args.checks)
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.root or Path(os.environ.get("TMPDIR", "/tmp")) / f"stdiff_time_to_truth_{name}_{os.getpid()}"
    recorder = json.dumps({"class_path": "stdiff.bench.time_to_truth.VerdictRecorder",
                           "init_args": {"stop_at": args.stop_at}})
    configs = [a for c in args.config for a in ("--config", c)]
    cmd = [sys.executable, "-m", "stdiff", "fit", *configs, *overrides, f"--trainer.val_check_interval={every}",
           "--trainer.check_val_every_n_epoch=null", f"--diagnostics.sample_every={10**9}",
           f"--diagnostics.sample_at_steps={json.dumps(steps)}", "--diagnostics.figures=false",
           f"--trainer.callbacks+={recorder}", f"--trainer.default_root_dir={root}",
           "--trainer.enable_progress_bar=false"]  # fmt: skip
    command = " ".join(["python -m stdiff.bench time_to_truth", *configs, *overrides])
    print(f"{command}\n  sampling validations at steps {steps}; log: {args.out / f'{name}.log'}", flush=True)
    start = time.perf_counter()
    with open(args.out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:  # the checks as they come, everything in the log
            log.write(line)
            if line.startswith(("time_to_truth:", "stdiff fit:", "  verdict", "  time")):
                print(line, end="", flush=True)
        if proc.wait() != 0:
            raise SystemExit(f"stdiff fit failed (exit {proc.returncode}); see {args.out / f'{name}.log'}")
    runs = sorted(root.glob("lightning_logs/*/time_to_truth.jsonl"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit("no sampling validation gave a KL (num_samples > 2·d and d <= 1024 are needed); see the log")
    records = [json.loads(line) for line in runs[-1].read_text().splitlines()]
    result = {"command": command, "name": name, "grid": steps, "stop_at": args.stop_at,
              "process_wall_s": time.perf_counter() - start, "first": firsts(records), "checks": records}  # fmt: skip
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    text = report(records, name, command)
    (args.out / f"{name}.md").write_text(text)
    figure(records, f"{name}: KL excess of the samples against training time").savefig(args.out / f"{name}.png", dpi=90)
    print(text)
    return result


if __name__ == "__main__":
    main()
