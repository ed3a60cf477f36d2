"""The curriculum experiment: its rows, the reading and paired-difference tables, config keeping,
the c1/c2 curves from the train log and their plot. Synthetic run records; nothing trains here."""

import json
import statistics

import pytest

from experiments import curriculum_iu_phantom as experiment

SMALL = 'configs/iu_phantom.py:small'


def test_a_schedule_row_runs_that_schedule_with_its_own_flags():
    assert experiment.row_setup('jima') == ('jima', [])
    assert experiment.row_setup('jima_release') == ('jima_release',
                                                     ['--config.train.eval_decode=True'])


def test_the_r2gen_row_is_jima_without_entity_fusion_and_no_curriculum():
    assert experiment.row_setup('r2gen') == ('none', ['--config.model.entity_fusion=False'])
    base = experiment.run_config('r2gen', 2, ['--config.train.num_epochs=3'])
    jima = experiment.run_config('none', 2, ['--config.train.num_epochs=3'])
    assert (base.model.entity_fusion, jima.model.entity_fusion) == (False, True)
    assert base.curriculum.schedule == jima.curriculum.schedule == 'none'
    assert base.seed == 2 and base.train.num_epochs == 3
    # everything else equal: only the switch differs
    flat = lambda c: {k: v for k, v in c.to_dict().items() if k != 'model'}
    assert flat(base) == flat(jima)
    assert {k: v for k, v in base.model.to_dict().items() if k != 'entity_fusion'} == \
        {k: v for k, v in jima.model.to_dict().items() if k != 'entity_fusion'}


def test_run_config_loads_the_config_named_by_the_flag():
    paper = experiment.run_config('jima', 0, [], 'configs/iu_phantom.py:paper')
    small = experiment.run_config('jima', 0, [], SMALL)
    assert (paper.train.num_epochs, small.train.num_epochs) == (100, 5)
    packaged = experiment.run_config('jima', 0, [], 'iu_phantom:small')
    assert packaged.to_dict() == small.to_dict()
    with pytest.raises(ValueError, match='no config file'):
        experiment.load_config('configs/nope.py:small')
    assert experiment.config_slug(SMALL) == 'iu_phantom_small'
    assert experiment.run_dir(experiment.REPO, 'jima', 1, 'iu_phantom:reads').parts[-2:] == (
        'iu_phantom_reads', 'jima_s1')
    # a small check with extra flags gets directories of its own
    check = experiment.run_dir(experiment.REPO, 'jima', 1, SMALL, ['--config.train.num_epochs=2'])
    assert check.parent.name.startswith('iu_phantom_small-') and check.name == 'jima_s1'
    assert check != experiment.run_dir(experiment.REPO, 'jima', 1, SMALL,
                                       ['--config.train.num_epochs=3'])


# ---------------------------------------------------------------------------------- records
def reading(reliance=0.2, distinct=120, studies=590, macro=0.5, recall=0.6):
    return {'test/image_reliance/report': reliance, 'distinct_reports': distinct,
            'count/studies': studies, 'phantom_truth/macro_f1': macro,
            'phantom_truth/abnormal_recall': recall}


def record(row, seed, config=SMALL, extra=(), curves=None, **metrics):
    """A finished run as run_one writes it (through upgrade, as the script reads it back)."""
    tests = {**reading(), 'BLEU_4': 0.1, 'BLEU_4/abnormal': 0.05,
             'token_f1/1_8/infrequent': 0.02, 'test/loss/report': 1.5}
    tests.update({k.replace('__', '/'): v for k, v in metrics.items()})
    r = {'schedule': row, 'seed': seed, 'config': config, 'extra_flags': list(extra),
         'train_steps': 10, 'train_seconds': 1.0, 'eval_seconds': 1.0,
         'all_test_metrics': tests, 'teacher_forced': {'k1': 0.03, 'k2': 0.01},
         'curriculum_by_epoch': curves or []}
    return experiment.upgrade(r, config, extra)


META = {'config': SMALL, 'extra_flags': [], 'epochs': 3, 'warmup': 1, 'machine': 'test',
        'date': '2026-12-05'}


def curve(c2s, c1=1.0, s2=None):
    return [{'epoch': e, 'c1': c1 if e else 1.0, 'c2': c, **({'s2': s2} if s2 else {})}
            for e, c in enumerate(c2s)]


# ---------------------------------------------------------------------------------- paired
def test_paired_differences_against_hand_computed_values():
    none = [record('none', s, BLEU_4=v) for s, v in zip((0, 1, 2), (0.10, 0.20, 0.30))]
    jima = [record('jima', s, BLEU_4=v) for s, v in zip((0, 1, 2, 3), (0.15, 0.18, 0.40, 0.9))]
    diffs = experiment.paired_differences(none + jima, 'jima', 'BLEU_4')
    assert [s for s, _ in diffs] == [0, 1, 2]  # seed 3 has no `none` partner
    assert [d for _, d in diffs] == pytest.approx([0.05, -0.02, 0.10])
    # mean 0.04333, sample sd sqrt(((.00667)^2 + (-.06333)^2 + (.05667)^2) / 2) = 0.060277
    assert statistics.stdev([d for _, d in diffs]) == pytest.approx(0.060277, abs=1e-6)
    text = experiment.markdown(none + jima, ['none', 'jima'], META)
    row = next(line for line in text.splitlines()
               if line.startswith('| jima | 3 |') and '(' in line)
    assert '4.33 ± 6.03 (-2.00..10.00)' in row  # BLEU-4 x100, the table's last column
    # a run without the metric drops out of its pair
    none[1]['all_test_metrics']['BLEU_4'] = None
    assert [s for s, _ in experiment.paired_differences(none + jima, 'jima', 'BLEU_4')] == [0, 2]


def test_the_headline_paired_table_has_the_four_metrics_with_their_spread():
    runs = [record('none', s, BLEU_4__abnormal=0.05, phantom_truth__abnormal_recall=0.5)
            for s in (0, 1)]
    runs += [record('jima', 0, BLEU_4__abnormal=0.07, phantom_truth__abnormal_recall=0.45),
             record('jima', 1, BLEU_4__abnormal=0.04, phantom_truth__abnormal_recall=0.65)]
    lines = experiment.markdown(runs, ['none', 'jima'], META).splitlines()
    at = lines.index('| row | pairs | infrequent-token F1 (1/8) | abnormal BLEU-4 | '
                     'phantom-truth abnormal recall | BLEU-4 |')
    cells = [c.strip() for c in lines[at + 2].split('|')[1:-1]]
    # abnormal BLEU-4: +2, -1 -> mean 0.5, sd 2.12; recall: -5, +15 -> mean 5, sd 14.14
    assert cells == ['jima', '2', '0.00 ± 0.00 (0.00..0.00)', '0.50 ± 2.12 (-1.00..2.00)',
                     '5.00 ± 14.14 (-5.00..15.00)', '0.00 ± 0.00 (0.00..0.00)']


# ---------------------------------------------------------------------------------- reading
def test_the_table_says_plainly_when_every_run_reads():
    runs = [record(row, s) for row in ('none', 'jima') for s in (0, 1)]
    text = experiment.markdown(runs, ['none', 'jima'], META)
    assert '**Every compared run reads its images** (4 of 4;' in text
    assert '| none | 2 | 2 / 0 / 0 | 0.200 ± 0.000 | 120.0 ± 0.0 | 50.00 ± 0.00 |' in text
    assert 'distinct reports (of 590 test studies)' in text


def test_the_table_names_the_runs_that_do_not_read_by_the_packages_rule():
    runs = [record('none', 0), record('none', 1, test__image_reliance__report=0.01),
            record('jima', 0, distinct_reports=5),  # 5 <= 1% of 590: one template, nearly
            record('jima', 1, distinct_reports=6)]  # 6 > 5.9: reads
    runs.append(record('jima', 2))
    del runs[-1]['all_test_metrics']['distinct_reports']  # an older run: no count
    runs[-1] = experiment.upgrade(runs[-1], SMALL, [])
    assert [r['reads_images'] for r in runs] == ['yes', 'no', 'no', 'yes', 'unknown']
    line = experiment.reads_line(runs)
    assert line.startswith('**Not every compared run reads its images**: 2 of 5 read; '
                           '2 do not (none s1, jima s0); 1 unknown')
    assert 'jima s2' in line and 'image reliance >= 0.05' in line
    assert line in experiment.markdown(runs, ['none', 'jima'], META)
    assert experiment.reads_line([]) == 'No finished runs of this config yet.'


# ---------------------------------------------------------------------------------- configs
def test_runs_of_different_configs_are_refused_in_one_table():
    runs = [record('none', 0), record('jima', 0, config='iu_phantom:reads'),
            record('jima', 1, extra=['--config.train.num_epochs=3'])]
    with pytest.raises(ValueError, match=r'1 run\(s\) of `configs/iu_phantom.py:small`; 1 run\(s\) '
                       r'of `configs/iu_phantom.py:small --config.train.num_epochs=3`; 1 run\(s\) '
                       'of `iu_phantom:reads`'):
        experiment.markdown(runs, ['none', 'jima'], META)
    with pytest.raises(ValueError, match='under a table for'):
        experiment.summarize([record('none', 0, config='iu_phantom:reads')], ['none'], META)


def test_a_run_directory_of_another_config_is_refused(tmp_path):
    done = experiment.run_dir(tmp_path, 'jima', 0, SMALL) / 'experiment_run.json'
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps(record('jima', 0, extra=['--config.train.num_epochs=2'])))
    with pytest.raises(RuntimeError, match='made with `configs/iu_phantom.py:small '
                       '--config.train.num_epochs=2`, this experiment asks for '
                       '`configs/iu_phantom.py:small`'):
        experiment.run_one(tmp_path, 'jima', 0, [], SMALL)
    extra = ['--config.train.num_epochs=2']
    own = experiment.run_dir(tmp_path, 'jima', 0, SMALL, extra) / 'experiment_run.json'
    own.parent.mkdir(parents=True)
    own.write_text(json.dumps(record('jima', 0, extra=extra)))
    again = experiment.run_one(tmp_path, 'jima', 0, extra, SMALL)
    assert again['reads_images'] == 'yes'  # the same config: read back, not retrained


def test_summarize_keeps_other_configs_apart_and_reads_an_old_results_file(tmp_path, capsys):
    # the format of earlier versions: one config at the top, runs without config fields
    legacy = [record('none', s) for s in (0, 1)] + [record('jima', s) for s in (0, 1)]
    for r in legacy:
        for field in ('config', 'extra_flags', 'reads_images', *experiment.RUN_FIELDS):
            r.pop(field)
    (tmp_path / f'{experiment.NAME}.json').write_text(json.dumps(
        {'config': SMALL, 'meta': {**META, 'extra_flags': []}, 'runs': legacy}))
    args = ['--summarize', '--rows', 'none,jima', '--seeds', '0,1', '--root',
            str(tmp_path / 'runs'), '--results-dir', str(tmp_path)]
    experiment.main(args)
    payload = json.loads((tmp_path / f'{experiment.NAME}.json').read_text())
    assert len(payload['runs']) == 4 and 'other_configs' not in payload
    assert {r['config'] for r in payload['runs']} == {SMALL}
    assert all(r['image_reliance_report'] == 0.2 and r['distinct_reports'] == 120 and
               r['phantom_truth_macro_f1'] == 0.5 and r['phantom_truth_abnormal_recall'] == 0.6
               for r in payload['runs'])
    # the same corpus with another epoch count is another config: an empty table, the small
    # runs kept under other_configs, and back again unchanged
    experiment.main([*args, '--config.train.num_epochs=2'])
    other = json.loads((tmp_path / f'{experiment.NAME}.json').read_text())
    assert other['runs'] == [] and other['meta']['epochs'] == 2
    assert [g['runs'] for g in other['other_configs'].values()] == [payload['runs']]
    assert '| none | 0 |' in (tmp_path / f'{experiment.NAME}.md').read_text()
    experiment.main(args)
    back = json.loads((tmp_path / f'{experiment.NAME}.json').read_text())
    assert back['runs'] == payload['runs'] and 'other_configs' not in back
    capsys.readouterr()


def test_each_corpus_keeps_its_own_table_and_other_corpora_are_refused(tmp_path, capsys):
    demo = {**META, 'config': 'configs/demo.py', 'dataset': 'phantom'}
    runs = [record('none', 0, config='configs/demo.py')]
    text = experiment.summarize(runs, ['none'], demo, tmp_path)
    assert text.startswith('The demo phantom corpus (`configs/demo.py`, 3 epochs incl. 1 warm-up')
    assert '`curriculum_phantom_c.png`' in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'curriculum_phantom.json', 'curriculum_phantom.md', 'curriculum_phantom_c.png']
    assert experiment.summarize(runs[:0], ['none'], META, tmp_path).startswith('IU-phantom (')
    assert (tmp_path / f'{experiment.NAME}.json').exists()  # IU-phantom's name, as before
    with pytest.raises(SystemExit):  # no drawn findings to score against
        experiment.main(['--summarize', '--config', 'configs/iu_xray.py', '--results-dir',
                         str(tmp_path)])
    assert 'needs one of' in capsys.readouterr().err


def test_unknown_rows_are_refused():
    with pytest.raises(SystemExit):
        experiment.main(['--summarize', '--rows', 'none,jimma'])


# ---------------------------------------------------------------------------------- curriculum
def test_c1_c2_and_s_come_from_the_train_log(tmp_path):
    log = tmp_path / 'train_log.jsonl'
    rows = [{'step': 0, 'epoch': 0, 'curriculum/c1': 1.0, 'curriculum/c2': 1.0,
             'curriculum/kept1': 100.0},
            {'step': 5, 'loss/report': 2.0},
            {'step': 10, 'epoch': 1, 'curriculum/c1': 1.0, 'curriculum/c2': 1.0,
             'curriculum/s1': 0.96, 'curriculum/s2': 0.95},
            {'step': 20, 'epoch': 2, 'curriculum/c1': 0.99, 'curriculum/c2': 0.90,
             'curriculum/s2': 0.97},
            {'step': 20, 'epoch': 2, 'curriculum/c1': 0.98, 'curriculum/c2': 0.85,
             'curriculum/s2': 0.98},  # a resumed run logs the epoch again: the last row wins
            {'step': 25, 'epoch': 2, 'val/loss/report': 1.9}]
    log.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '\n')
    curves = experiment.curriculum_from_log(log)
    assert [(c['epoch'], c['c1'], c['c2']) for c in curves] == [
        (0, 1.0, 1.0), (1, 1.0, 1.0), (2, 0.98, 0.85)]
    assert [c.get('s2') for c in curves] == [None, 0.95, 0.98] and curves[0]['kept1'] == 100.0
    log.write_text(json.dumps({'step': 0, 'loss/report': 2.0}) + '\n')  # `none` logs no c
    assert experiment.curriculum_from_log(log) == []
    log.write_text('{"step": 0\n')
    with pytest.raises(ValueError, match='train_log.jsonl, line 1: not JSON'):
        experiment.curriculum_from_log(log)


def test_the_final_c2_sentence_says_whether_the_papers_schedule_moved():
    inert = [record('jima', s, curves=curve([1.0, 1.0, c], c1=0.999, s2=0.985))
             for s, c in ((0, 0.977), (1, 0.978))]
    moving = [record('competence_sqrt', 0, curves=curve([1.0, 0.1, 0.6]))]
    lines = experiment.curriculum_sentences(inert + moving + [record('none', 0)],
                                            ['none', 'jima', 'competence_sqrt'])
    assert lines[0].startswith('Final c2 (the Task-2 kept share in the last epoch; range over '
                               'seeds): `jima` 0.977..0.978 (c1 0.999..0.999); '
                               '`competence_sqrt` 0.600..0.600')
    assert lines[1].startswith("**The paper's schedule (`jima`) is nearly inert here**: in its "
                               'last epoch it still keeps at least 97.7%')
    assert 's2 = 1 - mean k2 at 0.985..0.985' in lines[1]
    active = [record('jima', 0, curves=curve([1.0, 0.7]))]
    assert 'moves c: its smallest final ratio is 0.700' in experiment.curriculum_sentences(
        active, ['jima'])[1]


def test_the_c_plot_has_one_line_per_run_coloured_by_row(tmp_path):
    from matplotlib import pyplot as plt
    runs = [record('none', 0)]
    runs += [record('jima', s, curves=curve([1.0, 1.0, 0.98 - s / 100])) for s in (0, 1)]
    runs += [record('competence_sqrt', 0, curves=curve([1.0, 0.1, 0.7]))]
    rows = ['none', 'jima', 'competence_sqrt']
    fig = experiment.curriculum_figure(runs, rows)
    try:
        for ax in fig.axes:
            lines = ax.get_lines()
            assert len(lines) == 3  # `none` logs no curriculum: nothing drawn
            assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
            assert list(lines[0].get_xdata()) == [1, 2, 3]
        assert list(fig.axes[1].get_lines()[2].get_ydata()) == [1.0, 0.1, 0.7]
    finally:
        plt.close(fig)
    text = experiment.summarize(runs, rows, META, tmp_path)
    png = tmp_path / f'{experiment.NAME}_c.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not list(tmp_path.glob('.*.tmp'))  # written through atomic's temporary file
    assert '`jima` 0.970..0.980' in text and f'`{experiment.NAME}_c.png`' in text
