"""``ArrayDataModule``: your own sequences on disk as training data, in windows of T frames.

Files hold ``(N, T_total, *space)`` arrays (N series of T_total frames; a 2-D ``(T_total, S)`` is one
series), read in place (``stdiff.data.files``). Each series' time axis is split into consecutive
train / validation / test segments (``split``), and windows of ``frames`` frames, ``stride`` apart,
are cut inside each segment only, so no window of one split overlaps another. Statistics for
standardisation come from the training windows alone (stored in checkpoints, undone on predict).
NaN entries are missing: left out of the loss and of every fit (the reference's likelihood is that
of the observed entries), never scored, and usable as the missing part of a task.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from stdiff._validation import StdiffWarning, check_int
from stdiff.conditioning import check_mask
from stdiff.data.base import SequenceDataModule
from stdiff.data.files import ArrayFileError, check_file, check_values, npy_header, open_array
from stdiff.kernels import Kernel, check_coordinates
from stdiff.seeding import PREDICT, generator


class Windows(Dataset):
    """Windows ``(T, *space)`` at ``index`` rows ``(file, series, start)``, standardised."""

    def __init__(self, readers: list, index: np.ndarray, frames: int, mean: Tensor, std: Tensor) -> None:
        self.readers, self.index, self.frames, self.mean, self.std = readers, index, frames, mean, std

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tensor:
        f, n, start = (int(v) for v in self.index[i])
        x = torch.from_numpy(self.readers[f].read(n, start, start + self.frames))  # checked at construction
        return (x - self.mean) / self.std


class ArrayDataModule(SequenceDataModule):
    """Windows of ``frames`` frames cut from arrays on disk (module docstring).

    Args:
        paths: ``.npy``, uncompressed ``.npz``, ``.nc`` or ``.zarr`` files (or one path), each
            ``(N, T_total, *space)``; all must share ``*space``.
        frames: T, the window length.
        stride: frames between consecutive window starts (default: ``frames``, no overlap).
        split: fractions of each series' frames for training, validation and test, in time order.
        normalize: standardise ``point``-wise (each spatial coordinate by its own mean and
            standard deviation), ``global``-ly, or ``none``; statistics of the training windows.
        key: the array inside an ``.npz`` or the variable of a NetCDF / Zarr file.
        train_stride: frames between consecutive training window starts (default: ``stride``);
            1 trains on every offset, the cheapest augmentation of a small data set (validation and
            test windows keep ``stride``).
        train_fraction: the share of each series' training windows trained on, its last ones (next
            to validation; at least one); validation and test are unchanged. Less data on purpose: how a
            model does as the data grows (``python -m stdiff.bench data_sizes``). The reference is
            fitted to the same share.
        reference: fit a separable Gaussian Γ ⊗ Σ (+ τ² I) to the training windows and score every
            run against it (``truth``, a fitted reference, not the data's true law): ``kernels``
            (the hyperparameters of ``reference_temporal`` and ``reference_spatial`` by maximum
            likelihood) or ``flip_flop`` (free-form Γ and Σ); ``none`` for no reference. Missing
            values are allowed (EM on the observed entries).
        reference_temporal, reference_spatial: the kernels whose hyperparameters ``reference:
            kernels`` fits (default Matern(4, 1.5) and RBF(1)).
        reference_nugget: fit a noise variance τ² on every coordinate too (``kernels`` only).
        reference_steps: the most L-BFGS iterations of the kernel fit; a fit that stops short warns.
        coordinates: positions of the spatial points, ``(S, k)``: a ``.npy`` or ``.csv`` / ``.txt``
            file (one row per point, comma- or space-separated) or a list of rows. The reference's
            spatial kernel is evaluated on them (distances in their units) instead of the grid.
        **kwargs: the base's ``batch_size``, ``num_val`` (the most validation / test windows),
            ``seed``, ``num_workers``, ``num_predict``, ``task``, ``observed`` (a file, or ``test`` /
            ``val``: that split's windows, recorded in ``samples.json``).
    """

    def __init__(
        self,
        paths: str | list[str],
        frames: int = 32,
        stride: int | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        normalize: Literal["point", "global", "none"] = "point",
        key: str | None = None,
        train_stride: int | None = None,
        reference: Literal["none", "kernels", "flip_flop"] = "none",
        reference_temporal: Kernel | None = None,
        reference_spatial: Kernel | None = None,
        reference_nugget: bool = False,
        reference_steps: int = 500,
        coordinates: str | list[list[float]] | None = None,
        train_fraction: float = 1.0,
        **kwargs,
    ) -> None:
        if kwargs.get("num_train") is not None:
            raise ValueError("ArrayDataModule: the training set is every training window; num_train cannot be set")
        super().__init__(**kwargs)
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.frames = check_int("frames", frames, 2)
        self.stride = check_int("stride", self.frames if stride is None else stride, 1)
        self.train_stride = check_int("train_stride", self.stride if train_stride is None else train_stride, 1)
        if len(split) != 3 or any(not 0 <= f for f in split) or not 0.999 < sum(split) < 1.001 or split[0] <= 0:
            raise ValueError(f"split must be 3 fractions (train, val, test) >= 0 summing to 1, train > 0; got {split}")
        if normalize not in ("point", "global", "none"):
            raise ValueError(f"normalize must be 'point', 'global' or 'none', got {normalize!r}")
        if reference not in ("none", "kernels", "flip_flop"):
            raise ValueError(f"reference must be 'none', 'kernels' or 'flip_flop', got {reference!r}")
        self.split, self.normalize_mode, self.reference = tuple(split), normalize, reference
        if not (isinstance(train_fraction, (int, float)) and 0 < train_fraction <= 1):
            raise ValueError(f"train_fraction must be a number in (0, 1], got {train_fraction!r}")
        self.train_fraction = float(train_fraction)
        self.temporal, self.spatial = reference_temporal, reference_spatial
        self.reference_nugget, self.reference_steps = bool(reference_nugget), check_int("reference_steps", reference_steps, 1)
        self.readers = [open_array(p, key) for p in self.paths]
        space = {tuple(r.shape[2:]) for r in self.readers}
        if len(space) > 1:
            shapes = ", ".join(f"{p}: {r.shape}" for p, r in zip(self.paths, self.readers))
            raise ArrayFileError(f"{self.paths[0]}: the files disagree on the spatial shape ({shapes})")
        for path, r in zip(self.paths, self.readers):
            if len(r.shape) not in (3, 4):
                raise ArrayFileError(f"{path}: has {len(r.shape)} axes {r.shape}; expected (N, T_total, S), "
                                     "(N, T_total, H, W) or one series (T_total, S)")  # fmt: skip
            if 0 in r.shape:
                raise ArrayFileError(f"{path}: holds no data: its shape {r.shape} (N series, T_total frames, *space) "
                                     "has a zero")  # fmt: skip
        self.space_shape = next(iter(space))
        self.coordinates = None if coordinates is None else read_coordinates(coordinates, self.space_shape)
        if self.coordinates is not None and reference == "kernels" and not self.reference_nugget:
            check_coordinates(self.coordinates, f"coordinates: {coordinates if isinstance(coordinates, str) else 'rows'}",
                              "set data.init_args.reference_nugget=true (a noise variance on every coordinate makes "
                              "the reference's covariance positive definite)")  # fmt: skip
        self.index = {name: self._windows(i) for i, name in enumerate(("train", "val", "test"))}
        self.num_train = len(self.index["train"])
        if self.num_train == 0:
            raise ArrayFileError(f"{self.paths[0]}: no training window of T={self.frames} frames (the files hold "
                                 f"{sum(r.shape[0] for r in self.readers)} series)")  # fmt: skip
        self.mean, self.std = self._statistics()
        for stage in ("val", "test"):  # every window a run will read is checked now, before anything starts
            for f, n, start in self.evaluation_rows(stage) if len(self.index[stage]) else []:
                read_checked(self.readers[f], int(n), int(start), int(start) + self.frames)
        for name, part in (("validation", "val"), ("test", "test")):
            count = len(self.index[part])
            if 0 < count < 5:
                warnings.warn(f"ArrayDataModule: the split {list(self.split)} leaves {count} {name} window(s) of "
                              f"T={self.frames}: metrics on so few are noise. Give that split more frames, a smaller "
                              "stride, or more series", StdiffWarning, stacklevel=2)  # fmt: skip
        self._truth = None

    # --- windows and statistics ----------------------------------------------------------------

    def _windows(self, part: int) -> np.ndarray:
        """Rows ``(file, series, start)`` of the windows inside split ``part`` of every series."""
        rows = []
        for f, (path, r) in enumerate(zip(self.paths, self.readers)):
            total = r.shape[1]
            bounds = np.round(np.cumsum([0, *self.split]) * total).astype(int)
            lo, hi = bounds[part], bounds[part + 1]
            if self.split[part] > 0 and hi - lo < self.frames:
                name = ("training", "validation", "test")[part]
                raise ArrayFileError(
                    f"{path}: too few frames for windows of T={self.frames}: its {total} frames give a {name} segment "
                    f"of {hi - lo} (data.init_args.split {list(self.split)} cuts every series in time, the first "
                    f"{self.split[0]:g} for training). Give series of at least {self._frames_needed()} frames, "
                    f"data.init_args.frames={self._longest_window(total)} or fewer, or another split")  # fmt: skip
            starts = list(range(lo, hi - self.frames + 1, self.train_stride if part == 0 else self.stride))
            if part == 0 and self.train_fraction < 1:  # the last share of each series' training windows
                starts = starts[len(starts) - max(1, round(self.train_fraction * len(starts))) :]
            rows += [(f, n, s) for n in range(r.shape[0]) for s in starts]
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    def _segments(self, total: int) -> list[int]:
        """Frames of each split part (training, validation, test) of a series of ``total`` frames."""
        bounds = np.round(np.cumsum([0, *self.split]) * total).astype(int)
        return [int(bounds[i + 1] - bounds[i]) for i in range(3)]

    def _frames_needed(self) -> int:
        """The shortest series whose every split part (of those above 0) holds one window."""
        total = self.frames
        while any(f < self.frames for f, share in zip(self._segments(total), self.split) if share > 0):
            total += 1
        return total

    def _longest_window(self, total: int) -> int:
        """The longest window every split part (of those above 0) of ``total`` frames holds."""
        return min(f for f, share in zip(self._segments(total), self.split) if share > 0)

    def _statistics(self) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation ``(*space)`` over the training segments (NaN ignored), read
        in chunks of frames; refuses a window that is entirely missing."""
        total = torch.zeros(self.space_shape, dtype=torch.float64)
        square, count = torch.zeros_like(total), torch.zeros_like(total)
        for f, n, start in self.index["train"]:
            x = torch.from_numpy(read_checked(self.readers[f], int(n), int(start), int(start) + self.frames)).double()
            seen = ~x.isnan()
            if not seen.any():
                raise ArrayFileError(f"{self.paths[f]}: series {n}, frames {start}:{start + self.frames} are all "
                                     "missing (NaN); drop them or choose another split")  # fmt: skip
            self.missing_values = self.missing_values or not bool(seen.all())
            x = torch.nan_to_num(x)
            total, square, count = total + x.sum(0), square + (x**2).sum(0), count + seen.sum(0)
        seen_total = count.sum().clamp_min(1)
        first, second = (total.sum() / seen_total).item(), (square.sum() / seen_total).item()
        if second - first**2 <= 1e-12 * second:
            raise ArrayFileError(f"{', '.join(self.paths)}: every observed training value is {first:.6g}: constant data "
                                 "has no variation to learn or fit a reference to")  # fmt: skip
        if self.normalize_mode == "none":
            return torch.zeros(self.space_shape), torch.ones(self.space_shape)
        if self.normalize_mode == "global":
            total, square, count = total.sum(), square.sum(), count.sum()
        mean = total / count.clamp_min(1)
        std = (square / count.clamp_min(1) - mean**2).clamp_min(1e-12).sqrt()
        return mean.float().expand(self.space_shape).clone(), std.float().expand(self.space_shape).clone()

    # --- the SequenceDataModule contract -------------------------------------------------------

    @property
    def training_values(self) -> int:
        """The values the training windows cover, each counted once however they overlap (missing
        ones included): what a model learns from (``BestCheckpoint``'s sizing warning)."""
        rows = self.index["train"]  # (file, series, start), starts ascending within a series
        same = (np.diff(rows[:, 0]) == 0) & (np.diff(rows[:, 1]) == 0)
        overlap = np.where(same, np.clip(self.frames - np.diff(rows[:, 2]), 0, None), 0).sum()
        return int(len(rows) * self.frames - overlap) * math.prod(self.space_shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.frames, *self.space_shape)

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        """``n`` training windows drawn at random (with replacement)."""
        rows = torch.randint(self.num_train, (n,), generator=generator).tolist()
        windows = self.training_set()
        return torch.stack([windows[i] for i in rows]).to(device)

    def training_set(self) -> Dataset:
        return Windows(self.readers, self.index["train"], self.frames, self.mean, self.std)

    def evaluation_samples(self, stage: str) -> Tensor:
        rows = self.index[stage]
        if len(rows) == 0:
            raise ValueError(f"ArrayDataModule: no {stage} window of T={self.frames} frames fits the split "
                             f"{list(self.split)}; give that split more frames")  # fmt: skip
        windows = Windows(self.readers, self.evaluation_rows(stage), self.frames, self.mean, self.std)
        return torch.stack([windows[i] for i in range(len(windows))])

    def conditional_cases(self, n: int, generator: torch.Generator, stage: str = "test") -> Tensor:
        """Up to ``n`` held-out windows of ``stage`` (``val`` during a fit, ``test`` only in ``stdiff
        test``), NaN where missing: the model and the fitted reference both condition on what is
        observed and are scored on the really observed entries only."""
        x = self.evaluation_samples("val" if stage == "val" else "test")
        return x[~x.flatten(1).isnan().all(1)][:n]

    def _read_observations(self) -> tuple[Tensor, Tensor]:
        if self.observed not in ("test", "val"):
            return super()._read_observations()
        values = self.evaluation_samples(self.observed)
        mask = ~values.isnan()
        if self.task is not None:
            mask &= self.task.draw(len(values), self.sample_shape, generator(self.seed, PREDICT, 1))
        check_mask(mask, self.sample_shape, f"the {self.observed} windows observed by {self.task!r}")
        return self.denormalize(values), mask  # data units, NaN where missing (``observations`` normalises)

    def evaluation_count(self, stage: str) -> int:
        return min(self.num_val, len(self.index[stage]))  # num_val is a cap here: every window if larger

    def evaluation_rows(self, stage: str) -> np.ndarray:
        """``(file, series, start)`` of the windows ``evaluation_samples(stage)`` returns, in order."""
        rows = self.index[stage]
        return rows[np.unique(np.linspace(0, len(rows) - 1, min(self.num_val, len(rows))).round().astype(int))]

    def describe(self) -> dict:
        """What ``stdiff predict`` records beside its samples: the units and where observations came from."""
        out = {"normalize": self.normalize_mode, "mean": self.mean.tolist(), "std": self.std.tolist(),
               "paths": [str(Path(p).resolve()) for p in self.paths], "frames": self.frames}  # fmt: skip
        if self.observed in ("test", "val"):
            out["windows"] = {"columns": ["file", "series", "start"], "rows": self.evaluation_rows(self.observed).tolist()}
        return out

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std.to(x) + self.mean.to(x)

    truth_is_exact = False  # the truth here is a Gaussian fitted to the training windows

    @property
    def truth(self):
        """The separable Gaussian fitted to the training windows (``reference``), or None."""
        if self.reference != "none" and self._truth is None:
            from stdiff.data.reference import fit_reference

            self._truth = fit_reference(self, self.reference, self.temporal, self.spatial,
                                        steps=self.reference_steps, nugget=self.reference_nugget)  # fmt: skip
        return self._truth

    @property
    def has_truth(self) -> bool:
        return self.reference != "none"

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state_dict: dict) -> None:
        # The model was trained in the units of these statistics: keep them (the data may have grown since).
        self.mean, self.std = state_dict["mean"], state_dict["std"]


def read_checked(reader, n: int, start: int, stop: int) -> np.ndarray:
    """``reader.read(n, start, stop)``, refused (``ArrayFileError`` with the file and the entry's
    index) if it holds an infinite value or one too large to train on (``stdiff.data.files.LIMIT``)."""
    x = reader.read(n, start, stop)
    check_values(x, reader.path, lead=(n,) if reader.series_axis else (), offset=start)
    return x


def read_coordinates(source, space_shape: tuple[int, ...]) -> Tensor:
    """Coordinates ``(S, k)`` of the spatial points from a ``.npy`` / ``.csv`` / ``.txt`` file or rows."""
    where = repr(source) if not isinstance(source, str) else source
    if isinstance(source, str):
        check_file(source, "coordinates")
        if source.endswith(".npy"):
            npy_header(source, what="coordinates")  # a real, complete .npy of numbers
        try:
            values = (np.load(source, allow_pickle=False) if source.endswith(".npy")
                      else np.loadtxt(source, delimiter="," if source.endswith(".csv") else None, ndmin=2))  # fmt: skip
        except (OSError, ValueError) as err:
            raise ArrayFileError(f"coordinates: {source}: not a table of numbers ({err})") from None
    else:
        values = np.asarray(source, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    if len(space_shape) != 1 or values.ndim != 2 or values.shape[0] != space_shape[0]:
        raise ArrayFileError(f"coordinates: {where} has shape {values.shape}; expected one row per spatial point, "
                             f"({space_shape[0] if len(space_shape) == 1 else 'S'}, k), for data of spatial shape "
                             f"{space_shape} (coordinates need a 1-D list of points)")  # fmt: skip
    if not np.isfinite(values).all():
        raise ArrayFileError(f"coordinates: {where} holds non-finite values")
    check_coordinates(values, f"coordinates: {where}")  # magnitudes; coincident points where a kernel needs it
    return torch.from_numpy(values)
