"""Files a later run reads (checkpoints, ``metrics.json``, samples) written whole or not at all.

Each is written to a temporary file beside its target, flushed to disk and renamed over it: a
rename within one directory is atomic, so a write cut short (a full disk, a kill, a crash) leaves
the previous file as it was and no half-written one. Lightning's own checkpoint writer stages the
file in ``$TMPDIR`` and moves it; when ``$TMPDIR`` lies on another filesystem the move is a copy
that truncates the previous checkpoint first, and a full disk then leaves neither
(``AtomicCheckpointIO`` replaces it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

TEMPORARY = ".{name}.{pid}.tmp"  # beside the target: hidden, and named after the process writing it


class WriteError(OSError):
    """A file could not be written; the message names it and says what was kept."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (``mode``: ``"wb"`` or ``"w"``); when the
    block ends without error it is flushed to disk and renamed to ``path``. On any failure the
    temporary file is removed and ``path`` is left as it was; an ``OSError`` (a full disk, a file
    too large) becomes a ``WriteError`` that names ``path`` and says so."""
    path = Path(path)
    temporary = path.with_name(TEMPORARY.format(name=path.name, pid=os.getpid()))
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    try:
        with open(temporary, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the file: a crash leaves old or new
        os.replace(temporary, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(err.errno, f"cannot write {path}: {err.strerror or err} ({kept})") from err
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """The rename itself on disk (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` writing local checkpoints through ``atomic_write`` (and
    without its in-memory copy of the whole checkpoint); remote paths (``s3://``…) go to Lightning's."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            torch.save(checkpoint, f)
