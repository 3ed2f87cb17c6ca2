"""``python -m stdiff.paper <experiment> [--scale cpu|full] [--root lightning_logs] [--seeds N]``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import warnings

from stdiff.paper import EXPERIMENTS
from stdiff.paper.common import experiment_configs, output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stdiff.paper", description=__doc__)
    parser.add_argument("experiment", choices=EXPERIMENTS)
    parser.add_argument("--scale", choices=("cpu", "full"), default="cpu", help="cpu: minutes on a laptop")
    parser.add_argument("--root", default="lightning_logs", help="outputs go to <root>/paper/<experiment>/version_N")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: the scale's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scale's)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter.*")
    module = importlib.import_module(f"stdiff.paper.{args.experiment}")
    scale = dict(module.CPU if args.scale == "cpu" else module.FULL)
    scale["configs"] = experiment_configs(args.experiment, args.scale)  # the base and, on CPUs, its overlay
    for key in ("seeds", "steps"):
        if getattr(args, key) is not None:
            scale[key] = getattr(args, key)
    out = output_dir(args.experiment, args.root)
    print(f"{args.experiment} ({args.scale} scale) -> {out}", file=sys.stderr)
    start = time.perf_counter()
    summary = module.run(out, scale)
    summary = {
        "experiment": args.experiment,
        "scale": args.scale,
        "settings": scale,
        "wall_time_s": round(time.perf_counter() - start, 1),
        **summary,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
