"""The visibility-ceiling experiment's scoring: thresholds and F1 against hand counts."""

import numpy as np
import pytest

from experiments import visibility_ceiling as ceiling


def test_best_threshold_maximises_f1_and_predicts_nothing_without_positives():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    labels = np.array([True, False, True, False, False])
    # >= 0.9: P 1, R 1/2, F1 2/3; >= 0.7: TP 2, FP 1, F1 4/5; >= 0.1: TP 2, FP 3, F1 4/7
    assert ceiling.best_threshold(scores, labels) == pytest.approx(0.7)
    assert ceiling._thresholded_f1(scores, labels, 0.7) == pytest.approx(0.8)
    assert ceiling.best_threshold(scores, np.zeros(5, bool)) == pytest.approx(1.9)
    assert ceiling._thresholded_f1(scores, np.zeros(5, bool), 1.9) == 0.0


def test_score_uses_the_validation_threshold_and_skips_findings_without_test_positives():
    names = ['a', 'b', 'c']
    test = np.array([[0.9, 0.1, 0.3], [0.6, 0.2, 0.4], [0.4, 0.3, 0.5], [0.2, 0.4, 0.6]])
    test_truth = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 1]], bool)
    val = np.array([[0.8, 0.5, 0.9], [0.3, 0.5, 0.1]])
    val_truth = np.array([[1, 0, 1], [0, 0, 0]], bool)
    out = ceiling.score(test, test_truth, val, val_truth, names)
    assert set(out['findings']) == {'a', 'c'}  # 'b' has no positive test study
    a, c = out['findings']['a'], out['findings']['c']
    # a: validation threshold 0.8 -> test predicts study 0 only: TP 1, FN 1 -> F1 2/3;
    # the oracle threshold 0.6 finds both; AUC 1.
    assert (a['support'], a['auc'], a['f1_oracle']) == (2, 1.0, 1.0)
    assert a['f1_val_threshold'] == pytest.approx(2 / 3)
    # c: validation threshold 0.9 -> nothing predicted on test: F1 0; oracle 0.4 -> studies
    # 1, 2, 3 predicted, TP 2, FP 1 -> F1 0.8; AUC: positives 0.4, 0.6 vs negatives 0.3, 0.5 -> 3/4
    assert c['f1_val_threshold'] == 0.0 and c['f1_oracle'] == pytest.approx(0.8)
    assert c['auc'] == pytest.approx(0.75)
    assert out['macro']['f1_val_threshold'] == pytest.approx(1 / 3)
    assert out['macro']['f1_oracle'] == pytest.approx(0.9)
    assert out['macro']['auc'] == pytest.approx(0.875)
    # at 0.5: a predicts studies 0, 1 (both positive) -> F1 1; c predicts 2, 3: TP 1 (3), FP 1
    # (2), FN 1 (1) -> F1 1/2
    assert (a['f1_at_half'], c['f1_at_half']) == (1.0, 0.5)
    assert out['macro']['f1_at_half'] == pytest.approx(0.75)


def test_markdown_lists_each_step_and_each_finding_of_the_last_one():
    row = lambda steps, f1: {'steps': steps, 'train_seconds': 10.0 * steps,
                             'macro': {'auc': 0.5, 'f1_val_threshold': f1, 'f1_oracle': f1},
                             'findings': {'a': {'support': 2, 'auc': 0.5, 'f1_val_threshold': f1,
                                                'f1_oracle': f1}}}
    probed = row(2, 0.5)
    probed['macro']['f1_at_half'] = 0.125
    probed['probe'] = {'macro': {'auc': 0.75, 'f1_val_threshold': 0.625, 'f1_oracle': 0.7,
                                 'f1_at_half': 0.375}}
    text = ceiling.markdown([{'name': 'w16 64px', 'image_size': 64,
                              'rows': [row(1, 0.25), probed]}])
    assert '| w16 64px | 64 | 1 | 10 | 0.500 | 0.250 | 0.250 | – | – |' in text  # older rows
    assert ('| w16 64px | 64 | 2 | 20 | 0.500 | 0.500 | 0.500 | 0.125 | 0.750 / 0.625 / 0.375 |'
            in text)
    assert '| a | 2: 0.50 / 0.50 / 0.50 |' in text
