"""The conditional denoiser of a ``KroneckerGP`` without any (T·S)² matrix: what
``stdiff.truth.conditioning.masked_denoise`` uses for whole-frame masks beyond ``DENSE_LIMIT`` (and
below it where K is well-conditioned enough, ``frames_pay``), and for scattered masks beyond it.

Both solve C w = v − μ, C = K + s·diag(unobserved), K = Γ ⊗ Σ + τ² I, s = σ²/α² (the covariance
form of ``masked_denoise``):

- **Whole frames** (each frame of a row observed entirely or not at all, as ``Forecast`` and
  ``Interpolation`` draw): in Σ's eigenbasis C is block-diagonal, one T × T block λ_k Γ + τ² I +
  s·D per spatial eigenvalue λ_k (D the unobserved frames), so the solve and its log-determinant
  are exact: S Cholesky factors of order T, O(S·T³ + T·S·(T + Σ_a n_a)) per (mask, s).
- **Scattered coordinates** (``Imputation``): preconditioned conjugate gradients on the precision
  form, (Q_uu + I/s) x_u = z_u/s − Q_uo y_o with Q = K⁻¹ applied through the Kronecker eigenbasis
  (GPyTorch's structured matrix–vector products, Gardner et al. 2018), preconditioned by the
  unobserved block of (Q + I/s')⁻¹ = K (K + s' I)⁻¹ s', s' = min(s, K's mean eigenvalue). It stops
  at a relative residual of ``PCG_TOLERANCE`` (measured against the dense Cholesky path: a few
  1e-6 relative error in x̂₀, ``tests/test_structured.py``); its error grows with K's condition
  number, so a K above ``PCG_MAX_CONDITION`` (a smooth kernel without a nugget, held up only by jitter) is refused
  rather than solved wrongly. It gives x̂₀, not the evidence (a log-determinant of order T·S).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stdiff.truth.base import DENSE_LIMIT

FRAME_MAX_CONDITION = 1e7  # below the dense limit, whole frames go the Kronecker way only this well-conditioned
PCG_TOLERANCE = 1e-6  # relative residual ‖b − A x‖ / ‖b‖ at which conjugate gradients stop
PCG_MAX_ITERATIONS = 3000
# Above this λ_max/λ_min of K the precision form's solution keeps fewer than ~4 correct digits at
# PCG_TOLERANCE (measured: an RBF grid at auto jitter, condition ~1e13, converged to 70 % error).
PCG_MAX_CONDITION = 1e9


def frames_pay(gp) -> bool:
    """Whether whole-frame masks go through the Kronecker structure: always beyond ``DENSE_LIMIT``
    (nothing else can), and below it when K's condition number is at most ``FRAME_MAX_CONDITION``.
    Σ's eigenbasis holds Σ to ~1e-16·‖Σ‖, which a nearly singular K amplifies past the dense
    solve's error: at a Γ of condition 3e10 a conditional evidence came out 1.3e-6 to 4e-4 nats off
    the 40-digit one (``tests/test_truth_contract.py``), the dense solve 3e-7."""
    if gp.dim > DENSE_LIMIT:
        return True
    lam = gp.eigenvalues()
    return (lam.max() / lam.min()).item() <= FRAME_MAX_CONDITION


def whole_frames(seen: Tensor) -> Tensor:
    """``(B,)`` whether each row of a mask ``(B, T, S)`` observes whole frames only."""
    return (seen.any(-1) == seen.all(-1)).all(-1)


def frame_solve(gp, v: Tensor, frames: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For centred values ``v (B, T, S)`` with whole frames ``frames (B, T)`` observed and noise
    ratio ``s (B,)`` elsewhere: ``K C⁻¹ v`` ``(B, T, S)``, the quadratic form vᵀ C⁻¹ v and log det C
    ``(B,)``; exact, one batch of S Cholesky factors of order T per distinct (frames, s)."""
    device = v.device
    lam = gp.sigma_evals.to(device)[:, None, None]  # (S, 1, 1)
    gamma = gp.gamma.to(device)
    eye = torch.eye(gp.frames, dtype=torch.float64, device=device)
    k_blocks = lam * gamma + gp.nugget * eye  # (S, T, T): K in Σ's eigenbasis
    vt = gp.space_to_eigenbasis(v)  # (B, T, S)
    out = torch.empty_like(vt)
    quad, logdet = (torch.empty(len(v), dtype=torch.float64, device=device) for _ in range(2))
    keys = torch.cat([frames.to(torch.float64), s[:, None]], dim=1)
    groups, inverse = torch.unique(keys, dim=0, return_inverse=True)
    for g, key in enumerate(groups):
        rows = (inverse == g).nonzero().squeeze(1)
        noise = (key[:-1] == 0).to(torch.float64) * key[-1]  # (T,): s on the unobserved frames
        chol = torch.linalg.cholesky(k_blocks + torch.diag(noise))  # (S, T, T)
        rhs = vt[rows].permute(2, 1, 0)  # (S, T, r)
        half = torch.linalg.solve_triangular(chol, rhs, upper=False)
        w = torch.linalg.solve_triangular(chol.transpose(-2, -1), half, upper=True)
        out[rows] = (k_blocks @ w).permute(2, 1, 0)
        quad[rows] = half.pow(2).sum((0, 1))
        logdet[rows] = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum()
    return gp.space.apply(out, "evecs", transpose=True), quad, logdet


def _through_eigenbasis(gp, x: Tensor, scale: Tensor) -> Tensor:
    """``U diag(scale) Uᵀ x`` for ``x (B, T, S)``, U = U_Γ ⊗ U_Σ, ``scale (B or 1, T, S)``."""
    y = gp.to_eigenbasis(x.reshape(len(x), *gp.sample_shape)) * scale
    return gp.from_eigenbasis(y).reshape(x.shape)


def check_pcg(gp) -> None:
    """``ValueError`` when K is too ill-conditioned for ``pcg_solve`` to be trusted."""
    lam = gp.eigenvalues()
    condition = (lam.max() / lam.min()).item()
    if condition > PCG_MAX_CONDITION:
        raise ValueError(f"scattered masks on T·S = {gp.dim} values are solved by conjugate gradients, which need "
                         f"a condition number of K = Γ ⊗ Σ + τ² I below {PCG_MAX_CONDITION:.0e}; this GP's is "
                         f"{condition:.2g}: add a nugget (a fitted reference: nugget=True), use a rougher kernel, "
                         "or observe whole frames (Forecast, Interpolation), which are exact at any size")  # fmt: skip


def pcg_solve(gp, v: Tensor, seen: Tensor, s: Tensor, tolerance: float = PCG_TOLERANCE,
              max_iterations: int = PCG_MAX_ITERATIONS) -> tuple[Tensor, int]:  # fmt: skip
    """E[x_0 − μ | v] ``(B, T, S)`` for centred ``v (B, T, S)`` (exact values where ``seen``, x_t/α − μ
    elsewhere) and ``s (B,)``, by preconditioned conjugate gradients (module docstring), and the
    iterations it took. ``RuntimeError`` if a row is not within ``tolerance`` after ``max_iterations``."""
    check_pcg(gp)
    lam = gp.eigenvalues(v.device)[None]  # (1, T, S)
    u = (~seen).to(torch.float64)
    inv_s = (1 / s)[:, None, None]
    # (Q + I/s')⁻¹ in the eigenbasis, s' = min(s, the mean variance): at high noise the unobserved
    # block of K itself preconditions Q_uu badly (689 iterations at d = 65,536, half observed,
    # s = 1e4); capped, 64 at d = 16,384 (measured on the video preset's kernels)
    capped = s.clamp(max=lam.mean().item())[:, None, None]
    gain = lam * capped / (lam + capped)

    def matvec(x: Tensor) -> Tensor:
        return u * _through_eigenbasis(gp, u * x, 1 / lam) + u * x * inv_s

    def precondition(r: Tensor) -> Tensor:
        return u * _through_eigenbasis(gp, u * r, gain)

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum((1, 2))

    rhs = u * (v * inv_s - _through_eigenbasis(gp, (1 - u) * v, 1 / lam))
    scale = rhs.norm(dim=(1, 2))
    x, r = torch.zeros_like(rhs), rhs.clone()
    z = precondition(r)
    p, rz = z.clone(), dot(r, z)
    active = scale > 0
    for iteration in range(1, max_iterations + 1):
        ap = matvec(p)
        step = torch.where(active, rz / dot(p, ap).clamp_min(torch.finfo(torch.float64).tiny), 0.0)[:, None, None]
        x += step * p
        r -= step * ap
        active &= r.norm(dim=(1, 2)) > tolerance * scale
        if not active.any():
            return torch.where(seen, v, x), iteration
        z = precondition(r)
        rz_next = dot(r, z)
        p = z + torch.where(active, rz_next / rz, 0.0)[:, None, None] * p
        rz = rz_next
    worst = (r.norm(dim=(1, 2)) / scale.clamp_min(torch.finfo(torch.float64).tiny)).max().item()
    raise RuntimeError(f"conjugate gradients for a scattered mask did not reach a relative residual of {tolerance:g} "
                       f"in {max_iterations} iterations (worst row: {worst:.2g}); the system is too ill-conditioned "
                       "at this noise level: add a nugget, or observe whole frames")  # fmt: skip
