"""Noise schedules. Every implementation is imported here and listed in ``SCHEDULES``."""

from stdiff._validation import lookup
from stdiff.schedules.base import NoiseSchedule
from stdiff.schedules.vp import OrnsteinUhlenbeck

SCHEDULES: dict[str, type[NoiseSchedule]] = {cls.__name__: cls for cls in (OrnsteinUhlenbeck,)}


def get_schedule(name: str) -> type[NoiseSchedule]:
    """The schedule class registered as ``name``; an unknown name lists the valid ones."""
    return lookup("schedule", SCHEDULES, name)


__all__ = ["SCHEDULES", "NoiseSchedule", "OrnsteinUhlenbeck", "get_schedule"]
