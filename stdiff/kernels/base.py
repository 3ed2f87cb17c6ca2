"""The ``Kernel`` contract, shared helpers and composition (sum, product, scaling).

A kernel maps coordinates ``x1 (N, k)`` and ``x2 (M, k)`` to a covariance matrix ``(N, M)``. The
same kernels build the temporal covariance Γ (frame times, k = 1) and the spatial covariance Σ
(grid points, k = 1 or 2). Kernel algebra runs in float64: Γ and Σ are factorised downstream and
float32 round-off is enough to make a smooth kernel indefinite.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from stdiff._validation import check_positive, init_repr


def _as_coords(x: Tensor, name: str) -> Tensor:
    """Coordinates as a float64 ``(N, k)`` tensor; a 1-D tensor is read as N points in 1-D."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim == 1:
        x = x[:, None]  # (N,) -> (N, 1)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, k) or (N,), got shape {tuple(x.shape)}")
    return x


def distance(x1: Tensor, x2: Tensor) -> Tensor:
    """Euclidean distances ``(N, M)``, computed exactly (the matmul shortcut loses precision near 0)."""
    return torch.cdist(x1, x2, compute_mode="donot_use_mm_for_euclid_dist")


class Kernel(ABC):
    """Covariance function on coordinates: ``kernel(x1 (N, k), x2 (M, k)) -> (N, M)`` in float64.

    Subclass and implement ``forward``; ``+``, ``*`` and multiplication by a positive number build
    ``Sum``, ``Product`` and ``Scaled`` kernels, the same classes YAML composes through nested
    ``class_path`` entries.
    """

    def __call__(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        x1 = _as_coords(x1, "x1")
        x2 = x1 if x2 is None else _as_coords(x2, "x2")
        if x1.shape[1] != x2.shape[1]:
            raise ValueError(f"x1 and x2 must have the same coordinate dimension, got {x1.shape[1]} and {x2.shape[1]}")
        return self.forward(x1, x2)

    @abstractmethod
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Covariance ``(N, M)`` between float64 coordinates ``x1 (N, k)`` and ``x2 (M, k)``."""

    def axis_kernels(self, axes: int) -> list[Kernel] | None:
        """One kernel per coordinate axis whose product is this kernel on ``axes``-dimensional
        coordinates, ``k(x, y) = Π_a k_a(x_a, y_a)``, or None when it is not such a product. A
        separable kernel on a grid is a Kronecker product of small matrices, one per axis, which
        ``KroneckerGP`` factorises separately (``Separable``)."""
        return None

    def __add__(self, other: Kernel) -> Sum:
        if not isinstance(other, Kernel):
            return NotImplemented
        return Sum([self, other])

    def __mul__(self, other: Kernel | float) -> Kernel:
        if isinstance(other, Kernel):
            return Product([self, other])
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return Scaled(self, other)
        return NotImplemented

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return init_repr(self)


class StationaryKernel(Kernel):
    """Isotropic kernel ``k(x1, x2) = profile(‖x1 − x2‖ / lengthscale)`` with ``profile(0) = 1``.

    Args:
        lengthscale: distance at which correlations decay, in grid units (frames for time,
            grid points for space). Must be > 0.
    """

    def __init__(self, lengthscale: float = 1.0) -> None:
        self.lengthscale = check_positive(f"{type(self).__name__}.lengthscale", lengthscale)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.profile(distance(x1, x2) / self.lengthscale)

    @abstractmethod
    def profile(self, r: Tensor) -> Tensor:
        """Correlation as a function of the scaled distance ``r = h / lengthscale >= 0``."""


class Sum(Kernel):
    """Sum of kernels, ``k(x, y) = Σ_i k_i(x, y)``.

    Args:
        kernels: the kernels to add (at least one).
    """

    def __init__(self, kernels: list[Kernel]) -> None:
        if len(kernels) == 0:
            raise ValueError("Sum.kernels must hold at least one kernel, got an empty list")
        self.kernels = list(kernels)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return sum(k.forward(x1, x2) for k in self.kernels)


class Product(Kernel):
    """Elementwise product of kernels, ``k(x, y) = Π_i k_i(x, y)`` (positive definite by Schur).

    Args:
        kernels: the kernels to multiply (at least one).
    """

    def __init__(self, kernels: list[Kernel]) -> None:
        if len(kernels) == 0:
            raise ValueError("Product.kernels must hold at least one kernel, got an empty list")
        self.kernels = list(kernels)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        out = self.kernels[0].forward(x1, x2)
        for k in self.kernels[1:]:
            out = out * k.forward(x1, x2)
        return out


class Scaled(Kernel):
    """A kernel times a positive variance, ``k(x, y) = scale · kernel(x, y)`` (GPyTorch: ``ScaleKernel``
    with ``outputscale=scale``).

    Args:
        kernel: the kernel to scale.
        scale: the variance factor, > 0.
    """

    def __init__(self, kernel: Kernel, scale: float = 1.0) -> None:
        self.kernel = kernel
        self.scale = check_positive("Scaled.scale", scale)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.scale * self.kernel.forward(x1, x2)

    def axis_kernels(self, axes: int) -> list[Kernel] | None:
        inner = self.kernel.axis_kernels(axes)
        return None if inner is None else [Scaled(inner[0], self.scale), *inner[1:]]


class Separable(Kernel):
    """A product of one kernel per coordinate axis, ``k(x, y) = Π_a k_a(x_a, y_a)``: on a grid
    ``(H, W)`` its matrix is Σ_H ⊗ Σ_W, which ``KroneckerGP`` factorises axis by axis, so a
    128 × 128 grid costs two eigendecompositions of order 128 instead of one of order 16,384
    (Γ ⊗ Σ_H ⊗ Σ_W). An ``RBF`` is separable already (the product of 1-D RBFs is the isotropic
    one); a Matérn is not, and ``Separable`` of 1-D Matérns is another valid kernel, rougher
    along the diagonals.

    Args:
        kernels: one kernel per axis of the coordinates, in the order of ``space_shape``
            (rows, then columns).
    """

    def __init__(self, kernels: list[Kernel]) -> None:
        if len(kernels) == 0:
            raise ValueError("Separable.kernels must hold one kernel per coordinate axis, got an empty list")
        self.kernels = list(kernels)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        if x1.shape[1] != len(self.kernels):
            raise ValueError(f"Separable has {len(self.kernels)} axis kernels, the coordinates have {x1.shape[1]} "
                             "axes: give one kernel per axis of space_shape")  # fmt: skip
        out = self.kernels[0].forward(x1[:, :1], x2[:, :1])
        for a, k in enumerate(self.kernels[1:], 1):
            out = out * k.forward(x1[:, a : a + 1], x2[:, a : a + 1])
        return out

    def axis_kernels(self, axes: int) -> list[Kernel] | None:
        return list(self.kernels) if axes == len(self.kernels) else None


# --- the points kernels are evaluated on ---------------------------------------------------------

COORDINATE_LIMIT = 1e100  # beyond, the squared distances a kernel forms overflow float64 (or nearly)
COINCIDE = 1e-10  # points closer than this fraction of their spread are one point to a kernel


def check_coordinates(points, where: str = "coordinates", duplicates: str | None = None) -> None:
    """Refuse spatial ``points (S, k)`` a kernel cannot use: magnitudes beyond ±1e100 (the row
    named), and, unless ``duplicates`` is None, points at one place (rows named): a kernel's matrix
    on them has identical rows, so it is singular without a nugget. ``duplicates`` is the remedy to
    offer (which nugget to set)."""
    import numpy as np

    x = np.asarray(points, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    big = np.argwhere(~(np.abs(x) <= COORDINATE_LIMIT))
    if len(big):
        i, j = big[0]
        raise ValueError(f"{where}: row {i}, column {j} is {x[i, j]:.3g}: beyond ±{COORDINATE_LIMIT:.0e}, where the "
                         "squared distances a kernel forms overflow float64; rescale the coordinates (other units)")  # fmt: skip
    if duplicates is None or len(x) < 2:
        return
    spread = float(np.ptp(x, axis=0).max())
    key = np.round(x / (COINCIDE * spread)) if spread > 0 else np.zeros_like(x)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    groups = [np.flatnonzero(inverse == g).tolist() for g in np.flatnonzero(counts > 1)]
    if groups:
        groups.sort()
        listed = "; ".join(f"rows {g[:6]}{'…' if len(g) > 6 else ''} at {tuple(round(v, 6) for v in x[g[0]].tolist())}"
                           for g in groups[:3])  # fmt: skip
        more = f" (and {len(groups) - 3} more places)" if len(groups) > 3 else ""
        raise ValueError(f"{where}: {sum(map(len, groups))} of the {len(x)} points share a place with another (counting "
                         f"rows from 0: {listed}{more}): a spatial kernel on them is singular, so the Gaussian "
                         f"fitted or scored against would be degenerate. Merge or drop the duplicate points, or "
                         f"{duplicates}")  # fmt: skip
