"""Losses against hand computations; unit weights reproduce the plain losses exactly."""

import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from jima_jax.data.types import PreparedSplit
from jima_jax.text import tables as tables_lib
from jima_jax.text.symbols import NUM_OBSERVATIONS
from jima_jax.train import losses


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_report_nll_matches_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = np.array([[1, 4, 0], [2, 2, 3]])
    mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    token_w = np.array([0., 0.5, 2., 1., 3.], np.float32)
    ex_w = np.array([1.5, 0.25], np.float32)
    s, c = losses.report_nll(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask),
                             jnp.asarray(token_w), jnp.asarray(ex_w))
    lp = _log_softmax(logits.astype(np.float64))
    want = 0.0
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                want += ex_w[b] * token_w[targets[b, t]] * -lp[b, t, targets[b, t]]
    assert float(c) == 5
    np.testing.assert_allclose(float(s), want, rtol=1e-6)


def test_unit_weights_reproduce_plain_losses_exactly():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(4, 6, 9)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 9, (4, 6)))
    mask = jnp.asarray(rng.random((4, 6)) > 0.3)
    plain = losses.report_nll(logits, targets, mask)
    weighted = losses.report_nll(logits, targets, mask, jnp.ones(9), jnp.ones(4))
    assert float(plain[0]) == float(weighted[0]) and float(plain[1]) == float(weighted[1])
    # the plain value is the mean NLL over real tokens
    lp = _log_softmax(np.asarray(logits, np.float64))
    nll = -np.take_along_axis(lp, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(plain[0] / plain[1]), nll[np.asarray(mask)].mean(), rtol=1e-6)

    ent = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    y = jnp.asarray(rng.random((4, 9)) > 0.7)
    ex_mask = jnp.ones(4)
    a = losses.entity_bce(ent, y, ex_mask)
    b = losses.entity_bce(ent, y, ex_mask, jnp.ones(9), jnp.ones(4))
    assert float(a[0]) == float(b[0]) and float(a[1]) == float(b[1])


def test_entity_bce_matches_hand_computation_with_pos_weight_and_padding():
    x = np.array([[2.0, -1.0, 0.5], [0.3, 0.3, -4.0], [9.0, 9.0, 9.0]], np.float32)
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], np.float32)
    ex_mask = np.array([1, 1, 0], np.float32)  # third row is padding
    pw = np.array([3.0, 1.0, 0.5], np.float32)
    ex_w = np.array([2.0, 1.0, 7.0], np.float32)
    s, c = losses.entity_bce(jnp.asarray(x), jnp.asarray(y), jnp.asarray(ex_mask),
                             jnp.asarray(pw), jnp.asarray(ex_w))
    sig = 1 / (1 + np.exp(-x.astype(np.float64)))
    per = -(pw * y * np.log(sig) + (1 - y) * np.log(1 - sig))
    want = (per * (ex_w * ex_mask)[:, None]).sum()
    assert float(c) == 2 * 3  # mean over the vocabulary and the real examples
    np.testing.assert_allclose(float(s), want, rtol=1e-6)


def test_entity_targets_multi_hot_ignores_padding_and_duplicates():
    ids = jnp.asarray([[3, 1, -1, 3], [-1, -1, -1, -1]])
    got = np.asarray(losses.entity_targets(ids, 5))
    np.testing.assert_array_equal(got, [[0, 1, 0, 1, 0], [0, 0, 0, 0, 0]])


def _tiny_tables():
    # vocab of 8: 0..3 special, 4..7 words; token counts from 3 reports
    tokens = np.array([[4, 4, 5, 0], [4, 6, 0, 0], [4, 5, 7, 7]], np.int32)
    split = PreparedSplit(
        ids=np.array(['a', 'b', 'c']), reports=np.array(['x', 'y', 'z']), images=None,
        tokens=tokens, lengths=np.array([3, 2, 4], np.int32),
        entities=np.array([[5, -1], [6, 5], [-1, -1]], np.int32),
        abnormal=np.array([1, 0, 0], np.int8),
        labels=np.full((3, NUM_OBSERVATIONS), -2, np.int8))
    return tables_lib.compute_tables(split, 8, 'hash')


def test_make_loss_tables_follows_the_config_and_the_frequency_tables():
    t = _tiny_tables()
    cfg = ml_collections.ConfigDict(dict(
        token_weighting='inverse_power', token_alpha=0.5, token_beta=0.999,
        example_weighting='inverse_prevalence', example_strength=1.0,
        entity_pos_weighting='inverse_frequency', entity_pos_weight_max=50.0))
    lt = losses.make_loss_tables(t, cfg)
    np.testing.assert_allclose(lt.token_weights, t.token_loss_weights('inverse_power', alpha=0.5))
    np.testing.assert_allclose(lt.entity_pos_weights,
                               t.entity_pos_weights('inverse_frequency', max_weight=50.0))
    # 1 abnormal of 3: inverse prevalence 3 vs 1.5, scaled to a training mean of 1
    np.testing.assert_allclose(lt.label_weights, [0.75, 1.5], rtol=1e-6)
    # inverse_power token weights have mean 1 over training token occurrences
    counts = t.token_counts
    np.testing.assert_allclose((counts * np.asarray(lt.token_weights)).sum() / counts.sum(), 1.0,
                               rtol=1e-6)
    cfg.token_weighting = cfg.example_weighting = cfg.entity_pos_weighting = 'none'
    plain = losses.make_loss_tables(t, cfg)
    for arr in (plain.token_weights, plain.entity_pos_weights, plain.label_weights):
        np.testing.assert_array_equal(arr, np.ones_like(arr))


def test_unknown_weighting_names_the_config_key():
    with pytest.raises(ValueError, match='loss.token_weighting'):
        _tiny_tables().token_loss_weights('bogus')
