"""stdiff's Lightning callbacks: truth-checking diagnostics, the predict writer, checkpoints that
survive signals, the non-finite guard, a faster EMA of the weights. Progress bars come from Lightning."""

from stdiff.callbacks.diagnostics import GPDiagnostics
from stdiff.callbacks.ema import EMA
from stdiff.callbacks.reliability import Checkpoint, NonFiniteError, NonFiniteGuard
from stdiff.callbacks.samples import SampleWriter
from stdiff.callbacks.throughput import Throughput

__all__ = ["EMA", "Checkpoint", "GPDiagnostics", "NonFiniteError", "NonFiniteGuard", "SampleWriter", "Throughput"]
