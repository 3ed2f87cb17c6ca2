"""Gaussian references fitted to sequences by maximum likelihood: the best Gaussian for data whose
truth is unknown (your own arrays), against which stdiff's diagnostics then score a model.

- ``fit_kernels(x, temporal, spatial)``: the hyperparameters (lengthscales, scales) of kernels from
  the registry, an overall variance and optionally a nugget τ² (Γ ⊗ Σ + τ² I), by L-BFGS on the
  exact log-likelihood; stops when converged and says so when it did not (``report["converged"]``,
  a warning). Shape parameters (power, ν, α, β, period) stay as given.
- ``flip_flop(x)``: free-form Γ and Σ by the flip-flop algorithm (Dutilleul 1999), returned as
  ``Tabulated`` kernels.
- ``stdiff.truth.gneiting.fit_gneiting``: Gneiting's (2002) non-separable space-time covariance on the same
  machinery, for a likelihood comparison with the separable fits.

Missing values (NaN) are allowed everywhere: the likelihood is that of the observed entries only,
maximised by EM (expected second moments given the observed entries, then the complete-data fit on
them, repeated until the observed-data log-likelihood stops rising). All fits return a report: the
kernels, the observed-data log-likelihood per window on the windows fitted and on held-out ones.
``ArrayDataModule(reference=...)`` calls them on its training windows (``stdiff.data.reference``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from stdiff._validation import StdiffWarning
from stdiff.kernels import Kernel, Scaled, Tabulated, check_coordinates
from stdiff.truth.base import DENSE_LIMIT
from stdiff.truth.factors import grid
from stdiff.truth.kronecker import KroneckerGP

FITTED = ("lengthscale", "scale")  # the kernel attributes fitted; others stay as given
LOG_2PI = math.log(2 * math.pi)


class FitWarning(StdiffWarning):
    """A reference fit that stopped before converging."""


def log_likelihood(x: Tensor, gamma: Tensor, sigma: Tensor, mean: float | Tensor = 0.0) -> Tensor:
    """Mean log-density per window of complete ``x (n, T, S)`` under N(mean, Γ ⊗ Σ), through the
    Cholesky factors of Γ (T × T) and Σ (S × S): never a (T·S)² matrix."""
    _, t, s = x.shape
    lg, ls = torch.linalg.cholesky(gamma), torch.linalg.cholesky(sigma)
    y = torch.linalg.solve_triangular(lg, x - mean, upper=False)  # L_Γ⁻¹ X, (n, T, S)
    z = torch.linalg.solve_triangular(ls, y.transpose(1, 2), upper=False)  # L_Σ⁻¹ (L_Γ⁻¹ X)ᵀ, (n, S, T)
    logdet = 2 * (s * lg.diagonal().log().sum() + t * ls.diagonal().log().sum())
    return -0.5 * (z.pow(2).sum((1, 2)).mean() + logdet + t * s * LOG_2PI)


def observed_log_likelihood(x: Tensor, cov: Tensor, mean: float = 0.0) -> Tensor:
    """Mean log-density per window of the observed (non-NaN) entries of ``x (n, d)`` under
    N(mean, cov), ``cov (d, d)``: one Cholesky factor per pattern of missing entries."""
    return expected_moments(x, cov, mean)[1]


def _patterns(x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``(observed coordinates (d,), rows)`` for each distinct pattern of NaN among the rows of ``x (n, d)``."""
    seen = ~x.isnan()
    patterns, inverse = torch.unique(seen, dim=0, return_inverse=True)
    return [(p, (inverse == i).nonzero().squeeze(1)) for i, p in enumerate(patterns)]


def expected_moments(x: Tensor, cov: Tensor, mean: float = 0.0) -> tuple[Tensor, Tensor]:
    """The E-step: ``E[(x − μ)(x − μ)ᵀ | observed]`` averaged over windows ``x (n, d)`` (NaN =
    missing) under N(μ, cov), ``(d, d)``, and the observed-data log-likelihood per window."""
    n, d = x.shape
    moments = torch.zeros(d, d, dtype=torch.float64)
    loglik = x.new_zeros((), dtype=torch.float64)
    for keep, rows in _patterns(x):
        xo = x[rows][:, keep] - mean  # (r, o)
        filled = torch.zeros(len(rows), d, dtype=torch.float64)
        filled[:, keep] = xo
        chol = torch.linalg.cholesky(cov[keep][:, keep])  # every row has an observed entry (_Flat)
        z = torch.linalg.solve_triangular(chol, xo.T, upper=False)
        loglik -= 0.5 * (z.pow(2).sum() + len(rows) * (2 * chol.diagonal().log().sum() + int(keep.sum()) * LOG_2PI))
        if not keep.all():  # missing entries: their conditional mean, plus their conditional covariance
            miss = ~keep
            weights = torch.cholesky_solve(cov[keep][:, miss], chol).T  # K_mo K_oo⁻¹
            filled[:, miss] = xo @ weights.T
            where = miss.nonzero()[:, 0]
            moments[where[:, None], where[None, :]] += len(rows) * (cov[miss][:, miss] - weights @ cov[keep][:, miss])
        moments += filled.T @ filled
    return moments / n, loglik / n


def _dense_q(moments: Tensor, cov: Tensor) -> Tensor:
    """E[log N(x; μ, cov)] for windows with second moments ``moments (d, d)`` (EM's objective)."""
    chol = torch.linalg.cholesky(cov)
    quad = torch.cholesky_solve(moments, chol).diagonal().sum()
    return -0.5 * (quad + 2 * chol.diagonal().log().sum() + len(cov) * LOG_2PI)


def _separable_q(moments: Tensor, gamma: Tensor, sigma: Tensor) -> Tensor:
    """``_dense_q`` for cov = Γ ⊗ Σ without forming it: moments as ``(T, S, T, S)``."""
    t, s = gamma.shape[0], sigma.shape[0]
    quad = torch.einsum("tu,sv,tsuv->", torch.cholesky_inverse(torch.linalg.cholesky(gamma)),
                        torch.cholesky_inverse(torch.linalg.cholesky(sigma)), moments.reshape(t, s, t, s))  # fmt: skip
    logdet = s * torch.logdet(gamma) + t * torch.logdet(sigma)
    return -0.5 * (quad + logdet + t * s * LOG_2PI)


def _leaves(kernel: Kernel) -> list[tuple[object, str]]:
    """The (kernel, attribute) pairs holding fitted hyperparameters, composites included."""
    out = [(kernel, name) for name in FITTED if isinstance(getattr(kernel, name, None), float)]
    for child in getattr(kernel, "kernels", []) + ([kernel.kernel] if isinstance(kernel, Scaled) else []):
        out += _leaves(child)
    return out


def _maximise(objective: Callable[[], Tensor], params: list[Tensor], steps: int) -> dict:
    """Maximise ``objective()`` over ``params`` by L-BFGS (strong Wolfe line search) for at most
    ``steps`` iterations; whether the gradient vanished (converged) or the budget ran out."""
    max_eval = 4 * steps
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, max_eval=max_eval, tolerance_grad=1e-5,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = -objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    grad = max(p.grad.abs().max().item() for p in params if p.grad is not None)
    iterations, evaluations = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    # Converged: a vanishing gradient, or L-BFGS's own stop (no progress) before either budget ran out.
    stopped_itself = iterations < steps and evaluations < max_eval
    return {"iterations": iterations, "gradient": grad, "converged": grad < 1e-3 or stopped_itself}


class _Flat:
    """Windows ``(n, T, *space)`` as float64 ``(n, T·S)``, with what the fits need to know of them."""

    def __init__(self, x: Tensor) -> None:
        self.t = x.shape[1]
        self.x = x.double().reshape(len(x), -1)
        self.s = self.x.shape[1] // self.t
        self.missing = bool(self.x.isnan().any())
        if self.missing and self.x.shape[1] > DENSE_LIMIT:
            raise ValueError(f"fitting a reference to windows with missing values forms (T·S)² moments: "
                             f"T·S = {self.x.shape[1]} > {DENSE_LIMIT}; use shorter windows or fewer points")  # fmt: skip
        rows = self.x.isnan().all(1)
        if rows.any():
            raise ValueError(f"{int(rows.sum())} of the {len(x)} windows have no observed value; drop them")
        self.mean = self.x.nanmean().item()
        self.var = ((self.x - self.mean) ** 2).nanmean().item()


def fit_kernels(x: Tensor, temporal: Kernel, spatial: Kernel, space_shape: tuple[int, ...], steps: int = 500,
                held_out: Tensor | None = None, nugget: bool = False, coordinates: Tensor | None = None,
                em_iterations: int = 50, tolerance: float = 1e-3) -> tuple[KroneckerGP, dict]:  # fmt: skip
    """Kernel hyperparameters by maximum likelihood on windows ``x (n, T, *space)`` (NaN = missing).

    Args:
        steps: the most L-BFGS iterations of each fit (of each EM round with missing values).
        nugget: fit a noise variance τ² on every coordinate too (Γ ⊗ Σ + τ² I).
        coordinates: ``(S, k)`` positions of the spatial points (default: the grid of ``space_shape``).
        em_iterations, tolerance: with missing values, EM rounds at most, stopping once a round adds
            less than ``tolerance`` nats per window to the observed-data log-likelihood.
    """
    data = _Flat(x)
    t, s = data.t, data.s
    times = torch.arange(t, dtype=torch.float64)[:, None]
    points = grid(space_shape) if coordinates is None else torch.as_tensor(coordinates, dtype=torch.float64)
    points = points[:, None] if points.ndim == 1 else points
    check_coordinates(points, "coordinates", None if nugget else "fit a nugget (nugget=True)")
    temporal, spatial = copy.deepcopy(temporal), copy.deepcopy(spatial)
    leaves = _leaves(temporal) + _leaves(spatial)
    logs = [torch.tensor(math.log(getattr(k, a)), dtype=torch.float64, requires_grad=True) for k, a in leaves]
    log_var = torch.tensor(math.log(data.var * (0.9 if nugget else 1.0)), dtype=torch.float64, requires_grad=True)
    log_nugget = torch.tensor(math.log(0.1 * data.var), dtype=torch.float64, requires_grad=nugget)
    params = [*logs, log_var] + ([log_nugget] if nugget else [])
    dense = nugget or data.missing

    def matrices():
        for (k, a), p in zip(leaves, logs):
            setattr(k, a, p.exp())  # tensors while fitting: the kernels' own code carries the gradient
        eye_t, eye_s = torch.eye(t, dtype=torch.float64), torch.eye(s, dtype=torch.float64)
        return temporal(times) + 1e-8 * eye_t, log_var.exp() * spatial(points) + 1e-8 * eye_s

    def covariance():
        gamma, sigma = matrices()
        tau2 = log_nugget.exp() if nugget else 0.0
        return torch.kron(gamma, sigma) + tau2 * torch.eye(t * s, dtype=torch.float64)

    try:
        if dense:
            if t * s > DENSE_LIMIT:
                raise ValueError(f"a nugget needs the dense (T·S)² covariance: T·S = {t * s} > {DENSE_LIMIT}")
            fit = _em(data, lambda m: (lambda: _dense_q(m, covariance())), covariance, params, steps, em_iterations,
                      tolerance)  # fmt: skip
        else:
            # Complete windows: the likelihood needs them only through their second moments, (T·S)² of
            # them when small enough, so that a step costs O(T²S²) whatever the number of windows.
            xc = data.x - data.mean
            if t * s <= DENSE_LIMIT:
                moments = xc.T @ xc / len(xc)
                fit = _maximise(lambda: _separable_q(moments, *matrices()), params, steps)
            else:
                fit = _maximise(lambda: log_likelihood(xc.reshape(-1, t, s), *matrices()), params, steps)
            fit["em_iterations"] = 0
    finally:
        for (k, a), p in zip(leaves, logs):
            setattr(k, a, p.detach().exp().item())
    tau2 = log_nugget.exp().item() if nugget else 0.0
    gp = KroneckerGP(temporal, Scaled(spatial, log_var.detach().exp().item()), t, space_shape, data.mean,
                     jitter="auto", coordinates=coordinates, nugget=tau2)  # fmt: skip
    report = _report(gp, data, held_out, "kernels", fit)
    if not report["converged"]:
        warnings.warn(f"fit_kernels did not converge in {steps} L-BFGS iterations (largest gradient "
                      f"{fit['gradient']:.2g} in log-parameters): the reference may be short of its optimum; "
                      "raise steps (ArrayDataModule: reference_steps)", FitWarning, stacklevel=2)  # fmt: skip
    return gp, report


def _em(data: _Flat, objective_for: Callable, covariance: Callable, params: list[Tensor], steps: int,
        iterations: int, tolerance: float) -> dict:  # fmt: skip
    """Maximise the observed-data likelihood of ``data``: complete-data fits of ``objective_for(moments)``
    on expected moments until the observed-data log-likelihood gains less than ``tolerance``."""
    if not data.missing:  # one round is the exact fit
        xc = data.x - data.mean
        fit = _maximise(objective_for(xc.T @ xc / len(xc)), params, steps)
        return {**fit, "em_iterations": 0}
    previous, fit = -math.inf, {}
    for round_ in range(1, iterations + 1):
        with torch.no_grad():
            moments, loglik = expected_moments(data.x, covariance(), data.mean)
        if loglik.item() - previous < tolerance:
            return {**fit, "em_iterations": round_ - 1}
        previous = loglik.item()
        fit = _maximise(objective_for(moments), params, steps)
    with torch.no_grad():
        gain = expected_moments(data.x, covariance(), data.mean)[1].item() - previous
    return {**fit, "em_iterations": iterations, "converged": fit["converged"] and gain < tolerance}


def flip_flop(x: Tensor, space_shape: tuple[int, ...], iterations: int = 30,
              held_out: Tensor | None = None, em_iterations: int = 50, tolerance: float = 1e-3) -> tuple[KroneckerGP, dict]:  # fmt: skip
    """Free-form Γ and Σ maximising the likelihood of ``x (n, T, *space)`` (flip-flop, Dutilleul
    1999): Σ = Σ_i X_iᵀ Γ⁻¹ X_i / (nT), Γ = Σ_i X_i Σ⁻¹ X_iᵀ / (nS), alternated; Γ scaled to unit
    mean variance (the scale of Γ ⊗ Σ lives in Σ). Needs n·S > T and n·T > S. With missing values
    (NaN) each EM round runs it on the expected second moments."""
    data = _Flat(x)
    n, t, s = len(data.x), data.t, data.s
    if n * s <= t or n * t <= s:
        raise ValueError(f"flip_flop needs n·S > T and n·T > S windows' worth of data; got n={n}, T={t}, S={s}")
    # Complete windows too many for the (T·S)² moments: per window.
    xc = (data.x - data.mean).reshape(n, t, s) if not data.missing and t * s > DENSE_LIMIT else None
    gamma, sigma = torch.eye(t, dtype=torch.float64), torch.eye(s, dtype=torch.float64)

    def rounds(moments: Tensor | None) -> None:
        nonlocal gamma, sigma
        m = None if moments is None else moments.reshape(t, s, t, s)
        for _ in range(iterations):
            gi = torch.linalg.inv(gamma)
            sigma = (torch.einsum("nts,tu,nuv->sv", xc, gi, xc) / (n * t) if m is None
                     else torch.einsum("tu,tsuv->sv", gi, m) / t)  # fmt: skip
            si = torch.linalg.inv(sigma)
            gamma = (torch.einsum("nts,sv,nuv->tu", xc, si, xc) / (n * s) if m is None
                     else torch.einsum("sv,tsuv->tu", si, m) / s)  # fmt: skip
            scale = gamma.diagonal().mean()
            gamma, sigma = (gamma + gamma.T) / (2 * scale), (sigma + sigma.T) * scale / 2

    fit = {"iterations": iterations, "converged": True, "em_iterations": 0}
    if xc is not None:
        rounds(None)
    elif not data.missing:
        centred = data.x - data.mean
        rounds(centred.T @ centred / n)
    else:
        previous = -math.inf
        for round_ in range(1, em_iterations + 1):
            second, loglik = expected_moments(data.x, torch.kron(gamma, sigma), data.mean)
            fit["em_iterations"] = round_ - 1
            if loglik.item() - previous < tolerance:
                break
            previous = loglik.item()
            rounds(second)
        else:
            fit["converged"] = False
            warnings.warn(f"flip_flop's EM did not converge in {em_iterations} rounds", FitWarning, stacklevel=2)
    shape = list(space_shape) if len(space_shape) > 1 else None
    gp = KroneckerGP(Tabulated(gamma.tolist()), Tabulated(sigma.tolist(), shape), t, space_shape, data.mean,
                     jitter="auto")  # fmt: skip
    return gp, _report(gp, data, held_out, "flip_flop", fit)


def window_log_likelihood(gp: KroneckerGP, x: Tensor) -> float:
    """Observed-data log-likelihood per window of ``x (n, d)`` (NaN = missing) under ``gp``."""
    if not x.isnan().any():
        return gp.log_prob(x.reshape(len(x), *gp.sample_shape)).mean().item()
    return observed_log_likelihood(x, gp.covariance(), gp.mean_value).item()


def _report(gp: KroneckerGP, data: _Flat, held_out: Tensor | None, method: str, fit: dict) -> dict:
    out = {"method": method, "temporal": repr(gp.temporal)[:300], "spatial": repr(gp.spatial)[:300],
           "nugget": gp.nugget, "mean": gp.mean_value, "log_likelihood_per_window": window_log_likelihood(gp, data.x),
           "windows": len(data.x), "missing_fraction": data.x.isnan().double().mean().item(),
           "values_per_window": (~data.x.isnan()).double().sum(1).mean().item(),
           "converged": bool(fit["converged"]), "iterations": fit["iterations"], "em_iterations": fit["em_iterations"]}  # fmt: skip
    if held_out is not None and len(held_out):
        h = held_out.double().reshape(len(held_out), -1)
        out["held_out_log_likelihood_per_window"] = window_log_likelihood(gp, h)
        out["held_out_windows"] = len(h)
        # what a per-window likelihood depends on besides the fit: how much the windows vary, and
        # how many values they hold
        out["held_out_variance_ratio"] = _mean_square(h, gp.mean_value) / _mean_square(data.x, gp.mean_value)
        out["held_out_observed_ratio"] = (~h.isnan()).double().mean().item() / (~data.x.isnan()).double().mean().item()
        # per observed value: comparable between window sets with more or fewer gaps
        out["log_likelihood_per_value"] = out["log_likelihood_per_window"] / out["values_per_window"]
        out["held_out_log_likelihood_per_value"] = out["held_out_log_likelihood_per_window"] / (~h.isnan()).double().sum(1).mean().item()
        out["held_out_gap_per_value"] = out["log_likelihood_per_value"] - out["held_out_log_likelihood_per_value"]
    return out


def _mean_square(x: Tensor, mean: float) -> float:
    observed = x[~x.isnan()].double()
    return ((observed - mean) ** 2).mean().item()


def held_out_note(report: dict) -> str | None:
    """Why a held-out log-likelihood above the training one is no contradiction, from the
    report's numbers (None when it is not above)."""
    train, held = report.get("log_likelihood_per_window"), report.get("held_out_log_likelihood_per_window")
    if train is None or held is None or not held > train:
        return None
    ratio, observed = report["held_out_variance_ratio"], report["held_out_observed_ratio"]
    return (f"note: the held-out windows' log-likelihood ({held:.4g}) is above the training windows' ({train:.4g}). "
            f"That is not a sign of leakage: a window's density depends on how much it varies, and the held-out "
            f"windows' mean square about the mean is {ratio:.3g}× the training windows' ({observed:.3g}× as many "
            "observed values per window); compare models on the same windows, never one set against the other.")


HELD_OUT_GAP = 0.1  # nats per observed value by which the held-out fit may fall short, beyond its windows' variance


def held_out_warning(report: dict) -> str | None:
    """A warning when the reference's held-out log-likelihood per observed value falls more than
    ``HELD_OUT_GAP`` nats short of its training one beyond what the held-out windows' own
    variance explains (None otherwise): a reference fitted to the training windows' noise (a
    nugget, coordinates), or to a stretch of time unlike the rest. Windows that vary r times as
    much (``held_out_variance_ratio``) cost a well-specified Gaussian ½(r − 1) nats per value."""
    if "held_out_gap_per_value" not in report:
        return None
    per_train, per_held = report["log_likelihood_per_value"], report["held_out_log_likelihood_per_value"]
    explained = 0.5 * (report["held_out_variance_ratio"] - 1)
    if report["held_out_gap_per_value"] - explained <= HELD_OUT_GAP:
        return None
    return (f"the fitted reference is much worse on the held-out (validation) windows: {per_held:.4g} nats per observed "
            f"value against {per_train:.4g} on the training windows, a gap of {per_train - per_held:.3g}, of which their "
            f"variance ({report['held_out_variance_ratio']:.3g}× the training windows') explains {explained:.3g}. The "
            "reference may fit the training windows' noise (a nugget, coordinates) or a stretch of time unlike the "
            "rest: compare reference settings by their held-out log-likelihood (data.reference_report), not the "
            "training one")


def format_report(report: dict) -> str:
    """The reference's fit report, one setting or result a line (values of float lists to 4 digits)."""

    def show(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
            return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
        return str(value)

    width = max((len(str(k)) for k in report), default=0)
    return "\n".join(["fitted Gaussian reference (not the data's true distribution):",
                      *(f"  {k:<{width}}  {show(v)}" for k, v in report.items())])  # fmt: skip
