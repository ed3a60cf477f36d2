"""In-process runs on the smoke data: the R2Gen baseline (model.entity_fusion=False) through
training with a curriculum, checkpoints, eval and predict; early stopping and its resume."""

import json

import jax
import pytest

from configs import smoke
from jima_jax import predict
from jima_jax.train import checkpoint, evaluate, loop, run_setup


def test_baseline_trains_with_a_k2_curriculum_evaluates_and_predicts(tmp_path, smoke_dataset):
    c = smoke.get_config()
    c.model.entity_fusion = False
    c.curriculum.schedule, c.curriculum.warmup_epochs = 'jima', 1  # scored after epoch 1
    c.train.num_epochs, c.train.steps_per_epoch = 2, 2
    c.train.best_metric = 'test/loss/report'  # never evaluated: no best, so eval takes latest
    result = loop.train_and_evaluate(c, tmp_path)
    assert result['status'] == 'completed' and result['step'] == 4
    assert 'val/loss/report' in result and 'val/loss/entity' not in result
    rows = [json.loads(line) for line in (tmp_path / 'train_log.jsonl').read_text().splitlines()]
    train_rows = [r for r in rows if 'loss/report' in r]
    assert train_rows and not any('loss/entity' in r for r in train_rows)
    scored = [r for r in rows if 'curriculum/s2' in r]
    assert scored and scored[-1]['curriculum/s1'] == scored[-1]['curriculum/s2']
    assert 'curriculum/k1_mean' not in scored[-1]

    s = run_setup.setup(c, tmp_path)  # the checkpoint restores into the baseline's tree
    s.checkpointer.close()
    assert set(s.state.params) == {'visual', 'report'} and int(jax.device_get(s.state.step)) == 4

    out = evaluate.evaluate(c, tmp_path, 'test')  # --checkpoint=auto
    assert 'BLEU_4' in out and 'test/loss/report' in out and 'entity/f1' not in out
    results = json.loads((tmp_path / 'eval' / 'test' / 'results.json').read_text())
    assert (out['checkpoint'], out['step']) == ('latest', 4)
    assert (results['checkpoint'], results['step']) == ('latest', 4)
    preds = [json.loads(line) for line in
             (tmp_path / 'eval' / 'test' / 'predictions.jsonl').read_text().splitlines()]
    assert len(preds) == len(smoke_dataset.splits['test'])
    path = predict.predict(c, str(tmp_path), split='test', output=str(tmp_path / 'p.jsonl'))
    got = {r['id']: r['report'] for r in map(json.loads, path.read_text().splitlines())}
    assert got == {p['id']: p['report'] for p in preds}  # predict decodes what eval decoded


def test_track_best_counts_evaluations_without_improvement():
    cfg = smoke.get_config().train
    cfg.best_metric, cfg.best_mode = 'val/BLEU_4', 'max'
    best, stale, seen = {}, 0, []
    for step, value in enumerate([0.1, 0.3, 0.3, 0.2, None, 0.4], 1):
        metrics = {} if value is None else {'val/BLEU_4': value}
        best, stale = loop.track_best(best, stale, metrics, step, cfg)
        seen.append((best['step'], stale))
    # a tie is no improvement; an evaluation without the metric changes nothing
    assert seen == [(1, 0), (2, 0), (2, 1), (2, 2), (2, 2), (6, 0)]
    cfg.best_mode = 'min'
    assert loop.track_best(best, 0, {'val/BLEU_4': 0.3}, 7, cfg) == ({'step': 7, 'value': 0.3,
                                                                      'metric': 'val/BLEU_4'}, 0)


def test_early_stopping_stops_after_patience_and_a_resumed_run_stays_stopped(tmp_path,
                                                                             smoke_dataset):
    c = smoke.get_config()
    c.train.num_epochs, c.train.steps_per_epoch = 6, 1
    c.train.early_stop_patience = 2
    # Training lowers the validation loss, so with best_mode 'max' the first evaluation stays the
    # best: evaluations 2 and 3 do not improve and epoch 4 never starts. (The smoke config as it
    # is: test_export.py's in-process smoke run compiles the same programs, so the compilation
    # cache has them. A tie counting as no improvement is checked by
    # test_track_best_counts_evaluations_without_improvement.)
    c.train.best_mode = 'max'
    result = loop.train_and_evaluate(c, tmp_path)
    assert (result['status'], result['step'], result['best_step']) == ('early_stopped', 3, 1)
    rows = [json.loads(line) for line in (tmp_path / 'train_log.jsonl').read_text().splitlines()]
    val = [r['val/loss/report'] for r in rows if 'val/loss/report' in r]
    assert len(val) == 3 and val[0] > val[1] > val[2]  # no evaluation after the first improved
    summary = json.loads((tmp_path / 'train_summary.json').read_text())
    assert summary['status'] == 'early_stopped' and summary['step'] == 3
    again = loop.train_and_evaluate(c, tmp_path)
    assert (again['status'], again['step']) == ('early_stopped', 3)
    # --checkpoint=auto takes the recorded best (step 1), which results.json calls 'best'
    assert checkpoint.checkpoint_step(tmp_path, c.train, 'auto') == 1
    label = checkpoint.checkpoint_label
    assert label('auto', 1) == 'best' == label('best', 1)
    assert label('auto', None) == 'latest' == label('latest', None)
    assert label('2', 2) == 2
    with pytest.raises(ValueError, match=r"--checkpoint='nine'.*\(or auto"):
        checkpoint.checkpoint_step(tmp_path, c.train, 'nine')
    c.train.early_stop_patience = -1
    with pytest.raises(ValueError, match='train.early_stop_patience=-1'):
        run_setup.setup(c, tmp_path)


def test_rerunning_a_run_that_max_steps_stopped_trains_nothing_more(tmp_path, smoke_dataset):
    """The same command again after train.max_steps: no step, no checkpoint, the same status."""
    c = smoke.get_config()
    c.train.num_epochs, c.train.steps_per_epoch, c.train.max_steps = 1, 4, 2
    first = loop.train_and_evaluate(c, tmp_path)
    assert (first['status'], first['step']) == ('max_steps', 2)
    saved = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
    again = loop.train_and_evaluate(c, tmp_path)
    assert (again['status'], again['step']) == ('max_steps', 2)
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()
                  if p.name.isdigit()) == saved == ['2']
    c.train.max_steps = 3  # a larger budget trains on from the saved position
    assert loop.train_and_evaluate(c, tmp_path)['step'] == 3
