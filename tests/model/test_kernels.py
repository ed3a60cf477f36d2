"""`model.kernels`: 'portable' and 'xla_cpu' compute the same backbone, 'auto' is resolved once
at construction, bad values and configs saved with the old `model.conv_impl` key."""

import json
import os
import warnings

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '/tmp/jax_cache')

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jima_jax import exported, kernel_choice, run_config
from jima_jax.configs import smoke
from jima_jax.model import jima, layers, resnet, xla_cpu

ON_CPU = jax.default_backend() == 'cpu'


def _resnet18(kernels: str) -> resnet.ResNet:
    """ResNet-18 with the same numpy-drawn parameters whatever `kernels` (the module's own init
    compiles a random-number program per kernel shape: slow on a small CPU)."""
    abstract = nnx.eval_shape(lambda: resnet.ResNet('resnet18', kernels=kernels,
                                                    rngs=nnx.Rngs(0)))
    graphdef, variables = nnx.split(abstract)
    rng = np.random.default_rng(0)

    def init(path, s):
        name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
        if name == 'kernel':
            return jnp.asarray(rng.normal(0, (2 / np.prod(s.shape[:3])) ** 0.5, s.shape), s.dtype)
        return jnp.asarray(rng.uniform(0.5, 1.5, s.shape) if name in ('scale', 'var')
                           else rng.normal(0, 0.1, s.shape), s.dtype)

    return nnx.merge(graphdef, jax.tree.map_with_path(init, variables))


@jax.jit
def _forward_and_grads(graphdef, params, rest, x):
    """Train-mode features (batch statistics, running ones left alone) and the gradients of a
    nonlinear function of them with respect to every parameter and the input."""
    def loss(p, x_):
        y = nnx.merge(graphdef, p, rest)(x_, train=True, update_stats=False)
        return jnp.sum(jnp.sin(3.0 * y)), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return y, grads


_X = jnp.asarray(np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32))
_CACHE: dict = {}


def _outputs(kernels: str):
    """(graphdef, features, gradients) of ResNet-18 at 64 px: the stride-2 1x1 downsamples, the
    2x2 output maps of stage 4 (the patch matmul) and every block output in the program."""
    if kernels not in _CACHE:
        model = _resnet18(kernels)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        _CACHE[kernels] = (graphdef, *jax.device_get(_forward_and_grads(graphdef, params, rest,
                                                                        _X)))
    return _CACHE[kernels]


def test_portable_and_xla_cpu_give_the_same_forward_and_gradients():
    _, y_p, g_p = _outputs('portable')
    _, y_c, g_c = _outputs('xla_cpu')
    assert y_p.shape == (2, 2, 2, 512)
    np.testing.assert_allclose(y_c, y_p, rtol=1e-5, atol=1e-5 * np.abs(y_p).max())
    leaves_p = jax.tree_util.tree_leaves_with_path(g_p)
    leaves_c = jax.tree.leaves(g_c)
    assert len(leaves_p) == len(leaves_c) == 20 + 20 * 2 + 1  # conv, BN scale + bias; input
    for (path, want), got in zip(leaves_p, leaves_c):
        scale = float(np.abs(want).max())
        assert scale > 0, jax.tree_util.keystr(path)
        # float32 rounding order only: agreement to ~1e-4 of each tensor's largest entry
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=jax.tree_util.keystr(path))


def test_the_kernel_sets_build_different_programs():
    """The switch is real: 'xla_cpu' keeps block outputs behind a conditional, 'portable' has
    none, and the two programs differ."""
    texts = {}
    for kernels in ('portable', 'xla_cpu'):
        model = _resnet18(kernels)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        texts[kernels] = _forward_and_grads.lower(graphdef, params, rest, _X).as_text()
    assert 'stablehlo.case' not in texts['portable'] and 'stablehlo.case' in texts['xla_cpu']
    assert texts['xla_cpu'].count('stablehlo.case') >= 8  # one per block output at least


@pytest.mark.skipif(not ON_CPU, reason="'auto' is 'xla_cpu' only when JAX computes on the CPU")
def test_auto_on_cpu_is_xla_cpu_bit_for_bit():
    assert resnet.ResNet('resnet18', rngs=nnx.Rngs(0)).kernels == 'xla_cpu'
    graph_auto, y_auto, g_auto = _outputs('auto')
    graph_cpu, y_cpu, g_cpu = _outputs('xla_cpu')
    assert graph_auto == graph_cpu  # the same modules, hence the same program
    np.testing.assert_array_equal(y_auto, y_cpu)
    for a, b in zip(jax.tree.leaves(g_auto), jax.tree.leaves(g_cpu)):
        assert a.tobytes() == b.tobytes()


def test_auto_resolves_from_the_backend_once_at_construction(monkeypatch):
    monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
    assert kernel_choice.resolve('auto') == 'portable'
    model = nnx.eval_shape(lambda: resnet.ResNet('resnet18', rngs=nnx.Rngs(0)))
    assert model.kernels == 'portable'
    assert type(model.conv1) is layers.Conv2d and type(model.layer1[0].conv1) is layers.Conv2d
    monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
    assert kernel_choice.resolve('auto') == 'xla_cpu'
    assert type(nnx.eval_shape(lambda: resnet.ResNet('resnet18', rngs=nnx.Rngs(0))).conv1
                ) is xla_cpu.Conv2d
    for explicit in ('portable', 'xla_cpu'):  # explicit values never look at the backend
        assert kernel_choice.resolve(explicit) == explicit


def _model_config(**model):
    c = smoke.get_config()
    c.model.update(model)
    return c


@pytest.mark.parametrize('value', ['cudnn', 'XLA_CPU', '', 'im2col'])
def test_a_bad_value_names_the_key_and_the_choices(value):
    c = _model_config(kernels=value)
    with pytest.raises(ValueError, match=rf"model.kernels={value!r}: expected one of 'auto', "
                                         r"'portable', 'xla_cpu'\."):
        jima.JIMA(c.model, vocab_size=20, num_views=2, max_len=13, rngs=nnx.Rngs(0))


def _old_saved_config(conv_impl: str) -> dict:
    """A run's config.json as written before model.kernels: model.conv_impl, no model.kernels."""
    saved = json.loads(smoke.get_config().to_json_best_effort())
    del saved['model']['kernels']
    saved['model']['conv_impl'] = conv_impl
    return saved


@pytest.mark.parametrize('conv_impl', ['auto', 'xla'])
def test_an_export_saved_with_conv_impl_loads_as_the_same_model(conv_impl):
    config = exported._config(_old_saved_config(conv_impl))  # what ExportedModel.load does
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        old = jima.build(config, vocab_size=20, abstract=True)
    new = jima.build(smoke.get_config(), vocab_size=20, abstract=True)
    assert old.visual.kernels == new.visual.kernels == kernel_choice.resolve('auto')
    assert nnx.graphdef(old) == nnx.graphdef(new)  # same modules: the same numbers


def test_conv_impl_im2col_loads_with_a_warning_and_unknown_values_name_the_fix():
    config = exported._config(_old_saved_config('im2col'))
    with pytest.warns(UserWarning, match=r"model.conv_impl='im2col'.*same"):
        model = jima.build(config, vocab_size=20, abstract=True)
    assert model.visual.kernels == kernel_choice.resolve('auto')
    config = exported._config(_old_saved_config('cudnn'))
    with pytest.raises(ValueError, match=r"model.conv_impl='cudnn': this key was replaced by "
                                         r"model.kernels .*delete model.conv_impl"):
        jima.build(config, vocab_size=20, abstract=True)


def test_a_run_dir_saved_with_conv_impl_is_used_by_eval(tmp_path):
    (tmp_path / 'config.json').write_text(json.dumps(_old_saved_config('auto')))
    current = smoke.get_config()
    current.model.kernels = 'portable'  # free: a kernel set is no part of the trained model
    config, taken = run_config.apply_saved(current, tmp_path, ['--config.model.kernels=portable'])
    assert 'model.kernels' not in taken and config.model.kernels == 'portable'
    assert 'conv_impl' not in config.model


def test_default_config_has_kernels_auto_and_no_conv_impl():
    c = ml_collections.ConfigDict(smoke.get_config())
    assert c.model.kernels == 'auto' and 'conv_impl' not in c.model
    assert kernel_choice.configured(c.model) == 'auto'
