"""Dense float64 references for the truth contract, written from the textbook formulas with NumPy and
independent of ``stdiff.truth`` (no eigenbasis, no Kronecker algebra, no grouping): the covariance
K = Γ ⊗ Σ + τ² I is formed from the truth's own Γ, Σ and τ², everything else is a dense solve.
``mp_*``: the same in mpmath at 40 digits, for the cases where float64 itself is not enough."""

from __future__ import annotations

import math

import mpmath
import numpy as np

LOG_2PI = math.log(2 * math.pi)


def dense(gp) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) of one Gaussian component, frame-major."""
    k = np.kron(gp.gamma.numpy(), gp.sigma.numpy()) + gp.nugget * np.eye(gp.dim)
    return np.full(gp.dim, gp.mean_value), k


def gauss_logpdf(v: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    _, logdet = np.linalg.slogdet(cov)
    r = v - mean
    return -0.5 * (r @ np.linalg.solve(cov, r) + logdet + len(v) * LOG_2PI)


def logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(-1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(-1, keepdims=True)))[..., 0]


def component_denoise(gp, x_t: np.ndarray, alpha: float, sigma: float, observed=None, mask=None):
    """(E[x_0 | what is conditioned on], log-density of it) for one sample ``x_t (d,)``: without a
    mask, x_t ~ N(αμ, α²K + σ²I); with one, v = (observed values, x_t/α elsewhere) ~ N(μ, K + s·D)."""
    mu, k = dense(gp)
    if mask is None:
        c = alpha**2 * k + sigma**2 * np.eye(len(mu))
        x0 = mu + alpha * k @ np.linalg.solve(c, x_t - alpha * mu)
        return x0, gauss_logpdf(x_t, alpha * mu, c)
    s = (sigma / alpha) ** 2
    v = np.where(mask, observed, x_t / alpha)
    c = k + np.diag(s * (~mask))
    x0 = mu + k @ np.linalg.solve(c, v - mu)
    return np.where(mask, observed, x0), gauss_logpdf(v, mu, c)


def denoise(truth, x_t: np.ndarray, alpha: float, sigma: float, observed=None, mask=None):
    """A mixture's (or a Gaussian's) E[x_0 | …] and evidence for one sample: components weighed by
    their posterior probabilities."""
    parts = [component_denoise(c, x_t, alpha, sigma, observed, mask) for c in truth.components]
    joint = np.array([e for _, e in parts]) + np.log(truth.weights.numpy())
    evidence = logsumexp(joint)
    r = np.exp(joint - evidence)
    x0 = sum(w * x for w, (x, _) in zip(r, parts))
    return (x0 if mask is None else np.where(mask, observed, x0)), evidence, r


def score(truth, x_t: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """∇ log p_t(x_t) of one sample: Σ_k r_k −(α²K_k + σ²I)⁻¹(x_t − αμ_k)."""
    parts = []
    for c in truth.components:
        mu, k = dense(c)
        cov = alpha**2 * k + sigma**2 * np.eye(len(mu))
        parts.append((-np.linalg.solve(cov, x_t - alpha * mu), gauss_logpdf(x_t, alpha * mu, cov)))
    joint = np.array([e for _, e in parts]) + np.log(truth.weights.numpy())
    r = np.exp(joint - logsumexp(joint))
    return sum(w * s for w, (s, _) in zip(r, parts))


def conditional(truth, x: np.ndarray, observed: np.ndarray):
    """Posterior mean (d,), covariance (m, m), log-density of the observed entries and component
    weights, for one case ``x (d,)`` observed at the flat mask ``observed (d,)``."""
    o, m = observed, ~observed
    means, covs, logs = [], [], []
    for c in truth.components:
        mu, k = dense(c)
        gain = np.linalg.solve(k[np.ix_(o, o)], k[np.ix_(o, m)]).T if o.any() else np.zeros((m.sum(), 0))
        means.append(mu[m] + gain @ (x[o] - mu[o]))
        covs.append(k[np.ix_(m, m)] - gain @ k[np.ix_(o, m)])
        logs.append(gauss_logpdf(x[o], mu[o], k[np.ix_(o, o)]) if o.any() else 0.0)
    joint = np.array(logs) + np.log(truth.weights.numpy())
    evidence = logsumexp(joint)
    pi = np.exp(joint - evidence)
    centre = sum(p * mm for p, mm in zip(pi, means))
    cov = sum(p * (cc + np.outer(mm - centre, mm - centre)) for p, mm, cc in zip(pi, means, covs))
    mean = x.copy()
    mean[m] = centre
    return mean, cov, evidence, pi


def mp_component_evidence(gp, x_t: np.ndarray, alpha: float, sigma: float, observed, mask, digits: int = 40):
    """``component_denoise``'s evidence and x̂₀ in mpmath at ``digits`` digits (K from float64 Γ, Σ)."""
    with mpmath.workdps(digits):
        mu, k = dense(gp)
        d = len(mu)
        s = mpmath.mpf(sigma) ** 2 / mpmath.mpf(alpha) ** 2
        v = [mpmath.mpf(observed[i]) if mask[i] else mpmath.mpf(x_t[i]) / mpmath.mpf(alpha) for i in range(d)]
        c = mpmath.matrix(d, d)
        for i in range(d):
            for j in range(d):
                c[i, j] = mpmath.mpf(k[i, j]) + (s if i == j and not mask[i] else 0)
        r = mpmath.matrix([v[i] - mpmath.mpf(mu[i]) for i in range(d)])
        chol = mpmath.cholesky(c)
        half = mpmath.lu_solve(chol, r)  # chol is lower triangular: a triangular solve
        w = mpmath.lu_solve(c, r)
        kw = mpmath.matrix(k.tolist()) * w
        quad = sum(h**2 for h in half)
        logdet = 2 * sum(mpmath.log(chol[i, i]) for i in range(d))
        evidence = -(quad + logdet + d * mpmath.log(2 * mpmath.pi)) / 2
        x0 = [float(observed[i]) if mask[i] else float(mu[i] + kw[i]) for i in range(d)]
        return float(evidence), np.array(x0)


def _mp_gauss(v, mean, cov, digits: int):
    """(log N(v; mean, cov), cov⁻¹(v − mean)) in mpmath."""
    with mpmath.workdps(digits):
        d = len(v)
        c = mpmath.matrix(np.asarray(cov).tolist())
        r = mpmath.matrix([mpmath.mpf(float(a)) - mpmath.mpf(float(b)) for a, b in zip(v, mean)])
        chol = mpmath.cholesky(c)
        half = mpmath.lu_solve(chol, r)
        logdet = 2 * sum(mpmath.log(chol[i, i]) for i in range(d))
        logpdf = -(sum(h**2 for h in half) + logdet + d * mpmath.log(2 * mpmath.pi)) / 2
        return logpdf, mpmath.lu_solve(c, r)


def _mp_mix(logs, weights):
    with mpmath.workdps(40):
        joint = [lg + mpmath.log(float(w)) for lg, w in zip(logs, weights)]
        top = max(joint)
        total = top + mpmath.log(sum(mpmath.exp(j - top) for j in joint))
        return float(total), [float(mpmath.exp(j - total)) for j in joint]


def mp_denoise(truth, x_t, alpha: float, sigma: float, observed=None, mask=None, digits: int = 40):
    """``denoise`` (x̂₀, evidence) in mpmath, for the cases where float64 itself is not enough."""
    logs, x0s = [], []
    for c in truth.components:
        mu, k = dense(c)
        if mask is None:
            cov, v, centre = alpha**2 * k + sigma**2 * np.eye(len(mu)), x_t, alpha * mu
        else:
            s = (sigma / alpha) ** 2
            cov, v, centre = k + np.diag(s * (~mask)), np.where(mask, observed, x_t / alpha), mu
        logpdf, w = _mp_gauss(v, centre, cov, digits)
        with mpmath.workdps(digits):
            kw = mpmath.matrix(k.tolist()) * w
            gain = alpha if mask is None else 1.0
            x0s.append(np.array([float(mu[i] + gain * kw[i]) for i in range(len(mu))]))
        logs.append(logpdf)
    evidence, r = _mp_mix(logs, truth.weights.tolist())
    x0 = sum(p * x for p, x in zip(r, x0s))
    return (x0 if mask is None else np.where(mask, observed, x0)), evidence


def mp_observed_log_prob(truth, x, observed, digits: int = 40) -> float:
    """``observed_log_prob`` of one case in mpmath."""
    logs = []
    for c in truth.components:
        mu, k = dense(c)
        logs.append(_mp_gauss(x[observed], mu[observed], k[np.ix_(observed, observed)], digits)[0] if observed.any() else 0)
    return _mp_mix(logs, truth.weights.tolist())[0]
