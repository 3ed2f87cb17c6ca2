"""``KroneckerGP``: Gaussian sequences with covariance Γ ⊗ Σ, sampled and scored exactly.

A sample ``x (T, *space_shape)`` flattened frame-major, ``vec(x) = [x_1; …; x_T]``, is
``N(vec μ, Γ ⊗ Σ)`` with Γ = k_time(frame i, frame j) (T × T) and Σ = k_space(point a, point b)
(S × S). Everything goes through the eigendecompositions Γ = U_Γ Λ_Γ U_Γᵀ and Σ = U_Σ Λ_Σ U_Σᵀ,
computed once in float64: the (T·S) × (T·S) matrix is never formed or factorised (O(T³ + S³)
once, then O(T·S·(T + S)) per sample instead of O((T·S)³) and O((T·S)²)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from stdiff._validation import check_int
from stdiff.kernels import Kernel, check_coordinates
from stdiff.truth import conditioning
from stdiff.truth.base import Truth, per_sample_scales

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


def _factorise(role: str, kernel: Kernel | None, matrix: Tensor, jitter: float | str, where: str):
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


class KroneckerGP(Truth):
    """Gaussian process over ``frames`` time steps and a spatial grid, covariance Γ ⊗ Σ.

    Frame i sits at time i and grid point (a, b) at coordinates (a, b): lengthscales are in
    frames and grid points.

    Args:
        temporal: kernel on frame times, gives Γ (T × T).
        spatial: kernel on grid coordinates, gives Σ (S × S); ``None`` means Σ = I.
        frames: T, the number of frames, >= 2.
        space_shape: the spatial grid, ``(S,)`` or ``(H, W)``; every size >= 1.
        mean: constant mean μ of every coordinate.
        jitter: added to the diagonal of Γ and of Σ before factorising: 0 (the exact kernel, the
            default), a number, or ``"auto"``: for each factor whose condition number exceeds
            ``MAX_CONDITION`` (1e12) the smallest amount that brings it to 1e11, nothing otherwise.
            What was added and the resulting condition numbers are in ``conditioning`` and
            ``report()`` (``GPDataModule`` prints the report whenever jitter is added).
        coordinates: where the S spatial points are, ``(S, k)`` (station coordinates); the spatial
            kernel is evaluated on them instead of the grid. Needs ``space_shape = (S,)``.
        nugget: τ² >= 0, independent noise of that variance on every coordinate: the covariance is
            Γ ⊗ Σ + τ² I. It shares the Kronecker eigenvectors (eigenvalues λ_Γ λ_Σ + τ²), so
            sampling, density and score stay exact and cheap.
    """

    def __init__(
        self,
        temporal: Kernel,
        spatial: Kernel | None = None,
        frames: int = 32,
        space_shape: Sequence[int] = (8,),
        mean: float = 0.0,
        jitter: float | Literal["auto"] = 0.0,
        coordinates: Tensor | Sequence[Sequence[float]] | None = None,
        nugget: float = 0.0,
    ) -> None:
        self.frames = check_int("frames", frames, 2)
        space_shape = tuple(space_shape)
        if len(space_shape) not in (1, 2):
            raise ValueError(f"space_shape must have 1 or 2 entries (S,) or (H, W), got {space_shape!r}")
        for n in space_shape:
            check_int(f"space_shape entry (in {space_shape!r})", n, 1)
        if jitter != "auto" and not (isinstance(jitter, (int, float)) and 0 <= jitter < math.inf):
            raise ValueError(f"jitter must be a finite number >= 0 or 'auto', got {jitter!r}")
        if not (isinstance(mean, (int, float)) and math.isfinite(mean)):
            raise ValueError(f"mean must be a finite number, got {mean!r}")
        if not (isinstance(nugget, (int, float)) and 0 <= nugget < math.inf):
            raise ValueError(f"nugget must be a finite number >= 0, got {nugget!r}")
        self.nugget = float(nugget)
        self.temporal, self.spatial = temporal, spatial
        self.space_shape = space_shape
        self.coordinates = None
        if coordinates is not None:
            coords = torch.as_tensor(coordinates, dtype=torch.float64)
            coords = coords[:, None] if coords.ndim == 1 else coords
            if coords.ndim != 2 or len(space_shape) != 1 or coords.shape[0] != space_shape[0]:
                raise ValueError(f"coordinates must be (S, k) for S = space_shape[0] points of a 1-D space_shape; "
                                 f"got coordinates of shape {tuple(coords.shape)} for space_shape {space_shape}")  # fmt: skip
            if not torch.isfinite(coords).all():
                raise ValueError("coordinates must be finite numbers")
            jittered = isinstance(jitter, (int, float)) and jitter > 0
            check_coordinates(coords, "coordinates", None if nugget > 0 or jittered or spatial is None else
                              "give a nugget > 0 (noise on every coordinate makes the covariance positive definite) and "
                              "jitter='auto' (Σ alone stays singular)")  # fmt: skip
            self.coordinates = coords
        self.num_points = math.prod(space_shape)  # S
        self.jitter = jitter if jitter == "auto" else float(jitter)
        self.mean_value = float(mean)
        self.mean = torch.full((self.frames, *space_shape), self.mean_value, dtype=torch.float64)

        times = torch.arange(self.frames, dtype=torch.float64)[:, None]  # (T, 1)
        self.gamma, self.gamma_evals, self.gamma_evecs, gamma_record = _factorise(
            "temporal", temporal, temporal(times), self.jitter, f"{self.frames} frames"
        )
        # Σ as the Kronecker product of its factors (matrix, eigenvalues, eigenvectors), one per grid
        # axis when the kernel is separable (``Kernel.axis_kernels``), one of order S otherwise, none
        # for Σ = I: Σ itself, S × S, is formed only when asked for (``sigma``).
        axes = spatial.axis_kernels(len(space_shape)) if spatial is not None and self.coordinates is None else None
        self._space: list[tuple[Tensor, Tensor, Tensor]] = []
        if spatial is None:
            sigma_record = {"jitter": 0.0, "condition_number": 1.0, "smallest_eigenvalue_without_jitter": 1.0}
        elif axes is not None and len(space_shape) > 1:
            records = []
            for a, (kernel, n) in enumerate(zip(axes, space_shape)):
                matrix, evals, evecs, record = _factorise("spatial", kernel, kernel(torch.arange(n, dtype=torch.float64)[:, None]),
                                                          self.jitter, f"axis {a} ({n} points) of the {space_shape} grid")  # fmt: skip
                self._space.append((matrix, evals, evecs))
                records.append(record)
            sigma_record = {"jitter": max(r["jitter"] for r in records),
                            "condition_number": math.prod(r["condition_number"] for r in records),
                            "smallest_eigenvalue_without_jitter": math.prod(r["smallest_eigenvalue_without_jitter"] for r in records),
                            "axes": records}  # fmt: skip
        else:
            matrix, evals, evecs, sigma_record = _factorise(
                "spatial", spatial, spatial(self.points()), self.jitter,
                f"a {space_shape} grid" if self.coordinates is None else f"{self.num_points} given coordinates",
            )
            self._space.append((matrix, evals, evecs))
        self.sigma_evals = torch.ones(1 if self._space else self.num_points, dtype=torch.float64)  # Λ_Σ (S,)
        for _, evals, _ in self._space:  # in the grid's row-major order, like U_Σ's columns
            self.sigma_evals = torch.kron(self.sigma_evals, evals)
        # Per factor: jitter added, condition number after it, smallest eigenvalue before it.
        self.conditioning = {"temporal": gamma_record, "spatial": sigma_record}
        # Square-root factors A = U √Λ, so that A Z Bᵀ with Z ~ N(0, I) has covariance Γ ⊗ Σ.
        self._sqrt_gamma = self.gamma_evecs * self.gamma_evals.sqrt()
        self._on_device: dict[tuple, tuple[Tensor, ...]] = {}  # factors per (dtype or use, device)

    @property
    def separable(self) -> bool:
        """Whether Σ is held as one factor per grid axis (``stdiff.kernels.Separable``, an RBF) or is
        the identity: nothing of order S × S is ever formed unless ``sigma`` is asked for."""
        return len(self._space) != 1

    def sigma_factors(self) -> list[Tensor]:
        """Σ's factor matrices, Σ = ⊗ of them in grid order (one per axis when ``separable``; none for Σ = I)."""
        return [matrix for matrix, _, _ in self._space]

    def _dense_space(self, which: int) -> Tensor:
        """Σ (``which`` 0) or its eigenvectors U_Σ (2) as a dense S × S matrix (Kronecker product of the
        factors), made once."""
        key = ("dense space", which)
        if key not in self._on_device:
            out = torch.ones(1, 1, dtype=torch.float64)
            for factor in self._space:
                out = torch.kron(out, factor[which])
            self._on_device[key] = (torch.eye(self.num_points, dtype=torch.float64) if not self._space else out,)
        return self._on_device[key][0]

    @property
    def sigma(self) -> Tensor:
        """Σ, S × S in float64 (formed on first use: O(S²) memory)."""
        return self._dense_space(0)

    @property
    def sigma_evecs(self) -> Tensor:
        """U_Σ, S × S in float64, columns in the order of ``sigma_evals`` (formed on first use)."""
        return self._dense_space(2)

    def _space_factors(self, use: str, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        """The factor matrices of U_Σ (``use`` "evecs") or of √Σ = U_Σ Λ_Σ^½ ("sqrt"), per factor,
        cast and moved once per (dtype, device)."""
        key = (use, dtype, torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = tuple((evecs if use == "evecs" else evecs * evals.sqrt()).to(device=device, dtype=dtype)
                                         for _, evals, evecs in self._space)  # fmt: skip
        return list(self._on_device[key])

    def _space_apply(self, y: Tensor, factors: list[Tensor], transpose: bool) -> Tensor:
        """``y (..., S) @ M`` for M = ⊗_a M_a (or ``M ᵀ``), one grid axis at a time: O(S · Σ_a n_a)
        per row instead of O(S²)."""
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

    def space_to_eigenbasis(self, y: Tensor) -> Tensor:
        """``y (..., S) U_Σ`` in float64: spatial coordinates in Σ's eigenbasis."""
        return self._space_apply(y.to(torch.float64), self._space_factors("evecs", torch.float64, y.device), False)

    # --- shapes and dense views (tests, small problems) --------------------------------------

    @property
    def components(self) -> list[KroneckerGP]:
        return [self]

    @property
    def weights(self) -> Tensor:
        return torch.ones(1, dtype=torch.float64)

    def points(self) -> Tensor:
        """Coordinates ``(S, k)`` of the spatial points: the given ``coordinates`` or the grid."""
        return grid(self.space_shape) if self.coordinates is None else self.coordinates

    def covariance(self) -> Tensor:
        """The dense (T·S) × (T·S) covariance Γ ⊗ Σ + τ² I in float64. O((T·S)²) memory."""
        return torch.kron(self.gamma, self.sigma) + self.nugget * torch.eye(self.dim, dtype=torch.float64)

    def report(self) -> str:
        """One line per factor: its condition number and the jitter added to it."""
        lines = []
        for role, name in (("temporal", "Γ"), ("spatial", "Σ")):
            r = self.conditioning[role]
            smallest = r["smallest_eigenvalue_without_jitter"]
            added = f"jitter {r['jitter']:.3g} added (smallest eigenvalue without it {smallest:.3g})"
            lines.append(f"{role} {name}: condition number {r['condition_number']:.3g}, "
                         f"{added if r['jitter'] > 0 else 'no jitter'}")  # fmt: skip
        return "\n".join(lines)

    def condition_numbers(self) -> tuple[float, float]:
        """Condition numbers of Γ and Σ (that of Γ ⊗ Σ is their product)."""
        return self.conditioning["temporal"]["condition_number"], self.conditioning["spatial"]["condition_number"]

    # --- sampling ----------------------------------------------------------------------------

    def _factors(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """(√Γ, μ) cast once per (dtype, device): sampling does no float64 work."""
        key = (dtype, torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = tuple(
                t.to(device=device, dtype=dtype) for t in (self._sqrt_gamma, self.mean.reshape(self.frames, -1))
            )
        return self._on_device[key]

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Draw ``n`` samples ``(n, T, *space_shape)`` as ``μ + A Z Bᵀ`` (A Aᵀ = Γ, B Bᵀ = Σ)."""
        a, mu = self._factors(dtype, device)
        t, s = self.frames, self.num_points
        # Z is drawn frame-major, (T, n, S), so that A Z is one GEMM over all samples at once
        # (3x faster on CPU than n small batched products); Z is i.i.d., so the layout is free.
        z = torch.randn(t, n * s, generator=generator, dtype=dtype, device=device)
        az = (a @ z).reshape(t, n, s).transpose(0, 1)  # (n, T, S), a strided view
        b = self._space_factors("sqrt", dtype, device)  # B with B Bᵀ = Σ, by factors
        if len(b) == 1:
            x = torch.matmul(az, b[0].T, out=torch.empty(n, t, s, dtype=dtype, device=device))  # (n, T, S)
        else:
            x = self._space_apply(az.contiguous(), b, True)
        if self.nugget > 0:  # only then a second draw: samples without a nugget keep their seeds
            x.add_(torch.randn(n, t, s, generator=generator, dtype=dtype, device=device), alpha=self.nugget**0.5)
        return x.add_(mu).reshape(n, *self.sample_shape)

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                           device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:  # fmt: skip
        """``sample`` and the component of each sample, all 0."""
        return self.sample(n, generator, dtype, device), torch.zeros(n, dtype=torch.long)

    # --- density and score -------------------------------------------------------------------

    def _eigen_on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(U_Γ, eigenvalues of Γ ⊗ Σ as (T, S), μ) in float64, moved once per device."""
        key = ("eigen", torch.device(device))
        if key not in self._on_device:
            lam = self.gamma_evals[:, None] * self.sigma_evals[None, :] + self.nugget  # (T, S)
            self._on_device[key] = tuple(t.to(device) for t in (self.gamma_evecs, lam, self.mean))
        return self._on_device[key]

    def to_eigenbasis(self, x: Tensor) -> Tensor:
        """``U_Γᵀ x U_Σ`` for ``x (..., T, *space)`` -> ``(..., T, S)`` in float64, O(T·S·(T + S)) per
        sample (O(T·S·(T + Σ_a n_a)) for a separable Σ)."""
        u_gamma = self._eigen_on(x.device)[0]
        x = x.to(torch.float64).reshape(*x.shape[: x.ndim - 1 - len(self.space_shape)], self.frames, self.num_points)
        return self._space_apply(u_gamma.T @ x, self._space_factors("evecs", torch.float64, x.device), False)

    def from_eigenbasis(self, y: Tensor) -> Tensor:
        """Inverse of ``to_eigenbasis``: ``U_Γ y U_Σᵀ`` -> ``(..., T, *space)``."""
        u_gamma = self._eigen_on(y.device)[0]
        y = self._space_apply(u_gamma @ y, self._space_factors("evecs", torch.float64, y.device), True)
        return y.reshape(*y.shape[:-2], *self.sample_shape)

    def check_sample_shape(self, x: Tensor, name: str) -> None:
        if tuple(x.shape[x.ndim - len(self.sample_shape) :]) != self.sample_shape:
            raise ValueError(f"{name} must end in the sample shape {self.sample_shape}, got {tuple(x.shape)}")

    def eigenvalues(self, device: torch.device | str = "cpu") -> Tensor:
        """Eigenvalues of Γ ⊗ Σ + τ² I arranged as ``(T, S)``: λ_Γ[i] · λ_Σ[a] + τ²."""
        return self._eigen_on(device)[1]

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of samples ``x (..., T, *space_shape)`` -> ``(...)``, in float64."""
        self.check_sample_shape(x, "x")
        y = self.to_eigenbasis(x - self._eigen_on(x.device)[2])  # (..., T, S)
        lam = self.eigenvalues(y.device)
        quad = (y**2 / lam).sum((-2, -1))
        return -0.5 * (quad + lam.log().sum() + self.dim * math.log(2 * math.pi))

    def noised_log_prob(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Log-density of ``x_t = α x_0 + σ ε`` (x_0 from this GP), N(αμ, α² Γ⊗Σ + σ² I), at
        ``x_t (..., T, *space_shape)`` -> ``(...)`` in float64; ``log_prob`` at α = 1, σ = 0.
        ``alpha``, ``sigma``: scalars, or one per sample (shaped like the batch dimensions)."""
        self.check_sample_shape(x_t, "x_t")
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x_t.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x_t.device)[..., None, None]
        scaled_mean = alpha[(..., *[None] * len(self.sample_shape))] * self._eigen_on(x_t.device)[2]
        y = self.to_eigenbasis(x_t - scaled_mean)  # (..., T, S)
        var = alpha[..., None, None] ** 2 * self.eigenvalues(y.device) + sigma**2
        return -0.5 * ((y**2 / var).sum((-2, -1)) + var.log().sum((-2, -1)) + self.dim * math.log(2 * math.pi))

    def score(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Exact score of the noised data ``x_t = α x_0 + σ ε``:

        ``∇ log p_t(x_t) = −(α² Γ⊗Σ + σ² I)⁻¹ (x_t − α μ)``, diagonal in the Kronecker eigenbasis.

        Args:
            x_t: ``(B, T, *space_shape)`` noised samples.
            alpha, sigma: scalars or ``(B,)`` tensors, the signal and noise scales.

        Returns:
            ``(B, T, *space_shape)`` in the dtype of ``x_t`` (computed in float64).
        """
        self.check_sample_shape(x_t, "x_t")
        alpha, sigma = (v.reshape(-1, 1, 1) for v in per_sample_scales(alpha, sigma, len(x_t), x_t.device))
        mu = self._eigen_on(x_t.device)[2]
        centred = x_t.to(torch.float64) - alpha.reshape(-1, *[1] * len(self.sample_shape)) * mu
        y = self.to_eigenbasis(centred)  # (B, T, S)
        y = y / (alpha**2 * self.eigenvalues(y.device) + sigma**2)
        return (-self.from_eigenbasis(y)).to(x_t.dtype)

    def log_responsibilities(self, x_t: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log P(component | x_t) ``(..., 1)``: 0, one component."""
        return torch.zeros(*x_t.shape[: x_t.ndim - len(self.sample_shape)], 1, dtype=torch.float64, device=x_t.device)

    def divergence(self, x_t: Tensor, alpha: float, sigma: float) -> Tensor:
        """∇ₓ·ε̂ ``(B,)``: ε̂ is linear, so the same at every x, σ Σ_k 1/(α²λ_k + σ²) over the eigenvalues
        λ_k of Γ ⊗ Σ + τ² I."""
        if not (isinstance(alpha, (int, float)) and isinstance(sigma, (int, float))):
            raise TypeError(f"divergence takes scalar alpha and sigma, got {type(alpha).__name__}, {type(sigma).__name__}")
        lam = self.eigenvalues(torch.device("cpu"))
        return (sigma / (alpha**2 * lam + sigma**2)).sum().to(x_t.device).expand(len(x_t))

    def denoise_with_evidence(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                              observed: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The exact denoiser ``E[x_0 | x_t]`` of ``x_t = α x_0 + σ ε`` ``(B, T, *space)`` float64, or
        given ``observed`` values at ``mask`` ``E[x_0 | x_t, x_0[mask] = observed[mask]]``, and the
        log-density ``(B,)`` of what it conditions on: the Bayes-optimal prediction a trained
        denoiser approximates, and the evidence a mixture weighs its components by.

        Without a mask it is diagonal in the Kronecker eigenbasis, O(T·S·(T + S)) per sample; with
        one it is dense, in covariance form (``stdiff.truth.conditioning.masked_denoise``), one
        Cholesky factor of order T·S per distinct (mask, noise level), ``T·S <= DENSE_LIMIT``.
        ``alpha``, ``sigma``: scalars or ``(B,)``; ``observed``, ``mask``: ``(B, T, *space)`` or None."""
        self.check_sample_shape(x_t, "x_t")
        alpha, sigma = per_sample_scales(alpha, sigma, len(x_t), x_t.device)
        if mask is None:
            if observed is not None:
                raise ValueError("observed values need their mask")
            x = x_t.to(torch.float64)
            view = (len(x), *[1] * len(self.sample_shape))
            x0 = (x + sigma.reshape(view) ** 2 * self.score(x, alpha, sigma)) / alpha.reshape(view)
            return x0, self.noised_log_prob(x, alpha, sigma)
        if observed is None or tuple(mask.shape) != tuple(x_t.shape) or tuple(observed.shape) != tuple(x_t.shape):
            raise ValueError(f"observed and mask must both be given, shaped like x_t {tuple(x_t.shape)}")
        return conditioning.masked_denoise(self, x_t, alpha, sigma, observed, mask)

    def dense_covariance(self, device: torch.device) -> Tensor:
        """``covariance()`` cached per device (the dense conditional algebra's)."""
        key = ("covariance", torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = (self.covariance().to(device),)
        return self._on_device[key][0]

    # --- conditioning (forecasting and imputation baselines) ---------------------------------

    def conditional(self, x: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """The exact distribution of the unobserved coordinates of ``x (..., T, *space)`` given its
        observed ones: the Bayes-optimal forecast or imputation any model's is measured against.
        ``observed``: ``(T,)`` (whole frames: cheap, through Γ alone, since Σ factors out) or
        ``(T, *space_shape)`` (single coordinates: dense, T·S <= DENSE_LIMIT). Returns the mean
        ``(..., T, *space)``, equal to ``x`` where observed, and the covariance ``(..., m, m)`` of the
        m unobserved coordinates in frame-major order, the same for every case (an expanded view)."""
        return conditioning.conditional(self, x, observed)

    def observed_log_prob(self, x: Tensor, observed: Tensor) -> Tensor:
        """Log-density ``(...)`` of the observed entries of ``x (..., T, *space)`` (the marginal
        likelihood of what a conditional task shows), ``observed`` a mask as in ``conditional``."""
        return conditioning.observed_log_prob(self, x, observed)

    def posterior_weights(self, x: Tensor, observed: Tensor) -> Tensor:
        """``(..., 1)`` ones: one component."""
        return torch.ones(*x.shape[: x.ndim - len(self.sample_shape)], 1, dtype=torch.float64, device=x.device)

    def sample_conditional(self, x: Tensor, observed: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``k`` exact draws ``(n, k, T, *space)`` of each case ``x (n, T, *space)`` given its entries at
        ``observed`` (one mask for all, as in ``conditional``), float64 on the CPU."""
        return conditioning.sample_conditional(self, x, observed, k, generator)

    def __repr__(self) -> str:
        return (f"KroneckerGP(temporal={self.temporal!r}, spatial={self.spatial!r}, frames={self.frames}, "
                f"space_shape={self.space_shape}, mean={self.mean_value}, jitter={self.jitter}"
                + (f", nugget={self.nugget:.4g}" if self.nugget else "")
                + (f", coordinates=<{self.num_points}×{self.coordinates.shape[1]}>" if self.coordinates is not None else "")
                + ")")  # fmt: skip


