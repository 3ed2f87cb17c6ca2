"""The kernel matrices of a ``KroneckerGP`` and their eigendecompositions, computed once in float64:
``factorise`` (one symmetric matrix, with jitter and a record of it) and ``SpatialFactors``, Σ as a
Kronecker product of factors: one per grid axis for a separable kernel (``Kernel.axis_kernels``:
Σ = Σ_H ⊗ Σ_W, so a 128 × 128 grid costs two eigendecompositions of order 128), one of order S
otherwise, none for Σ = I. Σ itself, S × S, is formed only when asked for (``dense``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from stdiff.kernels import Kernel

# Reject a factor whose smallest eigenvalue is below this fraction of its largest (condition
# number > 1e12): its inverse, used by log_prob and by the score at small noise, would have fewer
# than ~4 correct digits in float64.
MAX_CONDITION = 1e12
AUTO_MAX_SHIFT = 1e-6  # jitter: auto adds at most this fraction of the largest eigenvalue


def grid(space_shape: Sequence[int]) -> Tensor:
    """Integer coordinates ``(S, k)`` of a ``space_shape`` grid, in row-major (C) order."""
    axes = [torch.arange(n, dtype=torch.float64) for n in space_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(space_shape))


def factor_entries(spatial: Kernel | None, space_shape: Sequence[int]) -> int:
    """Entries of the matrices ``KroneckerGP`` factorises for Σ: Σ_a n_a² for a separable kernel on
    a grid of several axes (or Σ = I), S² otherwise."""
    sizes = [int(n) for n in space_shape]
    if spatial is None or (len(sizes) > 1 and spatial.axis_kernels(len(sizes)) is not None):
        return sum(n * n for n in sizes)
    return math.prod(sizes) ** 2


# jitter="auto" lifts the smallest eigenvalue to largest / AUTO_CONDITION: ten times inside the limit.
AUTO_CONDITION = MAX_CONDITION / 10


def factorise(role: str, kernel: Kernel | None, matrix: Tensor, jitter: float | str, where: str):
    """Eigendecomposition of a symmetric kernel matrix plus ``jitter`` on its diagonal, and a
    record of what was done; a clear error when the result is not positive definite enough."""
    matrix = 0.5 * (matrix + matrix.T)  # remove round-off asymmetry before eigh
    evals, evecs = torch.linalg.eigh(matrix)
    smallest, largest = evals[0].item(), evals[-1].item()
    if jitter == "auto":
        # Adding δI shifts every eigenvalue by δ, eigenvectors unchanged: no second eigh. Round-off only:
        # a kernel with eigenvalues below −1e-6 of the largest is not positive definite, not jittery.
        if smallest < -AUTO_MAX_SHIFT * largest:
            raise ValueError(f"{role} kernel {kernel!r} is not positive definite on {where}: smallest eigenvalue "
                             f"{smallest:.3g} (largest {largest:.3g}); jitter: auto repairs round-off only (up to "
                             f"{AUTO_MAX_SHIFT:.0e} of the largest). Use a valid kernel, or a jitter number on purpose.")  # fmt: skip
        added = max(0.0, largest / AUTO_CONDITION - smallest) if smallest <= largest / MAX_CONDITION else 0.0
    else:
        added = float(jitter)
    if added > 0:
        matrix = matrix + added * torch.eye(matrix.shape[0], dtype=matrix.dtype)
        evals = evals + added
    low, high = evals[0].item(), evals[-1].item()
    if not (high > 0 and low > high / MAX_CONDITION):
        raise ValueError(
            f"{role} kernel {kernel!r} is not positive definite on {where}: smallest eigenvalue "
            f"{low:.3e}, largest {high:.3e} (need smallest > largest / {MAX_CONDITION:.0e}). "
            f"Use a shorter lengthscale, a rougher kernel, or set jitter > 0 (now {jitter}; jitter: auto "
            f"adds the smallest amount that brings the condition number to {AUTO_CONDITION:.0e})."
        )
    record = {"jitter": added, "condition_number": high / low, "smallest_eigenvalue_without_jitter": smallest}
    return matrix, evals, evecs, record



class SpatialFactors:
    """Σ = ⊗_a Σ_a on a grid ``space_shape`` (row-major order), each factor with its eigenvalues and
    eigenvectors: the separable case (one factor per axis), one factor of order S, or none (Σ = I).

    Args:
        spatial: the spatial kernel, or None (Σ = I).
        space_shape: the grid.
        points: the coordinates ``(S, k)`` the kernel is evaluated on when it is not factorised by
            axes (the grid, or given station coordinates).
        by_axes: whether a separable kernel may be factorised by axes (False for given coordinates).
        jitter: as ``factorise``'s.
    """

    def __init__(self, spatial: Kernel | None, space_shape: tuple[int, ...], points: Tensor, by_axes: bool,
                 jitter: float | str) -> None:  # fmt: skip
        self.space_shape, self.num_points = space_shape, math.prod(space_shape)
        axes = spatial.axis_kernels(len(space_shape)) if spatial is not None and by_axes and len(space_shape) > 1 else None
        self.factors: list[tuple[Tensor, Tensor, Tensor]] = []  # (matrix, eigenvalues, eigenvectors)
        if spatial is None:
            self.record = {"jitter": 0.0, "condition_number": 1.0, "smallest_eigenvalue_without_jitter": 1.0}
        elif axes is not None:
            records = []
            for a, (kernel, n) in enumerate(zip(axes, space_shape)):
                matrix, evals, evecs, record = factorise("spatial", kernel, kernel(torch.arange(n, dtype=torch.float64)[:, None]),
                                                         jitter, f"axis {a} ({n} points) of the {space_shape} grid")  # fmt: skip
                self.factors.append((matrix, evals, evecs))
                records.append(record)
            self.record = {"jitter": max(r["jitter"] for r in records),
                           "condition_number": math.prod(r["condition_number"] for r in records),
                           "smallest_eigenvalue_without_jitter": math.prod(r["smallest_eigenvalue_without_jitter"] for r in records),
                           "axes": records}  # fmt: skip
        else:
            where = f"a {space_shape} grid" if by_axes else f"{self.num_points} given coordinates"
            matrix, evals, evecs, self.record = factorise("spatial", spatial, spatial(points), jitter, where)
            self.factors.append((matrix, evals, evecs))
        self.evals = torch.ones(1 if self.factors else self.num_points, dtype=torch.float64)  # Λ_Σ (S,)
        for _, evals, _ in self.factors:  # in the grid's row-major order, like U_Σ's columns
            self.evals = torch.kron(self.evals, evals)
        self._cache: dict[tuple, tuple[Tensor, ...]] = {}

    @property
    def separable(self) -> bool:
        """Whether Σ is held by axes (or is the identity): nothing S × S is formed unless asked for."""
        return len(self.factors) != 1

    @property
    def dense_formed(self) -> bool:
        """Whether Σ or U_Σ has been formed as an S × S matrix (``dense``)."""
        return any(key[0] == "dense" for key in self._cache)

    def diagonal(self) -> Tensor:
        """diag(Σ) ``(S,)``: the Kronecker product of the factors' diagonals (ones for Σ = I)."""
        out = torch.ones(1, dtype=torch.float64)
        for matrix, _, _ in self.factors:
            out = torch.kron(out, matrix.diagonal())
        return out.expand(self.num_points) if not self.factors else out

    def matrices(self) -> list[Tensor]:
        """The factor matrices, Σ = ⊗ of them in grid order (none for Σ = I)."""
        return [matrix for matrix, _, _ in self.factors]

    def dense(self, which: str) -> Tensor:
        """Σ (``which`` "matrix") or U_Σ ("evecs"), S × S in float64, made once: O(S²) memory."""
        key = ("dense", which)
        if key not in self._cache:
            index = {"matrix": 0, "evecs": 2}[which]
            out = torch.ones(1, 1, dtype=torch.float64)
            for factor in self.factors:
                out = torch.kron(out, factor[index])
            self._cache[key] = (torch.eye(self.num_points, dtype=torch.float64) if not self.factors else out,)
        return self._cache[key][0]

    def on(self, use: str, dtype: torch.dtype, device) -> tuple[Tensor, ...]:
        """The factors of U_Σ (``use`` "evecs") or of √Σ = U_Σ Λ_Σ^½ ("sqrt"), cast and moved once."""
        key = (use, dtype, torch.device(device))
        if key not in self._cache:
            self._cache[key] = tuple((evecs if use == "evecs" else evecs * evals.sqrt()).to(device=device, dtype=dtype)
                                     for _, evals, evecs in self.factors)  # fmt: skip
        return self._cache[key]

    def apply(self, y: Tensor, use: str, transpose: bool = False) -> Tensor:
        """``y (..., S) @ M`` for M = U_Σ or √Σ (``use``), or ``@ Mᵀ``, one grid axis at a time:
        O(S · Σ_a n_a) per row instead of O(S²); in ``y``'s dtype and on its device."""
        factors = self.on(use, y.dtype, y.device)
        if not factors:
            return y
        if len(factors) == 1:
            return y @ (factors[0].T if transpose else factors[0])
        lead, k = y.shape[:-1], len(self.space_shape)
        y = y.reshape(*lead, *self.space_shape)
        for a, m in enumerate(factors):
            dim = y.ndim - k + a
            y = (y.movedim(dim, -1) @ (m.T if transpose else m)).movedim(-1, dim)
        return y.reshape(*lead, self.num_points)
