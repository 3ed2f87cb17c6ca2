"""Arrays on disk read in place: a ``.npy`` file, or an uncompressed member of a ``.npz``, as a
``(N, T_total, *space)`` array (3 axes: ``(N, T_total, S)``; 4: ``(N, T_total, H, W)``; a 2-D
``(T_total, S)`` array is one series) of which ``read(n, start, stop)`` returns frames ``start:stop`` of
series ``n`` with one ``os.pread`` (frames of one series are contiguous in C order; a Fortran-order file, as
np.save writes a pandas DataFrame's values, is read through a read-only memory map). Nothing is
memory-mapped, so reading a window touches only its bytes and resident memory stays bounded by the
batch, however large the file. NetCDF and Zarr go through xarray (``pip install stdiff[xarray]``).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np


class ArrayFileError(ValueError):
    """A data file that cannot serve as ``(N, T_total, *space)`` sequences: names the file and why."""


class NpyReader:
    """``(N, T_total, *space)`` data of a ``.npy`` file (a ``(T_total, *space)`` file is one series),
    or of member ``key`` of a ``.npz`` saved without compression."""

    def __init__(self, path: str, key: str | None = None) -> None:
        self.path = str(path)
        offset = 0
        if self.path.endswith(".npz"):
            offset = self._member_offset(key)
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
                self.offset = f.tell()
        except (OSError, ValueError) as err:
            raise ArrayFileError(f"{self.path}: not a readable .npy array ({err})") from None
        if dtype.hasobject or dtype.kind not in "fiu":
            raise ArrayFileError(f"{self.path}: holds {dtype} values; expected numbers (float or int)")
        self.dtype = dtype
        self.shape = (1, *shape) if len(shape) == 2 else tuple(shape)  # (T_total, S): one series
        self.frame_bytes = math.prod(self.shape[2:]) * dtype.itemsize
        self._fd: int | None = None
        # Fortran order (what np.save writes for a pandas DataFrame's values): a frame is not contiguous,
        # so windows are read through a read-only memory map instead of one pread.
        self.fortran, self._stored_shape = bool(fortran), tuple(shape)
        self._map = None

    def _member_offset(self, key: str | None) -> int:
        try:
            archive = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as err:
            raise ArrayFileError(f"{self.path}: not a readable .npz archive ({err})") from None
        with archive:
            names = [n.removesuffix(".npy") for n in archive.namelist()]
            if key is None and len(names) != 1:
                raise ArrayFileError(f"{self.path}: holds several arrays ({', '.join(names)}); choose one with key")
            name = names[0] if key is None else key
            if name not in names:
                raise ArrayFileError(f"{self.path}: no array {name!r} in it; it holds {', '.join(names)}")
            info = archive.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ArrayFileError(f"{self.path}: array {name!r} is compressed (np.savez_compressed) and cannot be "
                                     "read in place; save it with np.savez or np.save")  # fmt: skip
            with open(self.path, "rb") as f:  # the member's data follows its local header
                f.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
                return info.header_offset + 30 + int(name_len) + int(extra_len)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_map": None}  # loader workers open their own descriptor

    def read(self, n: int, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of series ``n`` as float32 ``(stop − start, *space)``."""
        if self.fortran:
            if self._map is None:
                self._map = np.memmap(self.path, self.dtype, "r", self.offset, self._stored_shape, order="F")
            part = self._map[start:stop] if len(self._stored_shape) == 2 else self._map[n, start:stop]
            return np.array(part, dtype=np.float32)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        frames = self.shape[1]
        position = self.offset + (n * frames + start) * self.frame_bytes
        raw = os.pread(self._fd, (stop - start) * self.frame_bytes, position)
        return np.frombuffer(raw, dtype=self.dtype).reshape(stop - start, *self.shape[2:]).astype(np.float32)


class XarrayReader:
    """A variable of a NetCDF file or Zarr store, dims ``(N, time, *space)`` or ``(time, *space)``,
    read lazily by xarray."""

    def __init__(self, path: str, key: str | None = None) -> None:
        try:
            import xarray as xr
        except ImportError:
            raise ArrayFileError(f"{path}: reading NetCDF / Zarr needs xarray: pip install 'stdiff[xarray]'") from None
        self.path = str(path)
        opened = xr.open_zarr(path) if self.path.rstrip("/").endswith(".zarr") else xr.open_dataset(path)
        names = list(opened.data_vars)
        if key is None and len(names) != 1:
            raise ArrayFileError(f"{path}: holds several variables ({', '.join(names)}); choose one with key")
        if (key or names[0]) not in names:
            raise ArrayFileError(f"{path}: no variable {key!r} in it; it holds {', '.join(names)}")
        self.variable = opened[key or names[0]]
        self.shape = tuple(self.variable.shape)
        if len(self.shape) == 2:
            self.variable, self.shape = self.variable.expand_dims("series"), (1, *self.shape)

    def read(self, n: int, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.variable[n, start:stop].values, dtype=np.float32)


def open_array(path: str, key: str | None = None) -> NpyReader | XarrayReader:
    """A reader for ``path`` by its extension; ``ArrayFileError`` for anything else."""
    if not Path(path).exists():
        raise ArrayFileError(f"{path}: no such file")
    if path.endswith((".npy", ".npz")):
        return NpyReader(path, key)
    if path.endswith((".nc", ".nc4", ".zarr", ".zarr/")):
        return XarrayReader(path, key)
    raise ArrayFileError(f"{path}: unknown format; expected .npy, .npz (uncompressed), .nc or .zarr")
