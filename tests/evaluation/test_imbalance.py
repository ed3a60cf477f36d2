"""Imbalance breakdowns: token buckets by hand, frequency ranks, subsets, entities."""

import numpy as np
import pytest

from jima_jax.evaluation import imbalance, nlg
from jima_jax.text import symbols

COUNTS = {'the': 10, 'heart': 8, 'is': 8, 'normal': 5, 'size': 3, 'effusion': 2, 'small': 1,
          'left': 1}
REFS = {'s0': 'the heart is normal', 's1': 'small left effusion the effusion'}
PREDS = {'s0': 'the heart is normal', 's1': 'the the effusion pleural'}  # 'pleural': unseen


def test_ranks_break_ties_by_token():
    assert imbalance.rank_tokens(COUNTS) == ['the', 'heart', 'is', 'normal', 'size', 'effusion',
                                             'left', 'small']


def test_frequent_fraction_and_groups():
    frequent = lambda f: {t for t, b in imbalance.frequent_buckets(COUNTS, f).items()
                          if b == imbalance.FREQUENT}
    assert frequent('1/8') == {'the'}  # round(8 / 8) = 1
    assert frequent('1/6') == {'the'}  # round(1.33) = 1
    assert frequent('1/4') == {'the', 'heart'}
    assert frequent(0.01) == {'the'}  # never empty
    ten = {f'w{k}': 100 - k for k in range(10)}
    assert sum(b == imbalance.FREQUENT
               for b in imbalance.frequent_buckets(ten, '1/6').values()) == 2  # round(1.67)
    groups = imbalance.frequency_groups(COUNTS)
    assert [sorted(t for t, g in groups.items() if g == k) for k in range(5)] == [
        ['heart', 'the'], ['is', 'normal'], ['effusion', 'size'], ['left'], ['small']]


def test_token_bucket_prf_by_hand_1_8():
    frequent, infrequent = imbalance.token_bucket_prf(
        REFS, PREDS, imbalance.frequent_buckets(COUNTS, '1/8'), 2)
    # frequent {the}: ref 1 + 1, pred 1 + 2, matched 1 + min(1, 2).
    assert (frequent['ref_tokens'], frequent['pred_tokens'], frequent['matched']) == (2, 3, 2)
    assert frequent['precision'] == pytest.approx(2 / 3) and frequent['recall'] == 1.0
    assert frequent['f1'] == pytest.approx(0.8)
    # infrequent: ref 3 + 4 (effusion twice), pred 3 + 2 (effusion, unseen 'pleural'),
    # matched 3 + min(2, 1): repetitions count, each prediction token matches once.
    assert (infrequent['ref_tokens'], infrequent['pred_tokens'], infrequent['matched']) == (7, 5, 4)
    assert infrequent['precision'] == pytest.approx(0.8)
    assert infrequent['recall'] == pytest.approx(4 / 7)
    assert infrequent['f1'] == pytest.approx(2 * 4 / 12)


def test_token_imbalance_flat_keys_and_groups_by_hand():
    got = imbalance.token_imbalance(REFS, PREDS, COUNTS)
    assert got['token_f1/1_8/frequent'] == pytest.approx(0.8)
    assert got['token_recall/1_4/frequent'] == 1.0  # {the, heart}: all 4 matched
    # groups: g0 ref 3 pred 4 matched 3; g1 2/2/2; g2 2/1/1; g3 1/0/0; g4 1/1/0 (unseen word).
    expected_f1 = [6 / 7, 1.0, 2 / 3, 0.0, 0.0]
    assert [got[f'token_f1/group{g}'] for g in range(5)] == pytest.approx(expected_f1)
    assert got['token_precision/group0'] == pytest.approx(0.75)
    assert len(got) == 3 * 2 * 3 + 5 * 3


def test_empty_prediction_scores_zero():
    got = imbalance.token_imbalance({'a': 'the heart'}, {'a': ''}, COUNTS)
    assert all(v == 0.0 for v in got.values())
    with pytest.raises(ValueError, match='empty'):
        imbalance.token_imbalance(REFS, PREDS, {})


def test_counts_from_frequency_table_drop_reserved_ids():
    vocab = ['<pad>', '<s>', '</s>', '<unk>', 'the', 'heart']
    got = imbalance.counts_from_ids(np.array([0, 0, 7, 3, 10, 8]), vocab.__getitem__)
    assert got == {'the': 10, 'heart': 8}
    assert symbols.NUM_SPECIAL_TOKENS == 4
    assert imbalance.word_counts(['a b a', 'b .']) == {'a': 2, 'b': 2, '.': 1}


def test_subset_nlg_scores_each_subset_separately():
    refs = {'a': 'heart is normal .', 'b': 'small left effusion .', 'c': 'lungs are clear .'}
    preds = {'a': 'heart is normal .', 'b': 'no effusion .', 'c': 'lungs clear .'}
    got = imbalance.subset_nlg(refs, preds, {'a': 0, 'b': 1, 'c': 0}, with_meteor=False)
    normal = nlg.compute_nlg({k: refs[k] for k in 'ac'}, {k: preds[k] for k in 'ac'},
                             with_meteor=False)
    assert got['BLEU_1/normal'] == normal['BLEU_1'] and got['CIDEr/normal'] == normal['CIDEr']
    assert got['ROUGE_L/abnormal'] == pytest.approx(
        nlg.rouge_l([refs['b'].split()], [preds['b'].split()]))
    assert (got['count/normal'], got['count/abnormal']) == (2.0, 1.0)
    only_normal = imbalance.subset_nlg(refs, preds, dict.fromkeys(refs, 0), with_meteor=False)
    assert only_normal['count/abnormal'] == 0.0 and 'BLEU_1/abnormal' not in only_normal
    with pytest.raises(ValueError, match='missing'):
        imbalance.subset_nlg(refs, preds, {'a': 0})
    overall = imbalance.subset_nlg(refs, preds, {'a': 0, 'b': 1, 'c': 0}, with_meteor=False,
                                   include_overall=True)
    assert overall['CIDEr'] == nlg.compute_nlg(refs, preds, with_meteor=False)['CIDEr']
    assert overall['CIDEr/normal'] == got['CIDEr/normal']


def test_entity_prf_by_hand():
    got = imbalance.entity_prf([{'effusion', 'pleural'}, {'heart'}], [['effusion'], ['heart', 'x']])
    assert got == pytest.approx({'entity/precision': 2 / 3, 'entity/recall': 2 / 3,
                                 'entity/f1': 2 / 3})
    by_id = imbalance.entity_prf({'b': [1], 'a': [2, 3]}, {'a': [2], 'b': []})
    assert by_id == pytest.approx({'entity/precision': 1.0, 'entity/recall': 1 / 3,
                                   'entity/f1': 0.5})
    assert imbalance.entity_prf([[]], [[]])['entity/f1'] == 0.0
    with pytest.raises(ValueError, match='same study ids'):
        imbalance.entity_prf({'a': [1]}, {'b': [1]})


def test_entity_sets_from_arrays():
    assert imbalance.entity_sets_from_ids(np.array([[5, 7, -1], [-1, -1, -1]])) == [
        frozenset({5, 7}), frozenset()]
    q = np.array([[0.9, 0.2, 0.5], [0.1, 0.1, 0.1]])
    assert imbalance.entity_sets_from_scores(q) == [frozenset({0, 2}), frozenset()]
