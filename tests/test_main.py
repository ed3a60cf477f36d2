"""End to end through the CLI: outputs other tools read, eval mode, SIGTERM / SIGKILL + resume.

All runs use configs/smoke.py (tiny phantom data, ResNet-18 at 32 px) in subprocesses, the way a
user or a cluster scheduler runs the package, with the JIMA curriculum on (2 warm-up epochs, then
2 epochs on the selected examples), so that one interrupted run checks the resume of both the
training state and the curriculum state.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from jima_jax.train import checkpoint
from tests.conftest import REPO

STEPS = 16  # 4 epochs x 4 steps
KILL_AT = 9  # a periodic checkpoint inside epoch 3 (steps 9..12), the first curriculum epoch
OVERRIDES = ['--config.curriculum.schedule=jima', '--config.curriculum.warmup_epochs=2',
             '--config.train.num_epochs=4', '--config.train.steps_per_epoch=4',
             '--config.train.checkpoint_every_steps=3', '--config.train.keep_checkpoints=2',
             '--config.train.log_every_steps=1']


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
    assert [r['epoch'] for r in rows if 'val/loss/report' in r] == [0, 1, 2, 3]
    assert train_rows[-1]['loss/report'] < train_rows[0]['loss/report']
    assert list((workdir / 'tb').glob('events.out.tfevents.*'))
    config = json.loads((workdir / 'config.json').read_text())
    assert config['train']['num_epochs'] == 4 and config['model']['backbone'] == 'resnet18'
    assert (workdir / 'plots' / 'loss.png').stat().st_size > 1000
    assert (workdir / 'plots' / 'curriculum.png').is_file()
    # the last 2 kept (15: periodic, 16: the end of the run), plus the best by val/loss/report
    kept = _checkpoint_steps(workdir)
    assert kept[-2:] == [15, 16] and len(kept) <= 3 and set(kept) <= {4, 8, 12, 15, 16}
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


def _rows(workdir: pathlib.Path) -> dict:
    """The last logged row of every (step, kind): a resumed run re-logs the redone steps."""
    out = {}
    for line in (workdir / 'train_log.jsonl').read_text().splitlines():
        row = json.loads(line)
        kind = 'c' if 'curriculum/c1' in row else 'v' if 'val/loss/report' in row else 't'
        row.pop('examples_per_sec', None)
        row.pop('images_per_sec', None)
        out[(row['step'], kind)] = row
    return out


def _final(workdir: pathlib.Path):
    """(step, state as numpy, extra) of the latest checkpoint."""
    ck = checkpoint.Checkpointer(workdir / 'checkpoints', default.get_config().train)
    step = ck.latest_step()
    restored = ck.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), extra=ocp.args.JsonRestore()))
    ck.close()
    return step, jax.tree.map(np.asarray, restored['state']), restored['extra']


def test_sigkill_and_sigterm_then_resume_reproduce_the_uninterrupted_run(reference, tmp_path):
    """SIGTERM in the warm-up (the position is saved, exit 0), resume, SIGKILL at a periodic
    checkpoint inside the first curriculum epoch (an async save may be running), resume to the
    end: every logged row, the curriculum state and every array equal the uninterrupted run's."""
    ref_dir, _ = reference
    workdir = tmp_path / 'interrupted'
    env = dict(os.environ)

    def start():
        return subprocess.Popen(_cmd(workdir), cwd=str(REPO), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

    def wait_for_checkpoint(proc, done, what: str, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if done(_checkpoint_steps(workdir)):
                return
            if proc.poll() is not None:
                pytest.fail(f'run ended before {what}: {proc.stderr.read()[-3000:]}')
            time.sleep(0.02)
        proc.kill()
        pytest.fail(f'no {what} in time')

    # 1. SIGTERM once the first checkpoint is on disk: it must save and exit cleanly
    proc = start()
    wait_for_checkpoint(proc, bool, 'a first checkpoint')
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert 'SIGTERM: saved step' in out, out[-2000:]
    saved = int(out.split('SIGTERM: saved step ')[1].split()[0])
    assert saved == max(_checkpoint_steps(workdir)) and 0 < saved < KILL_AT
    summary = json.loads((workdir / 'train_summary.json').read_text())
    assert (summary['status'], summary['step']) == ('preempted', saved)
    # 2. resume; SIGKILL as soon as the periodic checkpoint KILL_AT is on disk (mid-epoch)
    proc = start()
    wait_for_checkpoint(proc, lambda steps: KILL_AT in steps, f'checkpoint {KILL_AT}')
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert f'resuming from step {saved} ' in out
    assert json.loads((workdir / 'train_summary.json').read_text())['status'] == 'preempted'
    # 3. resume to the end, from mid-way through a curriculum epoch
    stdout = _run(workdir)
    where = re.search(r'resuming from step (\d+) \(epoch (\d+), batch (\d+)\)', stdout)
    assert where, stdout[-2000:]
    step, epoch, batch = map(int, where.groups())
    assert step >= KILL_AT and epoch >= 3 and batch > 0
    assert json.loads((workdir / 'train_summary.json').read_text())['status'] == 'completed'

    full_rows, cut_rows = _rows(ref_dir), _rows(workdir)
    assert full_rows == cut_rows  # every step's losses, every validation, every curriculum row
    kept = [r['curriculum/kept2'] for (s, kind), r in sorted(full_rows.items()) if kind == 'c']
    assert kept[:2] == [64.0, 64.0] and len(kept) == 4  # warm-up, then the curriculum
    a_step, a_state, a_extra = _final(ref_dir)
    b_step, b_state, b_extra = _final(workdir)
    assert a_step == b_step == STEPS
    assert a_extra['curriculum'] == b_extra['curriculum']  # kept sets, s and c, difficulties
    assert len(a_extra['curriculum']['c_history']) == 2
    assert jax.tree.structure(a_state) == jax.tree.structure(b_state)
    for x, y in zip(jax.tree.leaves(a_state), jax.tree.leaves(b_state)):
        np.testing.assert_array_equal(x, y)  # parameters, optimizer states, BatchNorm stats
    rows = [json.loads(line) for line in (workdir / 'train_log.jsonl').read_text().splitlines()]
    steps = [r['step'] for r in rows if 'loss/report' in r]
    assert steps == sorted(set(steps)) == list(range(1, STEPS + 1)), 'resumed log repeats steps'
