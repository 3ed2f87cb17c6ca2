"""Conditional generation: tasks as masks (``Forecast``, ``Interpolation``, ``Imputation``,
``MaskMixture``) and the methods that draw samples given the observed values (``Trained``,
``Replacement``, ``ReconstructionGuidance``). Plain PyTorch, no Lightning."""

from stdiff.conditioning.masks import MASKS, Forecast, Imputation, Interpolation, Mask, MaskMixture, check_mask
from stdiff.conditioning.methods import CONDITIONINGS, Conditioning, ReconstructionGuidance, Replacement, Trained

__all__ = [
    "CONDITIONINGS",
    "MASKS",
    "Conditioning",
    "Forecast",
    "Imputation",
    "Interpolation",
    "Mask",
    "MaskMixture",
    "ReconstructionGuidance",
    "Replacement",
    "Trained",
    "check_mask",
]
