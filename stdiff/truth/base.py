"""``Truth``: the contract of every known distribution stdiff checks a model against.

A truth is a law of samples ``x (T, *space_shape)``: the GP data's exact distribution
(``KroneckerGP``), a finite mixture of such Gaussians (``GPMixture``), or a Gaussian fitted to
real data (``stdiff.truth.fitting``). Diagnostics, ``ExactDenoiser``, ``ResidualDenoiser``, the
likelihood ODE and the conditional metrics call only what this class states, so a new truth is one
new subclass in one file, and no caller branches on the kind: a Gaussian is a mixture of one
(``components == [self]``, ``weights == [1]``) and every method returns one shape whatever the
number of components.

Shapes: ``...`` any batch dimensions, ``B`` a batch, ``K`` components, ``m`` the unobserved
coordinates of a conditional task (frame-major order, ``x.reshape(..., T·S)[..., ~flat_mask]``).
Everything returned is float64 unless a method says otherwise (``sample``, ``score``: the dtype
asked for, or the input's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

# Dense algebra on a (T·S) × (T·S) matrix (conditioning on single coordinates, fits with missing
# values or a nugget) is allowed up to this dimension: 8·4096² bytes = 128 MiB per matrix.
DENSE_LIMIT = 4096


class Truth(ABC):
    """A distribution of sequences ``(T, *space_shape)`` known in closed form.

    Attributes every truth sets: ``frames`` (T), ``space_shape``, ``num_points`` (S), ``mean``
    ``(T, *space_shape)`` float64, ``gamma`` (T × T) and ``sigma`` (S × S): the temporal and spatial
    second moments (a mixture's averaged over components; what figures and attention compare with),
    ``conditioning`` (a JSON-able record of the condition numbers and any jitter added).
    """

    frames: int
    space_shape: tuple[int, ...]
    num_points: int
    mean: Tensor
    gamma: Tensor
    sigma: Tensor
    conditioning: dict

    # --- shapes and components ---------------------------------------------------------------

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``(T, *space_shape)``."""
        return (self.frames, *self.space_shape)

    @property
    def dim(self) -> int:
        """T·S, the dimension of one sample."""
        return self.frames * self.num_points

    @property
    @abstractmethod
    def components(self) -> list:
        """The K Gaussian components (``KroneckerGP``); ``[self]`` for a Gaussian."""

    @property
    @abstractmethod
    def weights(self) -> Tensor:
        """Their weights ``(K,)`` float64, summing to 1; ``tensor([1.])`` for a Gaussian."""

    @property
    def is_gaussian(self) -> bool:
        """Whether the law is one Gaussian (a mixture of one component included)."""
        return len(self.components) == 1

    def simplified(self) -> Truth:
        """The same law in its simplest form: a mixture of one component as that component."""
        return self.components[0] if self.is_gaussian else self

    @abstractmethod
    def points(self) -> Tensor:
        """Coordinates ``(S, k)`` of the spatial points."""

    @abstractmethod
    def covariance(self) -> Tensor:
        """The dense ``(T·S, T·S)`` covariance (a mixture's: of its moment-matched Gaussian)."""

    @abstractmethod
    def report(self) -> str:
        """Human-readable lines: conditioning, jitter, and for a mixture each component."""

    # --- sampling and density ------------------------------------------------------------------

    @abstractmethod
    def sample_with_labels(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                           device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:  # fmt: skip
        """``n`` samples ``(n, T, *space)`` in ``dtype`` and the component of each ``(n,)`` (long, CPU)."""

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:  # fmt: skip
        """``n`` samples ``(n, T, *space_shape)`` in ``dtype`` on ``device``."""
        return self.sample_with_labels(n, generator, dtype, device)[0]

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density ``(...)`` of ``x (..., T, *space)``."""
        return self.noised_log_prob(x, 1.0, 0.0)

    @abstractmethod
    def noised_log_prob(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Log-density ``(...)`` of ``x_t = α x_0 + σ ε`` (α, σ scalars or one per sample)."""

    @abstractmethod
    def log_responsibilities(self, x_t: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log P(component k | x_t) ``(..., K)``, normalised in log space."""

    def responsibilities(self, x_t: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """P(component k | x_t) ``(..., K)``; at α = 1, σ = 0, of clean samples."""
        return self.log_responsibilities(x_t, alpha, sigma).exp()

    # --- score and denoiser ----------------------------------------------------------------------

    @abstractmethod
    def score(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """∇ log p_t(x_t) ``(B, T, *space)`` in x_t's dtype, for ``x_t (B, T, *space)``, α and σ
        scalars or ``(B,)``."""

    def denoise(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, observed: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """E[x_0 | x_t] ``(B, T, *space)``, or with ``observed`` values ``(B, T, *space)`` at ``mask``
        (boolean, same shape, True where observed) E[x_0 | x_t, x_0[mask] = observed[mask]], equal
        to ``observed`` exactly where observed."""
        return self.denoise_with_evidence(x_t, alpha, sigma, observed, mask)[0]

    @abstractmethod
    def denoise_with_evidence(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                              observed: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``denoise`` and the log-density ``(B,)`` of what it conditions on: log p_t(x_t) without a
        mask; with one, of (the observed values, x_t/α on the unobserved entries)."""

    @abstractmethod
    def divergence(self, x_t: Tensor, alpha: float, sigma: float) -> Tensor:
        """∇ₓ·ε̂ ``(B,)`` of the exact ε̂ = −σ ∇ log p_t at ``x_t (B, T, *space)``, α and σ scalars
        (the likelihood ODE's control variate)."""

    # --- conditioning ------------------------------------------------------------------------------

    @abstractmethod
    def conditional(self, x: Tensor, observed: Tensor, variance_only: bool = False) -> tuple[Tensor, Tensor]:
        """The law of the unobserved coordinates of ``x (..., T, *space)`` given its observed ones,
        ``observed`` a boolean mask ``(T,)`` (whole frames) or ``(T, *space)``: its mean ``(..., T,
        *space)`` (equal to ``x`` where observed) and covariance ``(..., m, m)`` (a Gaussian's is the
        same for every case, returned as an expanded view), or with ``variance_only`` its diagonal
        ``(..., m)`` (a Gaussian's ``(m,)``)."""

    @abstractmethod
    def observed_log_prob(self, x: Tensor, observed: Tensor) -> Tensor:
        """Log-density ``(...)`` of the observed entries of ``x (..., T, *space)``."""

    @abstractmethod
    def posterior_weights(self, x: Tensor, observed: Tensor) -> Tensor:
        """P(component k | the observed entries of x) ``(..., K)``."""

    @abstractmethod
    def sample_conditional(self, x: Tensor, observed: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``k`` exact draws ``(n, k, T, *space)`` of each case ``x (n, T, *space)`` given its entries
        at ``observed`` (one mask for all), float64 on the CPU."""


def flat_mask(truth: Truth, observed: Tensor) -> Tensor:
    """A frame mask ``(T,)`` or coordinate mask ``(T, *space)`` as a flat ``(T·S,)`` coordinate mask."""
    if tuple(observed.shape) == (truth.frames,):
        observed = observed[:, None].expand(truth.frames, truth.num_points)
    return observed.reshape(-1)


def per_sample_scales(alpha: Tensor | float, sigma: Tensor | float, batch: int, device) -> tuple[Tensor, Tensor]:
    """α and σ as float64 ``(B,)`` tensors: scalars are repeated, one per sample kept; any other
    length is refused (a length that happens to match another dimension would broadcast silently)."""
    out = []
    for name, value in (("alpha", alpha), ("sigma", sigma)):
        v = torch.as_tensor(value, dtype=torch.float64, device=device).reshape(-1)
        if v.numel() not in (1, batch):
            raise ValueError(f"{name} must be a scalar or one value per sample ({batch}), got {v.numel()} values")
        out.append(v.expand(batch))
    return out[0], out[1]
