"""The verdicts: one sentence each on how far samples are from the truth, with the noise that
says whether a difference is real.

The verdict reads the Gaussian-fit KL excess of the generated samples (their KL to the truth
minus that of as many exact samples, ``samples/kl_excess``; for a mixture of GPs the KL by
components, ``stdiff.metrics.mixture``, with its own noise) against three yardsticks:

- its noise: the excess is a difference of two KLs of ``n`` samples in dimension ``d``, each with
  standard deviation ``kl_noise`` (about ``sqrt(d(d+3)) / (2n)``; its mean, the KL's floor, is
  about ``d(d+3)/(4n)``), so for exact samples the excess has standard deviation
  ``excess_noise`` = √2 · ``kl_noise``: an excess within two of these, either side, is
  *indistinguishable from exact samples* at this sample size;
- one hundredth of a nat per dimension (``0.01·d``): below it the samples are *close to the
  truth* (the quickstart's 2000 samples in d = 256: 2.56 nats; what its seeds reach is in the
  README's "Expected result"); above it they are *not at the truth yet*;
- what the exact model reaches through the same sampler, steps and t_min, from the same noise
  (``samples/exact_model_kl_excess``): when that is itself above ``0.01·d``, the sampler or the
  stopping time, not training, keeps the samples from the truth, and the verdict says what to
  change (t_min, steps, the kernel) instead of advising more training.
"""

from __future__ import annotations

import math

from stdiff.metrics.distances import excess_noise

CLOSE_PER_DIM = 0.01  # nats per dimension


def verdict_level(kl_excess: float, d: int, n: int, noise: float | None = None) -> str:
    """``indistinguishable``, ``close`` or ``not``: the verdict's level, as ``verdict`` words it.
    Indistinguishable: |excess| within two of its noise (``excess_noise``, or ``noise`` when given:
    a mixture's, ``samples/kl_excess_noise``), both sides."""
    if not math.isfinite(kl_excess):
        return "not"
    if abs(kl_excess) <= 2 * (excess_noise(d, n) if noise is None else noise):
        return "indistinguishable"
    return "close" if kl_excess <= CLOSE_PER_DIM * d else "not"


def verdict(kl_excess: float, d: int, n: int, floor: dict[str, float] | None = None, exact_model: bool = False,
            noise: float | None = None) -> str:
    """One sentence: whether samples with this Gaussian-fit KL excess reached the truth and, when
    not, what keeps them from it. ``floor``: what no training can remove, from the diagnostics
    (``exact_model_kl_excess``: the exact model through the same sampler, steps and t_min, from the
    same noise; ``early_stopping_kl``; ``t_min_for_early_stopping``; ``smallest_eigenvalue`` and
    ``condition_number`` of Γ ⊗ Σ). Training is advised only when the exact model, through the
    same sampler, is close to the truth and the model is not. ``noise``: the excess's standard
    deviation when it is not a Gaussian fit's (a mixture's KL by components)."""
    noise = excess_noise(d, n) if noise is None else noise
    level, close = verdict_level(kl_excess, d, n, noise), CLOSE_PER_DIM * d
    floor = floor or {}
    if not math.isfinite(kl_excess):
        return "NOT at the truth: the samples hold NaN or inf"
    exact_excess = floor.get("exact_model_kl_excess")
    if exact_excess is not None and verdict_level(exact_excess, d, n, noise) == "not":
        return _sampler_verdict(kl_excess, exact_excess, d, n, floor, exact_model, noise)
    if level == "indistinguishable":
        return (f"reached the truth: the samples are indistinguishable from exact ones at n = {n} "
                f"(KL excess {kl_excess:.3g} within 2 × its noise {noise:.2g}, either side)")  # fmt: skip
    if level == "close" and kl_excess < 0:
        why = ("chance (about 1 in 40: this sampler's output from the exact model is Gaussian)" if exact_model else
               "chance (about 1 in 40), or samples with lighter tails than a Gaussian's, whose covariance varies "
               "less from draw to draw (see the whitened norm)")  # fmt: skip
        return (f"close to the truth: KL excess {kl_excess:.3g} nats is below exact samples' by more than 2 × its "
                f"noise ({noise:.2g}): {why}; rerun with another diagnostics.seed to see")  # fmt: skip
    if level == "close":
        return (f"close to the truth: KL excess {kl_excess:.3g} nats ({kl_excess / d:.2g} per dimension, below "
                f"{CLOSE_PER_DIM} × d = {close:.3g}), though more than 2 × its noise ({noise:.2g}) above exact "
                "samples")  # fmt: skip
    reached = "" if exact_excess is None else (f"; the exact model reaches {exact_excess:.3g} through the same "
                                                f"sampler, so the rest, {kl_excess - exact_excess:.3g}, is the model's")  # fmt: skip
    return (f"NOT at the truth yet: KL excess {kl_excess:.3g} nats is above {CLOSE_PER_DIM} × d = {close:.3g}{reached}: "
            "train longer (trainer.max_steps) or see \"Why a well-fitted score gave poor samples\" in "
            "stdiff/guide/models.md")  # fmt: skip


def _sampler_verdict(kl_excess: float, exact_excess: float, d: int, n: int, floor: dict, exact_model: bool,
                     noise: float) -> str:  # fmt: skip
    """The verdict when even the exact model, through the same sampler, steps and t_min, is far from
    the truth: what to change there, never more training."""
    close = CLOSE_PER_DIM * d
    early = floor.get("early_stopping_kl")
    who = ("(this is the exact model): through this sampler, steps and t_min it reaches" if exact_model else
           ": the exact model itself, through the same sampler, steps and t_min, reaches")  # fmt: skip
    out = (f"NOT at the truth, and not for want of training {who} only a KL excess of {exact_excess:.3g} nats "
           f"(above {CLOSE_PER_DIM} × d = {close:.3g})").replace("training :", "training:")  # fmt: skip
    if early is not None and early > close / 2:
        t_min, lam, cond = (floor.get(k) for k in ("t_min_for_early_stopping", "smallest_eigenvalue", "condition_number"))
        out += f". Stopping at t_min alone costs {early:.3g}: lower model.denoiser.init_args.schedule.init_args.t_min"
        out += f" (to {t_min:.2g} for {close / 10:.3g} nats)" if t_min is not None else ""
        ends = {e: floor[f"early_stopping_kl_{e}"] for e in ("ode", "root") if f"early_stopping_kl_{e}" in floor}
        if ends and min(ends.values()) < 0.9 * early:  # the sampler does not end on the best step to σ = 0, and it would help
            best = min(ends, key=ends.get)
            out += f", end on the flow to σ = 0 (model.sampler.init_args.endpoint={best}: {ends[best]:.3g})"
        if lam is not None and cond is not None:
            out += (f", or choose a better-conditioned kernel (Γ ⊗ Σ's smallest eigenvalue is {lam:.2g}, its condition "
                    f"number {cond:.2g}: a smoother or longer-range kernel needs a smaller t_min)")  # fmt: skip
    else:
        spent = f" (early stopping at t_min costs only {early:.3g})" if early is not None else ""
        out += (f"; the sampler's discretisation is the cause{spent}: raise model.sampler.init_args.steps, or use "
                "UniPC")  # fmt: skip
    if not exact_model:
        gap = kl_excess - exact_excess
        out += (f". The model's samples are {gap:+.3g} nats from the exact model's through the same sampler"
                + (" (within 2 × the noise: as good as the exact model)" if abs(gap) <= 2 * noise else ""))  # fmt: skip
    return out


def reference_verdict(kl_excess: float, d: int) -> str:
    """The verdict where the truth is only a Gaussian fitted to the data (``ArrayDataModule``'s
    reference): a distance to it measures the model against that fit, not against the data's law,
    which may be far from Gaussian; more training is never the advice here."""
    if not math.isfinite(kl_excess):
        return "NOT comparable: the samples hold NaN or inf"
    where = "close to" if kl_excess <= CLOSE_PER_DIM * d else "far from"
    return (f"{where} the fitted Gaussian reference (KL excess {kl_excess:.3g} nats; 0.01 × d = {CLOSE_PER_DIM * d:.3g}). "
            "The reference is a Gaussian fitted to your data, not its law: a model of data that is not Gaussian can "
            "rightly differ from it. Judge it by held-out forecasts instead (data.init_args.task: CRPS against the "
            "reference's, stdiff/guide/own_data.md)")  # fmt: skip


CRPS_CLOSE = 1.05  # conditional samples within 5 % of the exact posterior's CRPS: at the posterior
SPREAD_RIGHT = 0.1  # intervals within 10 % of the posterior's width: of the right width


def conditional_verdict(c: dict[str, float], exact_truth: bool = True) -> str:
    """One sentence on conditional samples from their report ``c`` (``crps_ratio``: CRPS over the
    exact posterior's, or over the fitted reference's; ``spread``: their width over the
    posterior's): at the posterior when the CRPS is within 5 % of the Bayes-optimal and the
    intervals within 10 % of the right width."""
    ratio, spread = c.get("crps_ratio", math.nan), c.get("spread", math.nan)
    if not (math.isfinite(ratio) and math.isfinite(spread)):
        return "NOT at the posterior: the samples hold NaN or inf"
    width = ("of the right width" if abs(spread - 1) <= SPREAD_RIGHT else
             f"too {'wide' if spread > 1 else 'narrow'} (spread {spread:.3g}; the sampler sets it too: see "
             "stdiff/guide/conditional.md)")  # fmt: skip
    if not exact_truth:  # a fitted Gaussian, not the data's law: beating it is possible and good
        better = "better than" if ratio < 1 else "not better than"
        return f"{better} the fitted Gaussian reference (CRPS {ratio:.3g} × its); intervals {width}"
    if ratio <= CRPS_CLOSE and abs(spread - 1) <= SPREAD_RIGHT:
        return f"at the exact posterior: CRPS within {100 * (ratio - 1):.1f} % of the Bayes-optimal, intervals {width}"
    gap = f"CRPS {100 * (ratio - 1):.0f} % above the Bayes-optimal" if ratio > CRPS_CLOSE else "CRPS near the Bayes-optimal"
    return f"NOT at the posterior yet: {gap}, intervals {width}"
