"""The two optimizers against hand-computed Adam steps, clipping and the epoch decay."""

import jax.numpy as jnp
import numpy as np

from configs import default
from jima_jax.train import optim


def _cfg(**overrides):
    o = default.get_config().optim.task1
    with o.unlocked():
        o.update(overrides)
    return o


def test_first_adam_step_is_lr_times_sign_and_groups_get_their_lr():
    o = _cfg(lr=1e-2, visual_lr=1e-3)
    tx = optim.build_optimizer(o, ('visual', 'entity'))
    params = {'visual': {'w': jnp.ones(3)}, 'entity': {'w': jnp.ones(2)}}
    grads = {'visual': {'w': jnp.array([0.5, -2.0, 1e-3])}, 'entity': {'w': jnp.array([3., -1.])}}
    updates, _ = tx.update(grads, tx.init(params), params)
    # step 1: m_hat = g, v_hat = g^2 -> update = -lr * g / (|g| + eps)
    g = np.array([0.5, -2.0, 1e-3])
    np.testing.assert_allclose(updates['visual']['w'], -1e-3 * g / (np.abs(g) + 1e-8), rtol=1e-5)
    np.testing.assert_allclose(updates['entity']['w'], [-1e-2, 1e-2], rtol=1e-5)


def test_weight_decay_is_coupled_l2_and_clipping_applies_first():
    o = _cfg(lr=0.1, weight_decay=0.5, clip='value', clip_value=0.1, b1=0.0, b2=0.0, eps=0.0)
    tx = optim.build_optimizer(o, ('visual', 'entity'))
    params = {'visual': {'w': jnp.array([2.0])}, 'entity': {'w': jnp.array([-1.0])}}
    grads = {'visual': {'w': jnp.array([5.0])}, 'entity': {'w': jnp.array([0.05])}}
    updates, _ = tx.update(grads, tx.init(params), params)
    # clip(5) = 0.1, + 0.5 * 2 = 1.1 -> sign step -0.1 ; clip(0.05) = 0.05 - 0.5 = -0.45 -> +0.1
    np.testing.assert_allclose(updates['visual']['w'], [-0.1], rtol=1e-6)
    np.testing.assert_allclose(updates['entity']['w'], [0.1], rtol=1e-6)


def test_amsgrad_keeps_the_largest_second_moment():
    o = _cfg(lr=1.0, amsgrad=True, b1=0.0, b2=0.5, eps=0.0)
    tx = optim.build_optimizer(o, ('visual', 'entity'))
    params = {'visual': {'w': jnp.zeros(1)}, 'entity': {'w': jnp.zeros(1)}}
    state = tx.init(params)
    _, state = tx.update({'visual': {'w': jnp.array([4.0])}, 'entity': {'w': jnp.array([1.])}},
                         state, params)
    upd, _ = tx.update({'visual': {'w': jnp.array([1.0])}, 'entity': {'w': jnp.array([1.])}},
                       state, params)
    # Adam would divide by sqrt(bias-corrected 0.5*16+0.5*1); AMSGrad keeps max(nu) >= that.
    plain = optim.build_optimizer(_cfg(lr=1.0, b1=0.0, b2=0.5, eps=0.0), ('visual', 'entity'))
    s2 = plain.init(params)
    _, s2 = plain.update({'visual': {'w': jnp.array([4.0])}, 'entity': {'w': jnp.array([1.])}},
                         s2, params)
    upd_plain, _ = plain.update({'visual': {'w': jnp.array([1.0])},
                                 'entity': {'w': jnp.array([1.])}}, s2, params)
    assert abs(float(upd['visual']['w'][0])) < abs(float(upd_plain['visual']['w'][0]))


def test_epoch_decay_factor():
    o = _cfg(decay_rate=0.8, decay_every_epochs=1)
    got = [float(optim.epoch_lr_factor(o, jnp.int32(e))) for e in range(4)]
    np.testing.assert_allclose(got, [1, 0.8, 0.64, 0.512], rtol=1e-6)
    o = _cfg(decay_rate=0.1, decay_every_epochs=50)
    got = [float(optim.epoch_lr_factor(o, jnp.int32(e))) for e in (0, 49, 50, 99, 100)]
    np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01], rtol=1e-6)


def test_bad_clip_name_is_reported():
    import pytest
    with pytest.raises(ValueError, match='clip'):
        optim.build_optimizer(_cfg(clip='sometimes'), ('visual', 'entity'))


def test_a_frozen_f_r_without_pretrained_weights_is_warned_about_and_only_then():
    from jima_jax.train import loop
    c = default.get_config()
    assert loop.frozen_random_backbone_warning(c) == ''  # f_R trained: nothing to warn about
    c.optim.task1.visual_lr = 0.0
    assert 'random weights' in loop.frozen_random_backbone_warning(c)
    c.model.pretrained = '/some/backbone.safetensors'  # set by pre-training or by the user
    assert loop.frozen_random_backbone_warning(c) == ''
