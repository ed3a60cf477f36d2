"""Read PyTorch weight files into numpy arrays, without PyTorch installed.

Supports `torch.save` files in both the zip format (PyTorch >= 1.6) and the older "legacy"
pickle-stream format (many published torchvision weights), and `.safetensors` files. Only the
objects a state dict needs are unpickled (tensors, parameters, ordered dicts, plain containers);
anything else is refused, so a malicious `.pth` cannot run code on load.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
import pickle
import struct
import zipfile
from typing import Any, Callable

import ml_dtypes
import numpy as np

from jima_jax import atomic

_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file and the fix."""


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _CorruptTensor(Exception):
    """A tensor whose bytes lie outside its storage (truncated or crafted file)."""


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    """torch._utils._rebuild_tensor_v2: a strided view into a flat storage, copied out."""
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or (all(size) and last >= len(storage)):
        raise _CorruptTensor(f'a tensor of size {tuple(size)}, stride {tuple(stride)} at offset '
                             f'{offset} reaches outside its storage of {len(storage)} elements')
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.array(view)  # always an owned, writable ndarray (also for 0-d tensors)


def _rebuild_parameter(data, *_unused):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict; storages are resolved through `load_storage(pid)`."""

    _allowed = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
        ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
        ('torch.nn.parameter', 'Parameter'): _rebuild_parameter,
    }

    def __init__(self, file, load_storage: Callable[[tuple], np.ndarray], path: pathlib.Path):
        super().__init__(file)
        self._load_storage = load_storage
        self._path = path

    def find_class(self, module, name):
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise WeightFileError(
            f'{self._path}: refuses to unpickle {module}.{name}; only state dicts of tensors can '
            'be read. Save the weights with `torch.save(model.state_dict(), path)` or as '
            '.safetensors.')

    def persistent_load(self, pid):
        return self._load_storage(pid)


def _read_zip_pth(path: pathlib.Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith('/data.pkl')]
        if not pkl:
            raise WeightFileError(f'{path}: zip file without data.pkl; not a torch.save file.')
        root = pkl[0][:-len('data.pkl')]
        cache: dict[str, np.ndarray] = {}

        def load_storage(pid):
            _, storage_type, key, _location, numel = pid[:5]
            if key not in cache:
                raw = zf.read(f'{root}data/{key}')
                if len(raw) < numel * storage_type.dtype.itemsize:
                    raise _CorruptTensor(f'storage {key} holds {len(raw)} bytes, fewer than its '
                                         f'{numel} elements')
                cache[key] = np.frombuffer(raw, dtype=storage_type.dtype, count=numel)
            return cache[key]

        with zf.open(pkl[0]) as f:
            return _StateDictUnpickler(f, load_storage, path).load()


class _Deferred:
    """A tensor of a legacy file whose storage bytes follow the pickle; built once they are read."""

    def __init__(self, storage_key, offset, size, stride, *_unused):
        self.args = (storage_key, offset, size, stride)


def _read_legacy_pth(path: pathlib.Path) -> Any:
    with open(path, 'rb') as f:
        def load(load_storage=lambda pid: None, rebuild=None):
            unpickler = _StateDictUnpickler(f, load_storage, path)
            if rebuild is not None:
                unpickler._allowed = {**unpickler._allowed,
                                      ('torch._utils', '_rebuild_tensor_v2'): rebuild,
                                      ('torch._utils', '_rebuild_tensor'): rebuild}
            return unpickler.load()

        if load() != _LEGACY_MAGIC:
            raise WeightFileError(f'{path}: not a torch.save file (bad magic number).')
        load()  # protocol version
        load()  # sys info
        storage_dtypes: dict[str, np.dtype] = {}

        def load_storage(pid):
            _, storage_type, key = pid[:3]
            storage_dtypes[key] = storage_type.dtype
            return key

        obj = load(load_storage, _Deferred)
        storages = {}
        for key in load():  # storage keys, in the order their bytes follow
            (count,) = struct.unpack('<q', f.read(8))
            dtype = storage_dtypes[key]
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise WeightFileError(f'{path}: truncated (storage {key} ends early); copy or '
                                      'save the file again.')
            storages[key] = np.frombuffer(raw, dtype=dtype, count=count)

    def build(o):
        if isinstance(o, _Deferred):
            key, offset, size, stride = o.args
            return _rebuild_tensor(storages[key], offset, size, stride)
        if isinstance(o, dict):
            return type(o)((k, build(v)) for k, v in o.items())
        if isinstance(o, (list, tuple)):
            return type(o)(build(v) for v in o)
        return o

    return build(obj)


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Reads every tensor of a .safetensors file (header: u64 length + JSON, then raw bytes)."""
    data = pathlib.Path(path).read_bytes()
    if len(data) < 8:
        raise WeightFileError(f'{path}: too short to be a .safetensors file.')
    (n,) = struct.unpack('<Q', data[:8])
    if 8 + n > len(data):
        raise WeightFileError(f'{path}: truncated .safetensors file (header of {n} bytes, file '
                              f'of {len(data)}); copy or save the file again.')
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise WeightFileError(f'{path}: unreadable .safetensors header ({e}).') from None
    if not isinstance(header, dict):
        raise WeightFileError(f'{path}: .safetensors header is not a JSON object.')
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        if info['dtype'] not in _SAFETENSORS_DTYPES:
            raise WeightFileError(f'{path}: tensor {name} has unsupported dtype {info["dtype"]}.')
        begin, end = info['data_offsets']
        dtype = np.dtype(_SAFETENSORS_DTYPES[info['dtype']])
        if not 0 <= begin <= end <= len(body) or \
                end - begin != math.prod(info['shape']) * dtype.itemsize:
            raise WeightFileError(
                f'{path}: tensor {name} (shape {info["shape"]}) has byte range [{begin}, {end}) '
                f'outside the {len(body)} data bytes or of the wrong size; the file is truncated '
                'or corrupt.')
        out[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(info['shape']).copy()
    return out


def write_safetensors(path: str | pathlib.Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> pathlib.Path:
    """Writes {name: array} as a .safetensors file (atomically), readable by `read_safetensors`,
    the `safetensors` package and PyTorch tools."""
    codes = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
    header: dict = {'__metadata__': dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        value = np.ascontiguousarray(tensors[name])
        if value.dtype not in codes:
            raise WeightFileError(f'{path}: tensor {name} has dtype {value.dtype}, which '
                                  '.safetensors does not store.')
        data = value.tobytes()
        header[name] = {'dtype': codes[value.dtype], 'shape': list(value.shape),
                        'data_offsets': [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(',', ':')).encode()
    head += b' ' * (-len(head) % 8)  # the format aligns the data to 8 bytes
    return atomic.write_bytes(path, struct.pack('<Q', len(head)) + head + b''.join(chunks))


def _find_state_dict(obj: Any, path: pathlib.Path) -> dict[str, np.ndarray]:
    """The dict of arrays inside a checkpoint (plain state dict, or under 'state_dict'/'model')."""
    if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, dict):
        for key in ('state_dict', 'model', 'model_state_dict', 'params'):
            if key in obj:
                return _find_state_dict(obj[key], path)
    raise WeightFileError(
        f'{path}: found no state dict of tensors (top-level keys: '
        f'{list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__}).')


def read_weights(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A state dict {name: array} from a .pth/.pt (zip or legacy) or .safetensors file."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise WeightFileError(
            f'{path}: no such file. Pass a local torchvision .pth or .safetensors file '
            '(jima_jax never downloads weights).')
    if path.suffix == '.safetensors':
        return read_safetensors(path)
    try:
        obj = _read_zip_pth(path) if zipfile.is_zipfile(path) else _read_legacy_pth(path)
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile,
            _CorruptTensor) as e:
        raise WeightFileError(f'{path}: not a readable torch.save file ({e}).') from None
    return _find_state_dict(obj, path)
