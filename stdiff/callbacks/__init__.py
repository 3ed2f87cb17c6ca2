"""stdiff's Lightning callbacks: truth-checking diagnostics, the predict writer, checkpoints that
survive signals, the non-finite guard, and lighter versions of Lightning's EMA and progress bar."""

from stdiff.callbacks.diagnostics import GPDiagnostics
from stdiff.callbacks.ema import EMA
from stdiff.callbacks.progress import ProgressBar
from stdiff.callbacks.reliability import Checkpoint, NonFiniteError, NonFiniteGuard
from stdiff.callbacks.samples import SampleWriter
from stdiff.callbacks.throughput import Throughput

__all__ = [
    "EMA",
    "Checkpoint",
    "GPDiagnostics",
    "NonFiniteError",
    "NonFiniteGuard",
    "ProgressBar",
    "SampleWriter",
    "Throughput",
]
