"""Boundary checks shared by every plug-in: errors name the parameter, its value and what is allowed."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import warnings
from collections.abc import Iterable
from pathlib import Path


class StdiffWarning(UserWarning):
    """A warning of stdiff's own: the ``stdiff`` command prints it as ``stdiff: warning: …``, not
    under the file and line of the library code that happened to call the code that raised it."""


def warn(message: str) -> None:
    """Warn once per process group (rank 0), as a ``StdiffWarning``."""
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(message, category=StdiffWarning)


_PYTHON_FORMAT = warnings.formatwarning  # Python's own, for every other warning


def format_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the ``stdiff`` command: stdiff's own warnings as plain lines."""
    if issubclass(category, StdiffWarning):
        return f"stdiff: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


def check_positive(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number > 0, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = True) -> float:
    """Return ``value`` if it lies in ``(low, high]`` (or ``[low, high]`` when ``low_open=False``)."""
    inside = (value > low if low_open else value >= low) and value <= high
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not inside:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def check_int(name: str, value: int, minimum: int) -> int:
    """Return ``value`` if it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """Message for an unknown registry name: lists the valid names and the closest match."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if not close:  # case-insensitive second try: "rbf" -> "RBF"
        lowered = {v.lower(): v for v in valid}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid {kind} names: {', '.join(valid)}"


def lookup(kind: str, registry: dict, name: str):
    """``registry[name]`` with a helpful ``ValueError`` for unknown names."""
    if name not in registry:
        raise ValueError(unknown_name_message(kind, name, registry))
    return registry[name]


def init_repr(obj) -> str:
    """``ClassName(arg=value, ...)`` from the ``__init__`` parameters stored as attributes, so
    error messages name a plug-in's exact configuration."""
    names = [p for p in inspect.signature(type(obj).__init__).parameters if p not in ("self", "args", "kwargs")]
    args = ", ".join(f"{n}={getattr(obj, n)!r}" for n in names if hasattr(obj, n))
    return f"{type(obj).__name__}({args})"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation, or None if unknown: the machine's
    (``MemAvailable`` on Linux), or less where this process is limited: its cgroup's ``memory.max``
    (a container, a scheduler's job) or its address-space limit (``ulimit -v``)."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(OSError, ValueError):  # cgroup v2: the limit less what the group uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    with contextlib.suppress(OSError, ValueError, ImportError, StopIteration):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            status = Path("/proc/self/status").read_text().splitlines()
            size = next(int(x.split()[1]) * 1024 for x in status if x.startswith("VmSize:"))
            found.append(soft - size)
    return max(min(found), 0) if found else None


def check_memory(what: str, parts: dict[str, float], advice: str) -> None:
    """Refuse, before allocating, a set-up whose ``parts`` (name -> bytes) need more than half the
    memory available (the other half is the model's, the optimizer's and the libraries'): the
    message gives the estimate, part by part, and what to change."""
    needed, available = sum(parts.values()), available_memory()
    if available is None or needed <= available / 2:
        return
    listed = ", ".join(f"{name}: {format_bytes(b)}" for name, b in parts.items())
    raise ValueError(f"{what} needs about {format_bytes(needed)} of memory ({listed}), more than half of the "
                     f"{format_bytes(available)} available: {advice}")  # fmt: skip


def check_disk_space(needed: float, directory, writes: str, advice: str, error: type[Exception] = OSError) -> None:
    """Refuse to write ``needed`` bytes (``writes``: "predict would write … of samples") into
    ``directory`` (or, not made yet, the folder it would be made in) where they need more than
    95 % of its disk's free space; the message gives both figures and ``advice``."""
    import shutil
    from pathlib import Path

    existing = Path(directory).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > 0.95 * free:
        raise error(writes.format(size=format_bytes(needed)) + f" to {directory}, whose disk has {format_bytes(free)} free: {advice}")


def format_bytes(b: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} bytes"
