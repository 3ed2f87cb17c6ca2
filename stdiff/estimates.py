"""Sizes and durations of a run's step counts and sample counts, estimated before anything is
allocated or written (``runs.preflight``): a count no use needs is refused with what it would
cost, the option named, instead of growing until the machine swaps or the allocator fails.
"""

from __future__ import annotations

import math
import time

import torch

from stdiff._validation import check_memory, format_bytes

# No sampler or likelihood integration needs more: UniPC reaches the integrator floor by 25 steps,
# DDIM and Heun by 1000, the likelihood ODE is within 1e-9 nats/dim of its limit by 10⁵ (its error
# falls as steps⁻²; 9e-4 at 100); float32 round-off then grows with every step instead.
MAX_STEPS = 100_000
# Host memory of a step's place in the time grid while it is made (float64 grids, their temporaries;
# the likelihood's also as Python lists): 40, 24 and 96 bytes at 10⁷ steps for UniPC, DDIM and the
# likelihood, rounded up (``python -m pytest -m slow -k bytes_per_step -s tests/test_estimates.py``).
SAMPLER_BYTES_PER_STEP = 48
LIKELIHOOD_BYTES_PER_STEP = 112


def check_run(subcommand: str, trainer, model, datamodule) -> None:
    """Refuse step counts beyond ``MAX_STEPS`` (the sampler's; the likelihood's under ``test``) with
    their memory and time, and sample counts whose memory is more than half what is available."""
    from stdiff.callbacks import GPDiagnostics, LikelihoodReport

    shape = tuple(model.sample_shape)
    batch = getattr(datamodule, "batch_size", 1)
    diagnostics = next((c for c in trainer.callbacks if isinstance(c, GPDiagnostics)), None)
    likelihood = next((c for c in trainer.callbacks if isinstance(c, LikelihoodReport)), None)
    if subcommand == "predict":
        draws = getattr(datamodule, "num_predict", 0) or 0
    else:
        draws = diagnostics.num_samples if diagnostics is not None and datamodule.has_truth else 0
    batch = min(batch, draws) if draws else batch  # a request smaller than a batch is drawn as one
    sampler = model.sampler
    check_steps("model.sampler.init_args.steps", sampler.steps, sampler.evaluations, SAMPLER_BYTES_PER_STEP,
                math.ceil(draws / batch), model, shape, batch)  # fmt: skip
    if subcommand == "test" and likelihood is not None and likelihood.num_samples:
        evaluations = 3 * likelihood.steps + 2  # the fine grid, the coarse one (extrapolation), the ends
        check_steps("likelihood.steps", likelihood.steps, evaluations, LIKELIHOOD_BYTES_PER_STEP,
                    math.ceil(likelihood.num_samples / batch), model, shape, batch)  # fmt: skip
    d = math.prod(shape)
    sets = {}  # held in memory: the fixed sets drawn (or read) at set-up, each with its noise and noisy copy
    if subcommand == "fit" and getattr(datamodule, "num_train", None) is not None and hasattr(datamodule, "sample"):
        sets[f"training set (data.init_args.num_train={datamodule.num_train})"] = 12 * datamodule.num_train * d
    if subcommand in ("fit", "validate", "test"):
        stage = "test" if subcommand == "test" else "val"
        n = datamodule.evaluation_count(stage)
        sets[f"{'test' if stage == 'test' else 'validation'} set (data.init_args.num_val={n})"] = 12 * n * d
    if sets:
        check_memory(f"holding the fixed sets of samples {shape}", sets, "lower data.init_args.num_val or num_train")
    if diagnostics is not None and subcommand != "predict" and datamodule.has_truth:
        n = diagnostics.num_samples
        parts, advice = diagnostics_memory(n, shape, getattr(datamodule, "gp", None))
        check_memory(f"diagnostics.num_samples={n} of samples {shape}", parts, advice)
        if getattr(datamodule, "task", None) is not None:  # conditional metrics: cases × samples, a posterior each
            cases, k = diagnostics.conditional_cases, diagnostics.conditional_samples
            check_memory(f"diagnostics.conditional_cases={cases} × conditional_samples={k} of samples {shape}",
                         {"conditional samples": 3 * 4 * cases * k * d, "exact posteriors": posterior_memory(cases, k, d)},
                         "lower diagnostics.conditional_cases or conditional_samples")  # fmt: skip
    if subcommand == "test" and likelihood is not None:
        check_memory(f"likelihood.num_samples={likelihood.num_samples} of samples {shape}",
                     {"test samples and their ODE states": 8 * 8 * likelihood.num_samples * d},
                     "lower likelihood.num_samples")  # fmt: skip


def posterior_memory(cases: int, k: int, d: int) -> float:
    """Bytes of ``k`` exact posterior draws of ``cases`` cases of d values: the draws (float64) and,
    up to ``DENSE_LIMIT``, a d × d covariance per case; beyond it (whole frames through the
    Kronecker structure, scattered masks by conjugate gradients) ~10 vectors per draw solved at once."""
    from stdiff.truth import DENSE_LIMIT
    from stdiff.truth.conditioning import MATHERON_ROWS

    solve = 2 * 8 * cases * d * d if d <= DENSE_LIMIT else 10 * 8 * min(cases * k, MATHERON_ROWS) * d
    return 8 * cases * k * d + solve


def diagnostics_memory(n: int, shape: tuple, gp=None) -> tuple[dict[str, float], str]:
    """What a sampling validation of ``n`` samples ``shape`` holds at once, part by part (bytes), and
    the advice that lowers the largest part: the sampler's states and the exact model's float64
    temporaries, the samples and as many exact ones (the floor) in float64, their eigen-coordinates,
    whitened values and sorted copy (O(n·d): 16 × 8·n·d bytes, above the 11–14 × that ``python -m
    stdiff.bench video_cost`` measures over a 2-sample validation at d = 16,384 and 65,536); the full-covariance KL's
    d × d matrices only where it is computed (d <= ``FULL_MAX_DIM`` and n > 2d); Σ̂ (S × S) only
    where S <= ``FULL_MAX_DIM``; Σ and its eigenvectors where ``gp`` holds Σ dense (not separable).
    """
    from stdiff.metrics.distances import FULL_MAX_DIM

    d, s = math.prod(shape), math.prod(shape[1:])
    parts = {"samples, their floor, the sampler's states and eigen-coordinates": 16 * 8 * n * d}
    if d <= FULL_MAX_DIM and n > 2 * d:
        parts["their full covariances (d <= 1024)"] = 4 * 8 * d * d
    if s <= FULL_MAX_DIM:
        parts["spatial covariances Σ̂ (S <= 1024)"] = 4 * 8 * s * s
    if gp is not None and not gp.separable:
        parts["Σ and its eigenvectors (a kernel that is not separable)"] = 3 * 8 * s * s
    dominant = max(parts, key=parts.get)
    advice = ("lower diagnostics.num_samples" if dominant.startswith("samples") else
              "lower diagnostics.num_samples to 2·d or fewer (the full-covariance KL is then skipped)" if "full" in dominant
              else "use a separable spatial kernel (stdiff.kernels.Separable, or RBF), which is never formed as S × S")  # fmt: skip
    return parts, advice


def check_steps(option: str, steps: int, evaluations: int, bytes_per_step: int, batches: int, model, shape: tuple,
                batch: int) -> None:  # fmt: skip
    """``ValueError`` for ``steps`` beyond ``MAX_STEPS``: the grid's memory, the network evaluations
    per batch and in all (``batches`` of them), and how long those take at one evaluation timed now."""
    if steps <= MAX_STEPS:
        return
    seconds = seconds_per_evaluation(model, shape, batch)
    total = evaluations * max(batches, 1)
    cost = (f"a time grid of {format_bytes(bytes_per_step * (steps + 1))} and {evaluations:.3g} network evaluations per batch "
            f"of {batch} samples")  # fmt: skip
    if batches > 1:
        cost += f", {total:.3g} for the {batches} batches of this run"
    if seconds is not None:
        cost += f": about {duration(total * seconds)} at {seconds * 1e3:.3g} ms per evaluation (one timed now, here)"
    raise ValueError(f"{option}={steps} is more than any use needs (at most {MAX_STEPS}: samplers and the likelihood "
                     f"ODE are converged long before, and float32 round-off grows with every step). It would take "
                     f"{cost}. Use a few to a few hundred steps (stdiff/guide/models.md, samplers)")  # fmt: skip


def seconds_per_evaluation(model, shape: tuple, batch: int) -> float | None:
    """Seconds of one network evaluation on a batch of noise (the fastest of three), timed where the
    model is now (the CPU before a run starts); None if the model needs more than ``(x_t, t)`` (a
    conditional network, the exact model before its set-up)."""
    x = torch.randn(batch, *shape)
    t = torch.full((batch,), 0.5 * (model.schedule.t_min + model.schedule.t_max))
    try:
        with torch.no_grad():
            model.denoiser(x, t)  # warm-up
            timings = []
            for _ in range(3):  # the fastest of three: a busy machine's stalls are not the network's cost
                start = time.perf_counter()
                model.denoiser(x, t)
                timings.append(time.perf_counter() - start)
            return min(timings)
    except (TypeError, RuntimeError, ValueError):
        return None


def duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it above 1 (up to years)."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"
