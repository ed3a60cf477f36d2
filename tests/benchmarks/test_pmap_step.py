"""The pmap comparison step's own pieces (its whole-step numbers are checked in
tests/train/test_sharding.py, which runs it with frozen BatchNorm statistics)."""

import pathlib

from tests.helpers import run_python

_BATCHNORM_ACROSS_DEVICES = """
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from benchmarks import pmap_step
from jima_jax.model.layers import BatchNorm

class Net(nnx.Module):
    def __init__(self):
        self.blocks = nnx.List([BatchNorm(3), BatchNorm(3)])

    def __call__(self, x):
        return self.blocks[1](self.blocks[0](x, train=True), train=True)

x = np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 3)).astype(np.float32)
whole = Net()
want = whole(jnp.asarray(x))

def per_device(xs):
    net = pmap_step.cross_device(Net())
    return net(xs), nnx.to_pure_dict(nnx.state(net, nnx.BatchStat))

got, got_stats = jax.pmap(per_device, axis_name=pmap_step.AXIS)(x.reshape(4, 2, 5, 5, 3))
want_stats = nnx.to_pure_dict(nnx.state(whole, nnx.BatchStat))
print(json.dumps({
    'out': float(np.max(np.abs(np.asarray(got).reshape(want.shape) - np.asarray(want)))),
    'stats': max(float(np.max(np.abs(np.asarray(g)[k] - np.asarray(w)))) for k in range(4)
                 for g, w in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats))),
    'moved': float(np.max(np.abs(np.asarray(jax.tree.leaves(want_stats)[0])))),
    'kinds': sorted({type(m).__name__
                     for _, m in pmap_step._modules(pmap_step.cross_device(Net()))}),
}))
"""


def test_batchnorm_statistics_span_every_device():
    """Four devices with two examples each normalise like one BatchNorm over all eight, and
    update the running statistics (unbiased over all 8 x 5 x 5 values) the same way."""
    r = run_python(_BATCHNORM_ACROSS_DEVICES, devices=4, timeout=300)
    assert r['moved'] > 0.1  # the running statistics did move, so the comparison means something
    assert r['out'] < 1e-5 and r['stats'] < 1e-5
    assert r['kinds'] == ['CrossDeviceBatchNorm', 'List', 'Net']


def test_production_code_has_no_collectives():
    """The pmap variant lives in benchmarks/: the package's step and layers are jit-only."""
    package = pathlib.Path(__file__).resolve().parents[2] / 'jima_jax'
    found = [f'{path.relative_to(package)}: {word}' for path in sorted(package.rglob('*.py'))
             for word in ('axis_name', 'pmean', 'psum', 'jax.pmap', 'axis_index')
             if word in path.read_text(encoding='utf-8')]
    assert not found
