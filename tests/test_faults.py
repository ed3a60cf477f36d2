"""The faults a long run meets, one test per row of docs/reliability.md.

Each case checks the outcome (survived, or a named error) and that nothing already written was
lost or left half-written. Checkpoint damage is tested twice: on small Checkpointer states (every
kind of damage, fast) and on one configs/smoke.py run shared by the module (resume through the
CLI, eval/predict checkpoint choice, SIGTERM during evaluation).
"""

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jima_jax import atomic
from jima_jax.train import checkpoint, step as step_lib
from tests.conftest import REPO

# ------------------------------------------------------------------ helpers


def _files(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under `root` by relative path: a snapshot to compare before/after a fault."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def _no_temporaries(root: pathlib.Path) -> None:
    left = [p for p in root.rglob('*') if p.name.endswith('.tmp') or p.name.startswith('.tmp-')]
    assert not left, f'half-written files left behind: {left}'


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / 'state').rglob('d/*') if p.is_file()),
               key=lambda p: p.stat().st_size)


def _overwrite(path: pathlib.Path, size: int = 4096) -> pathlib.Path:
    """Overwrites `size` bytes in the middle of `path` (a bad sector, a botched copy)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start:start + size] = bytes([0xA5]) * min(size, len(data) - start)
    path.write_bytes(bytes(data))
    return path


def _truncate(path: pathlib.Path) -> pathlib.Path:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def _unlink(path: pathlib.Path) -> pathlib.Path:
    path.unlink()
    return path


def _write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.write_bytes(data)
    return path


# kind -> (damage(step folder) -> the file damaged, what the message names without checksums)
DAMAGE = {
    'corrupt array data': (lambda d: _overwrite(_largest_array_file(d)), 'state'),
    'truncated array data': (lambda d: _truncate(_largest_array_file(d)), 'state'),
    'missing array data file': (lambda d: _unlink(_largest_array_file(d)), 'state'),
    'missing array index': (lambda d: _unlink(d / 'state' / '_METADATA'), 'state'),
    'corrupt extra JSON': (lambda d: _write(d / 'extra' / 'metadata', b'{"position": {"epo'),
                           'extra/metadata'),
    'missing extra JSON': (lambda d: _unlink(d / 'extra' / 'metadata'), 'extra'),
    'extra JSON not an object': (lambda d: _write(d / 'extra' / 'metadata', b'[1, 2]'),
                                 'extra/metadata'),
    'corrupt config JSON': (lambda d: _write(d / 'config' / 'metadata', b'\0' * 64),
                            'config/metadata'),
}


# ------------------------------------------------------------------ small checkpoints


def _train_cfg():
    return ml_collections.ConfigDict(dict(best_metric='val/loss', best_mode='min',
                                          keep_checkpoints=3))


def _state(step: int):
    """Random 64x64 leaves: large enough (16 KB) that Orbax stores them in data files."""
    rng = np.random.default_rng(step)
    leaf = lambda: jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)  # noqa: E731
    return step_lib.TrainState(step=jnp.int32(step), params={'w': leaf(), 'b': jnp.arange(3.0)},
                               batch_stats={'bn': {'mean': leaf()}}, opt1=(leaf(),), opt2=(),
                               rng=jnp.asarray([7, step], jnp.uint32))


def _extra(step: int) -> dict:
    return {'position': {'epoch': 0, 'step_in_epoch': step}, 'best': {'step': 2}}


def _abstract(state):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return checkpoint.abstract_like(state, jax.tree.map(lambda _: sharding, state))


def _assert_state(restored, step: int) -> None:
    for a, b in zip(jax.tree.leaves(_state(step)), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope='module')
def small_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('small') / 'ck'
    ck = checkpoint.Checkpointer(root, _train_cfg())
    for step in (2, 4):
        ck.save(step, _state(step), _extra(step), {'seed': step})
    ck.close()
    return root


@pytest.fixture
def small(small_checkpoints, tmp_path):
    root = tmp_path / 'ck'
    shutil.copytree(small_checkpoints, root)
    return root


@pytest.mark.parametrize('kind', list(DAMAGE))
@pytest.mark.parametrize('sealed', [True, False], ids=['checksummed', 'no-checksums'])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_restored(small, kind,
                                                                              sealed, capsys):
    """Every kind of damage, with the checksums a finished save writes, and without them (a save
    cut off by SIGKILL before they were written): then Orbax's own reading finds it."""
    damage, coarse = DAMAGE[kind]
    if not sealed:
        if kind == 'corrupt array data':
            pytest.skip('zstd keeps incompressible float data raw and unchecked: only the '
                        'checksums see an overwrite there (docs/reliability.md)')
        (small / '4' / checkpoint.CHECKSUMS).unlink()
    damaged = damage(small / '4')
    named = str(damaged.relative_to(small / '4')) if sealed else coarse
    damaged_files = _files(small / '4')
    ck = checkpoint.Checkpointer(small, _train_cfg())
    # asked for by step: a named error, and the folder stays where it is
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf'checkpoint step 4 is damaged: \S*/4/{named} (cannot be read|is '
                             r'missing|differs from the checksum).* --checkpoint=latest'):
        ck.restore(_abstract(_state(4)), step=4)
    assert (small / '4').is_dir() and capsys.readouterr().err == ''
    # the newest intact one: step 2, with one line naming step 4 and its file
    state, extra = ck.restore(_abstract(_state(4)))
    _assert_state(state, 2)
    assert extra == _extra(2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('warning: checkpoint step 4 is damaged: ')
    assert f'/4/{named}' in lines[0] and 'Moved it to ' in lines[0]
    moved = list(small.glob('corrupt-4-*'))
    assert len(moved) == 1 and str(moved[0]) in lines[0]
    assert _files(moved[0]) == damaged_files  # moved, not deleted or changed
    assert ck.latest_step() == 2 and sorted(ck.manager.all_steps()) == [2]
    # the run goes on: step 4 is saved again and reads back
    ck.save(4, _state(4), _extra(4), {'seed': 4})
    ck.wait()
    state, extra = ck.restore(_abstract(_state(4)))
    _assert_state(state, 4)
    ck.close()
    assert extra == _extra(4) and len(list(small.glob('corrupt-4-*'))) == 1


def test_every_checkpoint_damaged_is_a_named_error_and_both_are_kept(small, capsys):
    for step in (2, 4):
        _overwrite(_largest_array_file(small / str(step)))
    ck = checkpoint.Checkpointer(small, _train_cfg())
    with pytest.raises(checkpoint.CheckpointError, match=r'no intact checkpoint left .* \[4, 2\]'):
        ck.restore(_abstract(_state(4)))
    ck.close()
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
    assert sorted(p.name.split('-')[1] for p in small.iterdir()) == ['2', '4']
    # now empty: the next run starts afresh instead of failing again
    ck = checkpoint.Checkpointer(small, _train_cfg())
    assert ck.latest_step() is None and ck.restore(_abstract(_state(4))) is None
    ck.close()


def test_intact_checkpoint_of_another_config_is_not_moved(small, capsys):
    other = _state(4).replace(params={'w': jnp.zeros((32, 64)), 'b': jnp.arange(3.0)})
    ck = checkpoint.Checkpointer(small, _train_cfg())
    for step in (None, 4):
        with pytest.raises(ValueError, match=r'step 4 .* is intact but does not fit this config '
                                             r'\(.*shape.*\)\. Resume with the config'):
            ck.restore(_abstract(other), step=step)
    ck.close()
    assert sorted(p.name for p in small.iterdir()) == ['2', '4']
    assert capsys.readouterr().err == ''


def test_unreadable_step_metadata_file_is_harmless(small):
    """`_CHECKPOINT_METADATA` only holds metrics and times: Orbax logs it and restores."""
    (small / '4' / '_CHECKPOINT_METADATA').write_text('{')
    ck = checkpoint.Checkpointer(small, _train_cfg())
    state, _ = ck.restore(_abstract(_state(4)))
    ck.close()
    _assert_state(state, 4)


def _disk_full_after_half():
    """A writer that puts half of the bytes down, then fails as a full disk does."""
    def fail(path):
        path = pathlib.Path(path)
        if path.exists():
            data = path.read_bytes()
            path.write_bytes(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return fail


def test_disk_full_while_writing_a_checkpoint_keeps_the_earlier_ones(small, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
    from jima_jax import main
    before = {step: _files(small / step) for step in ('2', '4')}
    real_save = handler.JsonCheckpointHandler._save_fn

    async def full_disk(self, item, directory):
        await real_save(self, item, directory)
        _disk_full_after_half()(directory / self._filename)

    monkeypatch.setattr(handler.JsonCheckpointHandler, '_save_fn', full_disk)
    ck = checkpoint.Checkpointer(small, _train_cfg())
    with pytest.raises(OSError) as raised:
        ck.save(6, _state(6), _extra(6), {'seed': 6})
        ck.wait()
    ck.close()
    assert raised.value.errno == errno.ENOSPC
    message = main.user_error(raised.value)
    assert message.startswith('the disk is full (writing ') and 'rerun the same command' in message
    monkeypatch.undo()
    # the earlier checkpoints are untouched and restore; the half-written step is never listed
    assert _files(small / '2') == before['2'] and _files(small / '4') == before['4']
    assert list(small.glob('6.orbax-checkpoint-tmp*'))  # what the failed save left
    ck = checkpoint.Checkpointer(small, _train_cfg())
    assert sorted(ck.manager.all_steps()) == [2, 4]
    _assert_state(ck.restore(_abstract(_state(4)))[0], 4)
    ck.close()
    # with space again, the rerun (a new process, as after the exit-2 error) saves step 6 anew
    from tests.helpers import run_python
    rerun = run_python(f"""
import json, numpy as np, jax
from jima_jax.train import checkpoint
from tests.test_faults import _abstract, _extra, _state, _train_cfg
ck = checkpoint.Checkpointer({str(small)!r}, _train_cfg())
ck.save(6, _state(6), _extra(6), {{'seed': 6}})
ck.wait()
state, extra = ck.restore(_abstract(_state(6)))
ck.close()
same = all(np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(_state(6)), jax.tree.leaves(state)))
print(json.dumps({{'steps': sorted(ck.manager.all_steps()), 'same': same, 'extra': extra}}))
""", timeout=300)
    assert rerun == {'steps': [2, 4, 6], 'same': True, 'extra': _extra(6)}
    assert not list(small.glob('6.orbax-checkpoint-tmp*'))


# ------------------------------------------------------------------ files written atomically


def _fail_on(monkeypatch, name: str):
    """Patches atomic.write_with so that writing `name` fails half-way with ENOSPC."""
    real = atomic.write_with

    def write_with(path, write):
        if pathlib.Path(path).name != name:
            return real(path, write)

        def half_then_full(tmp):
            write(tmp)
            _disk_full_after_half()(tmp)
        return real(path, half_then_full)
    monkeypatch.setattr(atomic, 'write_with', write_with)


def test_disk_full_while_writing_results_keeps_the_previous_files(tmp_path, monkeypatch):
    from jima_jax.evaluation import report
    out = tmp_path / 'eval' / 'test'
    report.write_results({'BLEU_4': 0.1, 'ROUGE_L': 0.2}, out)
    before = _files(out)
    _fail_on(monkeypatch, 'results.md')
    with pytest.raises(OSError, match='No space left'):
        report.write_results({'BLEU_4': 0.3, 'ROUGE_L': 0.4}, out)
    after = _files(out)
    assert after.keys() == before.keys()
    assert after['results.md'] == before['results.md']  # the file being written: the old one
    assert json.loads(after['results.json'])['BLEU_4'] in (0.1, 0.3)  # whole, old or new
    _no_temporaries(tmp_path)


def test_disk_full_while_writing_tables_keeps_the_prepared_dataset(smoke_dataset, tmp_path,
                                                                  monkeypatch):
    from configs import smoke
    from jima_jax.data import prepare
    cfg = smoke.get_config().data
    cfg.data_dir = str(tmp_path / 'data')
    target = prepare.prepared_dir(cfg)
    shutil.copytree(prepare.prepared_dir(smoke.get_config().data), target)
    before = _files(target)
    _fail_on(monkeypatch, 'tables.json')
    with pytest.raises(OSError, match='No space left'):
        prepare.prepare_dataset(cfg, force=True)
    monkeypatch.undo()
    assert _files(target) == before
    _no_temporaries(tmp_path / 'data')
    assert len(prepare.load_prepared(cfg).splits['train']) == len(smoke_dataset.splits['train'])


# ------------------------------------------------------------------ prepared data and sources


def test_prepared_dataset_whose_tables_or_tokenizer_changed_is_a_named_error(smoke_dataset,
                                                                           tmp_path):
    from configs import smoke
    from jima_jax.data import prepare
    from jima_jax.text.tokenizer import Tokenizer
    cfg = smoke.get_config().data
    cfg.data_dir = str(tmp_path / 'data')
    target = prepare.prepared_dir(cfg)
    shutil.copytree(prepare.prepared_dir(smoke.get_config().data), target)
    tables = dict(np.load(target / 'tables.npz'))
    np.savez(target / 'tables.npz', **{**tables, 'token_counts': tables['token_counts'] + 1})
    with pytest.raises(ValueError, match='content hash'):
        prepare.load_prepared(cfg)
    np.savez(target / 'tables.npz', **tables)
    assert prepare.load_prepared(cfg).vocab_size == smoke_dataset.vocab_size
    Tokenizer.train(['another vocabulary entirely .'], min_count=1).save(
        target / 'tokenizer.model')
    with pytest.raises(ValueError, match=r'built for tokenizer .* delete its directory'):
        prepare.load_prepared(cfg)


def test_zero_byte_or_cut_image_is_named_or_skipped_and_counted(tmp_path):
    from PIL import Image
    from jima_jax.data import prepare, sources
    from jima_jax.data.types import RawStudy
    from tests.data.test_builders import data_config, make_builder
    good = tmp_path / 'good.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24), np.uint8)).save(good)
    empty, cut = tmp_path / 'empty.png', tmp_path / 'cut.png'
    empty.write_bytes(b'')
    cut.write_bytes(good.read_bytes()[:40])
    for bad in (empty, cut):
        with pytest.raises(ValueError, match=rf'{bad.name} cannot be decoded'):
            sources.read_grayscale(bad)
    reports = ['The heart is normal.', 'The lungs are clear.', 'No pleural effusion.']
    studies = [RawStudy(id=f's{i}', split='train', report=reports[i % 3],
                        load_views=sources._views_loader(f's{i}', [empty if i == 2 else good]))
               for i in range(6)]
    cfg = data_config(tmp_path, name='tiny_source', image_size=8, min_count=1)
    with pytest.raises(sources.BadStudyError, match=r'study s2: image file \S*empty.png cannot be '
                                                    r'decoded.*skip_bad_studies'):
        prepare.prepare_dataset(cfg, builder_cls=make_builder(studies))
    assert not list((tmp_path / 'prepared' / 'tiny_source').iterdir())  # nothing half-written
    cfg = data_config(tmp_path, name='tiny_source', image_size=8, min_count=1,
                      skip_bad_studies=True)
    path = prepare.prepare_dataset(cfg, builder_cls=make_builder(studies))
    manifest = json.loads((path / prepare.MANIFEST).read_text())
    assert manifest['skipped']['bad_images'] == ['s2'] and manifest['splits']['train'] == 5


def test_annotation_with_a_missing_field_or_a_duplicate_id_is_named(tmp_path):
    from jima_jax.data import prepare, sources
    from jima_jax.data.types import RawStudy
    from tests.data.test_builders import data_config, make_builder
    path = tmp_path / 'annotation.json'
    path.write_text(json.dumps({'train': [{'id': 'a', 'report': 'ok .'}, {'id': 'b'}]}))
    with pytest.raises(ValueError, match=r"annotation.json: train\[1\] needs at least 'id' and "
                                         "'report'"):
        list(sources.r2gen_entries(path))
    studies = [RawStudy(id=i, split='train', report='The heart is normal.') for i in 'aba']
    cfg = data_config(tmp_path, name='tiny_source', reports_only=True, min_count=1)
    with pytest.raises(ValueError, match='study id a occurs twice in the source'):
        prepare.prepare_dataset(cfg, builder_cls=make_builder(studies))
    assert not list((tmp_path / 'prepared' / 'tiny_source').iterdir())


# ------------------------------------------------------------------ the command line


def _cli(*args):
    return [sys.executable, '-m', 'jima_jax.main', '--config', 'configs/smoke.py', *args]


def _run_cli(*args, timeout=600):
    return subprocess.run(_cli(*args), cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@pytest.mark.parametrize('override, message', [
    ('--config.train.num_epochs=two', r'--config.train.num_epochs=two: invalid literal for int'),
    ('--config.input.batch_size=0', r'config input.batch_size=0 is out of range: expected a '
                                    r'positive integer\. .*--config.input.batch_size=\.\.\.'),
    ('--config.model.dropout=1.5', r'config model.dropout=1.5 is out of range'),
    ('--config.train.num_epoch=3', r'--config.train.num_epoch: no config key .num_epoch.\. '
                                   r'Did you mean "num_epochs"'),
], ids=['wrong type', 'below range', 'above range', 'unknown key'])
def test_config_value_of_wrong_type_or_out_of_range_is_one_paragraph(tmp_path, override,
                                                                     message):
    proc = _run_cli('--workdir', str(tmp_path / 'run'), override, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and last.endswith('(--verbose shows the traceback)')
    assert re.search(message, last), last
    assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'run').exists()  # failed before writing anything


def test_verbose_adds_the_traceback(tmp_path):
    proc = _run_cli('--workdir', str(tmp_path / 'run'), '--config.input.batch_size=0',
                    '--verbose', timeout=120)
    assert proc.returncode == 2
    assert 'Traceback (most recent call last)' in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('error: config input.batch_size=0')


def test_user_errors_and_bugs_are_told_apart():
    from jima_jax import main
    damaged = checkpoint.CheckpointError('checkpoint step 4 is damaged: x cannot be read (y).')
    assert main.user_error(damaged) == str(damaged)
    assert main.user_error(FileNotFoundError('runs/x/checkpoints holds no checkpoint')) == (
        'runs/x/checkpoints holds no checkpoint')
    full = main.user_error(ValueError('RESOURCE_EXHAUSTED: writing x: No space left on device'))
    assert full.startswith('the disk is full')
    assert main.user_error(RuntimeError('an XLA bug')) is None  # bugs keep their traceback
    assert main.user_error(KeyError('params')) is None


# ------------------------------------------------------------------ one smoke run, shared

TRAIN = ['--config.train.num_epochs=1', '--config.train.steps_per_epoch=4',
         '--config.train.checkpoint_every_steps=2']  # checkpoints 2 (mid-epoch) and 4 (best)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, smoke_dataset):
    workdir = tmp_path_factory.mktemp('faults') / 'run'
    proc = _run_cli('--workdir', str(workdir), *TRAIN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']
    for step in ('2', '4'):  # both finished saves carry their checksums
        assert (workdir / 'checkpoints' / step / checkpoint.CHECKSUMS).is_file()
    return workdir


@pytest.fixture
def damaged_run(trained, tmp_path):
    """A copy of the smoke run whose newest checkpoint (4) has 4 KB of its arrays overwritten."""
    workdir = tmp_path / 'run'
    shutil.copytree(trained, workdir)
    _overwrite(_largest_array_file(workdir / 'checkpoints' / '4'))
    return workdir


def _losses(log: pathlib.Path) -> list[dict]:
    """The logged steps and losses (throughput figures differ between runs)."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k in ('step', 'epoch') or 'loss' in k} for r in rows]


def _restore_state(step_dir: pathlib.Path) -> dict:
    return ocp.tree.to_flat_dict(ocp.StandardCheckpointer().restore(step_dir / 'state'))


def test_training_resumes_from_the_previous_checkpoint_and_matches_the_undamaged_run(
        trained, damaged_run):
    damaged = _files(damaged_run / 'checkpoints' / '4')
    proc = _run_cli('--workdir', str(damaged_run), *TRAIN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 1 and 'checkpoint step 4 is damaged' in warnings[0]
    damaged_file = next(iter(set(_files(trained / 'checkpoints' / '4').items())
                             - set(damaged.items())))[0]
    assert f'/checkpoints/4/{damaged_file} differs from the checksum' in warnings[0]
    assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr
    assert 'resuming from step 2 ' in proc.stdout
    moved = list((damaged_run / 'checkpoints').glob('corrupt-4-*'))
    assert len(moved) == 1 and _files(moved[0]) == damaged
    # steps 3 and 4 again, from step 2: the same arrays as the run that was never damaged
    want, got = _restore_state(trained / 'checkpoints' / '4'), _restore_state(
        damaged_run / 'checkpoints' / '4')
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), str(key))
    assert _losses(damaged_run / 'train_log.jsonl') == _losses(trained / 'train_log.jsonl')
    _no_temporaries(damaged_run)


def test_eval_checkpoint_choice_with_a_damaged_newest_checkpoint(damaged_run, capsys):
    """--checkpoint 4 fails by name; best (= 4) and latest fall back to step 2 with a warning."""
    from configs import smoke
    from jima_jax.train import run_setup
    config = smoke.get_config()
    assert checkpoint.checkpoint_step(damaged_run, config.train, '4') == 4
    with pytest.raises(checkpoint.CheckpointError,
                       match=r'checkpoint step 4 is damaged: \S*/checkpoints/4/state/\S+ differs '
                             r'from the checksum recorded when it was saved\. Choose another step'):
        run_setup.setup(config, damaged_run, step=4)
    assert (damaged_run / 'checkpoints' / '4').is_dir()
    capsys.readouterr()
    assert checkpoint.checkpoint_step(damaged_run, config.train, 'best') is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('warning: checkpoint step 4 is damaged')
    assert err[0].endswith('Using the newest intact checkpoint instead.')
    assert checkpoint.checkpoint_step(damaged_run, config.train, 'latest') is None
    s = run_setup.setup(config, damaged_run)
    s.checkpointer.close()
    assert int(jax.device_get(s.state.step)) == 2 and s.extra['position']['step_in_epoch'] == 2
    with pytest.raises(ValueError, match=r"--checkpoint='4': expected latest, best or one of the "
                                         r"saved steps \[2\]"):
        checkpoint.checkpoint_step(damaged_run, config.train, '4')


def test_sigterm_during_evaluation_leaves_only_whole_files(damaged_run):
    """SIGTERM once eval has restored its checkpoint: exit 143, the earlier results untouched."""
    from jima_jax.evaluation import report
    out = damaged_run / 'eval' / 'test'
    report.write_results({'BLEU_4': 0.25}, out)
    before = _files(damaged_run / 'eval')
    proc = subprocess.Popen(_cli('--workdir', str(damaged_run), '--mode=eval'), cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    seen = []
    for line in proc.stderr:  # the fallback warning: setup is done, evaluation is starting
        seen.append(line)
        if line.startswith('warning: checkpoint step 4 is damaged'):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, ''.join(seen)[-2000:] + err[-2000:]
    assert 'SIGTERM: evaluation stopped' in err
    assert _files(damaged_run / 'eval') == before  # stopped before writing: nothing lost
    _no_temporaries(damaged_run)


_SIGTERM_IN_DEL = """
import os, signal, sys, time
from jima_jax import main
main._stop_on_sigterm('evaluation')

class Finalized:
    def __del__(self):  # the signal lands here, as it did in Orbax's async manager
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass

Finalized()
for _ in range(200):
    time.sleep(0.01)
print('ran on to the end')
"""


def test_sigterm_inside_a_finalizer_still_stops_the_job():
    """A SIGTERM handled inside `__del__` (where SystemExit is swallowed) is delivered again."""
    proc = subprocess.run([sys.executable, '-c', _SIGTERM_IN_DEL], cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stdout + proc.stderr
    assert 'ran on to the end' not in proc.stdout
    assert proc.stderr.count('SIGTERM: evaluation stopped') == 1
    assert 'Exception ignored' not in proc.stderr
