"""Clinical efficacy: hand-computed micro / macro / example scores, label files, labeler hook."""

import os
import pathlib

import numpy as np
import pytest

from jima_jax.evaluation import clinical
from jima_jax.text import symbols

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get('JIMA_SHARED_DATA', REPO.parent / 'shared' / 'data'))
OBS = symbols.OBSERVATIONS.index
POS, NEG, UNC, BLANK = (symbols.LABEL_POSITIVE, symbols.LABEL_NEGATIVE, symbols.LABEL_UNCERTAIN,
                        symbols.LABEL_BLANK)


def matrix(rows):
    out = np.full((len(rows), symbols.NUM_OBSERVATIONS), BLANK, np.int8)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i, OBS(name)] = value
    return out


REF = matrix([{'No Finding': POS},
              {'Cardiomegaly': POS, 'Edema': UNC, 'Pleural Effusion': NEG},
              {'Edema': POS, 'Atelectasis': UNC}])
PRED = matrix([{'No Finding': POS},
               {'Cardiomegaly': POS, 'Edema': POS},
               {'Edema': UNC, 'Pneumonia': POS}])


def test_uncertain_as_negative_by_hand():
    got = clinical.ce_metrics(REF, PRED)
    # positives: ref {NF}, {Card}, {Edema}; pred {NF}, {Card, Edema}, {Pneumonia}.
    assert got['ce/micro_u0/precision'] == pytest.approx(2 / 4)
    assert got['ce/micro_u0/recall'] == pytest.approx(2 / 3)
    assert got['ce/micro_u0/f1'] == pytest.approx(4 / 7)
    # per observation only NF and Cardiomegaly score 1; the other 12 count as 0.
    for m in ('precision', 'recall', 'f1'):
        assert got[f'ce/macro_u0/{m}'] == pytest.approx(2 / 14)
    # per study: (1, 1, 1), (1/2, 1, 2/3), (0, 0, 0).
    assert got['ce/example_u0/precision'] == pytest.approx(1.5 / 3)
    assert got['ce/example_u0/recall'] == pytest.approx(2 / 3)
    assert got['ce/example_u0/f1'] == pytest.approx((1 + 2 / 3) / 3)


def test_uncertain_as_positive_by_hand():
    got = clinical.ce_metrics(REF, PRED)
    # positives: ref {NF}, {Card, Edema}, {Edema, Atel}; pred {NF}, {Card, Edema}, {Edema, Pneu}.
    for m in ('precision', 'recall', 'f1'):
        assert got[f'ce/micro_u1/{m}'] == pytest.approx(4 / 5)
        assert got[f'ce/macro_u1/{m}'] == pytest.approx(3 / 14)  # NF, Card, Edema perfect
        assert got[f'ce/example_u1/{m}'] == pytest.approx((1 + 1 + 0.5) / 3)
    assert len(got) == 18 and set(clinical.VARIANTS) == {k.split('/')[1] for k in got}


def test_no_positives_anywhere_scores_zero_not_nan():
    blank = matrix([{}, {'Edema': NEG}])
    got = clinical.ce_metrics(blank, blank)
    assert all(v == 0.0 for v in got.values())


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match='shape'):
        clinical.ce_metrics(REF[:, :13], PRED[:, :13])
    with pytest.raises(ValueError, match=r'values \[3\]'):
        clinical.ce_metrics(np.where(REF == POS, 3, REF), PRED)
    with pytest.raises(ValueError, match='differ in shape'):
        clinical.ce_metrics(REF, PRED[:2])


def test_label_and_score_labels_both_sides_with_one_labeler():
    seen = []

    def fake_labeler(texts):
        seen.append(list(texts))
        return np.stack([REF[0] if 'normal' in t else REF[1] for t in texts])

    got = clinical.label_and_score({'b': 'cardiomegaly', 'a': 'normal'},
                                   {'a': 'normal', 'b': 'normal'}, labeler=fake_labeler)
    assert seen == [['normal', 'cardiomegaly'], ['normal', 'normal']]  # sorted ids a, b
    assert got == clinical.ce_metrics(np.stack([REF[0], REF[1]]), np.stack([REF[0], REF[0]]))
    with pytest.raises(ValueError, match='same study ids'):
        clinical.label_and_score({'a': 'x'}, {'b': 'x'}, labeler=fake_labeler)


def write_csv(path, header, rows):
    path.write_text('\n'.join([','.join(header)] + [','.join(r) for r in rows]) + '\n')


def test_label_file_with_id_column_round_trip(tmp_path):
    header = ['id', *symbols.OBSERVATIONS]
    rows = [[i] + ['' if v == BLANK else f'{float(v)}' for v in REF[k]]
            for k, i in zip((1, 0, 2), ('s1', 's0', 's2'))]
    write_csv(tmp_path / 'l.csv', header, rows)
    np.testing.assert_array_equal(clinical.load_label_file(tmp_path / 'l.csv', ['s0', 's1', 's2']),
                                  REF)
    with pytest.raises(ValueError, match='missing'):
        clinical.load_label_file(tmp_path / 'l.csv', ['s0', 's1', 's9'])


def test_label_file_errors_name_file_line_and_column(tmp_path):
    header = ['Reports', *symbols.OBSERVATIONS]
    write_csv(tmp_path / 'bad.csv', header, [['x'] + [''] * 14, ['y', 'yes'] + [''] * 13])
    with pytest.raises(ValueError, match=r"bad\.csv:3: column 'No Finding' holds 'yes'"):
        clinical.load_label_file(tmp_path / 'bad.csv', ['a', 'b'])
    write_csv(tmp_path / 'short.csv', ['Reports', 'No Finding'], [['x', '1']])
    with pytest.raises(ValueError, match='missing observation column'):
        clinical.load_label_file(tmp_path / 'short.csv', ['a'])


def test_reads_chexpert_labeler_output_format():
    path = SHARED / 'chexpert_labeler' / 'labeled_reports.csv'
    if not path.is_file():
        pytest.skip(f'shared data missing: {path}')
    labels = clinical.load_label_file(path, ['r0', 'r1', 'r2', 'r3'])  # rows in report order
    assert labels.shape == (4, 14)
    assert labels[0, OBS('No Finding')] == POS and labels[0, OBS('Edema')] == NEG
    assert labels[1, OBS('Cardiomegaly')] == POS and labels[1, OBS('Lung Lesion')] == BLANK
    assert labels[2, OBS('Lung Opacity')] == POS and labels[2, OBS('Atelectasis')] == UNC


def test_package_labeler_scores_identical_reports_consistently():
    pytest.importorskip('jima_jax.text.labeler', reason='the package labeler is not written yet')
    texts = {'a': 'the heart is enlarged . small left pleural effusion .',
             'b': 'no acute cardiopulmonary abnormality .'}
    got = clinical.label_and_score(texts, texts)
    assert set(got) == {f'ce/{v}/{m}' for v in clinical.VARIANTS
                        for m in ('precision', 'recall', 'f1')}
    assert got['ce/micro_u0/f1'] == 1.0  # identical sides, and the reports name findings
