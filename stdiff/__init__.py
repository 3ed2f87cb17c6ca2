"""stdiff: diffusion transformers on spatial-temporal sequences, checked against exact GP truth."""

from stdiff.truth import GPMixture, KroneckerGP, Truth

__all__ = ["GPMixture", "KroneckerGP", "Truth"]
