"""Diffusion math around any network, and the noise models. Nothing here imports Lightning.

The common currency is the *noise model* (``NoiseModel``): ``model(x_t (B, T, *space), t (B,),
**cond) -> ε̂ (B, T, *space)``, with its ``schedule``. ``Denoiser`` wraps a backbone network and
converts whatever it predicts into ε̂; ``ExactDenoiser`` is the optimal ε̂ of GP data, from the true
score (or posterior, given observations); ``ResidualDenoiser`` is a Gaussian prior's exact ε̂ plus
a learned correction, zero at initialisation. Losses and samplers see only that contract and pass ``cond`` (observations, masks) through
unchanged, as k-diffusion does.
"""

from stdiff.diffusion.denoisers import (
    NOISE_MODELS,
    Denoiser,
    ExactDenoiser,
    NoiseModel,
    ResidualDenoiser,
    Shared,
    data_moments,
    exact_noise,
)
from stdiff.diffusion.process import (
    PARAMETERIZATIONS,
    TIME_SAMPLING,
    WEIGHTINGS,
    DataPrediction,
    NoisePrediction,
    Parameterization,
    ScorePrediction,
    VelocityPrediction,
    convert,
    denoising_loss,
    denoising_loss_floor,
    diffuse,
    get_parameterization,
    loss_weight,
    per_sample,
    times_from_uniform,
    training_times,
)

__all__ = [
    "NOISE_MODELS",
    "PARAMETERIZATIONS",
    "TIME_SAMPLING",
    "WEIGHTINGS",
    "DataPrediction",
    "Denoiser",
    "ExactDenoiser",
    "NoiseModel",
    "NoisePrediction",
    "Parameterization",
    "ResidualDenoiser",
    "ScorePrediction",
    "Shared",
    "VelocityPrediction",
    "convert",
    "data_moments",
    "denoising_loss",
    "denoising_loss_floor",
    "diffuse",
    "exact_noise",
    "get_parameterization",
    "loss_weight",
    "per_sample",
    "times_from_uniform",
    "training_times",
]
