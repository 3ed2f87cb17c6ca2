"""stdiff's Lightning callbacks: truth-checking diagnostics and the predict writer. EMA,
checkpoints, progress bars and throughput come from Lightning itself."""

from stdiff.callbacks.diagnostics import GPDiagnostics
from stdiff.callbacks.samples import SampleWriter
from stdiff.callbacks.throughput import Throughput

__all__ = ["GPDiagnostics", "SampleWriter", "Throughput"]
