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

# Reject a factor whose smallest eigenvalue is below this fraction of its largest (condition
# number > 1e12): its inverse, used by log_prob and by the score at small noise, would have fewer
# than ~4 correct digits in float64.
MAX_CONDITION = 1e12
DENSE_DENOISE_LIMIT = 4096  # the exact conditional denoiser (KroneckerGP.denoise) forms a (T·S)² precision
AUTO_MAX_SHIFT = 1e-6  # jitter: auto adds at most this fraction of the largest eigenvalue


def grid(space_shape: Sequence[int]) -> Tensor:
    """Integer coordinates ``(S, k)`` of a ``space_shape`` grid, in row-major (C) order."""
    axes = [torch.arange(n, dtype=torch.float64) for n in space_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(space_shape))


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


class KroneckerGP:
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
        if spatial is None:
            eye = torch.eye(self.num_points, dtype=torch.float64)
            self.sigma, self.sigma_evals, self.sigma_evecs = eye, torch.ones(self.num_points, dtype=torch.float64), eye
            sigma_record = {"jitter": 0.0, "condition_number": 1.0, "smallest_eigenvalue_without_jitter": 1.0}
        else:
            self.sigma, self.sigma_evals, self.sigma_evecs, sigma_record = _factorise(
                "spatial", spatial, spatial(self.points()), self.jitter,
                f"a {space_shape} grid" if self.coordinates is None else f"{self.num_points} given coordinates",
            )
        # Per factor: jitter added, condition number after it, smallest eigenvalue before it.
        self.conditioning = {"temporal": gamma_record, "spatial": sigma_record}
        # Square-root factors A = U √Λ, so that A Z Bᵀ with Z ~ N(0, I) has covariance Γ ⊗ Σ.
        self._sqrt_gamma = self.gamma_evecs * self.gamma_evals.sqrt()
        self._sqrt_sigma = self.sigma_evecs * self.sigma_evals.sqrt()
        self._on_device: dict[tuple, tuple[Tensor, ...]] = {}  # factors per (dtype or use, device)

    # --- shapes and dense views (tests, small problems) --------------------------------------

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``(T, *space_shape)``."""
        return (self.frames, *self.space_shape)

    def points(self) -> Tensor:
        """Coordinates ``(S, k)`` of the spatial points: the given ``coordinates`` or the grid."""
        return grid(self.space_shape) if self.coordinates is None else self.coordinates

    @property
    def dim(self) -> int:
        """T·S, the dimension of one sample."""
        return self.frames * self.num_points

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

    def _factors(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(√Γ, √Σ, μ) cast once per (dtype, device): sampling does no float64 work."""
        key = (dtype, torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = tuple(
                t.to(device=device, dtype=dtype)
                for t in (self._sqrt_gamma, self._sqrt_sigma, self.mean.reshape(self.frames, -1))
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
        a, b, mu = self._factors(dtype, device)
        t, s = self.frames, self.num_points
        # Z is drawn frame-major, (T, n, S), so that A Z is one GEMM over all samples at once
        # (3x faster on CPU than n small batched products); Z is i.i.d., so the layout is free.
        z = torch.randn(t, n * s, generator=generator, dtype=dtype, device=device)
        az = (a @ z).reshape(t, n, s).transpose(0, 1)  # (n, T, S), a strided view
        x = torch.matmul(az, b.T, out=torch.empty(n, t, s, dtype=dtype, device=device))  # (n, T, S)
        if self.nugget > 0:  # only then a second draw: samples without a nugget keep their seeds
            x.add_(torch.randn(n, t, s, generator=generator, dtype=dtype, device=device), alpha=self.nugget**0.5)
        return x.add_(mu).reshape(n, *self.sample_shape)

    # --- density and score -------------------------------------------------------------------

    def _float64_on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(U_Γ, U_Σ, eigenvalues of Γ ⊗ Σ as (T, S), μ) in float64, moved once per device."""
        key = ("eigen", torch.device(device))
        if key not in self._on_device:
            lam = self.gamma_evals[:, None] * self.sigma_evals[None, :] + self.nugget  # (T, S)
            self._on_device[key] = tuple(t.to(device) for t in (self.gamma_evecs, self.sigma_evecs, lam, self.mean))
        return self._on_device[key]

    def _to_eigenbasis(self, x: Tensor) -> Tensor:
        """``U_Γᵀ x U_Σ`` for ``x (..., T, *space)`` -> ``(..., T, S)`` in float64."""
        u_gamma, u_sigma, _, _ = self._float64_on(x.device)
        x = x.to(torch.float64).reshape(*x.shape[: x.ndim - 1 - len(self.space_shape)], self.frames, self.num_points)
        return u_gamma.T @ x @ u_sigma

    def _from_eigenbasis(self, y: Tensor) -> Tensor:
        """Inverse of ``_to_eigenbasis``: ``U_Γ y U_Σᵀ`` -> ``(..., T, *space)``."""
        u_gamma, u_sigma, _, _ = self._float64_on(y.device)
        return (u_gamma @ y @ u_sigma.T).reshape(*y.shape[:-2], *self.sample_shape)

    def _check_sample_shape(self, x: Tensor, name: str) -> None:
        if tuple(x.shape[x.ndim - len(self.sample_shape) :]) != self.sample_shape:
            raise ValueError(f"{name} must end in the sample shape {self.sample_shape}, got {tuple(x.shape)}")

    def _eigenvalues(self, device: torch.device) -> Tensor:
        """Eigenvalues of Γ ⊗ Σ + τ² I arranged as ``(T, S)``: λ_Γ[i] · λ_Σ[a] + τ²."""
        return self._float64_on(device)[2]

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of samples ``x (..., T, *space_shape)`` -> ``(...)``, in float64."""
        self._check_sample_shape(x, "x")
        y = self._to_eigenbasis(x - self._float64_on(x.device)[3])  # (..., T, S)
        lam = self._eigenvalues(y.device)
        quad = (y**2 / lam).sum((-2, -1))
        return -0.5 * (quad + lam.log().sum() + self.dim * math.log(2 * math.pi))

    def noised_log_prob(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Log-density of ``x_t = α x_0 + σ ε`` (x_0 from this GP), N(αμ, α² Γ⊗Σ + σ² I), at
        ``x_t (..., T, *space_shape)`` -> ``(...)`` in float64; ``log_prob`` at α = 1, σ = 0.
        ``alpha``, ``sigma``: scalars, or one per sample (shaped like the batch dimensions)."""
        self._check_sample_shape(x_t, "x_t")
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x_t.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x_t.device)[..., None, None]
        scaled_mean = alpha[(..., *[None] * len(self.sample_shape))] * self._float64_on(x_t.device)[3]
        y = self._to_eigenbasis(x_t - scaled_mean)  # (..., T, S)
        var = alpha[..., None, None] ** 2 * self._eigenvalues(y.device) + sigma**2
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
        self._check_sample_shape(x_t, "x_t")
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x_t.device).reshape(-1, 1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x_t.device).reshape(-1, 1, 1)
        mu = self._float64_on(x_t.device)[3]
        centred = x_t.to(torch.float64) - alpha.reshape(-1, *[1] * len(self.sample_shape)) * mu
        y = self._to_eigenbasis(centred)  # (B, T, S)
        y = y / (alpha**2 * self._eigenvalues(y.device) + sigma**2)
        return (-self._from_eigenbasis(y)).to(x_t.dtype)

    def denoise(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, observed: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """The exact denoiser ``E[x_0 | x_t]`` of ``x_t = α x_0 + σ ε``, or, given ``observed``
        values at ``mask`` (True where observed), ``E[x_0 | x_t, x_0[mask] = observed[mask]]``:
        the Bayes-optimal prediction a trained denoiser (conditional where the mask is given)
        approximates.

        Without a mask it is diagonal in the Kronecker eigenbasis: O(T·S·(T + S)) per sample. With
        one it is a Gaussian regression on every coordinate, observed exactly where ``mask`` says
        and through ``x_t / α`` (noise variance s = σ²/α²) elsewhere. In precision form, with Q
        = (Γ ⊗ Σ + τ² I)⁻¹ formed once (dense, from the eigendecomposition) and m the unobserved
        coordinates: (Q_mm + I/s)(x̂₀ − μ)_m = (x_t/α − μ)_m / s − Q_mo (y − μ)_o. One Cholesky factor
        per distinct (mask, s) among the rows (the samples of one case at one sampler step share
        it), all in one batched call, each system padded with the identity to the largest m of the
        batch, M: O(G·M³/3) flops for G distinct pairs (a training batch of B samples: G = B;
        k samples of n cases at one step: G = n); ``T·S <= 4096`` (Q takes 8·(T·S)² bytes).

        Args:
            x_t: ``(B, T, *space_shape)``.
            alpha, sigma: scalars or ``(B,)``.
            observed, mask: ``(B, T, *space_shape)`` values and boolean mask, or both None.

        Returns:
            ``(B, T, *space_shape)`` in float64.
        """
        return self.denoise_with_evidence(x_t, alpha, sigma, observed, mask)[0]

    def denoise_with_evidence(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                              observed: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``denoise`` and the log-density ``(B,)`` of what it conditions on: ``log p_t(x_t)``
        without a mask; with one, of (observed values, x_t/α on the unobserved entries), which is
        N(μ, Γ ⊗ Σ + τ² I + s·diag(unobserved)), through the same Cholesky factors (Woodbury:
        log det = log det(Γ ⊗ Σ + τ² I) + m log s + log det(Q_mm + I/s)). A mixture weighs its
        components' denoisers by these (``GPMixture.denoise``)."""
        self._check_sample_shape(x_t, "x_t")
        b = len(x_t)
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x_t.device).reshape(-1).expand(b)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x_t.device).reshape(-1).expand(b)
        x = x_t.to(torch.float64)
        mu = self.mean_value
        if mask is None:
            if observed is not None:
                raise ValueError("observed values need their mask")
            view = (b, *[1] * len(self.sample_shape))
            a, s = alpha.reshape(view), sigma.reshape(view)
            return (x + s**2 * self.score(x, alpha, sigma)) / a, self.noised_log_prob(x, alpha, sigma)
        if observed is None or tuple(mask.shape) != tuple(x_t.shape) or tuple(observed.shape) != tuple(x_t.shape):
            raise ValueError(f"observed and mask must both be given, shaped like x_t {tuple(x_t.shape)}")
        if self.dim > DENSE_DENOISE_LIMIT:
            raise ValueError(f"the exact conditional denoiser is dense: T·S = {self.dim} > {DENSE_DENOISE_LIMIT}; "
                             "use shorter windows or fewer points")  # fmt: skip
        seen = mask.reshape(b, -1).bool()
        s = (sigma / alpha) ** 2  # (B,)
        y = observed.reshape(b, -1).to(torch.float64) - mu
        z = x.reshape(b, -1) / alpha[:, None] - mu
        out = torch.where(seen, y, torch.zeros_like(y))
        precision = self._precision(x.device)
        lam = self._eigenvalues(x.device).reshape(-1)
        v = torch.where(seen, y, z)  # what is conditioned on, centred
        qv = v @ precision
        constant = lam.log().sum() + self.dim * math.log(2 * math.pi)
        # Rows sharing (mask, s) share the factor: one per group, all factored in one batched call,
        # each system padded with the identity to the largest number of unobserved entries M.
        keys = torch.cat([seen.to(torch.float64), s[:, None]], dim=1)
        groups, inverse = torch.unique(keys, dim=0, return_inverse=True)
        miss = groups[:, :-1] == 0  # (G, d)
        counts = miss.sum(1)
        if int(counts.max()) == 0:
            return (mu + out).reshape(x_t.shape), -0.5 * ((v * qv).sum(1) + constant)
        size = int(counts.max())
        idx = torch.argsort((~miss).to(torch.int8), dim=1, stable=True)[:, :size]  # unobserved entries first
        valid = torch.arange(size, device=x.device)[None, :] < counts[:, None]  # (G, M)
        pair = valid[:, :, None] & valid[:, None, :]
        eye = torch.eye(size, dtype=torch.float64, device=x.device)
        inv_s = 1.0 / groups[:, -1]  # (G,)
        system = torch.where(pair, precision[idx[:, :, None], idx[:, None, :]], eye) + (inv_s[:, None, None] * eye) * pair
        chol = torch.linalg.cholesky(system)
        # right-hand sides (Q_mo (y − μ)_o through the whole Q: y is 0 where unobserved), grouped (G, M, K)
        coupled = torch.where(seen, y, torch.zeros_like(y)) @ precision  # (B, d)
        rows_idx = idx[inverse]  # (B, M)
        keep = valid[inverse]
        rhs = inv_s[inverse][:, None] * z.gather(1, rows_idx) - coupled.gather(1, rows_idx)
        order = torch.argsort(inverse, stable=True)
        starts = torch.cumsum(torch.bincount(inverse, minlength=len(groups)), 0) - torch.bincount(inverse, minlength=len(groups))
        position = torch.empty_like(inverse)
        position[order] = torch.arange(b, device=x.device) - starts[inverse[order]]
        width = int(position.max()) + 1

        def grouped(values: Tensor) -> Tensor:  # (B, M) -> (G, M, K), zero where padded
            per_group = torch.zeros(len(groups), size, width, dtype=torch.float64, device=x.device)
            per_group[inverse, :, position] = torch.where(keep, values, torch.zeros_like(values))
            return per_group

        solved = torch.cholesky_solve(grouped(rhs), chol)[inverse, :, position]  # (B, M)
        rows = torch.arange(b, device=x.device)[:, None].expand(b, size)
        out[rows[keep], rows_idx[keep]] = solved[keep]
        # the evidence: quad = vᵀQv − ‖L⁻¹ (Qv)_m‖², log det as in the docstring
        half = torch.linalg.solve_triangular(chol, grouped(qv.gather(1, rows_idx)), upper=False)[inverse, :, position]
        quad = (v * qv).sum(1) - half.pow(2).sum(1)
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(1)[inverse] + counts[inverse] * s.log()
        return (mu + out).reshape(x_t.shape), -0.5 * (quad + logdet + constant)

    def _precision(self, device: torch.device) -> Tensor:
        """The dense precision (Γ ⊗ Σ + τ² I)⁻¹, from the eigendecomposition, cached per device."""
        key = ("precision", torch.device(device))
        if key not in self._on_device:
            u = torch.kron(self.gamma_evecs, self.sigma_evecs)
            lam = (self.gamma_evals[:, None] * self.sigma_evals[None, :] + self.nugget).reshape(-1)
            self._on_device[key] = ((u / lam) @ u.T).to(device),
        return self._on_device[key][0]

    # --- conditioning (forecasting and imputation baselines) ---------------------------------

    def conditional(self, x: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """The exact distribution of the unobserved coordinates of ``x`` given its observed ones: the
        Bayes-optimal forecast or imputation any model's is measured against.

        Args:
            x: ``(..., T, *space_shape)``; only the observed entries are read.
            observed: boolean mask, ``(T,)`` (whole frames: cheap, through Γ alone, since Σ
                factors out) or ``(T, *space_shape)`` (single coordinates: dense, T·S <= 4096).

        Returns:
            ``mean (..., T, *space_shape)``: the conditional mean, equal to ``x`` where observed;
            ``covariance (m, m)``: of the m unobserved coordinates in frame-major order
            (``x.reshape(..., T·S)[..., ~mask.flatten()]``), the same for every ``x``. Float64.
        """
        self._check_sample_shape(x, "x")
        observed = torch.as_tensor(observed, device=x.device)
        frames_only = tuple(observed.shape) == (self.frames,)
        if observed.dtype != torch.bool or not (frames_only or tuple(observed.shape) == self.sample_shape):
            raise ValueError(
                f"observed must be a boolean mask of shape ({self.frames},) (frames) or {self.sample_shape} "
                f"(coordinates), got {observed.dtype} {tuple(observed.shape)}"
            )
        batch = x.shape[: x.ndim - len(self.sample_shape)]
        mu = self.mean_value
        if frames_only and self.nugget > 0:  # τ² I does not factor over frames: condition on the coordinates
            observed, frames_only = observed[:, None].expand(self.frames, self.num_points).reshape(self.sample_shape), False
        if frames_only:  # x_m | x_o = μ + (Γ_mo Γ_oo⁻¹ ⊗ I)(x_o − μ), covariance (Γ_mm − Γ_mo Γ_oo⁻¹ Γ_om) ⊗ Σ
            k, flat = self.gamma.to(x.device), x.to(torch.float64).reshape(*batch, self.frames, self.num_points)
            mask = observed
        else:
            if self.dim > 4096:
                raise ValueError(f"conditioning on single coordinates is dense: T·S = {self.dim} > 4096; "
                                 "observe whole frames (a mask of shape (T,)) instead")  # fmt: skip
            k, flat = self.covariance().to(x.device), x.to(torch.float64).reshape(*batch, self.dim, 1)
            mask = observed.reshape(-1)
        o, m = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
        weights = torch.zeros(len(m), len(o), dtype=torch.float64, device=x.device)
        if len(o) and len(m):  # K_mo K_oo⁻¹, through the Cholesky factor of K_oo
            chol = torch.linalg.cholesky(k[o][:, o])
            weights = torch.cholesky_solve(k[o][:, m], chol).T
        mean = flat.clone()
        mean[..., m, :] = mu + weights @ (flat[..., o, :] - mu)
        schur = k[m][:, m] - weights @ k[o][:, m]
        covariance = torch.kron(schur, self.sigma.to(x.device)) if frames_only else schur
        return mean.reshape(*batch, *self.sample_shape), covariance

    def observed_log_prob(self, x: Tensor, observed: Tensor) -> Tensor:
        """Log-density ``(...)`` of the observed entries of ``x (..., T, *space_shape)`` (the marginal
        likelihood of what a conditional task shows), ``observed`` a mask as in ``conditional``:
        through Γ_oo ⊗ Σ for whole frames, dense for single coordinates. A mixture's posterior
        weighs its components by it (``GPMixture.conditional``)."""
        self._check_sample_shape(x, "x")
        observed = torch.as_tensor(observed, device=x.device)
        batch = x.shape[: x.ndim - len(self.sample_shape)]
        frames_only = tuple(observed.shape) == (self.frames,) and self.nugget == 0
        flat = x.to(torch.float64).reshape(*batch, self.frames, self.num_points) - self.mean_value
        if frames_only:
            o = observed.nonzero().squeeze(1)
            evals, evecs = torch.linalg.eigh(self.gamma.to(x.device)[o][:, o])
            y = evecs.T @ flat[..., o, :] @ self.sigma_evecs.to(x.device)
            var = evals[:, None] * self.sigma_evals.to(x.device)[None, :]
            return -0.5 * ((y**2 / var).sum((-2, -1)) + var.log().sum() + var.numel() * math.log(2 * math.pi))
        if tuple(observed.shape) == (self.frames,):
            observed = observed[:, None].expand(self.frames, self.num_points)
        o = observed.reshape(-1).nonzero().squeeze(1)
        chol = torch.linalg.cholesky(self.covariance().to(x.device)[o][:, o])
        w = torch.linalg.solve_triangular(chol, flat.reshape(*batch, -1)[..., o, None], upper=False)[..., 0]
        return -0.5 * (w.pow(2).sum(-1) + 2 * chol.diagonal().log().sum() + len(o) * math.log(2 * math.pi))

    def sample_conditional(self, x: Tensor, observed: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``k`` exact draws ``(n, k, T, *space_shape)`` of each of the cases ``x (n, T, *space)`` given
        its entries at ``observed`` (one mask for all, as in ``conditional``), float64 on the CPU."""
        mean, cov = self.conditional(x.double().cpu(), observed.cpu())
        missing = ~flat_mask(self, observed.cpu())
        chol = torch.linalg.cholesky(cov + 1e-12 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype))
        z = torch.randn(len(x), k, len(cov), generator=generator, dtype=torch.float64)
        flat = mean.reshape(len(x), 1, -1).repeat(1, k, 1)
        flat[..., missing] += z @ chol.T
        return flat.reshape(len(x), k, *self.sample_shape)

    def __repr__(self) -> str:
        return (f"KroneckerGP(temporal={self.temporal!r}, spatial={self.spatial!r}, frames={self.frames}, "
                f"space_shape={self.space_shape}, mean={self.mean_value}, jitter={self.jitter}"
                + (f", nugget={self.nugget:.4g}" if self.nugget else "")
                + (f", coordinates=<{self.num_points}×{self.coordinates.shape[1]}>" if self.coordinates is not None else "")
                + ")")  # fmt: skip


def flat_mask(gp, observed: Tensor) -> Tensor:
    """A frame mask ``(T,)`` or coordinate mask ``(T, *space)`` as a flat ``(T·S,)`` coordinate mask."""
    if tuple(observed.shape) == (gp.frames,):
        observed = observed[:, None].expand(gp.frames, gp.num_points)
    return observed.reshape(-1)
