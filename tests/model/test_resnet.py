"""The ResNet backbone and its layers: shapes, parameter counts, torchvision padding, PyTorch
BatchNorm statistics, and the convolution kernels of both kernel sets (portable, XLA:CPU)."""

import functools
import json
import math
import os
import pathlib

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '/tmp/jax_cache')

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jima_jax.model import layers, xla_cpu
from jima_jax.model.layers import BatchNorm, max_pool_3x3_s2
from jima_jax.model.resnet import ResNet, feature_dim

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torchvision'
MANIFEST = json.loads((FIXTURES / 'manifest.json').read_text())
# torchvision's published parameter counts minus the ImageNet classifier (fc: in*1000 + 1000).
TORCHVISION_PARAMS = {'resnet18': 11_689_512 - 513_000, 'resnet34': 21_797_672 - 513_000,
                      'resnet50': 25_557_032 - 2_049_000, 'resnet101': 44_549_160 - 2_049_000}
ARCHS = tuple(TORCHVISION_PARAMS)


def _abstract(arch: str, **kwargs) -> ResNet:
    return nnx.eval_shape(lambda: ResNet(arch, rngs=nnx.Rngs(0), **kwargs))


def _numpy_initialised(arch: str, **kwargs) -> ResNet:
    """A ResNet with He-normal kernels drawn by numpy: the module's own init compiles one
    random-number program per kernel shape, seconds per backbone on a small CPU."""
    rng = np.random.default_rng(0)
    fill = {'kernel': lambda s: rng.normal(0, (2 / math.prod(s[:3])) ** 0.5, s),
            'scale': np.ones, 'var': np.ones, 'bias': np.zeros, 'mean': np.zeros}

    def init(path, s):
        name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
        return jnp.asarray(fill[name](s.shape), s.dtype)

    graphdef, variables = nnx.split(_abstract(arch, **kwargs))
    return nnx.merge(graphdef, jax.tree.map_with_path(init, variables))


# ---------------------------------------------------------------- backbone


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('hw,out_hw', [((64, 64), (2, 2)), ((65, 50), (3, 2))])
def test_feature_map_shape(arch, hw, out_hw):
    # 65x50 follows torchvision's floor arithmetic: 65 -> 33 -> 17 -> 17 -> 9 -> 5 -> 3.
    model = _abstract(arch)
    x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    out = nnx.eval_shape(lambda m, x: m(x, train=False), model, x)
    channels = 512 if arch in ('resnet18', 'resnet34') else 2048
    assert out.shape == (2, *out_hw, channels)
    assert feature_dim(arch) == model.feature_dim == channels


@pytest.mark.parametrize('arch', ARCHS)
def test_parameter_counts_equal_torchvision(arch):
    model = _abstract(arch)
    params = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    stats = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    assert params == MANIFEST['counts'][arch]['params'] == TORCHVISION_PARAMS[arch]
    assert stats == MANIFEST['counts'][arch]['buffers']  # running mean + var of every BN


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match=r"model.backbone='resnet19'.*resnet101"):
        _abstract('resnet19')


def test_backbone_width_scales_every_convolution_and_the_features(arch='resnet18'):
    """model.backbone_width=w: every kernel of torchvision's layout with its channels times w/64
    (the 3 input channels of the stem excepted), so the FLOPs are about (w/64)^2."""
    wide, narrow = _abstract(arch), _abstract(arch, base_width=16)
    wide_kernels = dict(nnx.to_flat_state(nnx.state(wide, nnx.Param)))
    narrow_kernels = dict(nnx.to_flat_state(nnx.state(narrow, nnx.Param)))
    assert wide_kernels.keys() == narrow_kernels.keys()
    for path, v in wide_kernels.items():
        want = list(v.shape)
        want[-1] //= 4
        if len(want) == 4 and path[0] != 'conv1':
            want[2] //= 4
        assert list(narrow_kernels[path].shape) == want, path
    assert narrow.feature_dim == feature_dim(arch, 16) == feature_dim(arch) // 4
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m(x, train=False), narrow, x).shape == (
        2, 2, 2, feature_dim(arch) // 4)
    assert feature_dim('resnet50', 16) == 512 and feature_dim('resnet50', 128) == 4096


def test_backbone_width_key_defaults_to_torchvision_and_refuses_bad_values():
    import ml_collections
    from configs import default
    from jima_jax.model import resnet
    assert default.get_config().model.backbone_width == resnet.TORCHVISION_WIDTH == 64
    saved_before_the_key = ml_collections.ConfigDict({'backbone': 'resnet18'})
    assert resnet.base_width(saved_before_the_key) == 64  # old config.json files load unchanged
    for bad in (0, 12, 32.0, '32', True):
        with pytest.raises(ValueError, match=r'model.backbone_width=.*multiple of 8'):
            resnet.base_width(ml_collections.ConfigDict({'backbone_width': bad}))


def test_torchvision_weights_into_a_narrow_backbone_name_the_width():
    from jima_jax.model import resnet
    state = resnet.torchvision_state(_numpy_initialised('resnet18'))
    with pytest.raises(ValueError, match=r'conv1.weight has shape .*backbone_width'):
        resnet.load_torchvision_state(_numpy_initialised('resnet18', base_width=32), state)


# ---------------------------------------------------------------- convolution and pooling


def _naive_conv(x, kernel, stride):
    """Direct NHWC/HWIO convolution with torchvision's zero padding k // 2 on every side."""
    kh, kw, _, cout = kernel.shape
    p = kh // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh = (x.shape[1] + 2 * p - kh) // stride + 1
    ow = (x.shape[2] + 2 * p - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum('nhwc,hwco->no', patch, kernel)
    return out


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CONV = {'portable': layers.conv2d, 'xla_cpu': xla_cpu.conv2d}


@pytest.mark.parametrize('k,stride', [(7, 2), (3, 2), (3, 1), (1, 2), (1, 1)])
@pytest.mark.parametrize('hw', [(9, 10), (2, 2), (3, 4)])  # 2x2 / 3x4: tiny output maps
@pytest.mark.parametrize('kernels', sorted(CONV))
def test_conv_pads_like_torchvision(k, stride, hw, kernels):
    x, kernel = _random((2, *hw, 3), 0), _random((k, k, 3, 4), 1)
    got = CONV[kernels](jnp.asarray(x), jnp.asarray(kernel), stride)
    np.testing.assert_allclose(got, _naive_conv(x, kernel, stride), rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _conv_and_grads(kernels, stride, x, kernel, cotangent):
    y, vjp = jax.vjp(lambda x_, k_: CONV[kernels](x_, k_, stride), x, kernel)
    return (y, *vjp(cotangent))


@pytest.mark.parametrize('k,stride,hw', [(7, 2, (11, 12)), (3, 2, (11, 12)), (3, 1, (11, 12)),
                                         (3, 1, (2, 2)), (3, 2, (3, 4)), (7, 2, (4, 3))])
def test_xla_cpu_conv_forward_and_gradients_equal_portable(k, stride, hw):
    # (2, 2) / (3, 4) / (4, 3) inputs give output maps of <= 4 positions: the patch matmul.
    x, kernel = jnp.asarray(_random((2, *hw, 5), 2)), jnp.asarray(_random((k, k, 5, 6), 3))
    out_hw = [(n + 2 * (k // 2) - k) // stride + 1 for n in hw]
    cotangent = jnp.asarray(_random((2, *out_hw, 6), 4))
    want = _conv_and_grads('portable', stride, x, kernel, cotangent)
    got = _conv_and_grads('xla_cpu', stride, x, kernel, cotangent)
    for name, a, b in zip(('y', 'dx', 'dkernel'), got, want):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()),
                                   err_msg=name)


@pytest.mark.parametrize('stride', [1, 2])
def test_pointwise_conv_gradients_equal_autodiff_of_the_einsum(stride):
    x, kernel = jnp.asarray(_random((2, 6, 7, 5), 5)), jnp.asarray(_random((1, 1, 5, 3), 6))
    out_hw = (6 + stride - 1) // stride, (7 + stride - 1) // stride
    cotangent = jnp.asarray(_random((2, *out_hw, 3), 7))

    def einsum_conv(x_, k_):
        return jnp.einsum('nhwc,co->nhwo', x_[:, ::stride, ::stride, :], k_[0, 0])

    y_ref, vjp_ref = jax.vjp(einsum_conv, x, kernel)
    y, dx, dk = _conv_and_grads('xla_cpu', stride, x, kernel, cotangent)  # the custom VJP
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for name, got, want in zip(('dx', 'dkernel'), (dx, dk), vjp_ref(cotangent)):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    if stride == 2:  # rows the strided convolution skips get no gradient
        assert float(jnp.abs(dx[:, 1::2]).max()) == 0.0


def _stage_fusion_reads(keep_block_outputs: bool) -> int:
    """Most block-output-sized inputs any fused kernel reads, in a compiled 6-block stage (XLA:CPU
    convolutions either way; the block outputs kept by `xla_cpu.materialize` or not)."""
    import re
    from jima_jax.model import resnet
    blocks = [resnet.Bottleneck(256, 64, 1, conv=lambda i, o, k, s: xla_cpu.Conv2d(
        i, o, k, s, rngs=nnx.Rngs(n)), bn=layers.BatchNorm,
        kernels='xla_cpu' if keep_block_outputs else 'portable') for n in range(6)]

    def stage(x):
        for block in blocks:
            x = block(x, True, False)
        return x.sum()

    x = jnp.asarray(_random((8, 16, 16, 256), 3))
    hlo = jax.jit(jax.grad(stage)).lower(x).compile().as_text()
    computations = re.findall(r'^%?[\w.\-]+ [^\n]*\{\n(.*?)\n\}', hlo, re.M | re.S)
    sized = r'f32\[(?:8,16,16,256|2048,256)\]\S* parameter'
    return max(len(re.findall(sized, c)) for c in computations[:-1])  # the last is the entry


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the fix is for XLA:CPU fusion')
def test_block_outputs_are_read_not_recomputed_by_later_blocks():
    # Without `materialize`, XLA:CPU fuses the whole residual chain into each block's kernels: the
    # k-th reads all k earlier convolution outputs (quadratic in stage depth; the ResNet-101
    # paper-shape step took 19.5 instead of 17.4 s). With it, no fused kernel reads more than a few.
    assert _stage_fusion_reads(keep_block_outputs=True) <= 3
    assert _stage_fusion_reads(keep_block_outputs=False) >= 6


def test_materialize_is_the_identity_with_an_identity_gradient():
    materialize = xla_cpu.materialize
    x = jnp.asarray(_random((2, 3, 3, 4), 8))
    y, vjp = jax.vjp(materialize, x)
    np.testing.assert_array_equal(y, x)
    g = jnp.asarray(_random((2, 3, 3, 4), 9))
    np.testing.assert_array_equal(vjp(g)[0], g)
    np.testing.assert_array_equal(jax.jit(materialize)(-x), -x)  # the other branch, same value


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - np.arange(2 * 5 * 6 * 1, dtype=np.float32).reshape(2, 5, 6, 1)  # all negative
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    want = np.array([[[[xp[n, 2 * i:2 * i + 3, 2 * j:2 * j + 3, 0].max()] for j in range(3)]
                      for i in range(3)] for n in range(2)])
    np.testing.assert_array_equal(max_pool_3x3_s2(jnp.asarray(x)), want)


# ---------------------------------------------------------------- BatchNorm

# NHWC [2, 1, 2, 2]: channel 0 holds 1, 2, 3, 4; channel 1 holds 0, 0, 0, 8.
X = np.array([[[[1, 0], [2, 0]]], [[[3, 0], [4, 8]]]], np.float32)
BATCH_MEAN = np.array([2.5, 2.0])
BATCH_VAR = np.array([1.25, 12.0])  # biased: used to normalise
# Running statistics after one and two train steps from (0, 1), momentum 0.1, unbiased variance
# (5/3 and 16): 0.9 * 0 + 0.1 * 2.5 = 0.25, 0.9 * 1 + 0.1 * 5/3 = 1.0667, then again.
RUNNING_1 = (np.array([0.25, 0.2]), np.array([0.9 + 1 / 6, 2.5]))
RUNNING_2 = (np.array([0.475, 0.38]), np.array([0.9 * (0.9 + 1 / 6) + 1 / 6, 3.85]))


def _bn(frozen=False):
    bn = BatchNorm(2, frozen=frozen)
    bn.scale[...] = jnp.array([2.0, 0.5])
    bn.bias[...] = jnp.array([1.0, -1.0])
    return bn


def _normalised(mean, var):
    return (X - mean) / np.sqrt(var + 1e-5) * np.array([2.0, 0.5]) + np.array([1.0, -1.0])


def test_batchnorm_train_step_follows_pytorch_running_statistics():
    bn = _bn()
    y = bn(jnp.asarray(X), train=True)
    np.testing.assert_allclose(y, _normalised(BATCH_MEAN, BATCH_VAR), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bn.mean[...], RUNNING_1[0], rtol=1e-6)
    np.testing.assert_allclose(bn.var[...], RUNNING_1[1], rtol=1e-6)
    bn(jnp.asarray(X), train=True)
    np.testing.assert_allclose(bn.mean[...], RUNNING_2[0], rtol=1e-6)
    np.testing.assert_allclose(bn.var[...], RUNNING_2[1], rtol=1e-6)
    y_eval = bn(jnp.asarray(X), train=False)
    np.testing.assert_allclose(y_eval, _normalised(*RUNNING_2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.mean[...], RUNNING_2[0], rtol=1e-6)  # eval does not update


def test_batchnorm_matches_a_torch_train_step():
    ref = np.load(FIXTURES / 'bn_reference.npz')
    bn = BatchNorm(3)
    for var, key in ((bn.scale, 'weight'), (bn.bias, 'bias'), (bn.mean, 'running_mean'),
                     (bn.var, 'running_var')):
        var[...] = jnp.asarray(ref[f'init_{key}'])
    y = bn(jnp.asarray(ref['x_nchw'].transpose(0, 2, 3, 1)), train=True)
    np.testing.assert_allclose(y, ref['y_nchw'].transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], ref['new_running_mean'], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn.var[...], ref['new_running_var'], rtol=1e-5)


def test_frozen_batchnorm_uses_and_keeps_running_statistics():
    bn = _bn(frozen=True)
    mean, var = np.array([1.0, -1.0], np.float32), np.array([4.0, 0.25], np.float32)
    bn.mean[...], bn.var[...] = jnp.asarray(mean), jnp.asarray(var)
    y = bn(jnp.asarray(X), train=True)
    np.testing.assert_allclose(y, _normalised(mean, var), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(bn.mean[...], mean)
    np.testing.assert_array_equal(bn.var[...], var)


def test_update_stats_false_normalises_with_the_batch_but_leaves_statistics():
    bn = _bn()
    y = bn(jnp.asarray(X), train=True, update_stats=False)
    np.testing.assert_allclose(y, _normalised(BATCH_MEAN, BATCH_VAR), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(bn.mean[...], np.zeros(2))
    np.testing.assert_array_equal(bn.var[...], np.ones(2))


def test_backbone_update_stats_false_leaves_every_statistic_bit_identical():
    model = _numpy_initialised('resnet18')
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    step = nnx.jit(lambda m, x, update: m(x, train=True, update_stats=update), static_argnums=2)
    x = jnp.asarray(_random((2, 32, 32, 3), 5))
    out = step(model, x, False)
    assert out.shape == (2, 1, 1, 512) and bool(jnp.all(jnp.isfinite(out)))
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, after, before)
    step(model, x, True)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                           nnx.state(model, nnx.BatchStat), before)
    assert all(jax.tree.leaves(changed))  # and update_stats=True moves every one of them
