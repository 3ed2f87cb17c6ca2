"""Benchmarks: ``python -m stdiff.bench <name> [arguments]`` (``--help`` after the name for its own).

Each is a module of this package (or a shell script beside it, for the checks that build
environments); their committed results live in ``stdiff/bench/results/``, which stays out of the
wheel. ``python -m stdiff.bench`` with no name lists them.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name: what it measures (one line each; the module docstrings say how)
BENCHMARKS = {
    "speed": "what stdiff costs: training overhead, data path, sampling, attention, GPU throughput",
    "quickstart": "the quickstart fit, its wall time and diagnostics beside the exact model's",
    "time_to_truth": "training time until the verdict first reads close to the truth, and indistinguishable",
    "precision": "one checkpoint's sample metrics validated at fp32 and at bf16 (the diagnostics' sampling precision)",
    "quickstart_seeds": "the quickstart's expected result: its final metrics and verdict over several seeds",
    "step_hooks": "per-step cost of each piece stdiff adds to a hand-written training step",
    "gp_sampler": "exact GP sampling and score: Kronecker factors against dense algebra",
    "sampler_kl": "sampler error with the exact model: KL excess by number of network evaluations",
    "mixture_sampler_kl": "sampler error with the exact model of a mixture of GPs: true KL by network evaluations",
    "mixtures": "the DiT on the three mixture presets at the quickstart's budget: score error, true KL, weights, components, attention",
    "diffusers_kl": "stdiff's samplers against diffusers' schedulers run on the same problem: exact KL by evaluations",
    "sampling_problems": "the 64 seeded Gaussian sampling problems and their fixed split into tuning and held-out halves",
    "sampler_tuning": "UniPC's automatic settings chosen on the tuning half of 64 seeded Gaussian sampling problems",
    "sampler_heldout": "stdiff's default sampler against diffusers' best and defaults on the 32 held-out problems",
    "trained_sampler_kl": "the same comparison on a trained model: Gaussian-fit KL excess by evaluations, with its noise",
    "sampling_path": "where along the sampling path a trained model's samples leave the exact law",
    "recipe_ablation": "what each part of the quickstart's training recipe does to its samples",
    "conditional_coverage": "coverage of a trained conditional model's intervals with many samples",
    "crps_noise": "CRPS ratio of exact posterior samples against exact posterior samples: its noise",
    "overfitting": "the real-data example's small-data recipe against plain training",
    "real_data": "residual and plain DiT on two real data sets: CRPS against training steps, beside three baselines",
    "data_sizes": "the residual DiT's best checkpoint against the fitted Gaussian on 1/30 to all of two real data sets",
    "array_memory": "peak memory of training on a large array file",
    "predict_memory": "peak memory of predict with very many samples",
    "eigen_checks": "planted defects found by the eigen-direction statistics at d = 16,384, and every preset's exact-model floor",
    "conditional_scale": "the exact conditional denoiser and posterior draws beyond the dense limit: time, CG iterations, error",
    "video_cost": "time and peak memory of a sampling validation and a training step from d = 256 to 65,536",
    "gpu_check": "everything that needs a GPU in one go: GPU tests, then the speed benchmark (a checkout)",
    "wheel_check": "a non-editable install runs the quickstart and the theory from an empty directory",
}


def run_with_peak(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``args`` (warnings silenced), polling its peak resident memory (VmHWM of
    ``/proc/<pid>/status``, Linux): the finished process, stdout and stderr as text, and the peak in MiB."""
    import time

    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, int(Path(f"/proc/{child.pid}/status").read_text().split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    out, err = child.communicate()
    return subprocess.CompletedProcess(args, child.returncode, out, err), peak / 1024


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        width = max(map(len, BENCHMARKS))
        listing = "\n".join(f"  {name:<{width}}  {what}" for name, what in BENCHMARKS.items())
        usage = f"usage: python -m stdiff.bench <name> [arguments]\n\nbenchmarks:\n{listing}"
        if not argv or argv[0] in ("-h", "--help"):
            print(usage)
            return
        hint = " (the speed benchmark is `python -m stdiff.bench speed --config ...`)" if argv[0].startswith("-") else ""
        raise SystemExit(f"{usage}\n\npython -m stdiff.bench: unknown benchmark {argv[0]!r}{hint}")
    name, rest = argv[0], argv[1:]
    script = HERE / f"{name}.sh"
    if script.exists():
        if rest and rest[0] in ("-h", "--help"):  # the script's opening comment says what it does and how
            lines = script.read_text().splitlines()[1:]
            print(f"usage: python -m stdiff.bench {name} [arguments]\n")
            print("\n".join(line[2:] for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))]))
            return
        raise SystemExit(subprocess.call(["bash", str(script), *rest], env=os.environ.copy()))
    sys.argv = [f"python -m stdiff.bench {name}", *rest]
    runpy.run_module(f"stdiff.bench.{name}", run_name="__main__")  # sys.argv[0] stays the command, for usage lines
