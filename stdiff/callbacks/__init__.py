"""stdiff's Lightning callbacks: truth-checking diagnostics, the held-out likelihood, the predict writer, checkpoints that
survive signals, the non-finite guard, and lighter versions of Lightning's EMA and progress bar."""

from stdiff.callbacks.diagnostics import GPDiagnostics
from stdiff.callbacks.ema import EMA
from stdiff.callbacks.likelihood import LikelihoodReport
from stdiff.callbacks.overfitting import BestCheckpoint
from stdiff.callbacks.progress import ProgressBar
from stdiff.callbacks.reliability import Checkpoint, NonFiniteError, NonFiniteGuard
from stdiff.callbacks.samples import SampleWriter
from stdiff.callbacks.throughput import Throughput

__all__ = [
    "EMA",
    "BestCheckpoint",
    "Checkpoint",
    "GPDiagnostics",
    "LikelihoodReport",
    "NonFiniteError",
    "NonFiniteGuard",
    "ProgressBar",
    "SampleWriter",
    "Throughput",
]
