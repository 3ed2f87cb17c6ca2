"""Cost of exact GP sampling and of the exact score: Kronecker factors against dense algebra.

    python -m stdiff.bench gp_sampler [--frames 64] [--points 64] [--batch 256] [--repeats 5]

Dense baselines form the (T·S) × (T·S) covariance K = Γ ⊗ Σ: sampling is L z with the Cholesky
factor L of K; the score is a solve with α²K + σ²I (one Cholesky per noise level; here a whole
batch shares one level, the dense method's best case, while the Kronecker path gives every sample
its own). Both sample in float32; all factorisations and solves are float64. Prints one JSON line.
"""

import argparse
import json
import statistics
import time

import torch

from stdiff.kernels import RBF, PoweredExponential
from stdiff.truth import KroneckerGP


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    n, d = args.batch, args.frames * args.points
    torch.manual_seed(0)

    def build():
        return KroneckerGP(
            PoweredExponential(8.0, 1.0), RBF(2.0), frames=args.frames, space_shape=(args.points,), jitter=1e-8
        )

    gp = build()
    k = gp.covariance()

    def dense_factor():
        return torch.linalg.cholesky(k)

    setup_kron, setup_dense = timed(build, args.repeats), timed(dense_factor, max(1, args.repeats // 2))
    chol = dense_factor().float()

    def dense_sample():
        return (chol @ torch.randn(d, n)).T

    sample_kron = timed(lambda: gp.sample(n), args.repeats)
    sample_dense = timed(dense_sample, args.repeats)
    # Both samplers spend part of their time drawing the same n·d normals; this is that part.
    rng_only = timed(lambda: torch.randn(d, n), args.repeats)

    x = gp.sample(n).double()
    alpha = torch.rand(n, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()

    def dense_score():  # one shared noise level for the whole batch: a single factorisation
        a = alpha[0] ** 2 * k + sigma[0] ** 2 * torch.eye(d, dtype=torch.float64)
        return -torch.cholesky_solve(x.reshape(n, d).T, torch.linalg.cholesky(a)).T

    score_kron = timed(lambda: gp.score(x, alpha, sigma), args.repeats)
    score_dense = timed(dense_score, max(1, args.repeats // 2))

    # Check the fast path against the dense one at the shared noise level before reporting speed.
    rel = ((gp.score(x, alpha[0], sigma[0]).reshape(n, d) - dense_score()).norm() / dense_score().norm()).item()
    report = {
        "T": args.frames,
        "S": args.points,
        "dim": d,
        "batch": n,
        "threads": torch.get_num_threads(),
        "setup_s": {"kronecker_eigh": setup_kron, "dense_cholesky": setup_dense},
        "samples_per_s": {"kronecker": n / sample_kron, "dense": n / sample_dense},
        "sampling_speedup": sample_dense / sample_kron,
        "sampling_speedup_excluding_rng": (sample_dense - rng_only) / (sample_kron - rng_only),
        "score_batch_s": {"kronecker_per_sample_noise": score_kron, "dense_shared_noise": score_dense},
        "score_speedup": score_dense / score_kron,
        "score_relative_difference": rel,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
