"""Phantom-truth scores against hand-computed cases, the baselines, distinct reports, the stored
drawn findings, the 'Reads its images' line, and one eval of a tiny untrained phantom model."""

import json

import numpy as np
import pytest

from jima_jax.data import phantom, phantom_corpus, prepare
from jima_jax.data.phantom import Finding, Findings
from jima_jax.evaluation import phantom_truth as pt
from jima_jax.evaluation import report


def _truth(*names_per_study):
    """Drawn-truth rows as the phantom builders store them."""
    return np.stack([phantom_corpus.truth_labels(Findings(tuple(Finding(n) for n in names)))
                     for names in names_per_study])


def _found(text):
    found, abnormal = pt.read_report(text)
    return [n for n, f in zip(pt.FINDINGS, found) if f], abnormal


# Six studies: what each image was drawn from, and a hand-written "generated" report.
TRUTH = _truth(['Cardiomegaly', 'Pleural Effusion'], ['Cardiomegaly'], ['calcified granuloma'],
               [], [], ['Support Devices'])
GENERATED = [
    'There is mild cardiomegaly. No pleural effusion.',                       # TP card, FN PE
    'The heart is normal in size. There may be a small left pleural effusion.',  # FN card, FP PE
    'Calcified granuloma in the right upper lobe. The lungs are otherwise clear.',  # TP gran
    'The heart is normal in size. The lungs are clear.',                      # normal, read normal
    'There is a large hiatal hernia.',                                         # normal, FP hernia
    'The heart is normal in size.',                                            # FN device
]


def test_the_labeler_reads_the_hand_written_reports_as_assumed():
    assert [_found(t) for t in GENERATED] == [
        (['Cardiomegaly'], True), (['Pleural Effusion'], True),  # "may be": uncertain = found
        (['calcified granuloma'], True), ([], False), (['hiatal hernia'], True), ([], False)]
    assert _found('') == ([], False)  # an empty report finds nothing and is not abnormal
    assert _found('Mild scoliosis.') == ([], True)  # abnormal, but none of the 16 findings


def test_scores_equal_the_hand_computed_values():
    got = pt.scores(TRUTH, GENERATED)
    # Findings drawn at least once: Cardiomegaly (2 studies), Pleural Effusion (1), Support
    # Devices (1), calcified granuloma (1). Per finding (TP, FP, FN) and P, R, F1:
    #   Cardiomegaly (1, 0, 1): 1, 1/2, 2/3    Pleural Effusion (0, 1, 1): 0, 0, 0
    #   Support Devices (0, 0, 1): 0 (0/0), 0, 0    calcified granuloma (1, 0, 0): 1, 1, 1
    assert pt.evaluated_findings(TRUTH) == (
        'Cardiomegaly', 'Pleural Effusion', 'Support Devices', 'calcified granuloma')
    assert got['phantom_truth/cardiomegaly/precision'] == 1.0
    assert got['phantom_truth/cardiomegaly/recall'] == 0.5
    assert got['phantom_truth/cardiomegaly/f1'] == pytest.approx(2 / 3)
    assert got['phantom_truth/cardiomegaly/support'] == 2
    assert got['phantom_truth/support_devices/precision'] == 0.0
    assert 'phantom_truth/hiatal_hernia/f1' not in got  # never drawn: not in the macro average
    assert got['phantom_truth/macro_precision'] == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert got['phantom_truth/macro_recall'] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert got['phantom_truth/macro_f1'] == pytest.approx((2 / 3 + 0 + 0 + 1) / 4)
    # Micro pools all 16 findings: TP 2, FP 2 (pleural effusion, hiatal hernia), FN 3.
    assert got['phantom_truth/micro_precision'] == pytest.approx(2 / 4)
    assert got['phantom_truth/micro_recall'] == pytest.approx(2 / 5)
    assert got['phantom_truth/micro_f1'] == pytest.approx(2 * 2 / (2 * 2 + 2 + 3))
    # Abnormal studies 1, 2, 3, 6: the first three are read abnormal. Normal 4, 5: only 4.
    assert got['phantom_truth/abnormal_recall'] == pytest.approx(3 / 4)
    assert got['phantom_truth/normal_recall'] == pytest.approx(1 / 2)


def test_undefined_averages_are_none_and_bad_shapes_are_errors():
    got = pt.scores(_truth([], []), ['The lungs are clear.', 'Small hiatal hernia.'])
    assert got['phantom_truth/macro_f1'] is None and got['phantom_truth/abnormal_recall'] is None
    assert got['phantom_truth/micro_precision'] == 0.0  # one false positive, no true one
    assert got['phantom_truth/normal_recall'] == 0.5
    with pytest.raises(ValueError, match=r'truth_labels must be \[N, 17\]'):
        pt.scores(np.zeros((2, 14), np.int8), ['a', 'b'])
    with pytest.raises(ValueError, match='3 reports for 2 rows'):
        pt.scores(_truth([], []), ['a', 'b', 'c'])


def test_truth_row_columns_follow_findings_labels():
    row = phantom_corpus.truth_labels(Findings((Finding('Support Devices'),
                                                Finding('hiatal hernia'))))
    assert phantom_corpus.TRUTH_COLUMNS[-3:] == phantom.EXTRA_FINDINGS
    assert [phantom_corpus.TRUTH_COLUMNS[i] for i in np.flatnonzero(row)] == [
        'Support Devices', 'hiatal hernia']  # No Finding stays 0: the hernia is a finding
    normal = phantom_corpus.truth_labels(Findings(()))
    assert normal.dtype == np.int8 and list(np.flatnonzero(normal)) == [0]  # No Finding only


def test_iu_phantom_draws_what_the_scorer_reads():
    """The iu_phantom source draws the findings its reports state; reading a report for the score
    must agree, so the reference report is the ceiling (F1 1) on iu_phantom too."""
    reports = ['Heart size is mildly enlarged. Possible right basilar atelectasis. Calcified '
               'granuloma in the left upper lobe. Mild degenerative changes of the thoracic spine.',
               'No acute cardiopulmonary abnormality. Small hiatal hernia. Right chest wall '
               'pacemaker.', 'Lungs are clear. No pneumothorax or pleural effusion.']
    for text in reports:
        assert tuple(_found(text)[0]) == phantom_corpus.findings_from_report(text).names


def test_distinct_reports_and_most_common_report():
    assert pt.distinct_reports(['a b', 'a  b ', 'a c']) == 2
    assert pt.distinct_reports([]) == 0
    assert pt.most_common_report(['x', 'y', 'y', 'x', 'z']) == 'x'  # tie: first in the split
    assert pt.most_common_report(['x', 'y', 'y']) == 'y'
    with pytest.raises(ValueError, match='at least one training report'):
        pt.most_common_report([])
    from jima_jax.evaluation import score
    got, _ = score.score_reports({'1': 'a b', '2': 'a c', '3': 'a d'},
                                 {'1': 'x y', '2': 'x  y', '3': 'x z'}, with_meteor=False)
    assert got['distinct_reports'] == 2 and got['count/studies'] == 3  # any dataset, CLI too


def test_baselines_floor_and_ceiling():
    normal = 'The heart is normal in size. The lungs are clear.'
    refs = ['Mild cardiomegaly. Small right pleural effusion.', 'Mild cardiomegaly.',
            'Calcified granuloma in the right upper lobe.', normal, normal,
            'Left chest wall pacemaker.']
    got = pt.baselines(refs, [normal, 'Mild cardiomegaly.', normal], TRUTH)
    assert got['distinct_reports/baseline_most_common'] == 1
    assert got['distinct_reports/baseline_reference'] == 5
    # Floor: the normal report finds nothing: F1 0, no abnormal study caught, every normal one.
    assert got['phantom_truth/baseline_most_common/macro_f1'] == 0.0
    assert got['phantom_truth/baseline_most_common/micro_f1'] == 0.0
    assert got['phantom_truth/baseline_most_common/abnormal_recall'] == 0.0
    assert got['phantom_truth/baseline_most_common/normal_recall'] == 1.0
    # Ceiling: references that state exactly the drawn findings.
    for stat in ('macro_f1', 'micro_f1', 'abnormal_recall', 'normal_recall'):
        assert got[f'phantom_truth/baseline_reference/{stat}'] == 1.0
    assert not any('/cardiomegaly/' in k for k in got)  # no per-finding keys for baselines
    assert pt.baselines(refs, []) == {'distinct_reports/baseline_reference': 5}


RESULTS = {'test/image_reliance/report': 0.1234, 'distinct_reports': 41, 'count/studies': 96,
           'phantom_truth/macro_f1': 0.634, 'phantom_truth/baseline_most_common/macro_f1': 0.2}


def test_reads_images_line_yes_and_no():
    assert report.reads_images_line(RESULTS) == (
        'Reads its images: yes — image reliance 0.123 nats/token (report), 41 distinct reports '
        'of 96, phantom-truth macro F1 0.63 (most-common-report baseline 0.20)')
    no = dict(RESULTS, **{'test/image_reliance/report': -0.0002, 'distinct_reports': 1})
    assert report.reads_images_line(no) == (
        'Reads its images: no — image reliance -0.0002 nats/token (report), 1 distinct report '
        'of 96, phantom-truth macro F1 0.63 (most-common-report baseline 0.20) [reliance below '
        '0.05; distinct reports not above max(1, 1% of studies)]')
    # Reliance alone is not enough: 5 of 590 is below 1% of the studies.
    few = {'val/image_reliance/report': 0.2, 'distinct_reports': 5, 'count/studies': 590}
    assert report.reads_images_line(few).startswith('Reads its images: no — image reliance 0.2 ')
    assert report.reads_images_line({'distinct_reports': 7}) == (
        'Reads its images: unknown — 7 distinct reports')


def test_results_md_table_and_json_keep_counts_and_names(tmp_path):
    results = dict(RESULTS, **{
        'distinct_reports/baseline_most_common': 1, 'distinct_reports/baseline_reference': 90,
        'phantom_truth/baseline_reference/macro_f1': 1.0, 'phantom_truth/findings': 'cardiomegaly',
        'phantom_truth/cardiomegaly/f1': 0.5, 'phantom_truth/cardiomegaly/support': 4})
    written = report.write_results(results, tmp_path)
    assert json.loads(written['results.json'].read_text()) == results  # ints and str kept
    md = written['results.md'].read_text().split('## Does the model read the image?')[1]
    assert ('| distinct reports | 41 of 96 | 1 of 96 | 90 of 96 |' in md
            and '| phantom-truth macro F1 | 63.40 | 20.00 | 100.00 |' in md
            and '| Cardiomegaly | 4 | n/a | n/a | 50.00 |' in md)
    assert 'phantom_truth/findings' not in md  # named in results.json, shown as the table


def test_prepared_phantom_split_stores_the_drawn_findings(smoke_dataset):
    from configs import smoke
    cfg = smoke.get_config().data
    drawn = {s.id: phantom_corpus.truth_labels(s.meta['findings'])
             for s in phantom_corpus.synthetic_studies(cfg)}
    for split in smoke_dataset.splits.values():
        assert split.truth_labels.dtype == np.int8 and split.truth_labels.shape == (len(split), 17)
        assert all(np.array_equal(row, drawn[i]) for i, row in zip(split.ids, split.truth_labels))
        assert np.array_equal(split.truth_labels[:, 1:].any(1), split.abnormal.astype(bool))
    assert smoke_dataset.splits['test'].subset(np.array([0, 2])).truth_labels.shape == (2, 17)


def test_phantom_version_is_part_of_the_fingerprint(monkeypatch):
    from configs import smoke
    cfg = smoke.get_config().data
    before = prepare.config_fingerprint(cfg)
    monkeypatch.setattr(phantom_corpus, 'VERSION', '9.9.9')
    assert prepare.config_fingerprint(cfg) != before  # old prepared phantom data are re-prepared


def test_eval_of_a_tiny_phantom_model_writes_the_keys(smoke_dataset, tmp_path):
    """Untrained smoke model (no training: seconds), generation + scoring + files."""
    from configs import smoke
    from jima_jax.train import run_setup, validate
    config = smoke.get_config()
    config.decode.max_len = 8
    config.decode.beam_size = 1
    s = run_setup.setup(config, tmp_path, restore=False)
    out = tmp_path / 'eval'
    generate = validate.make_generate(s)
    results = validate.evaluate_split(s, generate, 'test', s.state,
                                      with_meteor=False, out_dir=out)
    s.checkpointer.close()
    written = json.loads((out / 'results.json').read_text())
    for key in ('phantom_truth/macro_f1', 'phantom_truth/micro_f1', 'phantom_truth/abnormal_recall',
                'distinct_reports', 'count/studies', 'phantom_truth/findings',
                'distinct_reports/baseline_most_common', 'distinct_reports/baseline_reference',
                'phantom_truth/baseline_most_common/macro_f1',
                'phantom_truth/baseline_reference/macro_f1'):
        assert key in written and key in results, key
    assert written['phantom_truth/baseline_reference/macro_f1'] == 1.0  # the grammar states all
    preds = [json.loads(line) for line in (out / 'predictions.jsonl').read_text().splitlines()]
    assert written['distinct_reports'] == len({p['report'] for p in preds})
    assert written['count/studies'] == 16
    test = smoke_dataset.splits['test']
    order = {str(i): k for k, i in enumerate(test.ids)}
    truth = test.truth_labels[[order[p['id']] for p in preds]]
    again = pt.scores(truth, [p['report'] for p in preds])
    assert written['phantom_truth/macro_f1'] == pytest.approx(again['phantom_truth/macro_f1'])
    assert written['phantom_truth/findings'].split(',') == [
        pt.finding_key(n) for n in pt.evaluated_findings(test.truth_labels)]
    assert 'most common training report (floor)' in (out / 'results.md').read_text()
    # Validation during training: no baselines and no string values for the training log.
    during = validate.evaluate_split(s, generate, 'val', s.state,
                                     with_meteor=False)
    assert 'phantom_truth/macro_f1' in during and not any('baseline' in k for k in during)
    assert not any(isinstance(v, str) for v in during.values())


def test_test_losses_and_image_reliance_are_plain_whatever_the_training_weights(smoke_dataset,
                                                                                tmp_path):
    """With loss.token_weighting on, training and validation use the weighted NLL, but the test
    loss and image reliance must be the plain per-token NLL, equal to an unweighted run's (same
    parameters), so that runs with and without reweighting compare on one scale."""
    from configs import smoke
    from jima_jax.train import evaluate, run_setup, validate
    plain_cfg, weighted_cfg = smoke.get_config(), smoke.get_config()
    weighted_cfg.loss.token_weighting = 'inverse_power'
    weighted_cfg.loss.token_alpha = 1.0
    got = {}
    for name, cfg in (('plain', plain_cfg), ('weighted', weighted_cfg)):
        s = run_setup.setup(cfg, tmp_path / name, restore=False)  # same seed: same initial params
        eval_fn = validate.make_eval_fn(s)
        as_trained = validate.evaluate_loss(s, eval_fn, 'test')
        plain = evaluate.plain_loss_tables(s)
        test = validate.evaluate_loss(s, eval_fn, 'test', tables=plain)
        test.update(evaluate.image_reliance(s, eval_fn, 'test', test, tables=plain))
        s.checkpointer.close()
        got[name] = (as_trained, test)
    (plain_trained, plain_test), (weighted_trained, weighted_test) = got['plain'], got['weighted']
    assert plain_trained == pytest.approx({k: plain_test[k] for k in plain_trained})
    assert abs(weighted_trained['test/loss/report'] - plain_trained['test/loss/report']) > 1e-3
    for key in ('test/loss/report', 'test/loss/entity', 'test/image_reliance/report'):
        assert weighted_test[key] == pytest.approx(plain_test[key], rel=1e-5, abs=1e-6), key
