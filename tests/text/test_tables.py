"""Frequency tables on a tiny hand-built split: counts, weights, masks, files."""

import json

import numpy as np
import pytest

from jima_jax.data.types import PreparedSplit
from jima_jax.text.tables import compute_tables, FrequencyTables
from jima_jax.text.symbols import (EOS_ID, LABEL_BLANK, LABEL_NEGATIVE, LABEL_POSITIVE,
                                   NUM_OBSERVATIONS)

V = 10


@pytest.fixture
def split():
    labels = np.full((3, NUM_OBSERVATIONS), LABEL_BLANK, np.int8)
    labels[0, 2] = LABEL_POSITIVE  # Cardiomegaly
    labels[1:, 0] = LABEL_POSITIVE  # No Finding
    labels[1, 10] = LABEL_NEGATIVE  # Pleural Effusion
    return PreparedSplit(
        ids=np.array(['a', 'b', 'c']), reports=np.array(['r', 'r', 'r']), images=None,
        # c: 9s beyond length
        tokens=np.array([[4, 5, 4, 0], [4, 6, 0, 0], [5, 9, 9, 9]], np.int32),
        lengths=np.array([3, 2, 1], np.int32),
        entities=np.array([[4, -1], [4, 6], [-1, -1]], np.int32),
        abnormal=np.array([1, 0, 0], np.int8), labels=labels)


@pytest.fixture
def tables(split):
    return compute_tables(split, V, 'f' * 64)


def test_counts(tables):
    want = np.zeros(V, np.int64)
    want[[4, 5, 6, EOS_ID]] = [3, 2, 1, 3]  # token 9 lies beyond c's length; EOS once per report
    np.testing.assert_array_equal(tables.token_counts, want)
    want = np.zeros(V, np.int64)
    want[[4, 6]] = [2, 1]
    np.testing.assert_array_equal(tables.entity_counts, want)
    assert (tables.num_examples, tables.abnormal_count) == (3, 1)
    assert tables.label_count('No Finding', LABEL_POSITIVE) == 2
    assert tables.label_count('Cardiomegaly', LABEL_POSITIVE) == 1
    assert tables.label_count('Pleural Effusion', LABEL_NEGATIVE) == 1
    assert tables.label_count('Pleural Effusion', LABEL_BLANK) == 2


def test_inverse_power_weights(tables):
    w = tables.token_loss_weights('inverse_power', alpha=1.0)
    # raw 1/count: 4 -> 1/3, 5 -> 1/2, 6 -> 1, EOS -> 1/3; mean over the 9 occurrences = 4/9
    assert w.dtype == np.float32
    np.testing.assert_allclose(w[[4, 5, 6, EOS_ID]], [0.75, 1.125, 2.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(w[[0, 1, 3, 7]], 2.25)  # never seen -> the max weight
    assert np.dot(tables.token_counts, w) / tables.token_counts.sum() == pytest.approx(1.0)


def test_effective_number_weights(tables):
    w = tables.token_loss_weights('effective_number', beta=0.5)
    raw = {3: 0.5 / 0.875, 2: 0.5 / 0.75, 1: 1.0}  # (1 - b) / (1 - b^n)
    scale = (3 * raw[3] + 2 * raw[2] + 1 * raw[1] + 3 * raw[3]) / 9
    np.testing.assert_allclose(w[[4, 5, 6, EOS_ID]],
                               np.array([raw[3], raw[2], raw[1], raw[3]]) / scale, rtol=1e-6)
    assert w[0] == pytest.approx(raw[1] / scale)
    np.testing.assert_array_equal(tables.token_loss_weights('none'), np.ones(V, np.float32))


def test_example_weights(tables):
    w = tables.example_loss_weight(np.array([1, 0, 0, 1]), 'inverse_prevalence')
    # abnormal share 1/3 -> raw 3 vs 1.5, training mean 2 -> 1.5 and 0.75
    np.testing.assert_allclose(w, [1.5, 0.75, 0.75, 1.5])
    train = tables.example_loss_weight(np.array([1, 0, 0]), 'inverse_prevalence')
    assert train.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(
        tables.example_loss_weight(np.array([1, 0]), 'inverse_prevalence', strength=0.0), 1.0)
    np.testing.assert_array_equal(tables.example_loss_weight(np.array([1, 0]), 'none'), [1.0, 1.0])


def test_entity_pos_weights(tables):
    w = tables.entity_pos_weights('inverse_frequency', max_weight=1.5)
    assert w[4] == pytest.approx(0.5)  # 2 positive, 1 negative study
    assert w[6] == pytest.approx(1.5)  # 1 vs 2 -> 2, capped
    assert w[0] == pytest.approx(1.5)  # never an entity -> the cap
    np.testing.assert_array_equal(tables.entity_pos_weights('none'), np.ones(V, np.float32))


def test_unknown_schemes(tables):
    for call in (lambda: tables.token_loss_weights('focal'),
                 lambda: tables.example_loss_weight(np.array([1]), 'focal'),
                 lambda: tables.entity_pos_weights('focal')):
        with pytest.raises(ValueError, match='config loss'):
            call()


def test_masks_and_groups(tables):
    # ranked (PAD, BOS excluded; ties -> smaller id): 2(3) 4(3) 5(2) 6(1) 3 7 8 9
    np.testing.assert_array_equal(tables.ranking(), [2, 4, 5, 6, 3, 7, 8, 9])
    assert set(np.flatnonzero(tables.frequent_mask(1 / 4))) == {2, 4}
    assert tables.frequent_mask(1.0).sum() == 8 and not tables.frequent_mask(1.0)[[0, 1]].any()
    np.testing.assert_array_equal(tables.frequency_groups(4), [-1, -1, 0, 2, 0, 1, 1, 2, 3, 3])
    with pytest.raises(ValueError):
        tables.frequent_mask(0.0)


def test_summary(tables):
    s = tables.summary()
    assert 'training studies        3' in s and 'normal share            66.7%' in s
    assert 'top 1/8 of vocabulary   1 ids cover 33.3%' in s


def test_save_load_round_trip_and_mismatches(tables, tmp_path):
    tables.save(tmp_path / 't')
    back = FrequencyTables.load(tmp_path / 't', tokenizer_fingerprint='f' * 64)
    for name in ('token_counts', 'entity_counts', 'label_counts'):
        np.testing.assert_array_equal(getattr(back, name), getattr(tables, name))
    assert back.content_hash == tables.content_hash
    with pytest.raises(ValueError, match='tokenizer in use.*delete its directory'):
        FrequencyTables.load(tmp_path / 't', tokenizer_fingerprint='0' * 64)
    np.savez(tmp_path / 't.npz', token_counts=tables.token_counts + 1,
             entity_counts=tables.entity_counts, label_counts=tables.label_counts)
    with pytest.raises(ValueError, match='content hash'):
        FrequencyTables.load(tmp_path / 't')
    meta = json.loads((tmp_path / 't.json').read_text())
    meta['version'] = 99
    (tmp_path / 't.json').write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='version'):
        FrequencyTables.load(tmp_path / 't')
    with pytest.raises(FileNotFoundError, match='prepare'):
        FrequencyTables.load(tmp_path / 'missing')
