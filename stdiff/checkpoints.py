"""A checkpoint against the run about to use it: loadable without running pickled code, weights
that fit the model, settings that give them the same meaning, and the data they were trained on
(``stdiff_data``, stored by ``DiffusionModule.on_save_checkpoint``)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch


class RunError(Exception):
    """A problem with the run's inputs or outputs (checkpoint, output directory) found before it starts."""


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
    differing = _differences(checkpoint.get("hyper_parameters", {}), dict(getattr(model, "hparams", {})))
    if not problems:
        _check_settings(checkpoint.get("hyper_parameters", {}), dict(getattr(model, "hparams", {})), path)
        return
    hint = f" Settings that differ (checkpoint → now): {'; '.join(differing[:6])}." if differing else ""
    raise RunError(
        f"checkpoint {str(path)!r} was trained with another model configuration: {len(problems)} parameter(s) do "
        f"not fit, e.g. {'; '.join(problems[:3])}.{hint} Use the configuration the checkpoint was trained with "
        f"(its run directory holds config.yaml)."
    )


# Settings that give the weights their meaning: a checkpoint trained under other values is refused.
# The rest (sampler, optimizer, loss weighting, conditioning method…) only warn: they change how the
# weights are used or trained from here on, not what they are.
MEANINGFUL = ("sample_shape", "denoiser", "mask")


def _check_settings(stored: dict, current: dict, path) -> None:
    if not stored or not current:
        return  # a checkpoint without settings (written outside the CLI): nothing to compare
    a, b = _flatten(_plain(stored)), _flatten(_plain(current))
    differ = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) and not k.startswith("_")]
    # The schedule's range only moves where training and sampling start and stop: warned, not refused.
    refused = [k for k in differ if k.split(".")[0] in MEANINGFUL and not k.endswith((".t_min", ".t_max"))]
    if refused:
        listed = "; ".join(f"{k}: {a.get(k, '-')} in the checkpoint, {b.get(k, '-')} now" for k in refused[:6])
        raise RunError(f"checkpoint {str(path)!r} was trained with other settings that change what its weights mean: "
                       f"{listed}. Use the settings it was trained with (its run directory holds config.yaml).")  # fmt: skip
    if differ:
        from stdiff._validation import warn

        listed = "; ".join(f"{k}: {a.get(k, '-')} → {b.get(k, '-')}" for k in differ[:6])
        warn(f"checkpoint {str(path)!r}: settings differ from those it was trained with ({listed}); "
             "used as configured now")  # fmt: skip


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


def data_settings(data_config) -> dict:
    """What a checkpoint records of its data (``stdiff_data``): the data module's class and every
    argument of it that shapes the distribution (kernels, shapes, mean, jitter; files, frames,
    normalisation, reference), as plain data. The base's arguments (batch size, seed, set sizes,
    workers, task, observations) only say how the data is served, and are left out."""
    import inspect

    from stdiff.data import SequenceDataModule

    plain = _plain(data_config) or {}
    serving = set(inspect.signature(SequenceDataModule.__init__).parameters) - {"self"}
    init_args = {k: v for k, v in (plain.get("init_args") or {}).items() if k not in serving}
    return {"class_path": plain.get("class_path"), "init_args": init_args}


def check_same_data(checkpoint: dict, path, current: dict) -> None:
    """Raise ``RunError`` when the checkpoint was trained on data other than ``current``
    (``data_settings``), naming what differs; a checkpoint written before stdiff stored its data
    is let through."""
    stored = checkpoint.get("stdiff_data")
    if not stored:
        return
    differ = _spec_differences(stored, current, "data")
    if not differ:
        return
    listed = "; ".join(f"{k}: {a} in the checkpoint, {b} now" for k, a, b in differ[:6])
    run = Path(path).absolute().parents[1] / "config.yaml"
    raise RunError(f"checkpoint {str(path)!r} was trained on other data: {listed}. Use the data it was trained with "
                   f"(--config {run}), or pass --allow_other_data=true to use it on this data on purpose.")  # fmt: skip


def _spec_differences(a, b, key: str) -> list[tuple[str, str, str]]:
    """(key, value in a, value in b) where two plain configurations differ; a class replaced by
    another is one difference, written ``Class(arg=value, …)``."""
    if isinstance(a, dict) and isinstance(b, dict):
        if "class_path" in a and "class_path" in b and a["class_path"] != b["class_path"]:
            return [(key, _spec(a), _spec(b))]
        out = []
        for k in sorted(a.keys() | b.keys()):
            out += _spec_differences(a.get(k, "-"), b.get(k, "-"), f"{key}.{k}")
        return out
    return [] if a == b else [(key, _spec(a), _spec(b))]


def _spec(value) -> str:
    if isinstance(value, dict) and "class_path" in value:
        args = ", ".join(f"{k}={_spec(v)}" for k, v in (value.get("init_args") or {}).items())
        return f"{str(value['class_path']).rsplit('.', 1)[-1]}({args})"
    return repr(value) if isinstance(value, str) and value != "-" else str(value)
