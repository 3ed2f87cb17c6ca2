"""The fitted Gaussian reference of an ``ArrayDataModule``: the data module's windows handed to the
fits of ``stdiff.truth.fitting``, the report printed and kept."""

from __future__ import annotations

import warnings

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from stdiff.kernels import RBF, Kernel, Matern
from stdiff.truth import KroneckerGP
from stdiff.truth.fitting import FitWarning, fit_kernels, flip_flop, format_report, held_out_note, held_out_warning


def fit_reference(data, method: str, temporal: Kernel | None, spatial: Kernel | None, max_windows: int = 2048,
                  steps: int = 500, nugget: bool = False) -> KroneckerGP:  # fmt: skip
    """The reference of an ``ArrayDataModule``: ``method`` (``kernels`` or ``flip_flop``) fitted to
    up to ``max_windows`` training windows (evenly spaced; missing values allowed), checked on the
    validation windows (the test split stays unseen until ``stdiff test``); the report is printed
    and kept as ``data.reference_report``, with a warning when the held-out fit is much worse
    (``held_out_warning``)."""
    train = spread_windows(data.training_set(), max_windows)
    held_out = spread_windows(data.evaluation_samples("val"), max_windows) if len(data.index["val"]) else None
    if len(train) < 2:
        raise ValueError(f"ArrayDataModule.reference: {len(train)} training window(s) with an observed value; "
                         "a reference needs at least 2")  # fmt: skip
    std = train[~train.isnan()].std().item() if (~train.isnan()).sum() > 1 else 0.0
    if not std > 0:
        raise ValueError("ArrayDataModule.reference: the training windows are constant (standard deviation 0); "
                         "a Gaussian reference needs data that varies")  # fmt: skip
    if method == "kernels":
        temporal = temporal if temporal is not None else Matern(4.0, 1.5)
        spatial = spatial if spatial is not None else RBF(1.0)
        gp, report = fit_kernels(train, temporal, spatial, data.space_shape, steps=steps, held_out=held_out,
                                 nugget=nugget, coordinates=data.coordinates)  # fmt: skip
    elif method == "flip_flop":
        gp, report = flip_flop(train, data.space_shape, held_out=held_out)
    else:
        raise ValueError(f"reference must be 'none', 'kernels' or 'flip_flop', got {method!r}")
    data.reference_report = report
    rank_zero_info(format_report(report))
    note = held_out_note(report)
    if note is not None:
        rank_zero_info(note)
    warning = held_out_warning(report)
    if warning is not None:
        warnings.warn(warning, FitWarning, stacklevel=2)
    return gp


def spread_windows(windows, limit: int) -> Tensor:
    """Up to ``limit`` evenly spaced windows with at least one observed value, stacked."""
    if isinstance(windows, Tensor):
        rows = windows
    else:
        picks = torch.linspace(0, len(windows) - 1, min(limit, len(windows))).round().long().unique().tolist()
        rows = torch.stack([windows[i] for i in picks])
    rows = rows[~rows.flatten(1).isnan().all(1)]
    return rows[torch.linspace(0, len(rows) - 1, min(limit, len(rows))).round().long().unique()] if len(rows) else rows
