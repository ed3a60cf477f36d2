"""Prepared images kept on disk and read a batch at a time (`data.image_store='disk'`).

With the default memory store every process of a job reads every image of every split into host
RAM (MIMIC-CXR at 256 px: about 18 GB per process). With the disk store each split's images live
in one flat file beside the prepared dataset, and a process reads only the rows of the batches it
builds, so its memory does not grow with the dataset.

File `<prepared dir>/images-<split>.u8`:
  bytes 0..7    magic b'JIMAIMG1'
  bytes 8..15   length L of the JSON header (uint64, little endian)
  bytes 16..    the JSON header: format, shape [N, V, S, S], dtype, count, offset, source
  offset..      N rows of V*S*S uint8 (C order), `offset` a multiple of 4096
`source` fingerprints the tfds split the file was streamed from: a file whose header, size or
source does not match is rebuilt, never read. The file is written to a temporary name and renamed
(`jima_jax.atomic`), so a killed write leaves only a `.images-<split>.u8.*.tmp` file (removed by a
later build once it has not changed for `DEAD_TEMP_S`).

Rows are read with `os.preadv` into the batch's own buffer, not through `np.memmap`: pages of a
mapping count in a process's RSS as they are touched, page-cache pages read by pread do not.
No JAX and no TensorFlow here (house rule for `jima_jax.data`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import threading
import time
from typing import Callable, Iterable, Optional

import numpy as np

from jima_jax import atomic

MODES = ('memory', 'disk')
MAGIC = b'JIMAIMG1'
FORMAT = 1
ALIGN = 4096
DEAD_TEMP_S = 600  # a temporary file unchanged this long belongs to a killed writer

log = logging.getLogger(__name__)


def check_mode(value) -> str:
    """`data.image_store`, validated."""
    if value not in MODES:
        raise ValueError(
            f"data.image_store={value!r}: expected 'memory' (every image of every split in host "
            "memory, the default) or 'disk' (one raw file per split beside the prepared dataset, "
            "read a batch at a time). Pass --config.data.image_store=disk or =memory.")
    return value


def store_path(prepared_dir: str | os.PathLike, split: str) -> pathlib.Path:
    return pathlib.Path(prepared_dir) / f'images-{split}.u8'


class DiskImages:
    """`[N, V, S, S]` uint8 images in a store file, read on demand (a stand-in for the array).

    Indexing (`x[i]`, `x[a:b]`, `x[int_array]`, `x[bool_mask]`, `x[i, v]`) returns numpy arrays
    holding only the rows asked for; `gather(indices)` is the fast path the input pipeline
    uses. `np.asarray(x)` is refused: it would read every image into memory, which is what the
    disk store is there to avoid (use data.image_store='memory' for that). Safe to use from
    several threads (positioned reads) and after a fork (the file is reopened per process).
    """

    def __init__(self, path: str | os.PathLike, shape, offset: int,
                 rows: Optional[np.ndarray] = None):
        self.path = pathlib.Path(path)
        self._file_shape = tuple(int(d) for d in shape)
        self._offset = int(offset)
        self._rows = None if rows is None else np.asarray(rows, np.int64)
        self._row_shape = self._file_shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64))
        self._fd: Optional[int] = None
        self._pid = -1
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ array-like surface
    @property
    def shape(self) -> tuple[int, ...]:
        n = self._file_shape[0] if self._rows is None else len(self._rows)
        return (n,) + self._row_shape

    dtype = np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return len(self._file_shape)

    @property
    def nbytes(self) -> int:
        """Bytes these rows would take in memory (on disk, not in RAM)."""
        return self.shape[0] * self._row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f'DiskImages({str(self.path)!r}, shape={self.shape}, dtype=uint8)'

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            f'{self.path}: converting DiskImages to a numpy array would read all {len(self)} '
            f'rows ({self.nbytes / 2**30:.2f} GiB) into memory. Index it (images[idx], '
            "images.gather(idx)) or load the dataset with data.image_store='memory'.")

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if not key:
                raise TypeError('DiskImages: an empty index tuple would read every row.')
            first, rest = key[0], key[1:]
            if first is Ellipsis:
                return self[:][key]
            head = self[first]
            # axes the first index leaves in front of the image axes: 0 (int), 1 (slice, mask)
            lead = 1 if isinstance(first, slice) or np.asarray(first).dtype == bool else (
                np.ndim(first))
            return head[(slice(None),) * lead + rest] if rest else head
        if isinstance(key, slice):
            return self.gather(np.arange(len(self))[key])
        if key is Ellipsis:
            return self.gather(np.arange(len(self)))
        if np.ndim(key) == 0:
            if isinstance(key, (bool, np.bool_)) or not np.issubdtype(np.asarray(key).dtype,
                                                                     np.integer):
                raise IndexError(f'DiskImages: unsupported index {key!r}.')
            return self.gather(np.asarray([key]))[0]
        return self.gather(key)

    def subset(self, index) -> 'DiskImages':
        """Rows `index` as another DiskImages on the same file (nothing is read)."""
        rows = self._file_rows(self._positions(index))
        return DiskImages(self.path, self._file_shape, self._offset, rows)

    # ------------------------------------------------------------------ reading
    def gather(self, indices) -> np.ndarray:
        """`indices` (ints, negatives allowed, or a bool mask) -> uint8 [*indices.shape, V, S, S].

        Consecutive rows are read with one call, so evaluation's in-order batches cost one read
        each and a training batch one read per example."""
        pos = self._positions(indices)
        flat = self._file_rows(pos.ravel())
        out = np.empty((flat.size,) + self._row_shape, np.uint8)
        if flat.size:
            breaks = np.flatnonzero(np.diff(flat) != 1) + 1
            starts = np.concatenate([[0], breaks])
            ends = np.concatenate([breaks, [flat.size]])
            fd = self._descriptor()
            for s, e in zip(starts.tolist(), ends.tolist()):
                self._read_into(fd, out[s:e], self._offset + int(flat[s]) * self._row_bytes)
        return out.reshape(pos.shape + self._row_shape)

    def _positions(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        n = len(self)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f'DiskImages: boolean index of shape {idx.shape} for {n} rows.')
            return np.flatnonzero(idx)
        if idx.size == 0:
            return idx.astype(np.int64)
        if not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f'DiskImages: indices must be integers, got {idx.dtype}.')
        idx = idx.astype(np.int64)
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f'DiskImages: index out of range for {n} rows '
                             f'(min {idx.min()}, max {idx.max()}).')
        return np.where(idx < 0, idx + n, idx)

    def _file_rows(self, pos: np.ndarray) -> np.ndarray:
        return pos if self._rows is None else self._rows[pos]

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            with self._lock:
                if self._fd is None or self._pid != pid:
                    self._fd = os.open(self.path, os.O_RDONLY)
                    self._pid = pid
        return self._fd

    def _read_into(self, fd: int, block: np.ndarray, offset: int) -> None:
        view = memoryview(block).cast('B')
        done = 0
        while done < len(view):
            if hasattr(os, 'preadv'):
                got = os.preadv(fd, [view[done:]], offset + done)
            else:  # no preadv on this platform: one copy more
                data = os.pread(fd, len(view) - done, offset + done)
                view[done:done + len(data)] = data
                got = len(data)
            if got == 0:
                raise ValueError(f'{self.path} ends before its header says (at byte '
                                 f'{offset + done}); delete it, the next load rebuilds it.')
            done += got

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._pid == os.getpid():
            os.close(fd)

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_fd=None, _pid=-1, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ---------------------------------------------------------------------- the file
def _header_bytes(shape, source: str) -> tuple[bytes, int]:
    meta = dict(format=FORMAT, shape=[int(d) for d in shape], dtype='uint8', count=int(shape[0]),
                source=source, offset=ALIGN)
    while 16 + len(json.dumps(meta, sort_keys=True).encode()) > meta['offset']:
        meta['offset'] += ALIGN  # the header (the offset included) must fit before the rows
    body = json.dumps(meta, sort_keys=True).encode()
    head = MAGIC + len(body).to_bytes(8, 'little') + body
    return head + b'\0' * (meta['offset'] - len(head)), meta['offset']


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a store file; ValueError naming what is wrong with it."""
    path = pathlib.Path(path)
    with open(path, 'rb') as f:
        start = f.read(16)
        if len(start) < 16 or start[:8] != MAGIC:
            raise ValueError(f'{path} is not a jima_jax image store (no {MAGIC!r} header).')
        length = int.from_bytes(start[8:], 'little')
        if length > 1 << 20:
            raise ValueError(f'{path}: header length {length} is not plausible.')
        try:
            meta = json.loads(f.read(length))
        except ValueError as e:
            raise ValueError(f'{path}: unreadable header ({e}).') from None
    found = meta.get('format') if isinstance(meta, dict) else meta
    if found != FORMAT:
        raise ValueError(f'{path}: header format {found!r}, expected {FORMAT}.')
    return meta


def open_store(path: str | os.PathLike, shape, source: str) -> DiskImages:
    """The store at `path` if it holds exactly `shape` images from `source`; else ValueError
    saying why (missing, foreign, stale, cut short)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist.')
    meta = read_header(path)
    shape = [int(d) for d in shape]
    if meta.get('source') != source:
        raise ValueError(f'{path} was written from another tfds split (source '
                         f'{meta.get("source")!r}, expected {source!r}).')
    if meta.get('shape') != shape or meta.get('dtype') != 'uint8':
        raise ValueError(f'{path} holds {meta.get("dtype")} {meta.get("shape")}, expected uint8 '
                         f'{shape}.')
    offset = int(meta['offset'])
    want = offset + int(np.prod(shape, dtype=np.int64))
    size = path.stat().st_size
    if size != want:
        raise ValueError(f'{path} has {size} bytes, its header says {want}.')
    return DiskImages(path, shape, offset)


def write_store(path: str | os.PathLike, shape, batches: Iterable[np.ndarray],
                source: str) -> DiskImages:
    """Streams `batches` (uint8 [b, V, S, S] each, `shape[0]` rows in all) into the store file
    at `path`: one batch in memory at a time, written to a temporary name and renamed."""
    path = pathlib.Path(path)
    shape = tuple(int(d) for d in shape)
    head, offset = _header_bytes(shape, source)

    def write(tmp: str) -> None:
        rows = 0
        with open(tmp, 'wb') as f:
            f.write(head)
            for batch in batches:
                batch = np.asarray(batch)
                if batch.dtype != np.uint8 or batch.shape[1:] != shape[1:]:
                    raise ValueError(f'{path}: a batch of {batch.dtype} {batch.shape[1:]} rows, '
                                     f'expected uint8 {shape[1:]}.')
                if rows + len(batch) > shape[0]:
                    raise ValueError(f'{path}: more than the {shape[0]} rows announced.')
                f.write(memoryview(np.ascontiguousarray(batch)).cast('B'))
                rows += len(batch)
        if rows != shape[0]:
            raise ValueError(f'{path}: {rows} rows written, {shape[0]} announced.')

    atomic.write_with(path, write)
    return DiskImages(path, shape, offset)


@contextlib.contextmanager
def _exclusive(path: pathlib.Path):
    """An advisory lock beside `path`, so that processes sharing a file system build the file
    once (the others wait, then find it). Where locks are unsupported (some network file
    systems) there is none: concurrent builds then each write their own temporary file and
    rename it into place, which is safe, only slower."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    lock = path.with_name(path.name + '.lock')
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        raise ValueError(
            f"{path.parent} is not writable, and data.image_store='disk' writes its image files "
            "there (beside the prepared dataset). Make it writable, prepare into a writable "
            "data.data_dir ($JIMA_DATA_DIR), or use data.image_store='memory'.") from None
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            log.warning('%s: no file lock (%s); building without one.', lock, e)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_dead_temps(path: pathlib.Path, now: Optional[float] = None) -> None:
    now = time.time() if now is None else now
    for tmp in path.parent.glob(f'.{path.name}.*.tmp'):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > DEAD_TEMP_S:
                tmp.unlink()
                log.info('removed %s, left by a writer that was stopped', tmp)


def open_or_build(path: str | os.PathLike, shape, source: str,
                  batches: Callable[[], Iterable[np.ndarray]]) -> DiskImages:
    """The valid store at `path`, building it from `batches()` first when it is missing, stale,
    foreign or cut short. One builder at a time per file system where file locks work."""
    path = pathlib.Path(path)
    try:
        return open_store(path, shape, source)
    except FileNotFoundError:
        reason = 'first use'
    except ValueError as e:
        reason = str(e)
    with _exclusive(path):
        try:
            return open_store(path, shape, source)  # built while this process waited
        except (FileNotFoundError, ValueError):
            pass
        _remove_dead_temps(path)
        size = int(np.prod(shape, dtype=np.int64))
        amount = f'{size / 2**30:.1f} GiB' if size >= 2**30 else f'{size / 2**20:.1f} MiB'
        log.warning('writing %s (%s of images; %s)', path, amount, reason)
        t0 = time.monotonic()
        store = write_store(path, shape, batches(), source)
        log.warning('wrote %s in %.1f s', path, time.monotonic() - t0)
        return store
