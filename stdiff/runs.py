"""Run directories and checkpoints, checked before a run starts.

Everything here runs before Lightning writes anything, so a bad checkpoint or an unwritable
output directory is reported with nothing created and no existing run touched.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

LAST = "last.ckpt"


class RunError(Exception):
    """A problem with the run's inputs or outputs (checkpoint, output directory) found before it starts."""


def claim_version(root: str | os.PathLike) -> int:
    """Create ``root/version_N`` for the smallest free N above every existing version and return N.

    ``os.mkdir`` either creates the directory or fails, atomically, so two runs started at the
    same moment in the same place never share a version directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def find_last_checkpoint(directories: list[Path]) -> Path | None:
    """The most recently written ``last.ckpt`` in ``directories`` (each a ``checkpoints`` folder or
    a folder of run directories holding one)."""
    found = []
    for d in directories:
        found += [d / LAST] if (d / LAST).is_file() else list(d.glob(f"*/checkpoints/{LAST}"))
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def load_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> dict:
    """A Lightning checkpoint as a dict, without executing pickled code when ``weights_only``;
    every failure a ``RunError`` that names the file and the cause."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise RunError(f"checkpoint {str(path)!r} is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except pickle.UnpicklingError as err:
        if weights_only and "weights_only" in str(err):
            raise RunError(
                f"checkpoint {str(path)!r} contains pickled objects other than tensors and plain data, and is "
                f"not loaded (it could run arbitrary code). If you trust its source, pass --weights_only=false. "
                f"({str(err).splitlines()[-1].strip() or err})"
            ) from None
        raise RunError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch checkpoint: {err}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise RunError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch checkpoint: {err}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RunError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict' in it)")
    return checkpoint


def check_compatible(checkpoint: dict, path: str | os.PathLike, model: torch.nn.Module) -> None:
    """Raise ``RunError`` when the checkpoint's weights do not fit ``model``: name the first
    missing, unexpected or differently shaped parameters, and the hyper-parameters that differ."""
    ours = model.state_dict()
    theirs = checkpoint["state_dict"]
    problems = [f"missing {k}" for k in ours if k not in theirs]
    problems += [f"unexpected {k}" for k in theirs if k not in ours]
    problems += [
        f"{k}: {tuple(theirs[k].shape)} in the checkpoint, {tuple(v.shape)} in this model"
        for k, v in ours.items()
        if k in theirs and hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    if not problems:
        return
    differing = _differences(checkpoint.get("hyper_parameters", {}), dict(getattr(model, "hparams", {})))
    hint = f" Settings that differ (checkpoint → now): {'; '.join(differing[:6])}." if differing else ""
    raise RunError(
        f"checkpoint {str(path)!r} was trained with another model configuration: {len(problems)} parameter(s) do "
        f"not fit, e.g. {'; '.join(problems[:3])}.{hint} Use the configuration the checkpoint was trained with "
        f"(its run directory holds config.yaml)."
    )


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _differences(stored: dict, current: dict) -> list[str]:
    a, b = _flatten(_plain(stored)), _flatten(_plain(current))
    return [f"{k}: {a.get(k, '-')} → {b.get(k, '-')}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def _plain(value):
    """Config values as plain data (jsonargparse Namespaces and lazy instances to dicts)."""
    if hasattr(value, "as_dict"):
        return _plain(value.as_dict())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "__name__", None) or repr(value)


def check_writable(directory: str | os.PathLike) -> None:
    """Raise ``RunError`` unless ``directory`` exists and is writable, or could be created."""
    directory = Path(directory).absolute()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"output directory {str(directory)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(
            f"output directory {str(directory)!r} is not writable (no write permission on {str(existing)!r})"
        )
