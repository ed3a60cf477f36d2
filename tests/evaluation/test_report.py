"""Results report: JSON round trip, Markdown tables with paper rows, plots, atomic writes."""

import json

import pytest

from jima_jax.evaluation import report

RESULTS = {
    'BLEU_1': 0.5, 'BLEU_2': 0.3, 'BLEU_3': 0.2, 'BLEU_4': 0.1234, 'METEOR': None,
    'ROUGE_L': 0.4, 'CIDEr': 0.25,
    'BLEU_4/normal': 0.2, 'BLEU_4/abnormal': 0.1, 'count/normal': 3.0, 'count/abnormal': 2.0,
    'ce/micro_u0/precision': 0.5, 'ce/micro_u0/recall': 0.25, 'ce/micro_u0/f1': 1 / 3,
    'token_f1/1_8/frequent': 0.6, 'token_f1/1_8/infrequent': 0.1, 'token_f1/group0': 0.7,
    'token_f1/group4': 0.05, 'val/loss': 1.5,
}


def test_write_results_round_trip_and_files(tmp_path):
    written = report.write_results(RESULTS, tmp_path / 'eval', dataset_name='iu_xray')
    assert set(written) == {'results.json', 'results.md', 'bucket_f1.png', 'normal_abnormal.png'}
    assert json.loads((tmp_path / 'eval' / 'results.json').read_text()) == RESULTS
    for name in ('bucket_f1.png', 'normal_abnormal.png'):
        assert written[name].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(p.name for p in (tmp_path / 'eval').iterdir()) == sorted(written)  # no temps


def test_markdown_has_ours_beside_paper_and_every_key():
    md = report.format_results(RESULTS, 'iu_xray', notes=['Studies: 5.'])
    assert '| ours | 50.00 | 30.00 | 20.00 | 12.34 | n/a | 40.00 | 25.00 |' in md
    assert '| paper | 50.50 | 33.12 | 24.15 | 18.88 | 21.16 | 38.56 |  |' in md
    assert '| paper abnormal | 45.41 | 27.95 | 19.15 | 15.68 | 16.36 | 34.59 |  |' in md
    assert '| micro_u0 | 50.00 | 25.00 | 33.33 |' in md
    assert '| 1/8 | n/a | n/a | 10.00 | n/a | n/a | 60.00 | 14.87 | 62.55 |' in md
    assert 'Studies: normal 3, abnormal 2.' in md and '- Studies: 5.' in md
    assert '| val/loss | 1.5 |' in md  # keys without a table are still shown


def test_markdown_without_dataset_has_no_paper_rows(tmp_path):
    md = report.format_results({'BLEU_1': 0.5}, 'phantom')
    assert 'paper' not in md.lower() and '| ours | 50.00 |' in md
    written = report.write_results({'BLEU_1': 0.5, 'x': float('nan')}, tmp_path)
    assert set(written) == {'results.json', 'results.md'}  # nothing to plot
    assert json.loads(written['results.json'].read_text()) == {'BLEU_1': 0.5, 'x': None}


def test_paper_dataset_is_a_name_with_paper_rows_or_none():
    """What run, eval and predict pass as dataset_name: the paper's tables only where they exist."""
    names = ('iu_xray', 'mimic_cxr', 'phantom', 'iu_phantom')
    assert [report.paper_dataset(n) for n in names] == ['iu_xray', 'mimic_cxr', None, None]


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    report.write_results({'BLEU_1': 0.5}, tmp_path)
    monkeypatch.setattr(report.os, 'replace', lambda *a: (_ for _ in ()).throw(OSError('disk')))
    with pytest.raises(OSError):
        report.write_results({'BLEU_1': 0.9}, tmp_path)
    assert json.loads((tmp_path / 'results.json').read_text()) == {'BLEU_1': 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['results.json', 'results.md']


def test_image_reliance_gets_its_own_table():
    md = report.format_results({'BLEU_1': 0.5, 'test/image_reliance/report': 0.00031,
                                'test/image_reliance/entity': -0.0002}, None)
    section = md.split('## Does the model read the image?')[1]
    assert '| report | 0.0003 |' in section and '| entity | -0.0002 |' in section
    assert 'Other values' not in md  # both keys were placed in that table
