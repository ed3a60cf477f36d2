"""NLG metrics: hand-computed values, degenerate inputs, and equality with pycocoevalcap."""

import json
import math
import os
import pathlib
import random
import shutil

import pytest

from jima_jax.evaluation import nlg

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get('JIMA_SHARED_DATA', REPO.parent / 'shared' / 'data'))


def score(pairs, **kw):
    refs = {str(i): r for i, (r, _) in enumerate(pairs)}
    preds = {str(i): p for i, (_, p) in enumerate(pairs)}
    return nlg.compute_nlg(refs, preds, with_meteor=False, **kw)


def test_bleu_single_pair_by_hand():
    # 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1; equal lengths (no brevity penalty).
    got = score([('a b c d', 'a b c e')])
    assert got['BLEU_1'] == pytest.approx(0.75, rel=1e-8)
    assert got['BLEU_2'] == pytest.approx(math.sqrt(0.75 * 2 / 3), rel=1e-8)
    assert got['BLEU_3'] == pytest.approx((0.75 * 2 / 3 * 0.5) ** (1 / 3), rel=1e-8)
    # pycocoevalcap's 1e-15 guard: no 4-gram match gives a tiny positive number, not 0.
    assert got['BLEU_4'] == pytest.approx((0.25 * 1e-15) ** 0.25, rel=1e-6)


def test_bleu_is_corpus_level_with_one_brevity_penalty():
    # Matches and lengths are summed first: B1 = (2 + 1) / (2 + 2), lengths 4 vs 6.
    got = score([('a b', 'a b'), ('c d e f', 'x d')])
    assert got['BLEU_1'] == pytest.approx(0.75 * math.exp(1 - 6 / 4), rel=1e-8)
    short = score([('a b c d e f', 'a b c')])
    assert short['BLEU_1'] == pytest.approx(math.exp(1 - 6 / 3), rel=1e-8)


def test_lcs_matches_dynamic_programming():
    rng = random.Random(0)

    def lcs_dp(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = (table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1]
                               else max(table[i - 1][j], table[i][j - 1]))
        return table[-1][-1]

    for _ in range(300):
        a = [rng.choice('abcde') for _ in range(rng.randrange(0, 30))]
        b = [rng.choice('abcdef') for _ in range(rng.randrange(0, 90))]
        assert nlg.lcs_length(a, b) == lcs_dp(a, b)


def test_rouge_l_by_hand():
    # LCS "heart is normal" = 3: precision 3/4, recall 3/6, beta = 1.2.
    got = score([('the heart is normal in size', 'heart size is normal')])
    p, r, b2 = 0.75, 0.5, 1.2 ** 2
    assert got['ROUGE_L'] == pytest.approx((1 + b2) * p * r / (r + b2 * p), rel=1e-12)


def test_cider_d_by_hand_three_documents():
    got = score([('a b', 'a b'), ('c d', 'c'), ('a e', 'a')])
    ln2, ln3 = math.log(2), math.log(3)
    penalty = math.exp(-1 / 72)  # bigram counts differ by 1, sigma 6
    doc1 = 10 * (1 + 1) / 4  # identical: cosine 1 for 1- and 2-grams, no 3/4-grams
    doc2 = 10 * (1 / math.sqrt(2)) * penalty / 4  # unigram c against {c, d}, equal idf
    w_a, w_e = ln3 - ln2, ln3  # 'a' occurs in two of the three references
    doc3 = 10 * (w_a * w_a / (w_a * math.sqrt(w_a ** 2 + w_e ** 2))) * penalty / 4
    assert got['CIDEr'] == pytest.approx((doc1 + doc2 + doc3) / 3, rel=1e-12)


def test_empty_predictions_score_zero():
    got = score([('the heart is normal .', ''), ('no effusion .', '   ')])
    assert got == {'BLEU_1': 0.0, 'BLEU_2': 0.0, 'BLEU_3': 0.0, 'BLEU_4': 0.0,
                   'ROUGE_L': 0.0, 'CIDEr': 0.0}


def test_identical_predictions_score_perfect():
    reports = ['the heart is normal in size .', 'small left pleural effusion is seen .',
               'no focal consolidation or pneumothorax .']
    got = score([(r, r) for r in reports])
    for n in range(1, 5):
        assert got[f'BLEU_{n}'] == pytest.approx(1.0, abs=1e-8)
    assert got['ROUGE_L'] == 1.0
    assert got['CIDEr'] == pytest.approx(10.0, rel=1e-12)


def test_single_study_and_whitespace_do_not_crash():
    got = score([('a  b\nc', ' a b c ')])
    assert got['ROUGE_L'] == 1.0
    assert got['CIDEr'] == 0.0  # log(1 document) = 0: every idf is 0


def test_mismatched_ids_and_empty_references_are_errors():
    with pytest.raises(ValueError, match='no prediction'):
        nlg.compute_nlg({'a': 'x', 'b': 'y'}, {'a': 'x'}, with_meteor=False)
    with pytest.raises(ValueError, match='empty'):
        nlg.compute_nlg({'a': ' '}, {'a': 'x'}, with_meteor=False)


def test_meteor_missing_java_is_none_not_replaced(monkeypatch, caplog):
    monkeypatch.setattr(nlg.shutil, 'which', lambda name: None)
    got = nlg.compute_nlg({'a': 'heart normal'}, {'a': 'heart normal'})
    assert got['METEOR'] is None
    assert 'Java is not installed' in caplog.text
    assert 'METEOR' not in nlg.compute_nlg({'a': 'x'}, {'a': 'x'}, with_meteor=False)


@pytest.mark.skipif(shutil.which('java') is None, reason='Java is not installed')
def test_meteor_crash_is_reported_with_java_stderr(monkeypatch, tmp_path):
    jar = tmp_path / 'meteor' / 'meteor-1.5.jar'
    (jar.parent / 'data').mkdir(parents=True)
    jar.write_bytes(b'not a jar')
    monkeypatch.setattr(nlg, 'meteor_jar', lambda: jar)
    with pytest.raises(nlg.MeteorUnavailable, match='(?i)jar'):
        nlg.meteor([['a']], [['a']], timeout_s=60)


def iu_pairs(n=50):
    """Random-ish prediction/reference pairs from real IU X-ray test reports."""
    path = SHARED / 'iu_xray' / 'annotation.json'
    if not path.is_file():
        pytest.skip(f'shared data missing: {path}')
    from jima_jax.text.cleaning import clean_report
    reports = [clean_report(s['report']) for s in json.loads(path.read_text())['test']]
    reports = [r for r in reports if r]
    rng = random.Random(5)
    refs, preds = {}, {}
    for k in range(n):
        ref = reports[k]
        tokens = ref.split()
        kind = k % 6
        if kind == 0:
            pred = ' '.join(t for t in tokens if rng.random() > 0.3)
        elif kind == 1:
            pred = rng.choice(reports)
        elif kind == 2:
            pred = ref
        elif kind == 3:
            pred = ' '.join(tokens[:rng.randrange(len(tokens) + 1)])
        elif kind == 4:
            pred = ' '.join(rng.sample(tokens, len(tokens)) + tokens[:3])
        else:
            pred = '' if k == 5 else rng.choice(reports) + ' ' + ref
        refs[f's{k}'], preds[f's{k}'] = ref, pred
    return refs, preds


def test_equals_pycocoevalcap_on_iu_xray_reports():
    pytest.importorskip('pycocoevalcap')
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    refs, preds = iu_pairs()
    ours = nlg.compute_nlg(refs, preds, with_meteor=False)
    gts = {k: [v] for k, v in refs.items()}
    res = {k: [v] for k, v in preds.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        assert ours[f'BLEU_{n + 1}'] == pytest.approx(bleu[n], abs=1e-6)
    assert ours['ROUGE_L'] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-6)
    assert ours['CIDEr'] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-6)
    assert 0.1 < ours['BLEU_4'] < 0.9  # a non-trivial test case


METEOR_PAIRS = {
    'a': ('the heart is normal in size . the lungs are clear .',
          'the heart size is normal . lungs are clear .'),
    'b': ('small left pleural effusion . no pneumothorax .',
          'no pleural effusion or pneumothorax .'),
    'c': ('mild cardiomegaly with pulmonary vascular congestion .',
          'the heart is enlarged . mild vascular congestion .'),
    'd': ('calcified granuloma in the right upper lobe .', ''),
    'e': ('no focal consolidation . degenerative changes of the spine .',
          'degenerative changes of the thoracic spine . no consolidation .'),
}


@pytest.mark.skipif(nlg.meteor_unavailable_reason() is not None,
                    reason=f'METEOR unavailable: {nlg.meteor_unavailable_reason()}')
def test_meteor_equals_pycocoevalcap_wrapper_also_per_group():
    # Pinned from pycocoevalcap 1.2's own Meteor wrapper on these pairs (one JVM here instead of
    # two keeps the suite fast; the live comparison on IU X-ray pairs gave equal values too).
    refs = {k: r for k, (r, _) in METEOR_PAIRS.items()}
    preds = {k: p for k, (_, p) in METEOR_PAIRS.items()}
    got = nlg.compute_nlg_groups(refs, preds, {'all': list(refs), 'ace': ['a', 'c', 'e']})
    assert got['all']['METEOR'] == pytest.approx(0.30311641572532694, abs=1e-9)
    assert got['ace']['METEOR'] == pytest.approx(0.3841993346726696, abs=1e-9)


def test_groups_are_scored_independently():
    refs, preds = {'a': 'x y z w', 'b': 'p q r s', 'c': 'x q'}, {'a': 'x y z', 'b': 'p', 'c': 'q'}
    got = nlg.compute_nlg_groups(refs, preds, {'ab': ['a', 'b'], 'c': ['c']}, with_meteor=False)
    assert got['ab'] == nlg.compute_nlg({k: refs[k] for k in 'ab'}, {k: preds[k] for k in 'ab'},
                                        with_meteor=False)
    assert got['c']['ROUGE_L'] == pytest.approx(nlg.rouge_l([['x', 'q']], [['q']]))
    with pytest.raises(ValueError, match='unknown'):
        nlg.compute_nlg_groups(refs, preds, {'bad': ['a', 'zz']}, with_meteor=False)


@pytest.mark.skipif(nlg.meteor_unavailable_reason() is not None, reason='METEOR unavailable')
def test_meteor_hang_is_killed_by_the_watchdog():
    with pytest.raises(nlg.MeteorUnavailable, match='timeout'):
        nlg.meteor([['a']], [['a']], timeout_s=0.5)  # the jar needs seconds to load
