"""The scorer CLI end to end (subprocess) on tiny JSONL files, and its input errors."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from jima_jax.evaluation import clinical, imbalance, nlg
from jima_jax.text import symbols

REPO = pathlib.Path(__file__).resolve().parents[2]
REFS = {'s1': 'the heart is normal in size .', 's2': 'small left pleural effusion .',
        's3': 'no focal consolidation . the lungs are clear .'}
PREDS = {'s1': 'the heart is normal .', 's2': 'no pleural effusion .', 's3': ''}


def run(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, '-m', 'jima_jax.evaluation.score', *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def write_jsonl(path, rows):
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return path


def write_labels(path, ids, labels, with_ids=True):
    """CheXpert-format CSV; without ids rows follow the given order (`Reports` column instead)."""
    lines = [','.join(['id' if with_ids else 'Reports', *symbols.OBSERVATIONS])]
    lines += [','.join([i if with_ids else 'text'] + [str(int(v)) for v in row])
              for i, row in zip(ids, labels)]
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_cli_end_to_end(tmp_path):
    refs = write_jsonl(tmp_path / 'refs.jsonl', [
        {'id': i, 'report': r, 'abnormal': int(i == 's2'), 'entities': r.split()[:2]}
        for i, r in REFS.items()])
    preds = write_jsonl(tmp_path / 'preds.jsonl', [  # rows in another order than refs
        {'id': i, 'report': PREDS[i], 'entities': PREDS[i].split()[:1]}
        for i in ('s3', 's1', 's2')])
    ids = sorted(REFS)
    ref_labels = np.full((3, 14), symbols.LABEL_BLANK, np.int8)
    ref_labels[:, 0] = [1, 0, 1]
    pred_labels = ref_labels.copy()
    pred_labels[1, 10] = symbols.LABEL_UNCERTAIN
    counts = {'the': 9, 'is': 5, 'normal': 5, '.': 20, 'effusion': 1, 'heart': 3}
    (tmp_path / 'counts.json').write_text(json.dumps(counts))
    out = tmp_path / 'out'
    done = run('--references', refs, '--predictions', preds, '--no-meteor', '--dataset', 'iu_xray',
               '--labels', write_labels(tmp_path / 'r.csv', ids, ref_labels),
               write_labels(tmp_path / 'p.csv', ['s3', 's1', 's2'], pred_labels[[2, 0, 1]],
                            with_ids=False),  # rows in the predictions file order
               '--tables', tmp_path / 'counts.json', '--out', out)
    assert done.returncode == 0, done.stderr
    assert '## Report generation (NLG)' in done.stdout and '| paper | 50.50 |' in done.stdout
    assert 'training counts from' in done.stdout

    results = json.loads((out / 'results.json').read_text())
    expected = nlg.compute_nlg(REFS, PREDS, with_meteor=False)
    expected.update(clinical.ce_metrics(ref_labels, pred_labels))
    expected.update(imbalance.subset_nlg(REFS, PREDS, {'s1': 0, 's2': 1, 's3': 0},
                                         with_meteor=False))
    expected.update(imbalance.token_imbalance(REFS, PREDS, counts))
    expected.update(imbalance.entity_prf({i: r.split()[:2] for i, r in REFS.items()},
                                         {i: p.split()[:1] for i, p in PREDS.items()}))
    expected.update({'count/studies': 3, 'distinct_reports': 3})
    assert results == pytest.approx(expected)
    assert results['ce/micro_u1/precision'] == 2 / 3 and results['ce/micro_u0/f1'] == 1.0
    assert {p.name for p in out.iterdir()} == {'results.json', 'results.md', 'bucket_f1.png',
                                               'normal_abnormal.png'}


def test_cli_without_tables_uses_reference_counts(tmp_path):
    refs = write_jsonl(tmp_path / 'r.jsonl', [{'id': i, 'report': r} for i, r in REFS.items()])
    preds = write_jsonl(tmp_path / 'p.jsonl', [{'id': i, 'report': r} for i, r in PREDS.items()])
    done = run('--references', refs, '--predictions', preds, '--no-meteor', '--no-ce')
    assert done.returncode == 0, done.stderr
    assert "frequency ranks come from the references' own word counts" in done.stdout
    counts = imbalance.word_counts(REFS.values())
    f1 = imbalance.token_imbalance(REFS, PREDS, counts)['token_f1/1_8/frequent']
    assert '| 1/8 |' in done.stdout and f'{100 * f1:.2f}' in done.stdout


@pytest.mark.parametrize('pred_lines, message', [
    (['{"id": "s1", "report": "a"}', '{"id": "s2", "report": "b"', ''],
     r'p\.jsonl:2: not valid JSON'),
    (['{"id": "s1", "report": "a"}', '{"id": "s1", "report": "b"}'],
     r"p\.jsonl:2: duplicate id 's1' \(first on line 1\)"),
    (['{"id": "s1"}'], r'p\.jsonl:1: missing or non-string `report`'),
    (['{"id": "s1", "report": "a"}', '{"id": "s2", "report": "b"}'],
     r"1 id\(s\) of .*r\.jsonl have no prediction \(e\.g\. \['s3'\]\)"),
])
def test_cli_input_errors(tmp_path, pred_lines, message):
    refs = write_jsonl(tmp_path / 'r.jsonl', [{'id': i, 'report': r} for i, r in REFS.items()])
    preds = tmp_path / 'p.jsonl'
    preds.write_text('\n'.join(pred_lines) + '\n')
    done = run('--references', refs, '--predictions', preds, '--no-meteor', '--no-ce')
    assert done.returncode == 2
    assert done.stderr.startswith('error: ')
    assert re.search(message, done.stderr), done.stderr


def test_tables_from_prepared_folder(tmp_path, monkeypatch):
    """A prepared folder: word tokenizer.model + tables.json (FrequencyTables contract)."""
    import types as pytypes
    from jima_jax.evaluation import score
    from jima_jax.text.tokenizer import Tokenizer
    tokenizer = Tokenizer.train(['a b . a c .', 'a b .'] * 3, mode='word', min_count=3)
    tokenizer.save(tmp_path / 'tokenizer.model')
    loaded = []

    class FakeTables:
        @classmethod
        def load(cls, path, tokenizer_fingerprint=None):
            loaded.append((path, tokenizer_fingerprint))
            tables = cls()
            tables.token_counts = np.arange(tokenizer.vocab_size) * 10
            return tables

    monkeypatch.setitem(sys.modules, 'jima_jax.text.tables',
                        pytypes.SimpleNamespace(FrequencyTables=FakeTables))
    counts = score.load_token_counts(tmp_path)
    assert loaded == [(tmp_path / 'tables.json', tokenizer.fingerprint)]
    assert counts == {tokenizer.id_to_token(i): 10 * i
                      for i in range(symbols.NUM_SPECIAL_TOKENS, tokenizer.vocab_size)}
    assert set(counts) == {'a', 'b', 'c', '.'}
    with pytest.raises(score.InputError, match='no such file'):
        score.load_token_counts(tmp_path / 'absent')
    (tmp_path / 'bad.json').write_text('{"a": -1}')
    with pytest.raises(score.InputError, match='count'):
        score.load_token_counts(tmp_path / 'bad.json')
