"""Arrays on disk read in place: a ``.npy`` file, or an uncompressed member of a ``.npz``, as a
``(N, T_total, *space)`` array (3 axes: ``(N, T_total, S)``; 4: ``(N, T_total, H, W)``; a 2-D
``(T_total, S)`` array is one series) of which ``read(n, start, stop)`` returns frames ``start:stop`` of
series ``n`` with one ``os.pread`` (frames of one series are contiguous in C order; a Fortran-order file, as
np.save writes a pandas DataFrame's values, is read through a read-only memory map). Nothing is
memory-mapped, so reading a window touches only its bytes and resident memory stays bounded by the
batch, however large the file. NetCDF and Zarr go through xarray (``pip install stdiff[xarray]``).
"""

from __future__ import annotations

import errno
import math
import os
import zipfile

import numpy as np

# The largest magnitude a value may have: its square must fit float32 (the loss and every variance
# square values), so 2**64 ≈ 1.8e19. Anything larger is a unit error or a fill value, not data.
LIMIT = 2.0**64


class ArrayFileError(ValueError):
    """A data file that cannot serve as ``(N, T_total, *space)`` sequences: names the file and why."""


def check_file(path: str, what: str = "") -> None:
    """Raise ``ArrayFileError`` unless ``path`` is an existing, readable file (or, for ``.zarr``, a
    directory): a missing file, a dangling link, a symlink loop, a directory and a file without
    read permission are each named as such."""
    label = f"{what}: {path}" if what else str(path)
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ArrayFileError(f"{label}: a symbolic link loop (the link points back to itself)") from None
        if os.path.islink(path):
            raise ArrayFileError(f"{label}: a symbolic link to {os.readlink(path)!r}, which does not exist") from None
        if err.errno == errno.EACCES:
            raise ArrayFileError(f"{label}: cannot be reached (no permission on a folder above it)") from None
        raise ArrayFileError(f"{label}: no such file") from None
    directory = os.path.isdir(path)
    if directory and not str(path).rstrip("/").endswith(".zarr"):
        raise ArrayFileError(f"{label}: is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise ArrayFileError(f"{label}: not readable (no read permission)")
    if not directory and info.st_size == 0:
        raise ArrayFileError(f"{label}: is empty (0 bytes)")


def npy_header(path: str, offset: int = 0, what: str = "") -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data_offset)`` of the ``.npy`` array at byte ``offset`` of
    ``path``, checked: a NumPy header (a text or pickle file named ``.npy`` has none), numbers (not
    strings, objects or booleans), and as many data bytes as the header promises (not truncated)."""
    label = f"{what}: {path}" if what else str(path)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                raise ArrayFileError(f"{label}: not a .npy file (it does not start with NumPy's header; a text, CSV "
                                     "or pickle file renamed .npy?). Save arrays with numpy.save") from None  # fmt: skip
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            start = f.tell()
    except ArrayFileError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise ArrayFileError(f"{label}: a corrupt .npy header ({err})") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise ArrayFileError(f"{label}: holds {dtype} values; expected numbers (float or int)")
    needed = math.prod(shape) * dtype.itemsize
    if os.path.getsize(path) < start + needed:
        raise ArrayFileError(f"{label}: truncated: its header promises {shape} {dtype} values ({start + needed} "
                             f"bytes) but the file has {os.path.getsize(path)} bytes")  # fmt: skip
    return tuple(shape), bool(fortran), dtype, start


def check_values(values: np.ndarray, label: str, lead: tuple[int, ...] = (), offset: int = 0) -> None:
    """Raise ``ArrayFileError`` at the first entry of ``values`` that is ±inf (or beyond float32)
    or larger in magnitude than ``LIMIT``; NaN (missing) is allowed. The entry's index in the file
    is ``(*lead, i0 + offset, i1, …)``: ``lead`` and ``offset`` locate ``values`` there (a window of
    series n from frame s: ``lead=(n,), offset=s``)."""
    values = np.asarray(values)
    bad = np.abs(values) > LIMIT  # inf too; NaN compares False
    if not bad.any():
        return
    first = np.unravel_index(int(np.argmax(bad.ravel())), values.shape)
    index = [*lead, *(int(i) + (offset if k == 0 else 0) for k, i in enumerate(first))]
    value = float(values[first])
    why = ("is infinite" if math.isinf(value) else f"is {value:.3g}: beyond {LIMIT:.2g}, whose square overflows float32 "
           "(a fill value or a unit error?)")  # fmt: skip
    raise ArrayFileError(f"{label}: entry {index} {why}. Only finite values are data; mark missing entries with NaN")


class NpyReader:
    """``(N, T_total, *space)`` data of a ``.npy`` file (a ``(T_total, *space)`` file is one series),
    or of member ``key`` of a ``.npz`` saved without compression."""

    def __init__(self, path: str, key: str | None = None) -> None:
        self.path = str(path)
        offset = 0
        if self.path.endswith(".npz"):
            offset = self._member_offset(key)
        shape, fortran, dtype, self.offset = npy_header(self.path, offset)
        self.dtype = dtype
        self.series_axis = len(shape) != 2  # (T_total, S): one series, no series axis in the file
        self.shape = (1, *shape) if len(shape) == 2 else tuple(shape)
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
        self.series_axis = len(self.shape) != 2
        if len(self.shape) == 2:
            self.variable, self.shape = self.variable.expand_dims("series"), (1, *self.shape)

    def read(self, n: int, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.variable[n, start:stop].values, dtype=np.float32)


def open_array(path: str, key: str | None = None) -> NpyReader | XarrayReader:
    """A reader for ``path`` by its extension; ``ArrayFileError`` for anything else."""
    check_file(path)
    if path.endswith((".npy", ".npz")):
        return NpyReader(path, key)
    if path.endswith((".nc", ".nc4", ".zarr", ".zarr/")):
        return XarrayReader(path, key)
    raise ArrayFileError(f"{path}: unknown format; expected .npy, .npz (uncompressed), .nc or .zarr")
