"""The fused train step: shapes, parameter-group isolation, composition, learning, donation."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import smoke
from jima_jax.model import jima
from jima_jax.runtime import cpu_host
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


def test_concat_fusion_feeds_patches_and_q_side_by_side_with_the_same_parameters():
    c, modeldef, params, stats = _setup()
    cat = jima.JIMA(_config(fusion='concat').model, vocab_size=VOCAB, num_views=2,
                    max_len=c.data.max_len + 1, rngs=nnx.Rngs(0))
    _, cat_params, _ = step_lib.split_model(cat)
    same_shapes = jax.tree.map(lambda a, b: a.shape == b.shape, params, cat_params)
    assert all(jax.tree.leaves(same_shapes))  # checkpoints of either kind fit the other's tree
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 512)).astype(np.float32)
    q = rng.random((2, VOCAB)).astype(np.float32)
    got = np.asarray(cat.report.fuse(jnp.asarray(x), jnp.asarray(q)))
    w = np.asarray(cat_params['report']['fusion']['kernel'])
    bias = np.asarray(cat_params['report']['fusion']['bias'])
    want = np.maximum(x @ w[:512] + (q @ w[512:])[:, None, :] + bias, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    # With d < |V| (the narrow backbones: d = 128 at backbone_width 16) and q = 0, the paper's
    # product drops every patch channel, so the fused tokens are the bias alone; concat keeps X.
    vocab, x = 200, jnp.asarray(rng.normal(size=(2, 3, 128)).astype(np.float32))
    for kind, patches_reach_f_t in (('cross', False), ('concat', True)):
        narrow = jima.JIMA(_config(backbone_width=16, fusion=kind).model, vocab_size=vocab,
                           num_views=1, max_len=13, rngs=nnx.Rngs(0))
        fused = np.asarray(narrow.report.fuse(x, jnp.zeros((2, vocab))))
        only_bias = np.maximum(np.asarray(narrow.report.fusion.bias.value), 0)
        assert (np.abs(fused - only_bias).max() > 0.1) == patches_reach_f_t, kind


def test_fusion_key_refuses_an_unknown_kind_and_reads_old_configs_as_cross():
    with pytest.raises(ValueError, match=r"model.fusion='sum'.*'cross'.*'concat'"):
        jima.JIMA(_config(fusion='sum').model, vocab_size=VOCAB, num_views=1, max_len=13,
                  rngs=nnx.Rngs(0))
    old = _config().model
    del old['fusion']
    assert jima.fusion(old) == 'cross'


def _tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_task2_leaves_visual_and_entity_bit_identical_and_task1_leaves_report():
    c, modeldef, params, stats = _setup()
    tasks = step_lib.TaskUpdates(modeldef, c, VOCAB)
    tables = losses.LossTables.uniform(VOCAB)
    state = step_lib.init_train_state(c, params, stats)
    epoch, key = jnp.int32(0), jax.random.key(0)
    after1, l1 = jax.jit(tasks.task1)(state, _batch(1, c), epoch, tables, key)
    after2, l2 = jax.jit(tasks.task2)(after1, _batch(2, c), epoch, tables, key)
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
    # Task 1 then Task 2 as two programs (the ones test_task2_leaves_... and test_joint_and_baseline
    # compile, so the compilation cache has them), with the step's key
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    s1, l1 = jax.jit(tasks.task1)(state, a, epoch, tables, key)
    expected, l2 = jax.device_get(jax.jit(tasks.task2)(s1, b, epoch, tables, key))
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


def test_frozen_visual_keeps_f_r_bit_identical_skips_its_backward_and_trains_the_rest():
    c = _config()  # its own parameters: a test above donates the cached ones of _setup()
    modeldef, params, stats = step_lib.split_model(
        jima.JIMA(c.model, vocab_size=VOCAB, num_views=2, max_len=c.data.max_len + 1,
                  rngs=nnx.Rngs(0)))
    frozen_c = _config()
    frozen_c.optim.task1.visual_lr = 0.0
    tables = losses.LossTables.uniform(VOCAB)
    a, b, epoch = _batch(3, c), _batch(4, c), jnp.int32(0)
    steps = {}
    for name, cfg in (('trained', c), ('frozen', frozen_c)):
        fn = jax.jit(step_lib.build_train_step(modeldef, cfg, VOCAB))
        state = step_lib.init_train_state(cfg, params, stats)
        hlo = fn.lower(state, a, b, epoch, tables).as_text()
        steps[name] = (hlo.count('stablehlo.convolution'), jax.device_get(
            fn(state, a, b, epoch, tables)))
    (convs, (trained, m_t)), (frozen_convs, (frozen, m_f)) = steps['trained'], steps['frozen']
    assert _tree_equal(frozen.params['visual'], jax.device_get(params['visual']))
    assert not _tree_equal(trained.params['visual'], jax.device_get(params['visual']))
    # The forward passes of batches A and B remain; the backward (data and filter gradients of
    # every convolution of batch A, about twice its forward count) is gone.
    assert 0 < frozen_convs < 0.6 * convs, (frozen_convs, convs)
    # f_E's gradient does not pass through f_R's parameters, so from one state both steps give
    # f_E and the BatchNorm statistics the same values (Task 2 then reads another f_R).
    for x, y in zip(jax.tree.leaves(trained.params['entity']),
                    jax.tree.leaves(frozen.params['entity'])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert not _tree_equal(frozen.params['report'], jax.device_get(params['report']))
    for x, y in zip(jax.tree.leaves(trained.batch_stats), jax.tree.leaves(frozen.batch_stats)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m_f['loss/entity']), float(m_t['loss/entity']), rtol=1e-6)


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


_SCHEDULE_PROBE = """
import json, os, sys
from jima_jax.runtime import cpu_host, parallel
from tests.train import sharded_trajectory as st
c = st.config(smooth=False, dropout=False)
c.parallel.cpu_scheduler = sys.argv[1]
from jax._src import xla_bridge
early = not xla_bridge.backends_are_initialized()  # XLA reads XLA_FLAGS once, at its start
cpu_host.use_cpu_scheduler(c.parallel)
import jax, jax.numpy as jnp, numpy as np
from jima_jax.train import losses, step as step_lib
modeldef, state = st.model_and_state(c)
mesh = parallel.make_mesh(c.parallel)
sharding = parallel.state_shardings(mesh, state, c.parallel)
step = step_lib.jit_train_step(step_lib.build_train_step(modeldef, c, st.VOCAB), mesh, sharding)
args = (jax.device_put(state, sharding), *st.batches(c, 2), jnp.int32(0),
        losses.LossTables.uniform(st.VOCAB))
compiled = step.lower(*args).compile()
state, metrics = compiled(*args)
leaves = [np.asarray(x).tobytes().hex() for x in jax.tree.leaves(jax.device_get(state.params))]
print(json.dumps(dict(loss=float(metrics['loss/report']), params=hash(tuple(leaves)),
                      flags=os.environ.get('XLA_FLAGS', ''), early=early)))
"""


def _probe(script: str, choices, env: dict, timeout: int) -> dict:
    """Runs `script` once per choice in a fresh Python (process-wide settings) -> its last line."""
    import json
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[2]
    out = {}
    for choice in choices:
        proc = subprocess.run([sys.executable, '-c', script, choice], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[choice] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_memory_scheduler_gives_the_same_step_bit_for_bit():
    # Its memory saving shows at real shapes only (benchmarks/train_step.py: 6.7 -> 5.7 GB at
    # the paper shape); here it must change nothing but the op order. The step is
    # test_sharding.py's one-device training-mode step, which the cache may hold already for
    # the default scheduler.
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env['PYTHONHASHSEED'] = '0'
    env['JAX_PLATFORMS'] = 'cpu'  # the flag is for XLA:CPU only
    out = _probe(_SCHEDULE_PROBE, ('memory', 'concurrency'), env, timeout=600)
    assert out['memory']['loss'] == out['concurrency']['loss']
    assert out['memory']['params'] == out['concurrency']['params']
    assert 'concurrency_optimized_scheduler=false' in out['memory']['flags']
    assert out['concurrency']['flags'] == ''
    assert out['memory']['early']  # the flag was set before XLA started, so XLA used it


def test_cpu_scheduler_goes_into_xla_flags_unless_the_user_set_it(monkeypatch):
    c = _config()
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')  # the flag is for XLA:CPU only
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
    cpu_host.use_cpu_scheduler(c.parallel)
    assert os.environ['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=8 '
                                       '--xla_cpu_enable_concurrency_optimized_scheduler=false')
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_enable_concurrency_optimized_scheduler=true')
    cpu_host.use_cpu_scheduler(c.parallel)  # the user's own value wins
    assert os.environ['XLA_FLAGS'] == '--xla_cpu_enable_concurrency_optimized_scheduler=true'
    monkeypatch.delenv('XLA_FLAGS')
    c.parallel.cpu_scheduler = 'concurrency'
    cpu_host.use_cpu_scheduler(c.parallel)
    assert 'XLA_FLAGS' not in os.environ


def test_unknown_cpu_scheduler_names_the_field_and_the_choices():
    c = _config()
    c.parallel.cpu_scheduler = 'fastest'
    with pytest.raises(ValueError, match=r"parallel.cpu_scheduler='fastest'.*memory.*concurrency"):
        cpu_host.use_cpu_scheduler(c.parallel)


_MALLOC_PROBE = """
import json, resource, sys
from configs import default
from jima_jax.runtime import cpu_host
c = default.get_config()
c.parallel.cpu_malloc = sys.argv[1]
applied = cpu_host.use_cpu_malloc(c.parallel)
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: (a @ b).max(axis=1))  # temporaries (the product) in every call
a, b = jnp.ones((2048, 256)), jnp.ones((256, 32768))
for _ in range(8):  # compile, and let the heap reach its working size (a few calls)
    jax.block_until_ready(f(a, b))
windows = []  # the fewest faults of three windows: the steady state, not a late heap growth
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        jax.block_until_ready(f(a, b))
    windows.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(dict(applied=applied, faults=min(windows))))
"""


@pytest.mark.skipif(cpu_host.glibc_mallopt() is None,
                    reason='parallel.cpu_malloc acts on glibc (Linux) only')
def test_reusing_malloc_stops_the_per_call_page_faults():
    # What 'reuse' is for: XLA:CPU's per-execution temporaries come back without fresh pages.
    # With the system allocator every call faults them in again (8k faults of 4 KiB here).
    # Once (3.12, busy cores) 'reuse' grew its heap by 32 MB inside the one measured window, so
    # the probe takes the fewest faults of three windows.
    env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'GLIBC_TUNABLES')}
    env['JAX_PLATFORMS'] = 'cpu'
    out = _probe(_MALLOC_PROBE, ('reuse', 'system'), env, timeout=300)
    assert out['reuse']['applied'] and not out['system']['applied']
    assert out['system']['faults'] > 3 * 4_000
    assert out['reuse']['faults'] < out['system']['faults'] / 10


def test_cpu_malloc_leaves_accelerator_hosts_and_bad_values_alone(monkeypatch):
    c = _config()
    monkeypatch.setenv('JAX_PLATFORMS', 'tpu,cpu')  # a TPU host keeps its allocator
    assert cpu_host.use_cpu_malloc(c.parallel) is False
    c.parallel.cpu_malloc = 'jemalloc'
    with pytest.raises(ValueError, match=r"parallel.cpu_malloc='jemalloc'.*reuse.*system"):
        cpu_host.use_cpu_malloc(c.parallel)
