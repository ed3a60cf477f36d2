"""Runs a few fused train steps under one parallel layout and prints losses as JSON.

Executed in a subprocess by test_sharding.py, with XLA_FLAGS setting the simulated device count.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import pmap_step
from configs import smoke
from jima_jax.model import jima
from jima_jax.runtime import parallel
from jima_jax.train import losses, step as step_lib
from tests.helpers import random_batch

VOCAB = 40


def config(smooth: bool, dropout: bool):
    """The smoke config these runs train (also the step test_step.py's scheduler probe compiles,
    so that one of its two compilations is in the compilation cache already).

    smooth=True freezes BatchNorm statistics; see test_sharding.py. Both use Adam eps 1e-3: with
    the default 1e-8 Adam's first step is lr * sign(g), so a gradient entry that is zero up to
    rounding moves its parameter by +-lr depending on the layout's summation order, and every
    later comparison inherits that (on jax 0.12's XLA:CPU it exceeded the tolerances).
    """
    c = smoke.get_config()
    if not dropout:
        c.model.dropout = 0.0
    c.data.max_len = 12
    c.optim.task1.lr, c.optim.task2.lr = 4e-4, 1e-5  # the paper's learning rates
    c.optim.task1.eps = c.optim.task2.eps = 1e-3
    if smooth:
        c.model.freeze_bn_stats = True
    return c


def model_and_state(c):
    """(ModelDef, initial TrainState) of `c`'s model at seed 0."""
    model = jima.JIMA(c.model, vocab_size=VOCAB, num_views=2, max_len=c.data.max_len + 1,
                      rngs=nnx.Rngs(0))
    modeldef, params, stats = step_lib.split_model(model)
    return modeldef, step_lib.init_train_state(c, params, stats)


def batches(c, n: int) -> list[dict]:
    """`n` random batches of 8 studies (always the same ones)."""
    rng = np.random.default_rng(0)
    return [random_batch(rng, batch=8, views=2, image=c.input.image_size, vocab=VOCAB,
                         max_len=c.data.max_len) for _ in range(n)]


def trajectory(layout: str, steps: int, smooth: bool, dropout: bool) -> dict:
    """`layout`: jit (replicated params), fsdp (params sharded over all devices), pmap."""
    c = config(smooth, dropout)
    n = jax.device_count()
    if layout == 'fsdp':
        c.parallel.fsdp, c.parallel.shard_params, c.parallel.min_shard_size = n, True, 1024
    modeldef, state = model_and_state(c)
    tables = losses.LossTables.uniform(VOCAB)
    batches_ = batches(c, 2 * steps)
    out = {'entity': [], 'report': [], 'sharded_leaves': 0}
    if layout == 'pmap':
        step = pmap_step.pmap_train_step(modeldef, c, VOCAB)
        state = pmap_step.replicate(state)
        split = pmap_step.split_batch
        for i in range(steps):
            state, m = step(state, split(batches_[2 * i]), split(batches_[2 * i + 1]),
                            jnp.int32(0), tables)
            out['entity'].append(float(m['loss/entity'][0]))
            out['report'].append(float(m['loss/report'][0]))
        stats_host = jax.tree.map(lambda x: np.asarray(x[0]), state.batch_stats)
    else:
        mesh = parallel.make_mesh(c.parallel)
        sharding = parallel.state_shardings(mesh, state, c.parallel)
        out['sharded_leaves'] = sum(
            1 for s in jax.tree.leaves(sharding.params) if 'fsdp' in str(s.spec))
        state = jax.device_put(state, sharding)
        step = step_lib.jit_train_step(step_lib.build_train_step(modeldef, c, VOCAB), mesh,
                                       sharding)
        put = lambda b: parallel.put_batch(b, parallel.batch_sharding(mesh))
        for i in range(steps):
            state, m = step(state, put(batches_[2 * i]), put(batches_[2 * i + 1]), jnp.int32(0),
                            tables)
            out['entity'].append(float(m['loss/entity']))
            out['report'].append(float(m['loss/report']))
        stats_host = jax.device_get(state.batch_stats)
    out['batch_stats'] = [np.asarray(x).tolist() for x in jax.tree.leaves(stats_host)[:6]]
    # Adam's first moments: after one step (1 - b1) x the gradient each optimizer received, so
    # a gradient summed over too few or too many devices shows here even where the sign-like
    # first Adam step hides it in the parameters.
    moments = jax.device_get([optax.tree_utils.tree_get(state.opt1, 'mu'),
                              optax.tree_utils.tree_get(state.opt2, 'mu')])
    if layout == 'pmap':
        moments = jax.tree.map(lambda x: x[0], moments)
    out['moments'] = [[np.asarray(x).tolist() for x in jax.tree.leaves(m)[:4]] for m in moments]
    return out


if __name__ == '__main__':
    # argv: one run per argument, "<layout>:<steps>:<smooth|rough>:<dropout|nodrop>"
    runs = {}
    for spec in sys.argv[1:]:
        layout, steps, mode, drop = spec.split(':')
        runs[spec] = trajectory(layout, int(steps), mode == 'smooth', drop == 'dropout')
    print(json.dumps(runs))
