"""`train.mode=joint` as the release runs it, and the R2Gen baseline (model.entity_fusion=False):
which gradients reach which modules, which batch feeds which loss, the global-norm clip, and the
baseline's parameter tree, step and curriculum."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import smoke
from jima_jax.model import jima
from jima_jax.train import curriculum as curriculum_lib, difficulty, losses, optim
from jima_jax.train import step as step_lib
from tests.helpers import random_batch

VOCAB = 40


def _config(mode='alternate', fusion=True, **optim_cfg):
    c = smoke.get_config()
    c.data.max_len = 12
    c.train.mode = mode
    c.model.entity_fusion = fusion
    c.optim.update(optim_cfg)
    return c


@functools.lru_cache(maxsize=None)
def _model(fusion=True):
    c = _config(fusion=fusion)
    model = jima.JIMA(c.model, vocab_size=VOCAB, num_views=2, max_len=c.data.max_len + 1,
                      rngs=nnx.Rngs(0))
    return step_lib.split_model(model)


def _batch(seed, batch=4):
    c = _config()
    return random_batch(np.random.default_rng(seed), batch=batch, views=2,
                        image=c.input.image_size, vocab=VOCAB, max_len=c.data.max_len)


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _joint_step(c, fusion=True):
    modeldef, params, stats = _model(fusion)
    step = jax.jit(step_lib.build_train_step(modeldef, c, VOCAB))
    return step, step_lib.init_train_state(c, params, stats)


def test_joint_report_loss_reaches_neither_f_r_nor_f_e():
    """With L1's weight 0 only L2 has a gradient: f_R and f_E stay bit-identical (their Adam
    sees exact zeros), while fusion + f_T move and BatchNorm follows batch A."""
    c = _config('joint')
    c.loss.entity_weight = 0.0
    step, state = _joint_step(c)
    a, b = _batch(1), _batch(2)
    new, metrics = jax.device_get(step(state, a, b, jnp.int32(0),
                                       losses.LossTables.uniform(VOCAB)))
    old = jax.device_get(state)
    assert _equal(old.params['visual'], new.params['visual'])
    assert _equal(old.params['entity'], new.params['entity'])
    assert not _equal(old.params['report'], new.params['report'])
    assert not _equal(old.batch_stats, new.batch_stats)
    assert np.isfinite(metrics['loss/entity']) and np.isfinite(metrics['loss/report'])


def test_joint_is_task1_on_batch_a_and_task2_on_batch_b_from_the_same_state():
    """Without clipping, joint = Task 1 on A and Task 2 on B, both from the state before the
    step (alternate mode's Task 2 would see the updated f_R); B, not A, feeds the report loss."""
    c = _config('joint', joint_clip_norm=0.0)
    modeldef, params, stats = _model()
    tasks = step_lib.TaskUpdates(modeldef, c, VOCAB)
    tables = losses.LossTables.uniform(VOCAB)
    state = step_lib.init_train_state(c, params, stats)
    a, b, epoch, key = _batch(3), _batch(4), jnp.int32(1), jax.random.key(7)
    joint, (l1, l2) = jax.device_get(jax.jit(tasks.joint)(state, a, b, epoch, tables, key))
    s1, m1 = jax.device_get(jax.jit(tasks.task1)(state, a, epoch, tables, key))
    task2 = jax.jit(tasks.task2)
    s2, m2 = jax.device_get(task2(state, b, epoch, tables, key))
    s2_on_a, _ = jax.device_get(task2(state, a, epoch, tables, key))
    close = lambda x, y: all(np.allclose(u, v, rtol=1e-5, atol=1e-7)
                             for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
    for group in ('visual', 'entity'):
        assert close(joint.params[group], s1.params[group])
    assert close(joint.params['report'], s2.params['report'])
    assert not close(joint.params['report'], s2_on_a.params['report'])
    assert close(joint.batch_stats, s1.batch_stats)
    np.testing.assert_allclose([l1, l2], [m1, m2], rtol=1e-6)


def _first_moments(state):
    """Adam's mu after one step from zero is (1 - b1) * the gradient it was given."""
    return (optax.tree_utils.tree_get(state.opt1, 'mu'),
            optax.tree_utils.tree_get(state.opt2, 'mu'))


def test_joint_clips_one_global_norm_over_both_optimizers_and_skips_their_own_clip():
    """The gradients Adam receives (its first moment after one step from zero is (1 - b1) * g):
    without the joint clip they pass the alternating mode's per-optimizer value clip untouched;
    with it, both groups are scaled by one factor to the global norm limit."""
    tables = losses.LossTables.uniform(VOCAB)
    a, b = _batch(5), _batch(6)
    b1 = _config().optim.task1.b1

    def gradients(joint_clip_norm):
        c = _config('joint', joint_clip_norm=joint_clip_norm)
        for o in (c.optim.task1, c.optim.task2):
            o.clip, o.clip_value = 'value', 1e-9
        step, state = _joint_step(c)
        new, _ = step(state, a, b, jnp.int32(0), tables)
        return jax.tree.map(lambda m: np.asarray(m) / (1 - b1), _first_moments(new))

    raw = gradients(0.0)
    assert max(np.abs(x).max() for x in jax.tree.leaves(raw)) > 1e-4  # no 1e-9 value clip
    norm = float(optax.global_norm(raw))
    limit = norm / 10
    clipped = gradients(limit)
    np.testing.assert_allclose(float(optax.global_norm(clipped)), limit, rtol=1e-4)
    # One scale for both groups (a clip per optimizer would scale them differently).
    for x, y in zip(jax.tree.leaves(raw), jax.tree.leaves(clipped)):
        np.testing.assert_allclose(y, x * limit / (norm + 1e-6), rtol=1e-4, atol=1e-9)


def test_clip_global_norm_matches_torch_formula():
    trees = ({'a': np.array([3.0, 0.0], np.float32)},
             {'b': np.array([[4.0]], np.float32)})  # global norm 5
    out = optim.clip_global_norm(trees, 1.0)
    np.testing.assert_allclose(out[0]['a'], [3 / (5 + 1e-6), 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1]['b'], [[4 / (5 + 1e-6)]], rtol=1e-6)
    same = optim.clip_global_norm(trees, 10.0)
    np.testing.assert_array_equal(same[0]['a'], trees[0]['a'])
    assert optim.clip_global_norm(trees, 0.0) is trees


# ---------------------------------------------------------------- the R2Gen baseline


def test_baseline_has_no_entity_group_and_projects_the_patches_alone():
    _, params, _ = _model(fusion=False)
    _, jima_params, _ = _model(fusion=True)
    c = _config(fusion=False)
    d = 512  # resnet18
    assert set(params) == {'visual', 'report'} and 'entity' in jima_params
    assert params['report']['fusion']['kernel'].shape == (d, c.model.width)
    assert jima_params['report']['fusion']['kernel'].shape == (d + VOCAB, c.model.width)
    modeldef, params, stats = _model(fusion=False)
    model = modeldef.merge(params, stats)
    x = np.random.default_rng(0).normal(size=(1, 3, d)).astype(np.float32)
    w, bias = (np.asarray(params['report']['fusion'][k]) for k in ('kernel', 'bias'))
    np.testing.assert_allclose(model.report.fuse(jnp.asarray(x), None),
                               np.maximum(x @ w + bias, 0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='model.entity_fusion=False'):
        model.entity_logits(None, None)
    with pytest.raises(ValueError, match=r"model.entity_fusion='no'"):
        jima.entity_fusion(ml_collections.ConfigDict({'entity_fusion': 'no'}))


def test_baseline_step_is_r2gens_one_adam_with_two_learning_rates_on_batch_b():
    """One report-loss step trains f_R (alpha's rate) and fusion + f_T (beta's) together, as one
    Adam with per-group rates would (R2Gen's lr_ve / lr_ed); batch A is not read."""
    c = _config(fusion=False)
    c.optim.task1.lr, c.optim.task2.lr = 3e-3, 1e-3
    # Adam's eps = 1 keeps its first step lr * g / (|g| + 1) well-conditioned where g is ~0
    # (attention key biases): float noise between two programs would else decide the update.
    c.optim.task1.eps = c.optim.task2.eps = 1.0
    modeldef, params, stats = _model(fusion=False)
    step = jax.jit(step_lib.build_train_step(modeldef, c, VOCAB))
    state = step_lib.init_train_state(c, params, stats)
    tables = losses.LossTables.uniform(VOCAB)
    a, b = _batch(8), _batch(9)
    new, metrics = jax.device_get(step(state, a, b, jnp.int32(0), tables))
    other_a, _ = jax.device_get(step(state, _batch(10), b, jnp.int32(0), tables))
    assert _equal(new.params, other_a.params) and 'loss/entity' not in metrics
    assert set(optax.tree_utils.tree_get(new.opt1, 'mu')) == {'visual'}  # alpha: f_R only
    assert not _equal(state.batch_stats, new.batch_stats)  # f_R in train mode on batch B

    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(p):
        model = modeldef.merge(p, stats)
        images, tokens_in, targets = step_lib._inputs(b, c.model, c.input)
        patches, _ = model.features(images, train=True)
        total, count = step_lib._report_terms(model, patches, None, tokens_in, targets, b,
                                              tables, nnx.Rngs(dropout=key))
        return total / count

    one_adam = optax.chain(optax.scale_by_adam(eps=1.0), optax.multi_transform(
        {'visual': optax.scale(-3e-3), 'report': optax.scale(-1e-3)},
        lambda p: {k: jax.tree.map(lambda _, k=k: k, v) for k, v in p.items()}))

    @jax.jit  # one program (eager optax would compile each op for each leaf shape)
    def reference(p):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, _ = one_adam.update(grads, one_adam.init(p), p)
        return loss, optax.apply_updates(p, updates)

    loss, want = reference(params)
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(new.params)):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=2e-7)  # updates: 1e-5 and up
    np.testing.assert_allclose(metrics['loss/report'], loss, rtol=1e-5)


def test_baseline_difficulty_has_k2_only_and_the_curriculum_ranks_both_sets_by_it():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 6)), jnp.float32)
    targets = jnp.asarray([[4, 5, 2], [3, 2, 0]])
    entities = jnp.asarray([[4, -1], [-1, -1]])
    out = jax.tree.map(np.asarray, difficulty.example_difficulty(None, logits, targets,
                                                                 entities))
    with_k1 = jax.tree.map(np.asarray, difficulty.example_difficulty(
        jnp.zeros((2, 6)), logits, targets, entities))
    assert np.isnan(out['k1']).all() and not out['has_entities'].any()
    np.testing.assert_array_equal(out['k2_all'], with_k1['k2_all'])

    n = 10
    k2 = np.linspace(0.9, 0.1, n).astype(np.float32)
    scores = difficulty.Difficulty(ids=np.arange(n).astype(str), k1=np.full(n, np.nan, np.float32),
                                   k2_all=k2, k2_balanced=k2, has_entities=np.zeros(n, bool))
    assert not scores.measures_k1
    c = _config(fusion=False).curriculum
    c.schedule, c.warmup_epochs = 'jima', 2
    cur = curriculum_lib.Curriculum(c, n, seed=0, num_epochs=10, entity_task=False)
    cur.observe(0, scores)
    cur.observe(1, dataclasses_replace(scores, k2_all=k2 * 0.5))  # s rises: c shrinks
    c1, c2 = cur.ratios()
    assert c1 == c2 < 1 and np.array_equal(cur.kept1, cur.kept2)
    np.testing.assert_array_equal(cur.kept2, np.arange(curriculum_lib.num_kept(c2, n)))
    assert 'curriculum/k1_mean' not in cur.epoch_scalars(2)
    two_tasks = curriculum_lib.Curriculum(c, n, seed=0, num_epochs=10)
    with pytest.raises(ValueError, match='no k1.*entity_fusion=False.*entity_task=False'):
        two_tasks.observe(0, scores)


def dataclasses_replace(obj, **changes):
    import dataclasses
    return dataclasses.replace(obj, **changes)
