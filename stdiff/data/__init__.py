"""Data modules: ``SequenceDataModule`` (the base: seeding, streaming, fixed sets, exact resume,
evaluation and predict loaders) and its subclasses, each supplying ``sample(n, generator)``."""

from stdiff.data.arrays import ArrayDataModule
from stdiff.data.base import SequenceDataModule
from stdiff.data.gp import GPDataModule, GPMixtureDataModule
from stdiff.data.loading import BatchStream, EpochSampler, ResumableLoader, Samples, draw_fixed, evaluation_set
from stdiff.data.video import MovingBall, trajectory_autocorrelation

DATA_MODULES: dict[str, type[SequenceDataModule]] = {
    cls.__name__: cls for cls in (GPDataModule, GPMixtureDataModule, MovingBall, ArrayDataModule)
}

__all__ = [
    "DATA_MODULES",
    "ArrayDataModule",
    "BatchStream",
    "EpochSampler",
    "GPDataModule",
    "GPMixtureDataModule",
    "MovingBall",
    "ResumableLoader",
    "Samples",
    "SequenceDataModule",
    "draw_fixed",
    "evaluation_set",
    "trajectory_autocorrelation",
]
