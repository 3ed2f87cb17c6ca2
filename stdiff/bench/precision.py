"""Sampling at bf16: the sample metrics of one checkpoint validated at ``32-true`` and at
``bf16-mixed`` (the diagnostics sample at the run's precision), seed by seed, against the noise of
the verdict's KL.

    python -m stdiff.bench precision --config configs/quickstart.yaml --ckpt_path RUN/checkpoints/last.ckpt
        [--seeds 3] [--out stdiff/bench/results] [any stdiff validate override]

Each seed draws the same initial noise at both precisions (``diagnostics.seed``), so their difference
is what bf16 does to the samples; the spread over seeds is the sampling noise it is compared with.
Writes ``precision.json`` and ``precision.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from stdiff.metrics.distances import kl_noise

KEYS = ["val/samples/kl_excess", "val/samples/whitened_norm_excess", "val/samples/gamma_kl_excess",
        "val/samples/w2_excess", "val/seconds/sampling"]  # fmt: skip


def validate(configs: list[str], ckpt: str, precision: str, seed: int, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "stdiff", "validate", *configs, f"--ckpt_path={ckpt}", f"--trainer.precision={precision}",
           f"--diagnostics.seed={seed}", "--trainer.enable_progress_bar=false", "--diagnostics.figures=false",
           *overrides]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = re.search(r"all metrics: (\S+metrics\.json)", out.stdout)
    if out.returncode != 0 or not found:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    written = json.loads(Path(found.group(1)).read_text())
    return {"metrics": {k: written["metrics"].get(k) for k in KEYS}, "dim": written["diagnostics"]["dim"],
            "num_samples": written["diagnostics"]["num_samples"]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m stdiff.bench precision", description=__doc__.split("\n\n")[0],
                                epilog="Any other argument goes to stdiff validate.")  # fmt: skip
    p.add_argument("--config", action="append", required=True, help="config file(s), as for stdiff validate")
    p.add_argument("--ckpt_path", required=True, help="the checkpoint validated")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args, overrides = p.parse_known_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    configs = [a for c in args.config for a in ("--config", c)]
    rows = []
    for seed in range(args.seeds):
        row = {"seed": seed}
        for precision in ("32-true", "bf16-mixed"):
            start = time.perf_counter()
            r = validate(configs, args.ckpt_path, precision, seed, overrides)
            row[precision] = {**r["metrics"], "wall_s": time.perf_counter() - start}
            d, n = r["dim"], r["num_samples"]
            print(f"seed {seed} {precision}: KL excess {r['metrics']['val/samples/kl_excess']:.4g}", flush=True)
        row["kl_difference"] = row["bf16-mixed"]["val/samples/kl_excess"] - row["32-true"]["val/samples/kl_excess"]
        rows.append(row)
    noise = kl_noise(d, n)
    diffs = [r["kl_difference"] for r in rows]
    fp32 = [r["32-true"]["val/samples/kl_excess"] for r in rows]
    result = {"command": " ".join(["python -m stdiff.bench precision", *configs, f"--ckpt_path {args.ckpt_path}",
                                   f"--seeds {args.seeds}", *overrides]),
              "dim": d, "num_samples": n, "kl_noise": noise, "rows": rows,
              "mean_abs_difference": statistics.fmean(abs(x) for x in diffs),
              "fp32_seed_sd": statistics.stdev(fp32) if len(fp32) > 1 else None}  # fmt: skip
    lines = [f"One checkpoint validated at 32-true and bf16-mixed (`{result['command']}`; d = {d}, {n} samples).\n",
             ("| seed | KL excess fp32 | KL excess bf16 | bf16 − fp32 | whitened norm fp32 / bf16 | Γ KL fp32 / bf16 | "
             "sampling s fp32 / bf16 |"), "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        a, b = r["32-true"], r["bf16-mixed"]
        lines.append(f"| {r['seed']} | {a['val/samples/kl_excess']:.4g} | {b['val/samples/kl_excess']:.4g} | "
                     f"{r['kl_difference']:+.3g} | {a['val/samples/whitened_norm_excess']:.4g} / "
                     f"{b['val/samples/whitened_norm_excess']:.4g} | {a['val/samples/gamma_kl_excess']:.4g} / "
                     f"{b['val/samples/gamma_kl_excess']:.4g} | {a['val/seconds/sampling']:.3g} / "
                     f"{b['val/seconds/sampling']:.3g} |")  # fmt: skip
    sd = f"{result['fp32_seed_sd']:.3g}" if result["fp32_seed_sd"] is not None else "n/a"
    lines += ["", (f"Mean |bf16 − fp32| of the KL excess: {result['mean_abs_difference']:.3g} nats; the KL's noise "
              f"(sd of exact samples' KL): {noise:.3g}; sd of the fp32 KL excess over seeds: {sd}.")]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(result, indent=1))
    (args.out / "precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
