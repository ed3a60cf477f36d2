"""End to end through the CLI: outputs other tools read, eval mode, SIGKILL / SIGTERM + resume.

All runs use configs/smoke.py (tiny phantom data, ResNet-18 at 32 px) in subprocesses, the way a
user or a cluster scheduler runs the package.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import REPO

STEPS = 24  # 3 epochs x (64 train studies / batch 8)
OVERRIDES = ['--config.train.num_epochs=3', '--config.train.checkpoint_every_steps=2',
             '--config.train.keep_checkpoints=2']


def _cmd(workdir, *extra, mode='train'):
    return [sys.executable, '-m', 'jima_jax.main', '--config', 'configs/smoke.py',
            '--workdir', str(workdir), f'--mode={mode}', *OVERRIDES, *extra]


def _run(workdir, *extra, mode='train', timeout=600):
    proc = subprocess.run(_cmd(workdir, *extra, mode=mode), cwd=str(REPO), capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    root = workdir / 'checkpoints'
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def _final_state(workdir: pathlib.Path):
    path = workdir / 'checkpoints' / str(STEPS) / 'state'
    return ocp.StandardCheckpointer().restore(path)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, smoke_dataset):
    workdir = tmp_path_factory.mktemp('reference')
    return workdir, _run(workdir)


def test_training_writes_the_output_contract(reference):
    workdir, stdout = reference
    rows = [json.loads(line) for line in (workdir / 'train_log.jsonl').read_text().splitlines()]
    train_rows = [r for r in rows if 'loss/report' in r]
    assert train_rows[-1]['step'] == STEPS
    for r in train_rows:
        for key in ('step', 'epoch', 'loss/report', 'loss/entity', 'examples_per_sec'):
            assert key in r, (key, r)
    assert [r['epoch'] for r in rows if 'val/loss/report' in r] == [0, 1, 2]
    assert train_rows[-1]['loss/report'] < train_rows[0]['loss/report']
    assert list((workdir / 'tb').glob('events.out.tfevents.*'))
    config = json.loads((workdir / 'config.json').read_text())
    assert config['train']['num_epochs'] == 3 and config['model']['backbone'] == 'resnet18'
    assert (workdir / 'plots' / 'loss.png').stat().st_size > 1000
    # last 2 kept plus the best by val/loss/report (the final one here)
    assert _checkpoint_steps(workdir) == [22, 24] or _checkpoint_steps(workdir)[-1] == STEPS
    assert 'ex/s' in stdout and 'ETA' in stdout and 'val/loss/report' in stdout
    summary = json.loads((workdir / 'train_summary.json').read_text())
    assert summary['status'] == 'completed' and summary['step'] == STEPS


def test_eval_mode_scores_the_test_split_and_predict_mode_agrees(reference, tmp_path,
                                                                 smoke_dataset):
    workdir, _ = reference
    stdout = _run(workdir, mode='eval')
    out = workdir / 'eval' / 'test'
    results = json.loads((out / 'results.json').read_text())
    for key in ('BLEU_1', 'BLEU_4', 'ROUGE_L', 'CIDEr', 'ce/micro_u0/f1',
                'token_f1/1_8/infrequent', 'BLEU_4/normal', 'BLEU_4/abnormal',
                'test/loss/report', 'entity/f1', 'test/image_reliance/report'):
        assert key in results, key
    assert abs(results['test/image_reliance/report']) < 5  # a loss difference in nats, finite
    assert 'Does the model read the image?' in (out / 'results.md').read_text()
    preds = [json.loads(line) for line in (out / 'predictions.jsonl').read_text().splitlines()]
    assert len(preds) == 16 and all(p['report'] for p in preds)
    assert (out / 'results.md').exists() and (out / 'bucket_f1.png').exists()
    assert 'BLEU-4' in stdout
    assert stdout.strip().splitlines()[-1].startswith('Reads its images: ')  # last line
    assert 'phantom_truth/macro_f1' in results and 'distinct_reports' in results
    _check_predict_mode_equals_eval(workdir, {p['id']: p['report'] for p in preds}, tmp_path,
                                    smoke_dataset)


def _check_predict_mode_equals_eval(workdir, eval_reports, tmp_path, smoke_dataset):
    """--mode predict on PNG files of test studies writes the reports eval generated for them."""
    from PIL import Image
    test = smoke_dataset.splits['test']
    files = {}
    for i in (0, 1):
        files[str(test.ids[i])] = []
        for v, view in enumerate(test.images[i]):
            path = tmp_path / f'{test.ids[i]}_{v}.png'
            Image.fromarray(view).save(path)
            files[str(test.ids[i])].append(path)
    first, second = list(files)
    (tmp_path / 'list.jsonl').write_text(json.dumps(
        {'id': second, 'images': [p.name for p in files[second]]}) + '\n')
    out = tmp_path / 'pred.jsonl'
    _run(workdir, '--images', ','.join(str(p) for p in files[first]),
         '--image_list', str(tmp_path / 'list.jsonl'), '--output', str(out),
         '--token_logprobs', mode='predict')
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r['id'] for r in rows] == [f'{first}_0', second]  # --images: id = first file's stem
    assert [r['report'] for r in rows] == [eval_reports[first], eval_reports[second]]
    words = len(rows[0]['report'].split())  # + the end-of-report token unless cut at max_len
    assert len(rows[0]['token_logprobs']) in (words, words + 1)
    bad = subprocess.run(_cmd(workdir, '--images', str(tmp_path / 'missing.png'), mode='predict'),
                         cwd=str(REPO), capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and 'missing.png is missing' in bad.stderr


def test_sigkill_and_sigterm_then_resume_reproduce_the_uninterrupted_run(reference, tmp_path):
    ref_dir, _ = reference
    workdir = tmp_path / 'interrupted'
    env = dict(os.environ)

    def start():
        return subprocess.Popen(_cmd(workdir), cwd=str(REPO), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

    def wait_for_new_checkpoint(proc, after: int, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(s > after for s in _checkpoint_steps(workdir)):
                return
            if proc.poll() is not None:
                pytest.fail(f'run ended before a checkpoint after step {after}: '
                            f'{proc.stderr.read()[-3000:]}')
            time.sleep(0.05)
        proc.kill()
        pytest.fail('no checkpoint appeared in time')

    # 1. SIGKILL as soon as the first checkpoint is on disk (mid-epoch, async save may be running)
    proc = start()
    wait_for_new_checkpoint(proc, 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = max(_checkpoint_steps(workdir))
    assert killed_at < STEPS
    # 2. resume; SIGTERM after its first new checkpoint: it must save and exit cleanly
    proc = start()
    wait_for_new_checkpoint(proc, killed_at)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert 'SIGTERM: saved step' in out, out[-2000:]
    saved = int(out.split('SIGTERM: saved step ')[1].split()[0])
    assert saved == max(_checkpoint_steps(workdir)) and killed_at < saved < STEPS
    # 3. resume to the end
    stdout = _run(workdir)
    assert 'resuming from step' in stdout or max(_checkpoint_steps(workdir)) == STEPS
    got, want = _final_state(workdir), _final_state(ref_dir)
    flat_got, flat_want = ocp.tree.to_flat_dict(got), ocp.tree.to_flat_dict(want)
    assert flat_got.keys() == flat_want.keys()
    for key in flat_want:
        np.testing.assert_array_equal(np.asarray(flat_got[key]), np.asarray(flat_want[key]),
                                      err_msg=str(key))
    rows = [json.loads(line) for line in (workdir / 'train_log.jsonl').read_text().splitlines()]
    steps = [r['step'] for r in rows if 'loss/report' in r]
    assert steps == sorted(set(steps)), 'resumed log repeats steps'
