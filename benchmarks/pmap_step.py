"""The train step under `jax.pmap`: the comparison point the step-variant benchmark times against
the jit-sharded production step (`jima_jax.train.step`).

Under `pmap` every device traces the step on its own slice of the batch, so what `jit` gets for
free from global arrays is written out here as collectives: BatchNorm averages its batch moments
across devices, every loss divides its local sum by the count summed over devices, gradients and
reported losses are summed before use, and each device folds its index into the dropout key (so
its masks differ from the jit step's, and only dropout-free runs match it number for number;
tests/train/test_sharding.py checks that they do). The production step and layers know nothing
of this module: it plugs in through `TaskUpdates._merge/_total/step_key` and
`BatchNorm.batch_moments`.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jima_jax.model.layers import BatchNorm
from jima_jax.train import step as step_lib

AXIS = 'devices'


class CrossDeviceBatchNorm(BatchNorm):
    """BatchNorm whose batch statistics are those of the batch over all devices of `AXIS`."""

    def batch_moments(self, xf: jax.Array):
        mean = lax.pmean(jnp.mean(xf, axis=(0, 1, 2)), AXIS)
        var = lax.pmean(jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2)), AXIS)
        return mean, var, xf.shape[0] * xf.shape[1] * xf.shape[2] * lax.psum(1, AXIS)


def _modules(model: nnx.Module):
    """Every sub-module (nnx.iter_modules where this flax has it, the method otherwise)."""
    iterate = getattr(nnx, 'iter_modules', None)
    return iterate(model) if iterate is not None else model.iter_modules()


def cross_device(model: nnx.Module) -> nnx.Module:
    """`model` with every BatchNorm switched, in place, to `CrossDeviceBatchNorm` (same fields,
    same variables: only how batch statistics are taken changes)."""
    for _, module in _modules(model):
        if type(module) is BatchNorm:
            module.__class__ = CrossDeviceBatchNorm
    return model


class PmapTaskUpdates(step_lib.TaskUpdates):
    """The production updates with the cross-device sums a per-device trace needs."""

    def _merge(self, params, stats):
        return cross_device(super()._merge(params, stats))

    def _total(self, x):
        return jax.tree.map(lambda v: lax.psum(v, AXIS), x)

    def step_key(self, state: step_lib.TrainState) -> jax.Array:
        return jax.random.fold_in(super().step_key(state), lax.axis_index(AXIS))


def pmap_train_step(modeldef: step_lib.ModelDef, config, vocab_size: int) -> Callable:
    """`(state, batch_a, batch_b, epoch, tables) -> (state, metrics)` under `jax.pmap`: state
    replicated (`replicate`), batches split with a leading device axis (`split_batch`), epoch and
    tables broadcast; the state is donated."""
    updates = PmapTaskUpdates(modeldef, config, vocab_size)
    return jax.pmap(updates.train_step, axis_name=AXIS, in_axes=(0, 0, 0, None, None),
                    donate_argnums=(0,))


def _device_axis_sharding(devices) -> jax.sharding.NamedSharding:
    mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree, devices: Optional[list] = None):
    """One copy of every leaf per device (default: the local ones), laid out as `pmap` expects
    (leading axis)."""
    devices = jax.local_devices() if devices is None else devices
    sharding, n = _device_axis_sharding(devices), len(devices)
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
        tree)


def split_batch(batch: dict, devices: Optional[list] = None) -> dict:
    """A host batch [B, ...] -> [n, B / n, ...] placed one slice per device."""
    devices = jax.local_devices() if devices is None else devices
    sharding, n = _device_axis_sharding(devices), len(devices)
    return jax.tree.map(
        lambda x: jax.device_put(np.asarray(x).reshape((n, -1) + np.shape(x)[1:]), sharding),
        batch)
