"""Weight files written by torch, and torchvision ResNets, read and reproduced without torch.

The fixture (tests/fixtures/torchvision, made by tests/fixtures/make_torchvision_fixture.py)
holds small torch-written files and torchvision's float64 features for ResNet weights that
`synthetic_tensor` regenerates here from the tensor names.
"""

import importlib.util
import json
import os
import pathlib
import pickle
import struct
import zipfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '/tmp/jax_cache')

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from jima_jax.model.resnet import ResNet, load_torchvision_state
from jima_jax.torch_files import WeightFileError, read_weights


def _fixture_module():
    path = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'make_torchvision_fixture.py'
    spec = importlib.util.spec_from_file_location('make_torchvision_fixture', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixture = _fixture_module()
FIXTURES = fixture.FIXTURE_DIR
MANIFEST = json.loads((FIXTURES / 'manifest.json').read_text())
REFERENCE = np.load(FIXTURES / 'resnet_reference.npz')
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save file
NP_DTYPES = {'bfloat16': np.dtype(ml_dtypes.bfloat16)}


# ---------------------------------------------------------------- torch-written files


def _expected_tiny() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / 'tiny_expected.npz') as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize('filename,prefix', [
    ('tiny_zip.pth', ''), ('tiny_legacy.pth', ''), ('tiny_wrapped_zip.pth', 'module.'),
    ('tiny_wrapped_legacy.pth', 'module.'), ('tiny.safetensors', '')])
def test_reads_torch_written_file(filename, prefix):
    expected = _expected_tiny()
    got = read_weights(FIXTURES / filename)
    assert sorted(got) == sorted(prefix + k for k in expected)
    for name, dtype in MANIFEST['tiny'].items():
        arr = got[prefix + name]
        assert isinstance(arr, np.ndarray), name
        assert arr.dtype == NP_DTYPES.get(dtype, np.dtype(dtype)), name
        assert arr.shape == expected[name].shape, name
        np.testing.assert_array_equal(arr.astype(expected[name].dtype), expected[name],
                                      err_msg=name)


def test_fixture_files_are_the_formats_they_claim():
    assert zipfile.is_zipfile(FIXTURES / 'tiny_zip.pth')
    assert not zipfile.is_zipfile(FIXTURES / 'tiny_legacy.pth')
    with open(FIXTURES / 'tiny_legacy.pth', 'rb') as f:
        assert pickle.load(f) == LEGACY_MAGIC


def test_tensors_sharing_a_storage_come_back_as_independent_writable_arrays():
    got = read_weights(FIXTURES / 'tiny_zip.pth')
    tail = got['i.shared_tail'].copy()
    got['i.shared_head'][...] = -1.0
    np.testing.assert_array_equal(got['i.shared_tail'], tail)
    np.testing.assert_array_equal(tail, np.arange(10, 16, dtype=np.float32).reshape(3, 2) * 0.5)


def _write_safetensors(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """A minimal .safetensors writer: u64 header length, JSON header, raw little-endian bytes."""
    codes = {np.dtype(np.float32): 'F32', np.dtype(np.float16): 'F16', np.dtype(np.float64): 'F64',
             np.dtype(ml_dtypes.bfloat16): 'BF16', np.dtype(np.int64): 'I64',
             np.dtype(np.bool_): 'BOOL'}
    header, chunks, offset = {}, [], 0
    for name, arr in arrays.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {'dtype': codes[arr.dtype], 'shape': list(arr.shape),
                        'data_offsets': [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b' ' * (-len(text) % 8)
    path.write_bytes(struct.pack('<Q', len(text)) + text + b''.join(chunks))


def test_own_safetensors_writer_round_trips(tmp_path):
    expected = _expected_tiny()
    arrays = {k: v.astype(NP_DTYPES.get(MANIFEST['tiny'][k], v.dtype)) for k, v in expected.items()}
    _write_safetensors(tmp_path / 'w.safetensors', arrays)
    got = read_weights(tmp_path / 'w.safetensors')
    assert {k: (v.dtype, v.shape) for k, v in got.items()} == \
        {k: (v.dtype, v.shape) for k, v in arrays.items()}
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])


# ---------------------------------------------------------------- refused and broken files


class _Calls:
    """Pickles as a call of `fn(*args)`: what a malicious .pth does on a plain pickle.load."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _write_pth(path: pathlib.Path, container: str, data_pkl: bytes, storages=None) -> None:
    if container == 'zip':
        with zipfile.ZipFile(path, 'w') as zf:
            zf.writestr('archive/data.pkl', data_pkl)
            for key, data in (storages or {}).items():
                zf.writestr(f'archive/data/{key}', data)
    else:
        head = b''.join(pickle.dumps(v, protocol=2)
                        for v in (LEGACY_MAGIC, 1001, {'little_endian': True}))
        path.write_bytes(head + data_pkl)


@pytest.mark.parametrize('container', ['zip', 'legacy'])
@pytest.mark.parametrize('make_call', [
    lambda marker: _Calls(os.system, f'touch {marker}'),
    lambda marker: _Calls(eval, f'open({str(marker)!r}, "w")')])
def test_refuses_a_pickle_that_calls_a_forbidden_global(tmp_path, container, make_call):
    marker = tmp_path / 'code_ran'
    payload = pickle.dumps({'conv1.weight': make_call(marker)}, protocol=2)
    assert b'system' in payload or b'eval' in payload
    _write_pth(tmp_path / 'evil.pth', container, payload)
    with pytest.raises(WeightFileError, match=r'evil\.pth: refuses to unpickle \w+\.(system|eval)'):
        read_weights(tmp_path / 'evil.pth')
    assert not marker.exists()


def _tensor_data_pkl(size, stride, offset=0, numel=4) -> bytes:
    """data.pkl of {'w': float32 tensor on storage '0'} as torch.save writes it (opcode by opcode,
    because pickling the torch globals by name would need torch installed)."""
    def text(s):
        return b'X' + struct.pack('<I', len(s)) + s.encode()

    def integer(i):
        return b'J' + struct.pack('<i', i)

    def tup(*items):
        return b'(' + b''.join(items) + b't'

    def glob(module, name):
        return f'c{module}\n{name}\n'.encode()

    storage = tup(text('storage'), glob('torch', 'FloatStorage'), text('0'), text('cpu'),
                  integer(numel)) + b'Q'  # BINPERSID
    args = tup(storage, integer(offset), tup(*map(integer, size)), tup(*map(integer, stride)),
               b'\x89', glob('collections', 'OrderedDict') + b')R')  # False, OrderedDict()
    return b'\x80\x02}' + text('w') + glob('torch._utils', '_rebuild_tensor_v2') + args + b'Rs.'


def test_hand_built_zip_tensor_reads_as_a_strided_view(tmp_path):
    storage = np.arange(4, dtype=np.float32).tobytes()
    _write_pth(tmp_path / 'w.pth', 'zip', _tensor_data_pkl((2, 2), (1, 2)), {'0': storage})
    np.testing.assert_array_equal(read_weights(tmp_path / 'w.pth')['w'], [[0, 2], [1, 3]])


@pytest.mark.parametrize('size,stride,offset,numel,message', [
    ((1000,), (1,), 0, 4, 'reaches outside its storage of 4 elements'),
    ((2, 2), (2, 1), 1, 4, 'reaches outside its storage'),
    ((2,), (-1,), 1, 4, 'reaches outside its storage'),
    ((4,), (1,), 0, 1000, 'storage 0 holds 16 bytes, fewer than its 1000 elements')])
def test_refuses_tensor_views_outside_their_storage(tmp_path, size, stride, offset, numel,
                                                    message):
    storage = np.arange(4, dtype=np.float32).tobytes()
    _write_pth(tmp_path / 'w.pth', 'zip', _tensor_data_pkl(size, stride, offset, numel),
               {'0': storage})
    with pytest.raises(WeightFileError, match=message):
        read_weights(tmp_path / 'w.pth')


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(WeightFileError, match=r'nope\.pth: no such file.*never downloads'):
        read_weights(tmp_path / 'nope.pth')


@pytest.mark.parametrize('filename', ['tiny_legacy.pth', 'tiny_zip.pth', 'tiny.safetensors'])
@pytest.mark.parametrize('keep', [0.0, 0.3, 0.97])
def test_truncated_file_is_a_weight_file_error(tmp_path, filename, keep):
    data = (FIXTURES / filename).read_bytes()
    path = tmp_path / filename
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(WeightFileError, match=str(path.name)):
        read_weights(path)


def test_not_a_weight_file(tmp_path):
    (tmp_path / 'notes.pth').write_text('hello world\n')
    with pytest.raises(WeightFileError, match='not a readable torch.save file'):
        read_weights(tmp_path / 'notes.pth')
    (tmp_path / 'empty.pth').write_bytes(pickle.dumps({'epoch': 3}))
    with pytest.raises(WeightFileError, match='bad magic number'):
        read_weights(tmp_path / 'empty.pth')


# ---------------------------------------------------------------- torchvision ResNets


def _synthetic_state(arch: str, prefix: str = '') -> dict[str, np.ndarray]:
    return {prefix + name: fixture.synthetic_tensor(name, shape)
            for name, shape, _ in MANIFEST[arch]}


def _blank_model(arch: str, **kwargs) -> ResNet:
    """A ResNet whose variables are all NaN, built without the random init (per-shape RNG
    compiles make eager init take seconds): anything the import forgets poisons the output."""
    abstract = nnx.eval_shape(lambda: ResNet(arch, rngs=nnx.Rngs(0), **kwargs))
    graphdef, variables = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(
        lambda s: jnp.asarray(np.full(s.shape, np.nan, s.dtype)), variables))


def _model_from_state(arch: str, state: dict, **kwargs) -> ResNet:
    model = _blank_model(arch, **kwargs)
    load_torchvision_state(model, state, source=f'synthetic {arch}')
    return model


@nnx.jit(static_argnums=2)
def _features(model, x_nhwc, train):
    return model(x_nhwc, train=train)


def _nhwc(name: str) -> jax.Array:
    return jnp.asarray(REFERENCE[name].astype(np.float32).transpose(0, 2, 3, 1))


def _assert_matches_torch(got_nhwc, reference_name: str) -> None:
    ref = REFERENCE[reference_name].transpose(0, 2, 3, 1)
    got = np.asarray(got_nhwc)
    assert got.shape == ref.shape
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)


def _run(model, x, train=False):
    with jax.default_matmul_precision('float32'):  # no TF32 on accelerators
        return _features(model, x, train)


def test_resnet18_safetensors_file_with_module_prefix_reproduces_torchvision(tmp_path):
    state = _synthetic_state('resnet18', prefix='module.')
    assert 'module.fc.weight' in state and 'module.bn1.num_batches_tracked' in state
    _write_safetensors(tmp_path / 'resnet18.safetensors', state)
    model = _model_from_state('resnet18', read_weights(tmp_path / 'resnet18.safetensors'))
    _assert_matches_torch(_run(model, _nhwc('color_nchw')), 'resnet18_features_nchw')


def test_resnet50_state_dict_reproduces_torchvision():
    model = _model_from_state('resnet50', _synthetic_state('resnet50'))
    _assert_matches_torch(_run(model, _nhwc('color_nchw')), 'resnet50_features_nchw')


def test_one_channel_model_equals_gray_image_replicated_into_torchvision():
    model = _model_from_state('resnet18', _synthetic_state('resnet18'), in_channels=1)
    assert model.conv1.kernel[...].shape == (7, 7, 1, 64)
    _assert_matches_torch(_run(model, _nhwc('gray_nchw')), 'resnet18_gray_features_nchw')


def test_one_channel_weights_load_into_a_three_channel_model():
    state = _synthetic_state('resnet18')
    state['conv1.weight'] = state['conv1.weight'].sum(axis=1, keepdims=True)
    model = _model_from_state('resnet18', state)
    gray3 = jnp.repeat(_nhwc('gray_nchw'), 3, axis=-1)
    _assert_matches_torch(_run(model, gray3), 'resnet18_gray_features_nchw')


def test_frozen_batchnorm_in_train_mode_gives_torchvision_eval_features():
    state = _synthetic_state('resnet18')
    model = _model_from_state('resnet18', state, freeze_bn_stats=True)
    _assert_matches_torch(_run(model, _nhwc('color_nchw'), train=True), 'resnet18_features_nchw')
    np.testing.assert_array_equal(model.layer3[1].bn2.var[...], state['layer3.1.bn2.running_var'])


def test_import_transposes_convolutions_and_keeps_batchnorm_vectors():
    state = _synthetic_state('resnet18')
    model = _model_from_state('resnet18', state)
    np.testing.assert_array_equal(model.layer2[0].conv1.kernel[...],
                                  state['layer2.0.conv1.weight'].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.layer2[0].downsample_conv.kernel[...],
                                  state['layer2.0.downsample.0.weight'].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.layer2[0].downsample_bn.mean[...],
                                  state['layer2.0.downsample.1.running_mean'])
    np.testing.assert_array_equal(model.bn1.scale[...], state['bn1.weight'])


def test_strips_a_wrapper_prefix_and_ignores_other_modules():
    state = _synthetic_state('resnet18', prefix='encoder.backbone.')
    state['decoder.embed.weight'] = np.zeros((5, 3), np.float32)
    model = _model_from_state('resnet18', state)
    np.testing.assert_array_equal(model.conv1.kernel[...],
                                  state['encoder.backbone.conv1.weight'].transpose(2, 3, 1, 0))


def test_resnet18_weights_into_resnet34_name_the_missing_keys():
    resnet34 = nnx.eval_shape(lambda: ResNet('resnet34', rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"r18\.pth: does not match torchvision resnet34 "
                                         r"\(missing \['layer1\.2\.bn1\.bias'"):
        load_torchvision_state(resnet34, _synthetic_state('resnet18'), source='r18.pth')


def test_resnet50_weights_into_resnet18_name_the_unexpected_keys():
    resnet18 = nnx.eval_shape(lambda: ResNet('resnet18', rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['layer1\.0\.bn3\.bias'"):
        load_torchvision_state(resnet18, _synthetic_state('resnet50'), source='r50.pth')


def test_misshapen_entry_names_the_key_and_both_shapes():
    state = _synthetic_state('resnet18')
    state['layer1.0.conv2.weight'] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r'layer1\.0\.conv2\.weight has shape \(1, 1, 64, 64\).*'
                                         r'expects \(3, 3, 64, 64\)'):
        _model_from_state('resnet18', state)
