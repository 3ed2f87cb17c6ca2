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


def innermost_message(err: BaseException) -> str:
    """The message of the original error under jsonargparse's wrappers ("Does not validate...")."""
    while (inner := err.__cause__ or err.__context__) is not None and isinstance(inner, ValueError):
        err = inner
    return str(err)


# --- before a run ------------------------------------------------------------------------------------


def preflight(subcommand: str, trainer, model, datamodule, kwargs: dict) -> None:
    """Checks that need the instantiated classes, done before anything is written: the checkpoint
    (found, loadable without running pickled code, fits the model), the request itself, the output
    directory. Then the run directory is claimed. Updates ``kwargs`` (the subcommand's arguments:
    ``ckpt_path`` resolved, ``weights_only`` defaulted to True)."""
    from lightning.pytorch.cli import SaveConfigCallback
    from lightning.pytorch.utilities import rank_zero_info
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if kwargs.get("weights_only") is None:
        kwargs["weights_only"] = True  # torch < 2.6 would otherwise unpickle arbitrary objects
    logger = trainer.logger
    version = None
    ckpt_path = kwargs.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = kwargs["ckpt_path"] = _find_last(trainer)
        if ckpt_path is None:
            rank_zero_info("--ckpt_path last: no checkpoint yet, starting a new run")
        elif logger is not None and Path(ckpt_path).parent.name == "checkpoints":
            version = Path(ckpt_path).parents[1].name  # continue in the run directory it came from
            rank_zero_info(f"--ckpt_path last: resuming from {ckpt_path}")
    if ckpt_path not in (None, "best", "hpc", "registry") and not str(ckpt_path).startswith("registry:"):
        checkpoint = load_checkpoint(ckpt_path, kwargs["weights_only"])
        model.on_load_checkpoint(checkpoint)  # the sample shape, named first
        check_compatible(checkpoint, ckpt_path, model)
        if version is not None:  # the run's config.yaml stays; this run's settings go beside it
            for cb in trainer.callbacks:
                if isinstance(cb, SaveConfigCallback):
                    cb.config_filename = f"config.resumed_step{checkpoint.get('global_step', 0)}.yaml"
    if subcommand == "fit":
        if not model.trainable:
            raise RunError(
                f"model.denoiser={type(model.denoiser).__name__} has nothing to train: use it with validate, test or "
                "predict"
            )
        model.configure_optimizers()  # a bad optimizer setting fails now, not after set-up
    if subcommand == "predict":
        if ckpt_path is None and model.trainable:
            raise RunError(
                "predict needs a trained model: pass --ckpt_path <file>.ckpt (or --ckpt_path last), or "
                "--model.denoiser=ExactDenoiser for the exact model"
            )
        if datamodule.num_predict == 0:
            raise RunError(
                "predict needs a number of samples: set data.init_args.num_predict (e.g. "
                "--data.init_args.num_predict=1000)"
            )
    if model.denoiser.needs_truth and datamodule.truth is None:
        raise RunError(f"model.denoiser={type(model.denoiser).__name__} needs data whose exact distribution is known "
                       f"(a data module with a `truth`, such as GPDataModule); {type(datamodule).__name__} has none")  # fmt: skip
    out = getattr(logger, "root_dir", None) or trainer.default_root_dir
    check_writable(out)
    if hasattr(logger, "_version") and getattr(logger, "_version", None) is None:
        # Claimed atomically on rank 0 (other ranks take rank 0's log directory from Lightning's
        # broadcast): concurrent runs never share a version directory.
        if version is not None:
            logger._version = version if not version.startswith("version_") else int(version[8:])
        elif rank_zero_only.rank == 0:
            logger._version = claim_version(logger.root_dir)


def _find_last(trainer) -> str | None:
    places = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    logger = trainer.logger
    if logger is not None and getattr(logger, "root_dir", None):
        places.append(Path(logger.root_dir))
    places.append(Path(trainer.default_root_dir) / "checkpoints")
    found = find_last_checkpoint(places)
    return None if found is None else str(found)
