"""--mode export: one folder that predicts on its own, with the reports of the dataset path.

One tiny smoke run (2 steps) on a private copy of the prepared smoke data; its test studies are
written as PNG pairs and predicted through the existing path (`--mode predict` with the workdir
and the dataset). Then the run is exported, the private data deleted, and the folder predicts the
same PNGs in a fresh interpreter where TensorFlow cannot be imported, from another directory.
"""

import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from jima_jax import export, exported, predict, torch_files
from jima_jax.configs import smoke
from jima_jax.data import images, prepare

STEP = 2  # 1 epoch x 2 steps: the only (and best) checkpoint
METRICS = {'step': STEP, 'checkpoint': 'best', 'BLEU_4': 0.125, 'ce/micro_u0/f1': 0.25,
           'test/image_reliance/report': 0.0625, 'distinct_reports': 9,
           'phantom_truth/macro_f1': 0.375, 'ROUGE_L': 0.3}
NO_TENSORFLOW = ("import runpy, sys; sys.modules['tensorflow'] = None; "
                 "sys.modules['tensorflow_datasets'] = None; sys.argv = sys.argv[1:]; "
                 "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")


def _config(data_dir):
    c = smoke.get_config()
    c.data.data_dir = str(data_dir)
    c.train.num_epochs, c.train.steps_per_epoch = 1, STEP
    return c


@pytest.fixture(scope='module')
def run(tmp_path_factory, smoke_dataset):
    """A trained workdir, its test studies as PNG pairs, and the reports predicted for them
    through the dataset path; the prepared data is a private copy the tests may delete."""
    from jima_jax.train import loop
    root = tmp_path_factory.mktemp('export')
    shared = prepare.prepared_dir(smoke.get_config().data)
    data = root / 'data'
    shutil.copytree(shared, data / 'phantom' / shared.name)
    c = _config(data)
    workdir = root / 'run'
    loop.train_and_evaluate(c, workdir)
    test = smoke_dataset.splits['test']
    lines = []
    for i, sid in enumerate(test.ids):
        names = []
        for v, view in enumerate(test.images[i]):
            names.append(f'{sid}_{v}.png')
            Image.fromarray(view).save(root / names[-1])
        lines.append(json.dumps({'id': str(sid), 'images': names}))
    (root / 'studies.jsonl').write_text('\n'.join(lines) + '\n')
    before = predict.predict(c, str(workdir), image_list=str(root / 'studies.jsonl'),
                             output=str(root / 'before.jsonl'))
    rows = [json.loads(line) for line in before.read_text().splitlines()]
    results = workdir / 'eval' / 'test' / 'results.json'
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps(METRICS))
    return types.SimpleNamespace(root=root, data=data, config=c, workdir=workdir,
                                 before={r['id']: r for r in rows})


def test_export_then_predict_from_the_folder_alone_gives_the_same_reports(run, tmp_path):
    folder, what = export.export(run.config, run.workdir)
    assert (folder, what) == (run.workdir / 'export', 'written')
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ['manifest.json', 'params.safetensors', 'config.json', 'tokenizer.model', 'tables.json',
         'tables.npz', 'card.json', 'MODEL_CARD.md'])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith('.')]  # no temp left
    tensors = torch_files.read_safetensors(folder / 'params.safetensors')
    assert 'params/visual/conv1/kernel' in tensors and any(
        k.startswith('batch_stats/visual/') for k in tensors)
    card = json.loads((folder / 'card.json').read_text())
    assert card['checkpoint']['step'] == STEP
    assert card['training_data']['studies'] == {'train': 64, 'val': 16, 'test': 16}
    assert card['test']['same_checkpoint'] and card['test']['metrics'] == {
        k: v for k, v in METRICS.items() if k not in ('step', 'checkpoint', 'ROUGE_L')}
    assert card['labeler'].startswith('jima_jax.text.labeler sha256:')
    card_md = (folder / 'MODEL_CARD.md').read_text()
    assert '| BLEU-4 | 0.1250 |' in card_md and '| distinct reports written for the test ' \
        'studies | 9 |' in card_md
    config = json.loads((folder / 'config.json').read_text())
    assert config['model']['backbone'] == 'resnet18' and config['decode']['beam_size'] == 2

    hidden = run.root / 'moved_away'
    os.rename(run.data, hidden)  # the prepared dataset is gone (until the end of this test)
    try:
        _predict_from_the_folder_alone(run, folder, tmp_path)
    finally:
        os.rename(hidden, run.data)


def _predict_from_the_folder_alone(run, folder, tmp_path):
    empty = tmp_path / 'empty_data'
    empty.mkdir()
    env = dict(os.environ, JIMA_DATA_DIR=str(empty))
    env.pop('PYTHONPATH', None)
    out = tmp_path / 'after.jsonl'
    proc = subprocess.run(
        [sys.executable, '-c', NO_TENSORFLOW, 'jima_jax.predict', '--model', str(folder),
         '--image_list', str(run.root / 'studies.jsonl'), '--output', str(out)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r['id'] for r in after] == list(run.before)
    for row in after:
        assert row['report'] == run.before[row['id']]['report'], row['id']
        assert row['mean_logprob'] == pytest.approx(run.before[row['id']]['mean_logprob'],
                                                    abs=1e-5)
    assert not list(empty.iterdir())  # nothing was prepared

    # the main CLI, from another directory, one study given as a pair of files
    first = next(iter(run.before))
    pair = ','.join(str(run.root / f'{first}_{v}.png') for v in (0, 1))
    proc = subprocess.run(
        [sys.executable, '-m', 'jima_jax.main', '--mode', 'predict', '--model', str(folder),
         '--images', pair], cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])  # JSON lines on stdout
    assert (row['id'], row['report']) == (f'{first}_0', run.before[first]['report'])


def test_a_missing_or_damaged_file_is_named(run, tmp_path, capsys):
    folder = run.workdir / 'export'
    if not folder.exists():
        export.export(run.config, run.workdir)
    png = str(run.root / f'{next(iter(run.before))}_0.png')
    cases = {'tokenizer.model': 'tokenizer.model is missing',
             'params.safetensors': 'params.safetensors is damaged',
             'config.json': 'config.json is damaged',
             'manifest.json': 'manifest.json: missing or not a jima_jax export'}
    for name, message in cases.items():
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        if name == 'tokenizer.model':
            (copy / name).unlink()
        elif name == 'manifest.json':
            (copy / name).write_text('{"format": "something else"}')
        else:
            data = bytearray((copy / name).read_bytes())
            data[len(data) // 2] ^= 0xFF
            (copy / name).write_bytes(bytes(data))
        with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
            exported.ExportedModel.load(copy)
        assert str(copy / name) in str(e.value)
        assert predict.main(['--model', str(copy), '--images', png]) == 2
        assert message in capsys.readouterr().err


def test_export_never_overwrites_another_export_or_other_files(run, tmp_path, monkeypatch):
    target = tmp_path / 'shared_export'
    assert export.export(run.config, run.workdir, str(target))[1] == 'written'
    first = (target / 'manifest.json').read_text()
    # the same model from another config (data found through JIMA_DATA_DIR, another
    # schedule): the same export, left as it is
    monkeypatch.setenv('JIMA_DATA_DIR', str(run.data))
    again = _config('')
    again.train.num_epochs = 7
    assert export.export(again, run.workdir, str(target))[1] == 'unchanged'
    other = _config(run.data)
    other.decode.beam_size = 1  # another decoding: another export
    with pytest.raises(FileExistsError, match='holds another export.*--force'):
        export.export(other, run.workdir, str(target))
    assert (target / 'manifest.json').read_text() == first  # untouched
    assert export.export(other, run.workdir, str(target), force=True)[1] == 'replaced'
    assert json.loads((target / 'config.json').read_text())['decode']['beam_size'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['shared_export']  # no temp/old left
    # the CLI (beam 2, as the run was trained) refuses to replace the beam-1 export
    proc = subprocess.run(
        [sys.executable, '-m', 'jima_jax.main', '--config', 'smoke', '--workdir',
         str(run.workdir), '--mode', 'export', '--export_dir', str(target)],
        cwd=str(tmp_path), env=dict(os.environ, JIMA_DATA_DIR=str(run.data)),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f'error: {target} holds another export' in proc.stderr and '--force' in proc.stderr
    assert json.loads((target / 'config.json').read_text())['decode']['beam_size'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['shared_export']
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'mine.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='is not a jima_jax export'):
        export.export(run.config, run.workdir, str(tmp_path / 'notes'), force=True)
    assert (tmp_path / 'notes' / 'mine.txt').read_text() == 'keep me'


def test_numpy_resize_equals_the_eval_pipelines_tensorflow_resize():
    import tensorflow as tf
    rng = np.random.default_rng(0)
    for stored, size in [(40, 32), (72, 64), (256, 224), (30, 64), (33, 17)]:
        noise = rng.integers(0, 256, (stored, stored), dtype=np.uint8)
        smooth = np.clip(np.cumsum(rng.integers(-4, 5, (stored, stored)), 1) + 128, 0, 255)
        for image in (noise, smooth.astype(np.uint8)):
            want = tf.image.resize(image[..., None], (size, size), method='bilinear')
            want = tf.cast(tf.clip_by_value(tf.round(want), 0, 255), tf.uint8).numpy()[..., 0]
            np.testing.assert_array_equal(images.resize_like_tf(image, size), want)


def test_prepare_and_predict_share_one_resize():
    """Prepare (tfds builders) and predict-from-an-export must resize identically: one function."""
    from jima_jax.data.builders import base
    assert base.fit_views is images.fit_views
    views = [np.arange(50 * 37, dtype=np.uint8).reshape(50, 37)]
    assert images.fit_views(views, 2, 24).shape == (2, 24, 24)  # the last view repeated
    with pytest.raises(ValueError, match='data.resize'):
        images.fit_views(views, 1, 24, 'crop')


def test_the_card_names_the_fusion_and_reads_cards_from_before_the_key():
    from jima_jax import export
    assert export._fusion_words({'entity_fusion': False, 'fusion': 'cross'}) == \
        'off (R2Gen baseline)'
    assert export._fusion_words({'entity_fusion': True, 'fusion': 'concat'}) == \
        'on (patches and q concatenated)'
    assert export._fusion_words({'entity_fusion': True}) == \
        "on (the paper's cross-concatenation product)"
