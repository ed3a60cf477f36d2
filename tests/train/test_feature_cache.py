"""train.feature_cache: a frozen f_R's features computed once and read from a table.

The cached step must be the uncached step with evaluation-mode BatchNorm and no augmentation
(model.freeze_bn_stats=True, input.augment=False), the table's rows must be the features of the
right studies, and the key must refuse the settings it cannot honour."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import smoke
from jima_jax.model import jima
from jima_jax.train import feature_cache, losses, step as step_lib
from tests.helpers import random_batch

VOCAB = 40


def _config(fusion=True):
    c = smoke.get_config()
    c.data.max_len = 12
    c.model.entity_fusion = fusion
    c.model.entity_head = 'mlp'  # f_E's dropout runs in both paths: its keys must match too
    c.optim.task1.visual_lr = 0.0
    c.train.feature_cache = True
    return c


def _cached(batch, features):
    patches, pooled = features(batch['images'])
    out = {k: v for k, v in batch.items() if k != 'images'}
    return {**out, 'patches': np.asarray(patches), 'pooled': np.asarray(pooled)}


@pytest.mark.parametrize('fusion', [True, False])
def test_cached_step_equals_the_uncached_step_with_evaluation_mode_batchnorm(fusion):
    c = _config(fusion)
    c.model.freeze_bn_stats = True  # the uncached step then normalises as the cache did
    model = jima.JIMA(c.model, vocab_size=VOCAB, num_views=2, max_len=c.data.max_len + 1,
                      rngs=nnx.Rngs(0))
    modeldef, params, stats = step_lib.split_model(model)
    # running statistics unlike a fresh BatchNorm's (0, 1), so evaluation mode is not a no-op
    stats = jax.tree.map(lambda x: x + 0.3, stats)
    state = step_lib.init_train_state(c, params, stats)
    step = jax.jit(step_lib.build_train_step(modeldef, c, VOCAB))
    tables = losses.LossTables.uniform(VOCAB)
    rng = np.random.default_rng(0)
    a, b = (random_batch(rng, batch=4, views=2, image=c.input.image_size, vocab=VOCAB,
                         max_len=c.data.max_len) for _ in range(2))
    features = jax.jit(lambda x: modeldef.merge(params, stats).features(
        jima.input_images(x, c.model, c.input), train=False))

    s1, m1 = step(state, a, b, np.int32(0), tables)
    s2, m2 = step(state, _cached(a, features), _cached(b, features), np.int32(0), tables)
    for k in m1:
        np.testing.assert_allclose(m2[k], m1[k], rtol=2e-5, err_msg=k)
    for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(y, x, rtol=2e-5, atol=1e-7)
    for x, y in zip(jax.tree.leaves(s2.batch_stats), jax.tree.leaves(stats)):
        np.testing.assert_array_equal(x, y)  # the cached run never moves the running statistics
    for x, y in zip(jax.tree.leaves(s2.params['visual']), jax.tree.leaves(params['visual'])):
        np.testing.assert_array_equal(x, y)

    # the default BatchNorm (batch statistics in training) is what the cache departs from
    c.model.freeze_bn_stats = False
    live = jima.JIMA(c.model, vocab_size=VOCAB, num_views=2, max_len=c.data.max_len + 1,
                     rngs=nnx.Rngs(0))
    live_def, _, _ = step_lib.split_model(live)
    _, m3 = jax.jit(step_lib.build_train_step(live_def, c, VOCAB))(state, a, b, np.int32(0),
                                                                   tables)
    assert abs(float(m3['loss/report']) - float(m1['loss/report'])) > 1e-4


def test_table_rows_are_each_studys_evaluation_features(smoke_dataset):
    from jima_jax.data import pipeline as pipeline_lib
    from jima_jax.runtime import parallel
    from jima_jax.train import inputs
    c = _config()
    c.data.max_len = smoke.get_config().data.max_len
    c.model.backbone_width = 8
    split = smoke_dataset.splits['train']
    model = jima.JIMA(c.model, vocab_size=smoke_dataset.vocab_size, num_views=2,
                      max_len=c.data.max_len + 1, rngs=nnx.Rngs(0))
    modeldef, params, stats = step_lib.split_model(model)
    mesh = parallel.make_mesh(c.parallel)
    table = feature_cache.build(c, modeldef, params, stats, split, mesh)
    n = len(split)
    assert table.patches.shape == (n, 2 * 1 * 1, 64) and table.pooled.shape == (n, 2 * 64)
    batch = next(iter(inputs.host_pipeline(split, c.input, c.seed).eval_batches()))
    want_patches, want_pooled = modeldef.merge(params, stats).features(
        jima.input_images(batch['images'], c.model, c.input), train=False)
    np.testing.assert_allclose(table.patches[batch['index']], want_patches, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table.pooled[batch['index']], want_pooled, rtol=1e-5, atol=1e-6)

    # the pipeline's batches without images are its batches with images, less the images
    pipe = inputs.host_pipeline(split, c.input, c.seed)
    stream = pipeline_lib.StreamSpec(np.arange(n, dtype=np.int32), 0)
    with_images = list(pipe.train_batches(stream, epoch=1, num_steps=3))
    without = list(pipe.train_batches(stream, epoch=1, num_steps=3, with_images=False))
    assert len(without) == 3 and all('images' not in b for b in without)
    for full, bare in zip(with_images, without):
        assert sorted(full) == sorted([*bare, 'images'])
        for k in bare:
            np.testing.assert_array_equal(bare[k], full[k])

    host = {'images': np.zeros((3, 2, 32, 32), np.uint8), 'index': np.array([5, 0, 5]),
            'tokens': np.zeros((3, 4), np.int32)}
    swapped = feature_cache.swap_in(host, table)
    assert 'images' not in swapped and swapped['tokens'] is host['tokens']
    np.testing.assert_array_equal(swapped['pooled'], table.pooled[[5, 0, 5]])

    feature_cache.MAX_GIB, limit = 1e-6, feature_cache.MAX_GIB
    try:
        with pytest.raises(ValueError, match=r'features of 64 training studies would take .* '
                                             r'set train.feature_cache=False'):
            feature_cache.build(c, modeldef, params, stats, split, mesh)
    finally:
        feature_cache.MAX_GIB = limit


def test_key_refuses_what_it_cannot_honour_and_old_configs_read_off():
    from jima_jax.train import loop
    c = _config()
    assert feature_cache.enabled(c)
    del c.train['feature_cache']
    assert not feature_cache.enabled(c)  # a config written before the key
    c = _config()
    c.optim.task1.visual_lr = -1.0
    with pytest.raises(ValueError, match=r'caches the features of a frozen f_R.*visual_lr=-1.0'):
        feature_cache.enabled(c)
    c.pretrain.steps = 10**6  # the run refuses it before pre-training, not after
    with pytest.raises(ValueError, match=r'caches the features of a frozen f_R'):
        loop.train_and_evaluate(c, '/nonexistent/never/written')
    c = _config()
    c.data.phantom.train_renders = 3
    with pytest.raises(ValueError, match=r'train_renders=3.*feature_cache=False'):
        feature_cache.enabled(c)
    c = _config()
    del c.train['feature_cache']
    c.train.feature_cache = 1  # a config file that builds its own ConfigDict can hold anything
    with pytest.raises(ValueError, match=r'train.feature_cache=1: expected True or False'):
        feature_cache.enabled(c)


def test_a_cached_run_trains_with_a_curriculum_and_leaves_f_r_as_it_started(tmp_path,
                                                                             smoke_dataset,
                                                                             capsys):
    """End to end through the loop, the curriculum's scoring reading the table too: f_R's
    parameters and BatchNorm statistics end as they began, and scoring from the table gives the
    difficulties scoring from the images gives."""
    from jima_jax.runtime import parallel
    from jima_jax.train import difficulty, loop, run_setup
    c = smoke.get_config()
    c.model.backbone_width = 8
    c.optim.task1.visual_lr = 0.0
    c.train.feature_cache = True
    c.curriculum.schedule, c.curriculum.warmup_epochs = 'jima', 1  # scored after epoch 1
    c.train.num_epochs, c.train.steps_per_epoch = 2, 2
    start = run_setup.setup(c, tmp_path / 'start')
    start.checkpointer.close()
    result = loop.train_and_evaluate(c, tmp_path / 'run')
    assert result['status'] == 'completed' and result['step'] == 4
    out = capsys.readouterr().out
    assert 'feature cache: f_R features of 64 training studies' in out
    assert 'curriculum: scored 64 examples' in out
    end = run_setup.setup(c, tmp_path / 'run')
    end.checkpointer.close()
    for name in ('params', 'batch_stats'):
        for x, y in zip(jax.tree.leaves(getattr(start.state, name)['visual']),
                        jax.tree.leaves(getattr(end.state, name)['visual'])):
            np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(start.state.params['report']), jax.tree.leaves(end.state.params['report'])))

    split = smoke_dataset.splits['train']
    mesh = parallel.make_mesh(c.parallel)
    fn = difficulty.jit_score_step(difficulty.build_score_step(end.modeldef, c.model, c.input),
                                   mesh, end.state_sharding)
    table = feature_cache.build(c, end.modeldef, end.state.params, end.state.batch_stats, split,
                                mesh)
    args = (fn, end.state.params, end.state.batch_stats, split, c.input)
    plain = difficulty.score_split(*args, seed=c.seed, mesh=mesh)
    cached = difficulty.score_split(*args, seed=c.seed, mesh=mesh, features=table)
    for key in ('k1', 'k2_all', 'k2_balanced'):
        np.testing.assert_allclose(getattr(cached, key), getattr(plain, key), rtol=1e-5,
                                   atol=1e-6, err_msg=key)


_EIGHT_DEVICES = """
import json
import jax
import numpy as np
from flax import nnx
from configs import smoke
from jima_jax.data import pipeline as pipeline_lib, prepare
from jima_jax.model import jima
from jima_jax.runtime import parallel
from jima_jax.train import feature_cache, inputs, losses, step as step_lib
c = smoke.get_config()
c.model.backbone_width = 8
c.optim.task1.visual_lr = 0.0
c.train.feature_cache = True
ds = prepare.load_prepared(c.data)
split = ds.splits['train']
model = jima.JIMA(c.model, vocab_size=ds.vocab_size, num_views=2, max_len=c.data.max_len + 1,
                  rngs=nnx.Rngs(0))
modeldef, params, stats = step_lib.split_model(model)
mesh = parallel.make_mesh(c.parallel)
table = feature_cache.build(c, modeldef, params, stats, split, mesh)
state = step_lib.init_train_state(c, params, stats)
sharding = parallel.state_shardings(mesh, state, c.parallel)
state = jax.device_put(state, sharding)
step = step_lib.jit_train_step(step_lib.build_train_step(modeldef, c, ds.vocab_size), mesh,
                               sharding)
tables = jax.device_put(losses.LossTables.uniform(ds.vocab_size), parallel.replicated(mesh))
stream = pipeline_lib.StreamSpec(np.arange(len(split), dtype=np.int32), 0)
metrics = []
for batch in inputs.host_pipeline(split, c.input, c.seed).train_batches(
        stream, epoch=0, num_steps=3, with_images=False):
    batch = parallel.put_batch(feature_cache.swap_in(batch, table),
                               parallel.batch_sharding(mesh))
    state, m = step(state, batch, batch, np.int32(0), tables)
    metrics.append({k: float(v) for k, v in m.items()})
print(json.dumps({'devices': jax.device_count(), 'table': table.pooled.tolist(),
                  'metrics': metrics}))
"""


def test_eight_simulated_devices_build_the_same_table_and_train_the_same_steps(smoke_dataset):
    from tests.helpers import run_python
    one, eight = (run_python(_EIGHT_DEVICES, devices=n) for n in (1, 8))
    assert (one['devices'], eight['devices']) == (1, 8)
    np.testing.assert_allclose(eight['table'], one['table'], rtol=1e-5, atol=1e-6)
    assert len(one['metrics']) == 3
    for a, b in zip(one['metrics'], eight['metrics']):
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, err_msg=k)
