"""The truths stdiff checks models against (``Truth``: the contract, ``base.py``), one concern a file:

- ``kronecker.py``: ``KroneckerGP``, a Gaussian with covariance Γ ⊗ Σ (+ τ² I), through its
  Kronecker eigenbasis;
- ``conditioning.py``: a ``KroneckerGP`` conditioned on some coordinates (denoiser with evidence,
  posterior, likelihood of the observed entries, posterior draws);
- ``mixture.py``: ``GPMixture``, a finite mixture of them;
- ``fitting.py``: Gaussian references fitted to data by maximum likelihood (plain PyTorch; the data
  module's glue is ``stdiff.data.reference``); ``gneiting.py``: a non-separable fit to compare with.
"""

from stdiff.truth.base import DENSE_LIMIT, Truth, flat_mask
from stdiff.truth.factors import MAX_CONDITION, grid
from stdiff.truth.kronecker import KroneckerGP
from stdiff.truth.mixture import GPMixture

TRUTHS: dict[str, type[Truth]] = {cls.__name__: cls for cls in (KroneckerGP, GPMixture)}

__all__ = ["DENSE_LIMIT", "MAX_CONDITION", "TRUTHS", "GPMixture", "KroneckerGP", "Truth", "flat_mask", "grid"]
