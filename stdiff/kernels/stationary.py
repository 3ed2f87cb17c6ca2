"""Stationary kernels: the paper's decay families first, then the classical ones.

All are correlations (value 1 at distance 0); use ``Scaled`` for another variance. Positive
definiteness holds on coordinates of any dimension unless a docstring says otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stdiff._validation import check_positive, check_range
from stdiff.kernels.base import Kernel, StationaryKernel

# --- decay families of Fu et al. (2024), Sec. 3 ------------------------------------------------


class PoweredExponential(StationaryKernel):
    """Powered (stable) exponential decay ``exp(-(h/ℓ)^ν)``.

    The paper writes ``exp(-h^ν / ℓ')``; that is this kernel with ``ℓ = ℓ'^(1/ν)``. ν = 1 is the
    Ornstein–Uhlenbeck (Matérn ½) kernel and ν = 2 a squared exponential; ν ∈ (0, 2] is exactly
    the range where the kernel is positive definite in every dimension.

    GPyTorch: ν = 1 is ``MaternKernel(nu=0.5, lengthscale=ℓ)``; ν = 2 is ``RBFKernel`` with
    lengthscale ℓ/√2 (GPyTorch's RBF halves the squared distance, this kernel does not).

    Args:
        lengthscale: ℓ > 0, in grid units.
        power: ν ∈ (0, 2]; larger means faster decay at long lags.
    """

    def __init__(self, lengthscale: float = 1.0, power: float = 1.0) -> None:
        super().__init__(lengthscale)
        self.power = check_range("PoweredExponential.power", power, 0.0, 2.0)

    def profile(self, r: Tensor) -> Tensor:
        return torch.exp(-(r**self.power))


class GeneralizedCauchy(StationaryKernel):
    """Polynomial decay ``(1 + (h/ℓ)^α)^(-β/α)`` (Gneiting & Schlather 2004).

    Correlation falls like ``h^(-β)`` at long lags. Positive definite in every dimension for
    α ∈ (0, 2] and β > 0.

    GPyTorch: α = 2 is ``RQKernel`` with ``alpha=β/2`` and lengthscale ℓ/√β (its
    ``(1 + h²/(2αℓ²))^(-α)``); other α have no GPyTorch equivalent.

    Args:
        lengthscale: ℓ > 0, in grid units.
        alpha: α ∈ (0, 2], smoothness at the origin.
        beta: β > 0, the polynomial decay rate.
    """

    def __init__(self, lengthscale: float = 1.0, alpha: float = 2.0, beta: float = 1.0) -> None:
        super().__init__(lengthscale)
        self.alpha = check_range("GeneralizedCauchy.alpha", alpha, 0.0, 2.0)
        self.beta = check_positive("GeneralizedCauchy.beta", beta)

    def profile(self, r: Tensor) -> Tensor:
        return (1.0 + r**self.alpha) ** (-self.beta / self.alpha)


class LogarithmicDecay(StationaryKernel):
    """Logarithmic decay ``(1 + log(1 + h/ℓ))^(-β)``: correlation ~ ``(log h)^(-β)``, the slowest
    decay the paper considers.

    Valid range: any ℓ > 0 and β > 0. On 1-D coordinates (time, 1-D space) positive definiteness
    is proven by Pólya's criterion: the profile is even, decreasing, convex and tends to 0. On 2-D
    grids it follows from Gneiting's (2001) Pólya-type criterion (−φ′ is convex as a product of
    two positive, decreasing, convex functions) and is checked numerically in the tests; every
    Γ and Σ is also checked when a ``KroneckerGP`` is built.

    Args:
        lengthscale: ℓ > 0, in grid units.
        power: β > 0; correlation decays like ``(log h)^(-β)``.
    """

    def __init__(self, lengthscale: float = 1.0, power: float = 1.0) -> None:
        super().__init__(lengthscale)
        self.power = check_positive("LogarithmicDecay.power", power)

    def profile(self, r: Tensor) -> Tensor:
        return (1.0 + torch.log1p(r)) ** (-self.power)


# --- classical kernels --------------------------------------------------------------------------


class RBF(StationaryKernel):
    """Squared exponential ``exp(-(h/ℓ)² / 2)``. Very smooth: on long grids with large ℓ its
    matrix is numerically singular (see ``KroneckerGP.jitter``).

    GPyTorch: ``RBFKernel(lengthscale=ℓ)``, the same function.

    Args:
        lengthscale: ℓ > 0, in grid units.
    """

    def profile(self, r: Tensor) -> Tensor:
        return torch.exp(-0.5 * r**2)

    def axis_kernels(self, axes: int) -> list[Kernel]:
        return [RBF(self.lengthscale) for _ in range(axes)]  # exp(−‖h‖²/2ℓ²) = Π_a exp(−h_a²/2ℓ²)


class Matern(StationaryKernel):
    """Matérn kernel with smoothness ν ∈ {0.5, 1.5, 2.5} in closed form (Rasmussen & Williams
    2006, eq. 4.17).

    GPyTorch: ``MaternKernel(nu=ν, lengthscale=ℓ)``, the same function.

    Args:
        lengthscale: ℓ > 0, in grid units.
        nu: smoothness, one of 0.5, 1.5, 2.5.
    """

    def __init__(self, lengthscale: float = 1.0, nu: float = 1.5) -> None:
        super().__init__(lengthscale)
        if nu not in (0.5, 1.5, 2.5):
            raise ValueError(f"Matern.nu must be one of 0.5, 1.5, 2.5, got {nu!r}")
        self.nu = float(nu)

    def profile(self, r: Tensor) -> Tensor:
        if self.nu == 0.5:
            return torch.exp(-r)
        if self.nu == 1.5:
            s = math.sqrt(3.0) * r
            return (1.0 + s) * torch.exp(-s)
        s = math.sqrt(5.0) * r
        return (1.0 + s + s**2 / 3.0) * torch.exp(-s)


class RationalQuadratic(StationaryKernel):
    """Rational quadratic ``(1 + (h/ℓ)² / (2α))^(-α)``: a scale mixture of RBFs.

    GPyTorch: ``RQKernel(alpha=α, lengthscale=ℓ)``, the same function.

    Args:
        lengthscale: ℓ > 0, in grid units.
        alpha: α > 0; α → ∞ recovers the RBF.
    """

    def __init__(self, lengthscale: float = 1.0, alpha: float = 1.0) -> None:
        super().__init__(lengthscale)
        self.alpha = check_positive("RationalQuadratic.alpha", alpha)

    def profile(self, r: Tensor) -> Tensor:
        return (1.0 + r**2 / (2.0 * self.alpha)) ** (-self.alpha)


class Periodic(Kernel):
    """Periodic kernel ``exp(-2 Σ_d sin²(π |Δ_d| / p) / ℓ²)`` (MacKay 1998).

    Summing over coordinates makes it a product of 1-D periodic kernels, hence positive
    semi-definite in any dimension. A grid that spans whole periods repeats rows, so the matrix
    is singular there (see ``KroneckerGP.jitter``).

    GPyTorch: ``PeriodicKernel(lengthscale=ℓ², period_length=p)``: GPyTorch divides by its
    lengthscale, not by its square (this kernel follows MacKay and scikit-learn's ``ExpSineSquared``).

    Args:
        lengthscale: ℓ > 0, smoothness within a period.
        period: p > 0, in grid units.
    """

    def __init__(self, lengthscale: float = 1.0, period: float = 1.0) -> None:
        self.lengthscale = check_positive("Periodic.lengthscale", lengthscale)
        self.period = check_positive("Periodic.period", period)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        diff = (x1[:, None, :] - x2[None, :, :]).abs()  # (N, M, k)
        s = torch.sin(math.pi * diff / self.period) ** 2
        return torch.exp(-2.0 * s.sum(-1) / self.lengthscale**2)


class White(Kernel):
    """White noise: 1 where two coordinates coincide, 0 elsewhere. ``White()`` as Σ gives
    spatially independent points; add ``Scaled(White(), s)`` to a kernel as a nugget."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return (torch.cdist(x1, x2, compute_mode="donot_use_mm_for_euclid_dist") < 1e-9).to(torch.float64)


class Tabulated(Kernel):
    """A covariance given as a matrix on a grid: ``k(x_i, x_j) = values[i][j]`` for the grid points
    (row-major index of integer coordinates, as ``stdiff.truth.grid`` lists them). What a free-form
    fit (``stdiff.truth.fitting.flip_flop``) returns as a kernel.

    Args:
        values: the symmetric covariance matrix, one row per grid point.
        shape: the grid's shape, for coordinates in more than one dimension (e.g. ``[H, W]``).
    """

    def __init__(self, values: list[list[float]], shape: list[int] | None = None) -> None:
        self.matrix = torch.as_tensor(values, dtype=torch.float64)
        if self.matrix.ndim != 2 or self.matrix.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"Tabulated.values must be a square matrix, got shape {tuple(self.matrix.shape)}")
        if not torch.allclose(self.matrix, self.matrix.T, atol=1e-10 * self.matrix.abs().max()):
            raise ValueError("Tabulated.values must be symmetric")
        self.shape = None if shape is None else [int(n) for n in shape]

    def _index(self, x: Tensor) -> Tensor:
        idx = x.round().long()
        if x.shape[1] > 1:
            if self.shape is None or len(self.shape) != x.shape[1]:
                raise ValueError(f"Tabulated needs shape= for {x.shape[1]}-D coordinates, got {self.shape}")
            idx = sum(idx[:, d] * math.prod(self.shape[d + 1 :]) for d in range(x.shape[1]))[:, None]
        if (idx < 0).any() or (idx >= len(self.matrix)).any() or not torch.allclose(x, x.round()):
            raise ValueError(f"Tabulated covers the integer grid points 0..{len(self.matrix) - 1}, got others")
        return idx[:, 0]

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.matrix.to(x1.device)[self._index(x1)][:, self._index(x2)]

    def __repr__(self) -> str:
        return f"Tabulated({len(self.matrix)}×{len(self.matrix)} matrix, diagonal mean {self.matrix.diagonal().mean():.4g})"
