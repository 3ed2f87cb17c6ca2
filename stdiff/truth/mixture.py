"""``GPMixture``: a finite mixture of Kronecker GPs, sampled and scored exactly, whose optimal
denoiser is nonlinear.

Component k is ``N(μ_k, Γ_k ⊗ Σ_k + τ_k² I)`` with weight w_k. Noised, ``x_t = α x_0 + σ ε`` is
again a mixture, of ``N(α μ_k, α² K_k + σ² I)`` with the same weights, so everything stays in
closed form: the density is a log-sum-exp of the components' (each in its own Kronecker
eigenbasis: no (T·S)² algebra), the score is the responsibility-weighted sum of the components'
scores, ``∇ log p_t = Σ_k r_k(x_t) ∇ log p_{k,t}``, with ``r_k ∝ w_k p_{k,t}(x_t)`` computed in log
space (finite however far apart the components are), and the posterior given observed entries
is the mixture of the components' posteriors reweighted by each one's marginal likelihood of
the observations. ``E[x_0 | x_t] = Σ_k r_k E_k[x_0 | x_t]`` is linear in x_t within a component
but not across them: a network that learns it has learnt more than a linear map.

The same contract as ``KroneckerGP`` (``sample``, ``log_prob``, ``noised_log_prob``, ``score``,
``denoise``, ``conditional``, ``sample_conditional``, ``observed_log_prob``, ``report``), so the
exact denoiser, the samplers, the likelihood ODE, the conditional tasks and the data module take
either. A mixture of one component gives its component's numbers exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from stdiff.truth.base import Truth, flat_mask
from stdiff.truth.kronecker import KroneckerGP


class GPMixture(Truth):
    """Finite mixture of ``KroneckerGP`` components on one sample shape.

    Args:
        components: the K Gaussians, all with the same ``frames`` and ``space_shape``.
        weights: K positive numbers (normalised here); ``None``: equal weights.
    """

    def __init__(self, components: Sequence[KroneckerGP], weights: Sequence[float] | None = None) -> None:
        components = list(components)
        if not components or not all(isinstance(c, KroneckerGP) for c in components):
            raise ValueError(f"GPMixture needs one or more KroneckerGP components, got {components!r}")
        shapes = {c.sample_shape for c in components}
        if len(shapes) > 1:
            raise ValueError(f"GPMixture components must share one sample shape (T, *space_shape), got {sorted(shapes)}")
        if weights is None:
            weights = [1.0] * len(components)
        weights = [float(w) for w in weights]
        if len(weights) != len(components):
            raise ValueError(f"GPMixture: {len(weights)} weights for {len(components)} components; give one per component")
        bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
        if bad:
            raise ValueError(f"GPMixture weights must be finite and > 0, got {weights}")
        self._components = components
        total = sum(weights)
        self._weights = torch.tensor([w / total for w in weights], dtype=torch.float64)
        self.log_weights = self._weights.log()
        first = components[0]
        self.frames, self.space_shape, self.num_points = first.frames, first.space_shape, first.num_points
        self.mean_value = float(sum(w * c.mean_value for w, c in zip(self.weights.tolist(), components)))
        self.mean = torch.full(first.sample_shape, self.mean_value, dtype=torch.float64)
        # the mixture's temporal and spatial second moments, averaged over components (figures)
        self.gamma = sum(w * c.gamma for w, c in zip(self.weights.tolist(), components))
        self.sigma = sum(w * c.sigma for w, c in zip(self.weights.tolist(), components))
        self.nugget = 0.0 if len(components) > 1 else first.nugget
        self.conditioning = first.conditioning if len(components) == 1 else {
            "components": [c.conditioning for c in components]}  # fmt: skip

    # --- shapes ----------------------------------------------------------------------------------

    @property
    def components(self) -> list[KroneckerGP]:
        return self._components

    @property
    def weights(self) -> Tensor:
        return self._weights

    def __len__(self) -> int:
        return len(self.components)

    def points(self) -> Tensor:
        return self.components[0].points()

    def covariance(self) -> Tensor:
        """The dense covariance of the mixture, Σ_k w_k (K_k + (μ_k − μ)(μ_k − μ)ᵀ): that of the
        moment-matched Gaussian (which a Gaussian fit of samples is compared with)."""
        out = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for w, c in zip(self.weights.tolist(), self.components):
            shift = c.mean_value - self.mean_value
            out += w * (c.covariance() + shift**2)
        return out

    def report(self) -> str:
        """Each component's weight, mean and the conditioning of its factors."""
        lines = []
        for k, (w, c) in enumerate(zip(self.weights.tolist(), self.components)):
            lines.append(f"component {k} (weight {w:.3g}, mean {c.mean_value:.3g}, temporal {c.temporal!r}):")
            lines.extend(f"  {line}" for line in c.report().splitlines())
        return "\n".join(lines)

    # --- sampling --------------------------------------------------------------------------------

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                           device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:  # fmt: skip
        """``n`` samples ``(n, T, *space)`` and the component each came from ``(n,)``: the labels are
        drawn first (multinomial on the weights), then each component's samples in one call."""
        if len(self.components) == 1:  # no label draw: the component's own samples, seed for seed
            return self.components[0].sample(n, generator, dtype, device), torch.zeros(n, dtype=torch.long)
        gen_device = generator.device if generator is not None else torch.device(device)
        labels = torch.multinomial(self.weights.to(gen_device), n, replacement=True, generator=generator).to(device)
        x = torch.empty(n, *self.sample_shape, dtype=dtype, device=device)
        for k, c in enumerate(self.components):
            rows = (labels == k).nonzero().squeeze(1)
            if len(rows):
                x[rows] = c.sample(len(rows), generator, dtype, device)
        return x, labels.cpu()

    # --- density, responsibilities and score -------------------------------------------------------

    def _joint(self, x_t: Tensor, alpha, sigma) -> Tensor:
        """log w_k + log p_{k,t}(x_t), ``(..., K)`` float64."""
        parts = [c.noised_log_prob(x_t, alpha, sigma) for c in self.components]
        return torch.stack(parts, -1) + self.log_weights.to(parts[0].device)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density ``(...)`` of ``x (..., T, *space)``, float64: a log-sum-exp over components."""
        if len(self.components) == 1:
            return self.components[0].log_prob(x)
        return self.noised_log_prob(x, 1.0, 0.0)

    def noised_log_prob(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Log-density of ``x_t = α x_0 + σ ε``, ``(...)`` float64 (α, σ scalars or one per sample)."""
        if len(self.components) == 1:
            return self.components[0].noised_log_prob(x_t, alpha, sigma)
        return torch.logsumexp(self._joint(x_t, alpha, sigma), -1)

    def log_responsibilities(self, x_t: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log P(component k | x_t) ``(..., K)``, normalised in log space (finite for any x_t)."""
        joint = self._joint(x_t, alpha, sigma)
        return joint - torch.logsumexp(joint, -1, keepdim=True)

    def _parts(self, x_t: Tensor, alpha, sigma) -> tuple[Tensor, Tensor]:
        """Responsibilities ``(B, K)`` and the components' scores ``(K, B, T, *space)`` in float64."""
        x = x_t.to(torch.float64)
        scores = torch.stack([c.score(x, alpha, sigma) for c in self.components])
        return self.responsibilities(x, alpha, sigma), scores

    def score(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """The exact score ``Σ_k r_k(x_t) ∇ log p_{k,t}(x_t)`` ``(B, T, *space)`` in x_t's dtype."""
        if len(self.components) == 1:
            return self.components[0].score(x_t, alpha, sigma)
        r, scores = self._parts(x_t, alpha, sigma)
        view = r.T.reshape(len(self.components), len(x_t), *[1] * len(self.sample_shape))
        return (view * scores).sum(0).to(x_t.dtype)

    def divergence(self, x_t: Tensor, alpha: float, sigma: float) -> Tensor:
        """∇ₓ·ε̂ ``(B,)`` of the exact ε̂ = −σ ∇ log p_t at ``x_t``, in closed form: with component
        precisions P_k and scores s_k, ∇s = Σ r_k ∇s_k + Σ r_k s_k s_kᵀ − s̄ s̄ᵀ, so
        ∇·ε̂ = σ (Σ_k r_k tr P_k − Σ_k r_k ‖s_k‖² + ‖s̄‖²): the likelihood ODE's control variate."""
        if len(self.components) == 1:
            return self.components[0].divergence(x_t, alpha, sigma)
        traces = torch.stack([(1.0 / (alpha**2 * c.eigenvalues() + sigma**2)).sum() for c in self.components]).to(x_t.device)
        r, scores = self._parts(x_t, alpha, sigma)
        flat = scores.flatten(2)  # (K, B, d)
        mean = torch.einsum("bk,kbd->bd", r, flat)
        spread = (r * flat.pow(2).sum(-1).T).sum(1) - mean.pow(2).sum(1)
        return sigma * ((r * traces).sum(1) - spread)

    # --- the denoiser ------------------------------------------------------------------------------

    def denoise_with_evidence(self, x_t: Tensor, alpha, sigma, observed=None, mask=None) -> tuple[Tensor, Tensor]:
        """``denoise`` and the mixture's log-density ``(B,)`` of what it conditions on."""
        parts = [c.denoise_with_evidence(x_t, alpha, sigma, observed, mask) for c in self.components]
        joint = torch.stack([e for _, e in parts], -1) + self.log_weights.to(x_t.device)
        evidence = torch.logsumexp(joint, -1)
        if len(self.components) == 1:
            return parts[0][0], evidence
        r = (joint - evidence[:, None]).exp()  # (B, K)
        view = (len(x_t), *[1] * len(self.sample_shape))
        x0 = sum(r[:, k].reshape(view) * x0 for k, (x0, _) in enumerate(parts))
        if mask is not None:  # observed entries exactly, not a sum of weights that is 1 to round-off
            x0 = torch.where(mask.bool(), observed.to(x0.dtype), x0)
        return x0, evidence

    # --- conditioning --------------------------------------------------------------------------------

    def posterior_weights(self, x: Tensor, observed: Tensor) -> Tensor:
        """P(component k | the observed entries of x) ``(..., K)``: w_k times each component's
        marginal likelihood of them, normalised in log space."""
        joint = torch.stack([c.observed_log_prob(x, observed) for c in self.components], -1)
        joint = joint + self.log_weights.to(joint.device)
        return (joint - torch.logsumexp(joint, -1, keepdim=True)).exp()

    def observed_log_prob(self, x: Tensor, observed: Tensor) -> Tensor:
        """Log-density ``(...)`` of the observed entries of ``x``."""
        joint = torch.stack([c.observed_log_prob(x, observed) for c in self.components], -1)
        return torch.logsumexp(joint + self.log_weights.to(joint.device), -1)

    def conditional(self, x: Tensor, observed: Tensor, variance_only: bool = False) -> tuple[Tensor, Tensor]:
        """The posterior's mean ``(..., T, *space)`` (equal to ``x`` where observed) and covariance of
        the unobserved coordinates ``(..., m, m)``, Σ_k π_k (C_k + (m_k − m)(m_k − m)ᵀ) with π the
        ``posterior_weights`` (the posterior is a mixture, not a Gaussian: these are its first two
        moments); with ``variance_only`` the diagonal of that covariance ``(..., m)``."""
        if len(self.components) == 1:
            return self.components[0].conditional(x, observed, variance_only)
        pi = self.posterior_weights(x, observed)  # (..., K)
        parts = [c.conditional(x, observed, variance_only) for c in self.components]
        view = (*pi.shape[:-1], *[1] * len(self.sample_shape))
        mean = sum(pi[..., k].reshape(view) * m for k, (m, _) in enumerate(parts))
        missing = ~flat_mask(self, torch.as_tensor(observed).cpu()).to(x.device)
        batch = x.shape[: x.ndim - len(self.sample_shape)]
        # the observed entries exactly, not a sum of weights that is 1 to round-off
        mean = torch.where(missing.reshape(self.sample_shape), mean, x.to(mean.dtype))
        centre = mean.reshape(*batch, -1)[..., missing]
        cov = 0
        for k, (m, c) in enumerate(parts):
            shift = m.reshape(*batch, -1)[..., missing] - centre
            if variance_only:
                cov = cov + pi[..., k, None] * (c + shift.pow(2))
            else:
                cov = cov + pi[..., k, None, None] * (c + shift[..., :, None] * shift[..., None, :])
        return mean, cov

    def sample_conditional(self, x: Tensor, observed: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``k`` exact posterior draws ``(n, k, T, *space)`` of each case: a component per draw from
        the posterior weights, then that component's exact posterior draw. Float64 on the CPU."""
        if len(self.components) == 1:
            return self.components[0].sample_conditional(x, observed, k, generator)
        x = x.double().cpu()
        pi = self.posterior_weights(x, observed.cpu())  # (n, K)
        labels = torch.multinomial(pi, k, replacement=True, generator=generator)  # (n, k)
        out = torch.empty(len(x), k, *self.sample_shape, dtype=torch.float64)
        for j, c in enumerate(self.components):
            draws = c.sample_conditional(x, observed, k, generator)
            out[labels == j] = draws[labels == j]
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{w:.3g}·{c!r}" for w, c in zip(self.weights.tolist(), self.components))
        return f"GPMixture({parts})"

