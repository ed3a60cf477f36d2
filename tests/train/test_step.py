"""The fused train step: shapes, parameter-group isolation, composition, learning, donation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import smoke
from jima_jax.model import jima
from jima_jax.train import losses, step as step_lib
from tests.helpers import random_batch

VOCAB = 40


def _config(**model):
    c = smoke.get_config()
    c.model.update(model)
    c.data.max_len = 12
    return c


@functools.lru_cache(maxsize=None)
def _setup(entity_head='patch_linear', views=2, mode='alternate'):
    c = _config(entity_head=entity_head)
    c.data.num_views = views
    c.train.mode = mode
    model = jima.JIMA(c.model, vocab_size=VOCAB, num_views=views, max_len=c.data.max_len + 1,
                      rngs=nnx.Rngs(0))
    modeldef, params, stats = step_lib.split_model(model)
    return c, modeldef, params, stats


def _batch(seed, c, batch=4):
    return random_batch(np.random.default_rng(seed), batch=batch, views=c.data.num_views,
                        image=c.input.image_size, vocab=VOCAB, max_len=c.data.max_len)


@pytest.mark.parametrize('entity_head,views', [('patch_linear', 2), ('mlp', 1)])
def test_forward_shapes(entity_head, views):
    c, modeldef, params, stats = _setup(entity_head, views)
    model = modeldef.merge(params, stats)
    b = _batch(0, c)
    x = jima.normalize_images(jnp.asarray(b['images']), c.input.mean, c.input.std, 3)
    patches, pooled = model.features(x, train=False)
    # resnet18 at 32x32 -> 1x1 feature map per view
    assert patches.shape == (4, views * 1, 512) and pooled.shape == (4, views * 512)
    ent, rep = model(x, jnp.asarray(b['tokens'][:, :-1]))
    assert ent.shape == (4, VOCAB)
    assert rep.shape == (4, c.data.max_len + 1, VOCAB)


def test_fusion_is_the_cross_concatenation_product():
    c, modeldef, params, stats = _setup()
    model = modeldef.merge(params, stats)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 512)).astype(np.float32)
    q = rng.random((1, VOCAB)).astype(np.float32)
    got = model.report.fuse(jnp.asarray(x), jnp.asarray(q))
    a = np.concatenate([x, np.broadcast_to(q[:, None], (1, 3, VOCAB))], -1)
    b = np.concatenate([np.broadcast_to(q[:, None], (1, 3, VOCAB)), x], -1)
    w = np.asarray(params['report']['fusion']['kernel'])
    bias = np.asarray(params['report']['fusion']['bias'])
    np.testing.assert_allclose(got, np.maximum((a * b) @ w + bias, 0), rtol=1e-4, atol=1e-5)


def _tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_task2_leaves_visual_and_entity_bit_identical_and_task1_leaves_report():
    c, modeldef, params, stats = _setup()
    tasks = step_lib.TaskUpdates(modeldef, c, VOCAB)
    tables = losses.LossTables.uniform(VOCAB)
    state = step_lib.init_train_state(c, params, stats)
    epoch = jnp.int32(0)
    after1, l1 = jax.jit(tasks.task1)(state, _batch(1, c), epoch, tables)
    after2, l2 = jax.jit(tasks.task2)(after1, _batch(2, c), epoch, tables, jax.random.key(0))
    host1, host2, host0 = jax.device_get((after1, after2, state))
    # Task 2: f_R, f_E, their BatchNorm statistics and optimizer alpha untouched, bit for bit.
    for group in ('visual', 'entity'):
        assert _tree_equal(host1.params[group], host2.params[group])
    assert _tree_equal(host1.batch_stats, host2.batch_stats)
    assert _tree_equal(host1.opt1, host2.opt1)
    assert not _tree_equal(host1.params['report'], host2.params['report'])
    # Task 1: the report generator untouched; f_R, f_E and the running statistics move.
    assert _tree_equal(host0.params['report'], host1.params['report'])
    assert not _tree_equal(host0.params['visual'], host1.params['visual'])
    assert not _tree_equal(host0.params['entity'], host1.params['entity'])
    assert not _tree_equal(host0.batch_stats, host1.batch_stats)
    assert np.isfinite(float(l1)) and np.isfinite(float(l2))


def test_fused_step_equals_task1_then_task2_and_donates_the_state():
    c, modeldef, params, stats = _setup()
    tasks = step_lib.TaskUpdates(modeldef, c, VOCAB)
    tables = losses.LossTables.uniform(VOCAB)
    state = step_lib.init_train_state(c, params, stats)
    a, b, epoch = _batch(3, c), _batch(4, c), jnp.int32(1)

    @jax.jit
    def composed(state, a, b, epoch, tables):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        s1, l1 = tasks.task1(state, a, epoch, tables)
        s2, l2 = tasks.task2(s1, b, epoch, tables, key)
        return s2, l1, l2

    expected, l1, l2 = jax.device_get(composed(state, a, b, epoch, tables))
    fused = jax.jit(step_lib.build_train_step(modeldef, c, VOCAB), donate_argnums=(0,))
    dev_state = jax.device_put(state)
    new_state, metrics = fused(dev_state, a, b, epoch, tables)
    assert jax.tree.leaves(dev_state.params)[0].is_deleted()  # the input state was donated
    got = jax.device_get(new_state)
    assert int(got.step) == 1
    np.testing.assert_allclose(float(metrics['loss/entity']), float(l1), rtol=1e-6)
    np.testing.assert_allclose(float(metrics['loss/report']), float(l2), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics['lr/task1_factor']), 0.8, rtol=1e-6)


def test_joint_mode_updates_every_group_and_both_losses_fall_on_a_fixed_batch():
    c, modeldef, params, stats = _setup(mode='joint')
    fused = jax.jit(step_lib.build_train_step(modeldef, c, VOCAB))
    tables = losses.LossTables.uniform(VOCAB)
    state = step_lib.init_train_state(c, params, stats)
    batch = _batch(5, c, batch=8)
    first = None
    for _ in range(8):
        new, metrics = fused(state, batch, batch, jnp.int32(0), tables)
        if first is None:
            first = jax.device_get(metrics)
            for group in ('visual', 'entity', 'report'):
                assert not _tree_equal(jax.device_get(state.params[group]),
                                       jax.device_get(new.params[group]))
        state = new
    last = jax.device_get(metrics)
    assert last['loss/entity'] < 0.7 * first['loss/entity']
    assert last['loss/report'] < first['loss/report'] - 0.3


def test_unknown_mode_is_reported():
    c, modeldef, _, _ = _setup()
    c.train.mode = 'sometimes'
    with pytest.raises(ValueError, match='train.mode'):
        step_lib.build_train_step(modeldef, c, VOCAB)
