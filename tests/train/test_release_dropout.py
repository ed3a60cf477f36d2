"""The release's dropout (fusion projection, mlp entity head) and entity-loss weight: the values
the presets set, the masks applied (checked against hand-written forwards with the same keys),
dropout in f_E during both tasks, and L1's weight in alternate mode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import default, demo, iu_xray, mimic_cxr, smoke
from jima_jax.model import jima
from jima_jax.train import losses, step as step_lib
from tests.helpers import random_batch
from tests.test_decode import random_weights

VOCAB = 40


def draws(key, n):
    """The first n keys an nnx.Rngs(dropout=key) hands out, in order."""
    rngs = nnx.Rngs(dropout=key)
    return [rngs.dropout() for _ in range(n)]


def dropped(x, key, rate):
    keep = np.asarray(jax.random.bernoulli(key, 1.0 - rate, x.shape))
    return np.where(keep, x / (1.0 - rate), 0.0)


def test_presets_and_defaults():
    for module in (smoke, demo):  # their numbers stay as they were: fusion dropout = dropout
        m = module.get_config().model
        assert m.fusion_dropout < 0 and jima.fusion_dropout(m) == m.dropout == 0.1
        assert m.entity_head == 'patch_linear'  # entity_dropout only acts on the mlp head
    for module in (iu_xray, mimic_cxr):
        paper, release = module.get_config(), module.get_config('release')
        assert jima.fusion_dropout(paper.model) == jima.fusion_dropout(release.model) == 0.5
        assert paper.model.dropout == release.model.dropout == 0.1
        assert release.model.entity_head == 'mlp' and release.model.entity_dropout == 0.1
        assert release.loss.entity_weight == 0.5 and paper.loss.entity_weight == 1.0
    m = default.get_config().model
    m.fusion_dropout = 1.0
    with pytest.raises(ValueError, match=r'model.fusion_dropout=1.0 must be in \[0, 1\)'):
        jima.fusion_dropout(m)


def test_fusion_dropout_masks_the_fused_tokens_before_the_encoder():
    cfg = smoke.get_config().model
    cfg.dropout, cfg.fusion_dropout = 0.0, 0.5  # only the fusion dropout draws
    gen = jima.ReportGenerator(16, VOCAB, cfg, max_len=8, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    patches = jnp.asarray(rng.normal(size=(2, 3, 16)), jnp.float32)
    q = jnp.asarray(rng.random((2, VOCAB)), jnp.float32)
    key = jax.random.key(1)
    got = gen.memory(patches, q, nnx.Rngs(dropout=key))
    fused = np.asarray(gen.fuse(patches, q))
    want = gen.transformer.encode(jnp.asarray(dropped(fused, draws(key, 1)[0], 0.5)), None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, gen.memory(patches, q, None), atol=1e-3)
    cfg.fusion_dropout = -1.0  # = model.dropout = 0: no mask at all
    gen = jima.ReportGenerator(16, VOCAB, cfg, max_len=8, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(gen.memory(patches, q, nnx.Rngs(dropout=key)),
                                  gen.memory(patches, q, None))


def test_mlp_entity_head_drops_after_each_relu():
    head = jima.MLPEntityHead(12, 8, VOCAB, dropout=0.3, rngs=nnx.Rngs(0))
    pooled = np.random.default_rng(2).normal(size=(4, 12)).astype(np.float32)
    w = {name: (np.asarray(getattr(head, name).kernel[...]),
                np.asarray(getattr(head, name).bias[...])) for name in ('fc1', 'fc2', 'fc3')}

    def forward(keys):
        drop = (lambda x, k: x) if keys is None else functools.partial(dropped, rate=0.3)
        h = drop(np.maximum(pooled @ w['fc1'][0] + w['fc1'][1], 0), keys and keys[0])
        h = drop(np.maximum(h @ w['fc2'][0] + w['fc2'][1], 0), keys and keys[1])
        return h @ w['fc3'][0] + w['fc3'][1]

    key = jax.random.key(3)
    np.testing.assert_allclose(head(None, pooled, nnx.Rngs(dropout=key)),
                               forward(draws(key, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head(None, pooled), forward(None), rtol=1e-5, atol=1e-5)
    assert not np.allclose(forward(draws(key, 2)), forward(None), atol=1e-3)


@functools.lru_cache(maxsize=None)
def _setup(entity_dropout, entity_weight=1.0):
    """Smoke model (mlp head) without report-side dropout, so a loss depends on the key only
    through f_E; returns (config, modeldef, state, jitted task1, jitted task2)."""
    c = smoke.get_config()
    c.data.max_len = 12
    c.data.num_views = 1
    c.model.update(entity_head='mlp', entity_dropout=entity_dropout, dropout=0.0,
                   fusion_dropout=0.0)
    c.loss.entity_weight = entity_weight
    abstract = nnx.eval_shape(lambda: jima.JIMA(c.model, vocab_size=VOCAB, num_views=1,
                                                max_len=13, rngs=nnx.Rngs(0)))
    modeldef, params, stats = random_weights(abstract)
    tasks = step_lib.TaskUpdates(modeldef, c, VOCAB)
    return (c, modeldef, step_lib.init_train_state(c, params, stats), jax.jit(tasks.task1),
            jax.jit(tasks.task2))


def _batch(seed, c):
    return random_batch(np.random.default_rng(seed), batch=4, views=1, image=c.input.image_size,
                        vocab=VOCAB, max_len=c.data.max_len)


TABLES, EPOCH = losses.LossTables.uniform(VOCAB), jnp.int32(0)


def _losses(entity_dropout, key):
    """(Task-1 loss, Task-2 loss) of one update each from the same state."""
    c, _, state, task1, task2 = _setup(entity_dropout)
    return (float(task1(state, _batch(1, c), EPOCH, TABLES, key)[1]),
            float(task2(state, _batch(2, c), EPOCH, TABLES, key)[1]))


def test_entity_dropout_is_active_in_task1_and_in_task2s_q():
    k1, k2 = jax.random.key(1), jax.random.key(2)
    still = _losses(0.0, k1)
    assert _losses(0.0, k2) == still  # no dropout anywhere: the key changes nothing
    on1, on2 = _losses(0.5, k1), _losses(0.5, k2)
    # Both losses move with the key: f_E drops units in Task 1 and when Task 2 computes q.
    assert on1[0] != on2[0] and on1[1] != on2[1]
    assert on1[0] != still[0] and on1[1] != still[1]


def test_fused_step_gives_f_e_its_dropout_key():
    c, modeldef, state, task1, _ = _setup(0.5)
    a, b = _batch(1, c), _batch(2, c)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    want = float(task1(state, a, EPOCH, TABLES, key)[1])
    _, metrics = jax.jit(step_lib.build_train_step(modeldef, c, VOCAB))(state, a, b, EPOCH, TABLES)
    assert float(metrics['loss/entity']) == pytest.approx(want, rel=1e-6)
    assert _losses(0.0, key)[0] != pytest.approx(want, rel=1e-4)  # same weights, no dropout


def _adam_mu(opt_state):
    found = [s.mu for s in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0]


def test_entity_weight_scales_task1s_gradient_in_alternate_mode():
    key, out = jax.random.key(0), {}
    for weight in (1.0, 0.5):
        c, _, state, task1, _ = _setup(0.0, entity_weight=weight)
        assert c.train.mode == 'alternate'
        new, loss = task1(state, _batch(1, c), EPOCH, TABLES, key)
        out[weight] = float(loss), jax.device_get(_adam_mu(new.opt1))
    assert out[0.5][0] == out[1.0][0]  # the logged loss is L1 itself
    # Adam's first moment after one step is (1 - b1) * gradient: exactly halved.
    for half, full in zip(jax.tree.leaves(out[0.5][1]), jax.tree.leaves(out[1.0][1])):
        np.testing.assert_allclose(half, 0.5 * full, rtol=1e-6, atol=1e-12)
    assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(out[1.0][1]))
