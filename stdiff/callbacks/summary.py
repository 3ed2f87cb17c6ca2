"""The few lines printed at the end of ``fit``, ``validate`` and ``test``: how far the model is
from the truth, in plain words, and where the rest is written. Again for a finished run:

    python -m stdiff.callbacks.summary lightning_logs/version_0      # or …/test_0, or a metrics.json

The verdicts themselves, and the yardsticks they read, are in ``stdiff.callbacks.verdicts``.
"""

from __future__ import annotations

import math

from stdiff.callbacks.verdicts import conditional_verdict, reference_verdict, verdict
from stdiff.metrics.distances import excess_noise

# what the diagnostics record of the part of the KL no training removes (``stdiff.metrics.exact_model_floor``)
FLOOR_KEYS = ("exact_model_kl_excess", "early_stopping_kl", "t_min_for_early_stopping", "smallest_eigenvalue",
              "condition_number", "early_stopping_kl_ode", "early_stopping_kl_root")  # fmt: skip


def wrap(text: str, indent: int, width: int = 110) -> str:
    """``text`` broken into lines of at most ``width`` characters, each after the first indented."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width - indent, subsequent_indent=" " * indent, break_on_hyphens=False))


def summary(results: dict[str, float], stage: str, d: int, num_samples: int, run_dir: str, exact_truth: bool = True,
            checkpoint: dict | None = None, step: int | None = None, model: str = "the model",
            reference: dict | None = None) -> str:  # fmt: skip
    """The end-of-run lines from the diagnostics' ``results`` (keys ``val/…`` or ``test/…``), and
    the fitted ``reference``'s report (``stdiff.truth.fitting``) where there is one."""
    prefix = "test" if stage == "test" else "val"

    def get(name: str) -> float | None:
        value = results.get(f"{prefix}/{name}")
        return None if value is None else float(value)

    components = get("mixture_components")
    mixture = components is not None
    against = "the exact GP" if exact_truth else "the fitted Gaussian reference (not the data's law)"
    against = f"the exact mixture of {int(components)} GPs" if mixture else against
    if checkpoint:
        where = f"checkpoint {checkpoint['path']} (step {checkpoint['global_step']})"
    else:
        where = f"step {step}" if stage == "fit" else f"{model}, no checkpoint"
    lines = [f"stdiff {stage}: {where}, against {against}"]
    verdict_step = results.get("fit/verdict_step")
    if stage == "fit" and verdict_step is not None and step is not None and int(verdict_step) != step:
        lines.append(f"  stopped by a signal: the verdicts below are of the validation at step {int(verdict_step)}, not of "
                     "the last weights (`stdiff validate --ckpt_path last` scores those)")  # fmt: skip
    if reference is not None and "held_out_log_likelihood_per_value" in reference:
        lines.append(f"  reference fit     log-likelihood {reference['log_likelihood_per_value']:.4g} nats per value on its "
                     f"training windows, {reference['held_out_log_likelihood_per_value']:.4g} on the validation windows")  # fmt: skip
    prior_loss, correction = get("prior_loss"), get("correction")
    if prior_loss is not None and correction is not None:
        loss = get("loss")
        lines.append(f"  correction        {correction:.3g} RMS of ε̂ added to the prior's; {prefix}/loss {loss:.4g} against "
                     f"the prior's {prior_loss:.4g}")  # fmt: skip
    score, excess_loss = get("score_rel_error"), get("excess_loss")
    if score is not None:
        lines.append(f"  score error       {score:.4g}   E‖ŝ − s*‖² / E‖s*‖² over noise levels (0: the exact score)")
    if excess_loss is not None:
        loss, exact = get("loss"), get("loss_exact")
        beside = f" ({prefix}/loss {loss:.4g} − exact model's {exact:.4g})" if None not in (loss, exact) else ""
        lines.append(f"  excess loss       {excess_loss:.3g}{beside}: what is left to learn")
    kl, kl_floor, kl_excess = get("samples/kl"), get("samples/kl_floor"), get("samples/kl_excess")
    if get("samples/weights_tv") is not None:
        lines.extend(_mixture_lines(get))
        if kl_excess is None:
            lines.append(f"  verdict: {wrap(_mixture_weights_verdict(get), 11)}")
    noise = get("samples/kl_excess_noise") if mixture else None
    if kl_excess is not None and kl is not None and kl_floor is not None:
        what = ("mixture KL by components (the weights' KL + each component's Gaussian-fit KL; a lower bound of "
                "the true KL)" if mixture else "Gaussian-fit KL")  # fmt: skip
        lines.append(f"  sample KL excess  {kl_excess:.3g}   {what} {kl:.4g} of {num_samples} samples, "
                     f"{kl_floor:.4g} for as many exact samples (noise of the excess ±"
                     f"{(excess_noise(d, num_samples) if noise is None else noise):.2g})")  # fmt: skip
        floor = {k: get(f"samples/{k}") for k in FLOOR_KEYS if get(f"samples/{k}") is not None}
        exact_model = model == "ExactDenoiser"
        if "exact_model_kl_excess" in floor and not exact_model:
            early = f" (what stopping at t_min leaves: {floor['early_stopping_kl']:.3g})" if "early_stopping_kl" in floor else ""
            lines.append(f"  exact model       {floor['exact_model_kl_excess']:.3g}   its KL excess through the same "
                         f"sampler, steps and t_min{early}: what training cannot remove")  # fmt: skip
        white = None if mixture else get("samples/whitened_norm_excess")
        if white is not None:
            lines.append(f"  whitened norm     {white:+.3g}   excess of ‖K^(-1/2)(x − μ)‖²/d over exact samples' (0 ideal)")
        said = verdict(kl_excess, d, num_samples, floor, exact_model, noise) if exact_truth else reference_verdict(kl_excess, d)
        lines.append(f"  verdict: {wrap(said, 11)}")
    eigen = None if mixture else get("samples/eigen_kl_excess")
    if eigen is not None:
        lines.extend(_eigen_lines(get, d, num_samples, model == "ExactDenoiser", kl_excess is None, exact_truth))
    elif get("samples/whitened_norm_excess") is not None and not mixture:
        lines.append(f"  whitened norm     {get('samples/whitened_norm_excess'):+.3g}   (no full-covariance KL: it needs "
                     f"more than 2·d = {2 * d} samples and d ≤ 1024; see the structured metrics)")  # fmt: skip
    true_kl = get("likelihood/kl_true")
    if true_kl is not None:
        se, floor_kl, nll = get("likelihood/kl_true_se"), get("likelihood/kl_true_floor"), get("likelihood/nll")
        lines.append(f"  true KL           {true_kl:.3g}" + (f" ± {se:.2g}" if se is not None else "") + "   KL(data ‖ model)"
                     " by the probability-flow ODE's log-likelihood" + (f", nll {nll:.4g} nats/dim" if nll is not None
                     else "") + (f" (the exact model at t_min: {floor_kl:.3g})" if floor_kl is not None else "")
                     + ("; against the mixture's exact log-density: the KL that sees modes" if mixture else ""))  # fmt: skip
    tasks = sorted({k.split("/")[2] for k in results if k.startswith(f"{prefix}/conditional/") and
                    k.endswith("/crps_ratio")})  # fmt: skip
    for task in tasks:
        c = {k.rsplit("/", 1)[1]: v for k, v in results.items() if k.startswith(f"{prefix}/conditional/{task}/")}
        lines.append(f"  {task:<17} CRPS {c['crps_ratio']:.4g} × the {'Bayes-optimal' if exact_truth else 'reference'}'s; "
                     f"the 50 % and 90 % intervals hold {100 * c.get('coverage50', math.nan):.1f} % and "
                     f"{100 * c.get('coverage90', math.nan):.1f} % of held-out values; spread "
                     f"{c.get('spread', math.nan):.3g} (1: intervals of the right width)")  # fmt: skip
        lines.append(f"  verdict ({task}): {wrap(conditional_verdict(c, exact_truth), 11)}")
    if kl_excess is None and get("samples/whitened_norm_excess") is None and get("samples/weights_tv") is None and not tasks:
        lines.append("  no sample metrics this time (diagnostics.sample_every=0, or a conditional model without "
                     "data.init_args.task)")  # fmt: skip
    lines.extend(best_lines(results, model) if stage == "fit" else [])
    cost = _cost_line(results, stage, prefix)
    if cost:
        lines.append(cost)
    lines.append(f"  all metrics: {run_dir}/metrics.json; figures: {run_dir}/figures/; tensorboard --logdir "
                 f"{_logdir(run_dir)}")  # fmt: skip
    return "\n".join(lines)


def print_summary(diagnostics, trainer, stage: str, run: str) -> None:
    """Print ``summary`` of a ``GPDiagnostics``' results (rank 0)."""
    if not trainer.is_global_zero:
        return
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = diagnostics._checkpoint if stage != "fit" and trainer.ckpt_path else None
    exact = getattr(trainer.datamodule, "truth_is_exact", True)
    print(summary({**logged, **diagnostics.results}, stage, diagnostics.truth.dim, diagnostics.num_samples, run, exact,
                  checkpoint, diagnostics._step(trainer), type(trainer.lightning_module.denoiser).__name__,
                  getattr(trainer.datamodule, "reference_report", None)), flush=True)  # fmt: skip


def write_metrics(diagnostics, trainer, stage: str, run: str) -> None:
    """Write ``metrics_document`` of a ``GPDiagnostics``' results to ``<run>/metrics.json`` (rank 0)."""
    import json
    import os

    from stdiff.atomic import atomic_write

    if not trainer.is_global_zero:
        return
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}  # e.g. val/loss, train/loss
    loaded = diagnostics._checkpoint if trainer.ckpt_path else None
    document = metrics_document(stage, diagnostics._step(trainer), {**logged, **diagnostics.results}, diagnostics.truth,
                                diagnostics.num_samples, getattr(trainer.datamodule, "truth_is_exact", True), loaded,
                                type(trainer.lightning_module.denoiser).__name__,
                                getattr(trainer.datamodule, "reference_report", None), diagnostics.conditional_estimator)  # fmt: skip
    os.makedirs(run, exist_ok=True)
    with atomic_write(os.path.join(run, "metrics.json"), "w") as f:
        json.dump(document, f, indent=1)


def best_report(trainer) -> dict[str, float]:
    """``BestCheckpoint.report()`` of the trainer's best-checkpoint callback, or nothing."""
    for cb in getattr(trainer, "callbacks", []):
        if getattr(cb, "state_key", None) == "BestCheckpoint":
            return cb.report()
    return {}


def stopped_by_signal(trainer, exception: BaseException) -> bool:
    """Whether a one-process fit is stopping on SIGTERM or Ctrl+C (its summary then reuses the last
    validation's verdicts: under DDP the ranks may not all get there, so it says nothing)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return (trainer.state.fn == "fit" and trainer.world_size == 1
            and isinstance(exception, (SIGTERMException, KeyboardInterrupt)))  # fmt: skip


def best_lines(results: dict[str, float], model: str) -> list[str]:
    """What ``BestCheckpoint`` chose for ``checkpoints/best.ckpt`` (its ``report``), in words."""
    step = results.get("fit/best/step")
    if step is None:
        return []
    forecast = results.get("fit/best/forecast") == 1
    what = "forecast CRPS" if forecast else "val/loss"
    on = f" on {int(results.get('fit/best/cases', 0))} validation windows" if forecast else ""
    zero = "the prior (the fitted Gaussian, step 0)" if model == "ResidualDenoiser" else "step 0 (the model as initialised)"
    prior, candidate, ratio = (results.get(f"fit/best/{k}") for k in ("prior_score", "candidate_step", "ratio"))
    against = f"{ratio:.3f} ± {results.get('fit/best/ratio_se', math.nan):.3f} × step 0's" if ratio is not None else ""
    if step == 0 and candidate is None:
        text = f"{zero}: no validation scored after it"
    elif step == 0:
        text = (f"{zero}, {what} {prior:.4g}{on}: no later weights beat it by more than 2 standard errors "
                f"(the closest, step {int(candidate)}: {against})")  # fmt: skip
    else:
        text = f"step {int(step)}, {what} {results['fit/best/candidate_score']:.4g}{on}" + (
            f": {against}, below it by more than 2 standard errors" if against else "")
    return [f"  best checkpoint   {wrap(text + '; in checkpoints/best.ckpt', 20)}"]


def no_truth_summary(step: int, loss: float | None, run: str, results: dict[str, float], model: str) -> str:
    """The end of a fit with nothing to score against: where things are, and the best checkpoint."""
    line = (f"stdiff fit: step {step}" + (f", val/loss {loss:.4g}" if loss is not None else "") + "; no known "
            "distribution to score against (a GP data module, or ArrayDataModule's reference, gives one); checkpoints "
            f"in {run}/checkpoints/")  # fmt: skip
    return "\n".join([line, *best_lines(results, model)])


def metrics_document(stage: str, step: int, results: dict[str, float], truth, num_samples: int, exact_truth: bool,
                     checkpoint: dict | None, model: str, reference_report: dict | None, estimator: str) -> dict:
    """What ``metrics.json`` holds: every metric (NaN and inf as null), ``global_step`` (the training
    step of the weights scored: a checkpoint's for validate and test), the truth the metrics use
    (condition numbers, any jitter, a mixture's components, a fitted reference's report)."""
    metrics = {k: (v if math.isfinite(v) else None) for k, v in results.items()}
    out = {"stage": stage, "global_step": step, "metrics": metrics,
           "diagnostics": {"dim": truth.dim, "num_samples": num_samples, "exact_truth": exact_truth}}  # fmt: skip
    if stage != "fit":  # the exact model, or no checkpoint: null
        out["checkpoint"], out["model"] = checkpoint, model
    out["data"] = {"conditioning": truth.conditioning}
    if not truth.is_gaussian:
        out["data"]["mixture"] = {"weights": truth.weights.tolist(), "components": [repr(c) for c in truth.components]}
    if reference_report is not None:  # a fitted reference: its fit, training and held-out log-likelihood
        out["data"]["reference"] = reference_report
    if any("/conditional/" in k for k in metrics):
        out["conditional_estimator"] = estimator  # of crps and energy
    return out


FLAG_Z = 3.0  # a tenth of the eigen-directions, or the frame means, this many noises off: named


def _eigen_lines(get, d: int, n: int, exact_model: bool, headline: bool, exact_truth: bool) -> list[str]:
    """The eigen-direction KL (``stdiff.metrics.eigen``) with its exact floor and noise, the exact
    model's floor through the sampler, what stands out (a tenth of the directions, the frame
    means), and, when it is the ``headline`` (no full-covariance KL at this d or n), the verdict."""
    excess, noise = get("samples/eigen_kl_excess"), get("samples/eigen_kl_noise")
    lines = [(f"  eigen KL excess   {excess:.3g} ± {noise:.2g}   KL of the samples' Gaussian fit in the truth's {d} "
              f"eigen-directions, {get('samples/eigen_kl'):.4g}, over exact samples' expected "
              f"{get('samples/eigen_kl_floor'):.4g} (floor and noise exact)")]  # fmt: skip
    floor_kl = get("samples/exact_model_eigen_kl")
    if floor_kl is not None and not exact_model:
        lines.append(f"  exact model       {floor_kl:.3g}   its KL through the same sampler, steps and t_min (exact, per "
                     "eigen-direction): what training cannot remove")  # fmt: skip
    elif floor_kl is not None:
        lines.append(f"  sampler floor     {floor_kl:.3g}   this exact model's KL through its sampler, steps and t_min "
                     "(exact, per eigen-direction)")  # fmt: skip
    flagged = []
    zs = {k: get(f"samples/eigen_decile{k}/z") for k in range(10)}
    tenths = [f"{k}: {z:+.1f} (×{get(f'samples/eigen_decile{k}/variance_ratio'):.3g})"
              for k, z in zs.items() if z is not None and abs(z) > FLAG_Z]  # fmt: skip
    if tenths:
        flagged.append(f"tenths of the eigen-directions more than {FLAG_Z:g} noises off (0: smallest eigenvalues; "
                       "noises, and variance against the truth's): " + ", ".join(tenths))  # fmt: skip
    frame_z = get("samples/frame_mean_z")
    if frame_z is not None and abs(frame_z) > FLAG_Z:
        flagged.append(f"the frame means are shifted ({frame_z:+.1f} noises, χ² over {get('samples/frame_mean_chi2'):.4g})")
    if flagged:
        lines.append(f"  flagged: {wrap('; '.join(flagged), 11)}")
    if headline:
        floor = {k: get(f"samples/{k}") for k in FLOOR_KEYS if get(f"samples/{k}") is not None}
        said = verdict(excess, d, n, floor, exact_model, noise) if exact_truth else reference_verdict(excess, d)
        lines.append(f"  verdict: {wrap('(eigen-direction KL) ' + said, 11)}")
    return lines


def _component_count(get) -> int:
    """How many components a mixture's sample metrics hold (``samples/weights/<k>``)."""
    k = 0
    while get(f"samples/weights/{k}") is not None:
        k += 1
    return k


def _mixture_lines(get) -> list[str]:
    """A mixture truth's lines: the weights recovered, each component's KL and whitened norm, and
    the Gaussian fit to the moment-matched Gaussian, flagged as misleading."""
    k = _component_count(get)
    recovered = " / ".join(f"{get(f'samples/weights/{i}'):.3f}" for i in range(k))
    true = " / ".join(f"{get(f'samples/weights/{i}/true'):.3f}" for i in range(k) if get(f"samples/weights/{i}/true") is not None)
    tv, tv_floor = get("samples/weights_tv"), get("samples/weights_tv_floor")
    exact_model = get("samples/exact_model_weights_tv")
    lines = [f"  weights           {recovered} recovered (true {true}): total variation {tv:.3g}"
             + (f", {tv_floor:.3g} for as many exact samples (its noise)" if tv_floor is not None else "")
             + (f", {exact_model:.3g} for the exact model through the same sampler (its start at t_max included)"
                if exact_model is not None else "")]  # fmt: skip
    for i in range(k):
        kl, floor = get(f"samples/component{i}/kl"), get(f"samples/component{i}/kl_floor")
        count, white = get(f"samples/component{i}/samples"), get(f"samples/component{i}/whitened_norm_excess")
        text = f"  component {i:<7} {int(count or 0)} samples assigned"
        text += f"; Gaussian-fit KL {kl:.4g} (exact samples: {floor:.4g})" if kl is not None and floor is not None else (
            "; too few for a Gaussian-fit KL (more than 2·d needed)")  # fmt: skip
        text += f"; whitened norm excess {white:+.3g}" if white is not None else ""
        lines.append(text)
    moment, moment_floor = get("samples/moment_matched_kl"), get("samples/moment_matched_kl_floor")
    if moment is not None and moment_floor is not None:
        lines.append(f"  moment-matched    {moment - moment_floor:.3g}   Gaussian-fit KL excess to the mixture's mean and "
                     "covariance: misleads for a mixture (a model that merges or drops modes can score well); read "
                     "the weights, the components and the true KL instead")  # fmt: skip
    return lines


def _mixture_weights_verdict(get) -> str:
    """The verdict on a mixture's samples when some component has too few for its KL: dropped
    modes (a component with under a tenth of the samples its weight gives), else the weights."""
    k, dropped = _component_count(get), []
    n = sum(get(f"samples/component{i}/samples") or 0 for i in range(k))
    for i in range(k):
        true, count = get(f"samples/weights/{i}/true"), get(f"samples/component{i}/samples") or 0
        if true is not None and count < 0.1 * true * n:
            dropped.append(f"component {i} (weight {true:.3g}: {int(count)} of {int(n)} samples)")
    if dropped:
        return ("NOT at the truth: the samples miss " + ", ".join(dropped) + ": a mode dropped; train longer "
                "(trainer.max_steps)")  # fmt: skip
    tv, floor = get("samples/weights_tv"), get("samples/weights_tv_floor") or 0.0
    said = ("the weights are within 3 × the exact samples' error" if tv <= 3 * floor + 0.01 else
            f"the weights are off (total variation {tv:.3g})")  # fmt: skip
    return (f"no mixture KL: some component has at most 2·d samples; {said}. Raise diagnostics.num_samples for the "
            "components' KLs")  # fmt: skip


def _cost_line(results: dict[str, float], stage: str, prefix: str) -> str | None:
    """Where the wall time went: the fit's validations against the whole fit, or this validation's parts."""
    key = "fit/validation_seconds" if stage == "fit" else f"{prefix}/seconds"
    if key not in results:
        return None
    names = [("sampling", "sampling"), ("selection", "best-checkpoint forecasts"), ("metrics", "metrics"),
             ("figures", "figures"), ("batches", "loss batches"), ("other", "checkpoints and the rest")]  # fmt: skip
    parts = ", ".join(f"{name} {results[f'{key}/{part}']:.3g} s" for part, name in names
                      if f"{key}/{part}" in results and (part != "selection" or results[f"{key}/{part}"] > 0))  # fmt: skip
    total = results[key]
    if stage == "fit" and "fit/seconds" in results:
        wall = results["fit/seconds"]
        return (f"  time              validations {total:.3g} s of the fit's {wall:.3g} s ({100 * total / wall:.0f} %): "
                f"{parts}")  # fmt: skip
    return f"  time              {total:.3g} s: {parts}"


def _logdir(run_dir: str) -> str:
    """The folder of runs above ``run_dir`` (``lightning_logs`` for ``lightning_logs/version_0/test_0``)."""
    parts = run_dir.replace("\\", "/").rstrip("/").split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "lightning_logs":
            return "/".join(parts[: i + 1])
    return run_dir


def summary_of_run(path: str) -> str:
    """The summary of a finished run, from its ``metrics.json`` (and, for runs written before
    ``metrics.json`` recorded them, the dimension and sample count from its ``config.yaml``)."""
    import json
    from pathlib import Path

    import yaml

    file = Path(path) / "metrics.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise SystemExit(f"no metrics.json at {path}: pass a run directory (lightning_logs/version_N) or its metrics.json")
    written = json.loads(file.read_text())
    info = written.get("diagnostics") or {}
    if "dim" not in info:
        config = yaml.safe_load((file.parent / "config.yaml").read_text())
        data = config["data"]["init_args"]
        info = {"dim": data["frames"] * math.prod(data.get("space_shape") or [1]),
                "num_samples": config["diagnostics"]["num_samples"]}  # fmt: skip
    metrics = {k: v for k, v in written["metrics"].items() if v is not None}
    stage = written["stage"]
    return summary(metrics, stage, info["dim"], info["num_samples"], str(file.parent), info.get("exact_truth", True),
                   written.get("checkpoint"), written["global_step"], written.get("model") or "the model")  # fmt: skip


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m stdiff.callbacks.summary <run directory or metrics.json>")
    print(summary_of_run(sys.argv[1]))
