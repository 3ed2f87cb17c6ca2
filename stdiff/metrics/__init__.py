"""How far a model is from the truth: distances of samples to the true GP (plain functions) and
torchmetrics ``Metric``s that accumulate them across batches and DDP ranks."""

from stdiff.metrics.attention import attention_alignment, frame_attention, temporal_map
from stdiff.metrics.conditional import conditional_report, crps, energy_score, posterior_samples
from stdiff.metrics.distances import (
    correlation_by_lag,
    early_stopping_kl,
    early_stopping_t_min,
    factor_covariances,
    gaussian_fit_kl,
    gaussian_fit_kl_floor,
    gaussian_kl,
    gaussian_w2,
    ks_normal,
    pushforward_kl,
    sample_statistics,
    whiten,
)
from stdiff.metrics.mixture import missing_kl_note, sample_distances
from stdiff.metrics.reports import (
    attention_by_component,
    attention_report,
    early_stopping_report,
    exact_model_floor,
    planned_endpoint,
    random_init_copy,
    sample_report,
    sampler_floor,
    score_error_terms,
)
from stdiff.metrics.tracking import SampleDistance, ScoreError

__all__ = [
    "SampleDistance",
    "ScoreError",
    "attention_alignment",
    "attention_by_component",
    "attention_report",
    "conditional_report",
    "correlation_by_lag",
    "crps",
    "early_stopping_kl",
    "early_stopping_report",
    "early_stopping_t_min",
    "energy_score",
    "exact_model_floor",
    "factor_covariances",
    "frame_attention",
    "gaussian_fit_kl",
    "gaussian_fit_kl_floor",
    "gaussian_kl",
    "gaussian_w2",
    "ks_normal",
    "missing_kl_note",
    "planned_endpoint",
    "posterior_samples",
    "pushforward_kl",
    "random_init_copy",
    "sample_distances",
    "sample_report",
    "sample_statistics",
    "sampler_floor",
    "score_error_terms",
    "temporal_map",
    "whiten",
]
