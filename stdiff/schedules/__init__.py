"""Noise schedules. Every implementation is imported here and listed in ``SCHEDULES``."""

from stdiff._validation import lookup
from stdiff.schedules.base import NoiseSchedule, VPSchedule
from stdiff.schedules.discrete import DiscreteBeta
from stdiff.schedules.vp import Cosine, LinearBeta, OrnsteinUhlenbeck, SigmoidLogSNR

SCHEDULES: dict[str, type[NoiseSchedule]] = {
    cls.__name__: cls for cls in (OrnsteinUhlenbeck, LinearBeta, Cosine, SigmoidLogSNR, DiscreteBeta)
}


def get_schedule(name: str) -> type[NoiseSchedule]:
    """The schedule class registered as ``name``; an unknown name lists the valid ones."""
    return lookup("schedule", SCHEDULES, name)


__all__ = [
    "SCHEDULES",
    "Cosine",
    "DiscreteBeta",
    "LinearBeta",
    "NoiseSchedule",
    "OrnsteinUhlenbeck",
    "SigmoidLogSNR",
    "VPSchedule",
    "get_schedule",
]
