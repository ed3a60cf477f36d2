"""Phantom corpora: finding statistics, report grammar vs labeler, IU-phantom, determinism."""

import collections
import itertools
import json
import os
import pathlib
import re

import numpy as np
import pytest

from jima_jax.data import phantom, phantom_corpus
from jima_jax.text import cleaning, symbols
from configs import default
from jima_jax.data.phantom import Finding

try:
    from jima_jax.text import labeler
except ImportError:  # the labeler ships separately; its tests skip without it
    labeler = None
needs_labeler = pytest.mark.skipif(labeler is None, reason='jima_jax.text.labeler not available')

SHARED = pathlib.Path(os.environ.get('JIMA_SHARED_DATA')
                      or pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data')
IU_ANNOTATION = SHARED / 'iu_xray' / 'annotation.json'
CHEXPERT = symbols.OBSERVATIONS[1:]  # the 13 observations a report names


def _cfg(num_train=40, num_val=5, num_test=5, seed=0, **data):
    """The default data config with a small phantom corpus."""
    c = default.get_config().data
    c.update(dict(name='phantom', image_size=48, num_views=2, reports_only=False, source_dir=''))
    c.phantom.update(dict(num_train=num_train, num_val=num_val, num_test=num_test, seed=seed))
    c.update(data)
    return c


def _sample(n, seed=0):
    rng = np.random.default_rng(seed)
    return [phantom_corpus.sample_findings(rng) for _ in range(n)]


def test_findings_distribution_matches_the_configuration():
    n = 6000
    studies = _sample(n)
    normal = np.mean([not f.items for f in studies])
    q = phantom_corpus.NORMAL_SHARE
    assert abs(normal - q) < 4 * np.sqrt(q * (1 - q) / n)
    counts = collections.Counter(name for f in studies for name in f.names)
    for name, share in phantom_corpus.PREVALENCE.items():
        assert abs(counts[name] / n - share) < 4 * np.sqrt(share * (1 - share) / n) + 1e-3, name
    rare = sorted(phantom_corpus.PREVALENCE.values())[:3]
    assert max(rare) < 0.02  # the rarest findings are well under 2% of studies
    assert set(phantom_corpus.PREVALENCE) == set(phantom.FINDING_NAMES)


def test_conditional_rates_reproduce_the_prevalence_exactly():
    q = 0.4
    rates = phantom_corpus._conditional_rates(q)
    p = np.asarray(list(rates.values()))
    abnormal = 1.0 - np.prod(1.0 - p)
    for (name, rate), share in zip(rates.items(), phantom_corpus.PREVALENCE.values()):
        assert (1 - q) * rate / abnormal == pytest.approx(share, rel=1e-6), name
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match='normal_share'):
            phantom_corpus._conditional_rates(bad)


def test_synthetic_studies_are_deterministic_and_lazy():
    a = list(phantom_corpus.synthetic_studies(_cfg()))
    b = list(phantom_corpus.synthetic_studies(_cfg()))
    assert [s.split for s in a] == ['train'] * 40 + ['val'] * 5 + ['test'] * 5
    assert len({s.id for s in a}) == 50
    assert [s.report for s in a] == [s.report for s in b]
    assert all(s.abnormal == s.meta['findings'].abnormal for s in a)
    views = a[0].load_views()
    assert views.shape == (2, 48, 48) and views.dtype == np.uint8
    assert np.array_equal(views, b[0].load_views())
    other = list(phantom_corpus.synthetic_studies(_cfg(seed=1)))
    assert [s.report for s in other] != [s.report for s in a]
    reports_only = next(phantom_corpus.synthetic_studies(_cfg(reports_only=True)))
    assert reports_only.load_views is None and reports_only.report == a[0].report
    with pytest.raises(ValueError, match='num_views'):
        next(phantom_corpus.synthetic_studies(_cfg(num_views=3)))


# Independent of the grammar: how a reader recognises each finding in a sentence.
_KEYWORDS = {
    'Enlarged Cardiomediastinum': r'mediastin\w* (?:is |contour is )?(?:\w+ )?widen|widening',
    'Cardiomegaly': r'cardiomegaly|enlarge',
    'Lung Lesion': r'nodule|mass', 'Lung Opacity': r'opacity|airspace disease|infiltrate',
    'Edema': r'edema', 'Consolidation': r'consolidation', 'Pneumonia': r'pneumonia',
    'Atelectasis': r'atelectasis', 'Pneumothorax': r'pneumothorax', 'Pleural Effusion': r'effusion',
    'Pleural Other': r'pleural thickening', 'Fracture': r'fracture',
    'Support Devices': r'pacemaker|catheter|line|tube', 'calcified granuloma': r'granuloma',
    'degenerative spine': r'degenerative|spondylosis', 'hiatal hernia': r'hiatal hernia',
}
_BOTH = r'bilateral|both|bibasilar|biapical|apices|lingula'


def test_every_report_states_each_finding_with_its_side():
    for s in itertools.islice(phantom_corpus.synthetic_studies(_cfg(num_train=800)), 800):
        sentences = [t.strip().lower() for t in s.report.split('.') if t.strip()]
        for f in s.meta['findings'].items:
            hits = [t for t in sentences if re.search(_KEYWORDS[f.name], t)
                    and not t.startswith(('no ', 'there is no'))]
            assert hits, (f, s.report)
            if f.name == 'Edema' or f.kind in ('endotracheal tube', 'enteric tube'):
                continue  # always bilateral / midline: no side is stated
            side = {'bilateral': _BOTH, 'left': r'left|lingula'}.get(f.side, f.side)
            if side:
                assert any(re.search(rf'\b(?:{side})', t) for t in hits), (f, s.report)
        if not s.meta['findings'].items:
            assert not re.search(r'(?<!not )enlarged\.|widened|opacity in|mm|cm', s.report.lower())


def test_token_and_label_imbalance_exist():
    studies = list(phantom_corpus.synthetic_studies(_cfg(num_train=1500, num_val=0, num_test=0)))
    texts = [cleaning.clean_report(s.report).split() for s in studies]
    counts = sorted(collections.Counter(w for t in texts for w in t).values(), reverse=True)
    top = sum(counts[:max(1, len(counts) // 8)]) / sum(counts)
    assert 0.6 < top < 0.9  # the top 1/8 of the vocabulary carries most tokens (IU: ~79%)
    normal = [len(t) for t, s in zip(texts, studies) if not s.abnormal]
    abnormal = [len(t) for t, s in zip(texts, studies) if s.abnormal]
    assert np.mean(abnormal) > np.mean(normal) + 5  # abnormal reports are longer
    assert len(counts) > 150


@needs_labeler
def test_labeler_reads_back_the_generated_findings():
    for s in itertools.islice(phantom_corpus.synthetic_studies(_cfg(num_train=600)), 600):
        got, want = labeler.label_report(s.report), s.meta['findings'].labels()
        for i, name in enumerate(symbols.OBSERVATIONS):
            if name in CHEXPERT:
                assert (got[i] == symbols.LABEL_POSITIVE) == (want[i] == symbols.LABEL_POSITIVE), (
                    name, s.report)
        if not s.meta['findings'].items:
            assert got[0] == symbols.LABEL_POSITIVE, s.report


@needs_labeler
def test_every_template_and_attribute_is_labelled_positive():
    for name, attrs in phantom.ATTRIBUTES.items():
        for combo in itertools.product(*attrs.values()):
            f = Finding(name, **dict(zip(attrs, combo)))
            for seed in range(4):  # several draws reach every paraphrase
                text = phantom_corpus.finding_sentence(f, np.random.default_rng(seed))
                labels = labeler.label_report(text)
                if name in CHEXPERT:
                    assert labels[symbols.OBSERVATIONS.index(name)] == symbols.LABEL_POSITIVE, text
                    others = [o for o in CHEXPERT if o != name
                              and labels[symbols.OBSERVATIONS.index(o)] == symbols.LABEL_POSITIVE]
                    assert not others, (text, others)
                else:
                    assert labels[0] != symbols.LABEL_POSITIVE, text  # still abnormal


def test_finding_sentence_needs_every_attribute():
    with pytest.raises(ValueError, match='severity'):
        phantom_corpus.finding_sentence(Finding('Cardiomegaly'), np.random.default_rng(0))


@pytest.mark.parametrize('text, name, want', [
    ('a 2 cm mass in the right upper lobe', 'Lung Lesion',
     dict(side='right', zone='upper', kind='mass', severity='mild')),
    ('small left pleural effusion', 'Pleural Effusion', dict(side='left', severity='mild')),
    ('large bilateral pleural effusions', 'Pleural Effusion',
     dict(side='bilateral', severity='severe')),
    ('healed fracture of the left 7th rib', 'Fracture', dict(side='left', kind='healed', rib=7)),
    ('displaced fracture of the right clavicle', 'Fracture',
     dict(side='right', kind='acute', rib=0)),
    ('left chest wall pacemaker', 'Support Devices', dict(side='left', kind='pacemaker')),
    ('bibasilar atelectasis', 'Atelectasis', dict(side='bilateral', zone='lower', severity='')),
    ('calcified granuloma in the lingula', 'calcified granuloma', dict(side='left', zone='middle')),
])
def test_attributes_from_text(text, name, want):
    f = phantom_corpus.attributes_from_text(name, text)
    assert {k: getattr(f, k) for k in want} == want
    assert (phantom_corpus.attributes_from_text('Atelectasis', 'atelectasis', True).severity
            == 'mild')


def _annotation(tmp_path, entries):
    path = tmp_path / 'annotation.json'
    path.write_text(json.dumps(entries))
    return path


@needs_labeler
def test_iu_phantom_from_a_given_annotation(tmp_path):
    _annotation(tmp_path, {
        'train': [{'id': 'a1', 'report': 'Small left pleural effusion. Mild cardiomegaly.',
                   'image_path': []},
                  {'id': 'a2', 'report': 'No acute disease. The lungs are clear.'}],
        'val': [{'id': 'b1', 'report': 'A large hiatal hernia. No pneumothorax.'}], 'test': []})
    cfg = _cfg(source_dir=str(tmp_path), name='iu_phantom')
    studies = list(phantom_corpus.iu_phantom_studies(cfg))
    assert [(s.id, s.split, s.abnormal) for s in studies] == [
        ('a1', 'train', 1), ('a2', 'train', 0), ('b1', 'val', 1)]
    first = studies[0].meta['findings']
    assert first.get('Pleural Effusion') == Finding('Pleural Effusion', side='left',
                                                    severity='mild')
    assert first.get('Cardiomegaly') == Finding('Cardiomegaly', severity='mild')
    assert studies[2].meta['findings'].names == ('hiatal hernia',)
    assert studies[0].report == 'Small left pleural effusion. Mild cardiomegaly.'
    views = studies[0].load_views()
    again = list(phantom_corpus.iu_phantom_studies(cfg))[0].load_views()
    assert views.shape == (2, 48, 48) and np.array_equal(views, again)  # deterministic per id
    assert not np.array_equal(views, studies[1].load_views())


def test_iu_phantom_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match='annotation.json'):
        next(phantom_corpus.iu_phantom_studies(_cfg(source_dir=str(tmp_path / 'nowhere'))))
    (tmp_path / 'annotation.json').write_text('{"train": [')
    with pytest.raises(ValueError, match='not valid JSON'):
        next(phantom_corpus.iu_phantom_studies(_cfg(source_dir=str(tmp_path))))
    _annotation(tmp_path, {'train': [{'id': 'x'}]})
    with pytest.raises(ValueError, match=r'train\[0\]'):
        next(phantom_corpus.iu_phantom_studies(_cfg(source_dir=str(tmp_path))))


@needs_labeler
@pytest.mark.skipif(not IU_ANNOTATION.is_file(),
                    reason=f'shared IU X-ray data missing ({IU_ANNOTATION})')
def test_iu_phantom_on_the_shared_reports(monkeypatch):
    monkeypatch.setenv('JIMA_SHARED_DATA', str(SHARED))
    studies = list(itertools.islice(phantom_corpus.iu_phantom_studies(_cfg(name='iu_phantom')),
                                    300))
    by_id = {s.id: s for s in studies}
    hernia = by_id['CXR2384_IM-0942'].meta['findings']  # "A large hiatal hernia ... Degenerative"
    assert hernia.get('hiatal hernia').severity == 'severe' and hernia.get('degenerative spine')
    assert 0.3 < np.mean([s.abnormal for s in studies]) < 0.7
    assert all(s.abnormal == s.meta['findings'].abnormal for s in studies)
