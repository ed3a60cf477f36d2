"""One device vs 8 simulated devices, replicated vs fsdp-sharded parameters, jit vs pmap.

Each layout runs in its own interpreter (the device count is fixed at JAX start-up). Different
layouts sum the same numbers in different orders, so results agree to rounding (~1e-7), not bit
for bit. Two amplifiers of rounding noise are removed from the multi-step comparison: Adam's
first steps map every gradient entry to +-lr whatever its size (entries whose true gradient is at
rounding level then step in random directions), and training-mode BatchNorm divides by the batch
standard deviation of channels that are almost constant in a random tiny network. The multi-step
test therefore uses frozen BatchNorm statistics and Adam eps = 1e-3 (all code paths unchanged);
the training-mode BatchNorm path is checked over one step, where nothing is amplified yet.

Every run is one more compilation of the train step (the fixture's cost), so the runs are shared:
the pmap step (whose dropout masks differ from jit's by design: benchmarks/pmap_step.py) is
checked on the dropout-free one-step training-mode BatchNorm run, with its gradients, and the
jit/fsdp trajectories keep their dropout.
"""

import numpy as np
import pytest

from tests.helpers import run_python

def _run(specs, devices):
    code = ('import json, sys\nfrom tests.train.sharded_trajectory import trajectory\n'
            f'specs = {specs!r}\nruns = {{}}\n'
            'for spec in specs:\n'
            '    layout, steps, mode, drop = spec.split(":")\n'
            '    runs[spec] = trajectory(layout, int(steps), mode == "smooth", drop == "dropout")\n'
            'print(json.dumps(runs))\n')
    return run_python(code, devices=devices, timeout=900)


@pytest.fixture(scope='module')
def runs():
    one = _run(['jit:5:smooth:dropout', 'jit:1:rough:nodrop'], 1)
    eight = _run(['jit:5:smooth:dropout', 'fsdp:5:smooth:dropout', 'pmap:1:rough:nodrop',
                  'jit:1:rough:nodrop'], 8)
    return one, eight


def _close(a, b, rtol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol)


def test_eight_devices_follow_the_one_device_trajectory(runs):
    one, eight = runs
    ref, got = one['jit:5:smooth:dropout'], eight['jit:5:smooth:dropout']
    for task in ('entity', 'report'):
        _close(got[task], ref[task], 1e-5)
    # the run is not trivially flat: the losses move by far more than the tolerance
    assert abs(ref['entity'][-1] - ref['entity'][0]) > 0.05


def test_fsdp_sharded_parameters_equal_replicated(runs):
    one, eight = runs
    fsdp, rep = eight['fsdp:5:smooth:dropout'], eight['jit:5:smooth:dropout']
    assert fsdp['sharded_leaves'] > 10 and rep['sharded_leaves'] == 0
    for task in ('entity', 'report'):
        _close(fsdp[task], rep[task], 1e-5)
        _close(fsdp[task], one['jit:5:smooth:dropout'][task], 1e-5)


def _same_one_step(got, want):
    """One training-mode BatchNorm step on two layouts: losses, running statistics, gradients."""
    _close(got['entity'], want['entity'], 1e-6)  # computed before any update
    # Task 2 already sees f_R after Task 1's first (sign-like) Adam step: rounding amplified.
    _close(got['report'], want['report'], 1e-4)
    for x, y in zip(want['batch_stats'], got['batch_stats']):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
    # The gradients of both tasks (Adam's first moments): summed over all 8 devices' examples
    # once, not per device or twice. Task 2's see the same amplified f_R as its loss.
    # Entries far below the largest (an attention key bias: zero up to rounding) on its scale.
    for task, (want_m, got_m) in enumerate(zip(want['moments'], got['moments'])):
        assert len(want_m) == len(got_m) == 4
        scale = max(np.abs(np.asarray(x)).max() for x in want_m)
        assert scale > 1e-3
        for x, y in zip(want_m, got_m):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-3,
                                       atol=1e-3 * scale, err_msg=f'task {task + 1}')


def test_pmap_version_computes_the_same_step(runs):
    """The pmap step, with its collectives written out (cross-device BatchNorm, psum'd losses and
    gradients), against the one-device jit step."""
    one, eight = runs
    _same_one_step(eight['pmap:1:rough:nodrop'], one['jit:1:rough:nodrop'])


def test_training_mode_batchnorm_statistics_are_global(runs):
    """Batch statistics over the whole (sharded) batch: losses and running stats of one step."""
    one, eight = runs
    _same_one_step(eight['jit:1:rough:nodrop'], one['jit:1:rough:nodrop'])
