"""The pre-training budget experiment: its snapshots are the backbones `--mode pretrain` writes,
kept between calls, and its table reads the runs' results."""

import json
import pathlib

import numpy as np
import pytest

from experiments import reading_budget as budget
from jima_jax import torch_files


def _smoke(width=8):
    from configs import smoke
    c = smoke.get_config()
    c.model.backbone_width = width
    c.pretrain.batch_size = 8
    c.pretrain.log_every_steps = 50
    return c


def test_snapshot_at_n_steps_is_the_backbone_pretraining_n_steps_writes(data_dir, tmp_path):
    from jima_jax.train import pretrain
    c = _smoke()
    budget.pretrain(c, [2, 5], tmp_path / 'budget')
    assert budget.snapshots(tmp_path / 'budget') == [2, 5]
    c.pretrain.steps = 5
    reference = torch_files.read_weights(pretrain.pretrain(c, tmp_path / 'run'))
    snapshot = torch_files.read_weights(budget.backbone_file(tmp_path / 'budget', 5))
    assert set(snapshot) == set(reference)
    for k in reference:
        np.testing.assert_array_equal(snapshot[k], reference[k])
    earlier = torch_files.read_weights(budget.backbone_file(tmp_path / 'budget', 2))
    assert any(not np.array_equal(earlier[k], reference[k]) for k in reference)
    log = [json.loads(x) for x in (tmp_path / 'budget' / 'pretrain.jsonl').read_text().splitlines()]
    assert [r['steps'] for r in log] == [2, 5] and 0 <= log[1]['val/macro_auc'] <= 1
    # a second call keeps what is written: nothing to redo, the files untouched
    before = budget.backbone_file(tmp_path / 'budget', 5).stat().st_mtime_ns
    budget.pretrain(c, [2, 5], tmp_path / 'budget')
    assert budget.backbone_file(tmp_path / 'budget', 5).stat().st_mtime_ns == before


def test_rows_and_table_read_each_finished_run_and_skip_the_others(tmp_path):
    for n in (100, 200, 300):
        budget.backbone_file(tmp_path, n).write_bytes(b'')
    (tmp_path / 'pretrain.jsonl').write_text(
        '\n'.join(json.dumps({'steps': n, 'seconds': n / 10, 'val/macro_auc': 0.5 + n / 1000})
                  for n in (100, 200, 300)) + '\n')
    for n, f1 in ((100, 0.25), (300, 0.5)):  # the 200-step run has not finished
        out = tmp_path / f'report_{n}' / 'eval' / 'test'
        out.mkdir(parents=True)
        out.joinpath('results.json').write_text(json.dumps({
            'test/image_reliance/report': 0.125, 'distinct_reports': 40,
            'phantom_truth/macro_f1': f1, 'phantom_truth/micro_f1': 0.75,
            'phantom_truth/abnormal_recall': 0.625, 'BLEU_4': 0.3}))
    (tmp_path / 'report_300.time.json').write_text('{"train_seconds": 250.0, "eval_seconds": 30}')
    rows = budget.rows(tmp_path)
    assert [r['pretrain_steps'] for r in rows] == [100, 300]
    assert rows[1]['test/phantom_truth/macro_f1'] == 0.5  # results.json's unprefixed key
    assert rows[1]['train_seconds'] == 250.0 and 'train_seconds' not in rows[0]
    meta = {'date': '2026-12-08', 'cpu': 'a CPU', 'cores': 2, 'config': 'configs/demo.py',
            'overrides': []}
    text = budget.markdown(rows, meta)
    assert '| 300 | 30 | 0.800 | 0.125 | 40 | 0.500 | 0.750 | 0.625 | 30.000 |' in text
    budget.plot(rows, tmp_path / 'curve.png')
    assert (tmp_path / 'curve.png').stat().st_size > 0


@pytest.mark.parametrize('argv, message', [
    ([], 'usage'),
    (['train', '--workdir', 'w'], 'usage'),
    (['pretrain', '--workdir', 'w'], '--config is required'),
    (['report', '--workdir', 'w'], '--out is required'),
    (['reports', '--workdir', 'w', '--config', 'c', '--bogus'], "unexpected argument '--bogus'"),
])
def test_bad_command_lines_say_what_is_missing(argv, message):
    with pytest.raises(SystemExit, match=message):
        budget._parse(argv)


def test_pretraining_settings_are_checked_as_mode_pretrain_checks_them(tmp_path):
    c = _smoke()
    c.pretrain.lr = 0.0
    with pytest.raises(ValueError, match='pretrain.lr=0.0'):
        budget.pretrain(c, [2], tmp_path)
    assert not budget.snapshots(tmp_path)


def test_overrides_go_to_the_config_as_jima_jax_main_reads_them():
    c = budget._load_config('configs/demo.py', ['--config.pretrain.steps=7'])
    assert c.pretrain.steps == 7 and c.data.name == 'phantom'


def test_the_larger_test_split_is_scored_on_a_copy_and_read_beside_the_first(tmp_path,
                                                                            monkeypatch):
    """`evaluate` copies a finished run without its eval folder, raises only the copy's
    data.phantom.num_test, evaluates the copy (here a stand-in for jima_jax.main) and leaves
    the original's results alone; `rows` then carries both."""
    budget.backbone_file(tmp_path, 100).write_bytes(b'')
    run = tmp_path / 'report_100'
    (run / 'eval' / 'test').mkdir(parents=True)
    (run / 'checkpoints').mkdir()
    (run / 'checkpoints' / 'state').write_text('weights')
    (run / 'config.json').write_text(json.dumps({'data': {'phantom': {'num_test': 96}}}))
    first = {'phantom_truth/macro_f1': 0.25}
    (run / 'eval' / 'test' / 'results.json').write_text(json.dumps(first))
    calls = []

    def fake_main(argv, stdout, stderr):
        workdir = argv[argv.index('--workdir') + 1]
        calls.append(argv)
        config = json.loads((pathlib.Path(workdir) / 'config.json').read_text())
        out = pathlib.Path(workdir) / 'eval' / 'test'
        out.mkdir(parents=True)
        out.joinpath('results.json').write_text(json.dumps(
            {'phantom_truth/macro_f1': config['data']['phantom']['num_test'] / 1000}))
        return 0

    monkeypatch.setattr(budget.subprocess, 'call', fake_main)
    budget.evaluate_larger_test('configs/demo.py', tmp_path, 480)
    copy = tmp_path / 'report_100.test480'
    assert (copy / 'checkpoints' / 'state').read_text() == 'weights'
    assert json.loads((copy / 'config.json').read_text())['data']['phantom']['num_test'] == 480
    assert json.loads((run / 'config.json').read_text())['data']['phantom']['num_test'] == 96
    assert json.loads((run / 'eval' / 'test' / 'results.json').read_text()) == first
    assert '--mode' in calls[0] and calls[0][calls[0].index('--mode') + 1] == 'eval'
    (row,) = budget.rows(tmp_path, 480)
    assert row['test/phantom_truth/macro_f1'] == 0.25
    assert row['test/phantom_truth/macro_f1@480'] == 0.48
    budget.evaluate_larger_test('configs/demo.py', tmp_path, 480)  # done: not run again
    assert len(calls) == 1
    assert calls[0][calls[0].index('--checkpoint') + 1] == 'auto'
    budget.evaluate_larger_test('configs/demo.py', tmp_path, 480, checkpoint='latest')
    assert calls[1][calls[1].index('--checkpoint') + 1] == 'latest'
    assert (tmp_path / 'report_100.test480.latest' / 'eval' / 'test' / 'results.json').exists()
    assert budget.rows(tmp_path, 480)[0]['test/phantom_truth/macro_f1@480:latest'] == 0.48
    assert '(480 test studies)' in budget.markdown([row], {
        'date': 'd', 'cpu': 'c', 'cores': 2, 'config': 'x', 'overrides': []}, 480)
