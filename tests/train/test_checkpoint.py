"""Checkpointer: round trip, last-N + best preservation, half-written steps are never restored,
checksums of finished saves (damage itself: tests/test_faults.py)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jima_jax.train import checkpoint, step as step_lib


def _train_cfg(mode='min', keep=2):
    return ml_collections.ConfigDict(dict(best_metric='val/loss', best_mode=mode,
                                          keep_checkpoints=keep))


def _state(step):
    return step_lib.TrainState(
        step=jnp.int32(step),
        params={'visual': {'layer1': {0: {'kernel': jnp.full((2, 3), float(step))}}}},
        batch_stats={'visual': {'bn': {'mean': jnp.arange(3.0)}}},
        opt1=(jnp.ones(2) * step,), opt2=(), rng=jnp.asarray([7, step], jnp.uint32))


def _abstract(state):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return checkpoint.abstract_like(state, jax.tree.map(lambda _: sharding, state))


@pytest.mark.parametrize('mode,values,best', [('min', [5., 3., 4., 6., 7.], 1),
                                              ('max', [5., 9., 4., 6., 7.], 1)])
def test_keeps_the_last_n_and_the_best(tmp_path, mode, values, best):
    ck = checkpoint.Checkpointer(tmp_path, _train_cfg(mode))
    for step, value in enumerate(values):
        ck.save(step, _state(step), {'epoch': step}, {'c': 1}, metrics={'val/loss': value})
    ck.save(10, _state(10), {'epoch': 10}, {'c': 1})  # a mid-epoch save without metrics
    ck.close()
    kept = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert kept == sorted({best, 4, 10})


def test_round_trip_restores_every_leaf_and_the_extra_state(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path, _train_cfg())
    state = _state(3)
    ck.save(3, state, {'position': {'epoch': 1, 'step_in_epoch': 2}, 'kept': np.arange(4)},
            {'seed': 0})
    ck.save(3, _state(99), {}, {})  # same step again: ignored, the first save stands
    ck.wait()
    restored, extra = ck.restore(_abstract(state))
    ck.close()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert type(restored) is step_lib.TrainState
    assert extra == {'position': {'epoch': 1, 'step_in_epoch': 2}, 'kept': [0, 1, 2, 3]}


def test_a_half_written_step_is_ignored(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path, _train_cfg())
    ck.save(2, _state(2), {}, {})
    ck.close()
    # what a crash in the middle of saving step 4 leaves behind
    (tmp_path / '4.orbax-checkpoint-tmp-1234').mkdir()
    (tmp_path / '4.orbax-checkpoint-tmp-1234' / 'junk').write_text('partial')
    ck = checkpoint.Checkpointer(tmp_path, _train_cfg())
    assert ck.latest_step() == 2
    restored, _ = ck.restore(_abstract(_state(2)))
    assert int(restored.step) == 2
    ck.close()


def test_bad_best_mode_is_reported(tmp_path):
    with pytest.raises(ValueError, match='best_mode'):
        checkpoint.Checkpointer(tmp_path, _train_cfg('biggest'))


def test_checkpoint_dir_defaults_to_the_workdir_and_accepts_a_shared_path_or_gs(tmp_path):
    cfg = _train_cfg()  # no checkpoint_dir key at all: the default
    assert checkpoint.checkpoint_dir(tmp_path / 'run', cfg) == (tmp_path / 'run' / 'checkpoints')
    cfg.checkpoint_dir = ''
    assert checkpoint.checkpoint_dir(tmp_path / 'run', cfg) == (tmp_path / 'run' / 'checkpoints')
    cfg.checkpoint_dir = str(tmp_path / 'shared' / 'ck')
    assert checkpoint.checkpoint_dir(tmp_path / 'run', cfg) == tmp_path / 'shared' / 'ck'
    cfg.checkpoint_dir = 'gs://bucket/runs/iu'
    assert str(checkpoint.checkpoint_dir(tmp_path, cfg)) == 'gs://bucket/runs/iu'
    cfg.checkpoint_dir = 's3://bucket/x'
    with pytest.raises(ValueError, match='train.checkpoint_dir'):
        checkpoint.checkpoint_dir(tmp_path, cfg)


def test_finished_saves_record_the_sha256_of_every_file(tmp_path):
    import hashlib
    import json
    ck = checkpoint.Checkpointer(tmp_path, _train_cfg())
    ck.save(1, _state(1), {'epoch': 1}, {'c': 1})
    ck.save(2, _state(2), {'epoch': 2}, {'c': 1})  # step 1 is finished: its checksums now
    assert (tmp_path / '1' / checkpoint.CHECKSUMS).is_file()
    ck.close()  # and step 2's
    for step in ('1', '2'):
        folder = tmp_path / step
        recorded = json.loads((folder / checkpoint.CHECKSUMS).read_text())['files']
        files = {str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()}
        assert set(recorded) == files - {checkpoint.CHECKSUMS, '_CHECKPOINT_METADATA'}
        assert {'extra/metadata', 'config/metadata', 'state/_METADATA'} <= set(recorded)
        for name, digest in recorded.items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


def test_a_run_that_restores_builds_its_model_as_shapes_and_gets_the_saved_state(
        tmp_path, smoke_dataset, monkeypatch):
    """run_setup.setup on a run with a checkpoint (eval, predict, export, resume) builds the
    model abstractly (no eager initialisation, no backbone file read) and restores exactly what
    an eagerly built target restores; a fresh run still initialises eagerly."""
    from configs import smoke
    from jima_jax.model import jima
    from jima_jax.train import loop, run_setup
    c = smoke.get_config()
    c.train.num_epochs, c.train.steps_per_epoch = 1, 2
    loop.train_and_evaluate(c, tmp_path / 'run')
    builds = []
    real_build = jima.build
    monkeypatch.setattr(jima, 'build', lambda *a, abstract=False, **k: (
        builds.append(abstract), real_build(*a, abstract=abstract, **k))[1])
    c.model.pretrained = str(tmp_path / 'moved_away.safetensors')  # the checkpoint holds f_R
    restored = run_setup.setup(c, tmp_path / 'run')
    restored.checkpointer.close()
    assert builds == [True] and int(jax.device_get(restored.state.step)) == 2
    c.model.pretrained = ''
    eager = run_setup.build_model(c, smoke_dataset.vocab_size)
    host = step_lib.init_train_state(c, eager[1], eager[2])
    ck = checkpoint.Checkpointer(checkpoint.checkpoint_dir(tmp_path / 'run', c.train), c.train)
    expected, _ = ck.restore(checkpoint.abstract_like(host, restored.state_sharding))
    ck.close()
    for a, b in zip(jax.tree.leaves(jax.device_get(expected)),
                    jax.tree.leaves(jax.device_get(restored.state))):
        np.testing.assert_array_equal(a, b)
    builds.clear()
    fresh = run_setup.setup(c, tmp_path / 'fresh')
    fresh.checkpointer.close()
    assert builds == [False]  # a fresh run: initialised eagerly, as before
    for a, b in zip(jax.tree.leaves(jax.device_get(fresh.state.params)),
                    jax.tree.leaves(host.params)):
        np.testing.assert_array_equal(a, b)
