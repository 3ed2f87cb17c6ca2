"""stdiff: diffusion transformers on spatial-temporal sequences, checked against exact GP truth."""

from stdiff.gp import KroneckerGP

__all__ = ["KroneckerGP"]
