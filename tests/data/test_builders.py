"""tfds builders and sources: a tiny in-test source with random images, real image decoding,
the IU X-ray R2Gen/OpenI layouts and MIMIC-CXR on miniature fixtures, bad input."""

import gzip
import importlib.util
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from jima_jax.data import openi, prepare, sources
from jima_jax.data.builders import builder_class, get_studies
from jima_jax.data.builders.base import fit_views, StudyBuilder
from jima_jax.data.builders.iu_xray import IuXray
from jima_jax.data.builders.mimic_cxr import MimicCxr
from jima_jax.data.types import RawStudy
from jima_jax.text import cleaning, entities


def data_config(tmp_path, **overrides):
    """configs/default.py's data section, pointed at tmp_path, with overrides (new keys allowed)."""
    spec = importlib.util.spec_from_file_location('_jima_default',
                                                  sources.repo_root() / 'configs' / 'default.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config().data
    with cfg.unlocked():
        cfg.data_dir = str(tmp_path / 'prepared')
        for k, v in overrides.items():
            setattr(cfg, k, v)
    return cfg


def shared(*parts):
    path = sources.shared_data_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f'shared data not found at {path} (set JIMA_SHARED_DATA)')
    return path


# ---------------------------------------------------------------------- views
def test_fit_views_count_and_size():
    a = np.full((30, 40), 10, np.uint8)
    b = np.full((25, 25), 200, np.uint8)
    out = fit_views([a], 2, 16)  # repeat the last
    assert out.shape == (2, 16, 16) and out.dtype == np.uint8 and (out == 10).all()
    out = fit_views([a, b, a], 2, 16)
    assert (out[0] == 10).all() and (out[1] == 200).all()  # keep the first two
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    small = fit_views([ramp], 1, 16)[0]
    assert small[0, 0] < small[0, 8] < small[0, 15]  # resized, not cropped
    with pytest.raises(ValueError, match='2-D uint8'):
        fit_views([np.zeros((4, 4, 3), np.uint8)], 1, 4)
    with pytest.raises(ValueError):
        fit_views([], 1, 4)


def test_read_grayscale_real_images_all_modes(tmp_path):
    jpeg = next(shared('real_cxr', 'covid_cxr_256', 'images').glob('*.jpg'))
    pngs = sorted(shared('real_cxr', 'nih_cxr14_64').rglob('*.png'))
    with Image.open(jpeg) as im:
        assert im.mode == 'L'
        want = np.asarray(im)
    np.testing.assert_array_equal(sources.read_grayscale(jpeg), want)
    by_mode = {}
    for p in pngs:
        with Image.open(p) as im:
            by_mode.setdefault(im.mode, p)
    assert {'RGB', 'RGBA'} <= set(by_mode)
    for mode, p in by_mode.items():
        g = sources.read_grayscale(p)
        assert g.dtype == np.uint8 and g.shape == (64, 64) and g.std() > 5, mode
    # derived modes: palette, gray+alpha, 16-bit, at an odd size
    base = Image.open(jpeg).convert('L').crop((0, 0, 201, 157))
    base.convert('P').save(tmp_path / 'p.png')
    base.convert('LA').save(tmp_path / 'la.png')
    Image.fromarray(np.asarray(base, np.uint16) * 257).save(tmp_path / 'i16.png')
    b = np.asarray(base, np.float64)
    stretched = (b - b.min()) * 255 / (b.max() - b.min())  # 16-bit: scaled by its own range
    for name, want in (('p.png', b), ('la.png', b), ('i16.png', stretched)):
        g = sources.read_grayscale(tmp_path / name)
        assert g.shape == (157, 201) and np.abs(g - want).mean() < 3, name


def test_read_grayscale_errors(tmp_path):
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='bad.png cannot be decoded'):
        sources.read_grayscale(tmp_path / 'bad.png')
    with pytest.raises(ValueError, match='none.png is missing'):
        sources.read_grayscale(tmp_path / 'none.png')


def test_builder_class_lookup():
    assert builder_class('iu_xray') is IuXray and builder_class('mimic_cxr') is MimicCxr
    with pytest.raises(ValueError, match='No builder'):
        builder_class('cifar10')


# ---------------------------------------------------------------------- tiny in-test source
REPORTS = ['The heart is normal. The lungs are clear.', 'Mild cardiomegaly. No pleural effusion.',
           'The lungs are clear. No pneumothorax.',
           'Small right pleural effusion. The heart is normal.',
           'The heart is normal. Calcified granuloma.']


def tiny_studies(rng, bad=None, empty=None):
    out = []
    for i, report in enumerate(REPORTS * 2):
        views = [rng.integers(0, 256, size=(20 + 3 * k + i, 30 - k), dtype=np.uint8)
                 for k in range(1 + i % 3)]
        load = (lambda v=views: v)
        if i == bad:
            def load(i=i):
                raise sources.BadStudyError(f'study s{i}: image file /x/s{i}.png '
                                            'cannot be decoded.')
        out.append(RawStudy(id=f's{i}', split='train' if i < 8 else 'test',
                            report='   ' if i == empty else report, load_views=load,
                            abnormal=1 if i == 0 else None, meta={'views': views}))
    return out


def make_builder(studies):
    class Tiny(StudyBuilder):
        name = 'tiny_source'

        def studies(self, dl_manager):
            return studies
    return Tiny


def test_tiny_source_round_trip(tmp_path):
    studies = tiny_studies(np.random.default_rng(0))
    cfg = data_config(tmp_path, name='tiny_source', num_views=2, image_size=16, min_count=1,
                      max_len=6)
    ds = prepare.load_prepared(cfg, builder_cls=make_builder(studies))
    train, val, test = ds.splits['train'], ds.splits['val'], ds.splits['test']
    assert (len(train), len(val), len(test)) == (8, 0, 2)
    assert val.images.shape == (0, 2, 16, 16) and val.tokens.shape == (0, 6)
    for split, offset in ((train, 0), (test, 8)):
        for i in range(len(split)):
            s = studies[offset + i]
            assert split.ids[i] == s.id
            np.testing.assert_array_equal(split.images[i], fit_views(s.meta['views'], 2, 16))
            clean = cleaning.clean_report(s.report)
            assert split.reports[i] == clean
            n = int(split.lengths[i])
            assert n == min(6, len(clean.split()))
            assert ds.tokenizer.decode(split.tokens[i, :n]) == ' '.join(clean.split()[:6])
            assert (split.tokens[i, n:] == 0).all()
            ents = [ds.tokenizer.id_to_token(e) for e in split.entities[i] if e >= 0]
            assert ents == list(entities.extract_entities(clean))
    # abnormal: the dataset value where given (s0 says 1 although its report is normal),
    # else the labeler
    np.testing.assert_array_equal(train.abnormal[:5], [1, 1, 0, 1, 1])
    assert train.labels.dtype == np.int8 and train.labels[1, 2] == 1  # Cardiomegaly
    assert ds.tables.num_examples == 8 and ds.tables.vocab_size == ds.vocab_size


def test_bad_image_is_an_error_naming_study_and_file(tmp_path):
    cfg = data_config(tmp_path, name='tiny_source', image_size=8, min_count=1)
    with pytest.raises(sources.BadStudyError,
                       match=r'study s3: image file /x/s3.png.*skip_bad_studies'):
        prepare.prepare_dataset(
            cfg, builder_cls=make_builder(tiny_studies(np.random.default_rng(0), bad=3)))
    # nothing half-written
    assert not [p for p in (tmp_path / 'prepared' / 'tiny_source').iterdir()]


def test_bad_studies_skipped_and_counted(tmp_path):
    cfg = data_config(tmp_path, name='tiny_source', image_size=8, min_count=1,
                      skip_bad_studies=True)
    builder = make_builder(tiny_studies(np.random.default_rng(0), bad=3, empty=5))
    path = prepare.prepare_dataset(cfg, builder_cls=builder)
    manifest = json.loads((path / prepare.MANIFEST).read_text())
    assert manifest['skipped'] == {'empty_report': ['s5'], 'bad_images': ['s3']}
    assert manifest['splits'] == {'train': 6, 'val': 0, 'test': 2}
    ds = prepare.load_prepared(cfg, builder_cls=builder)
    assert list(ds.splits['train'].ids) == ['s0', 's1', 's2', 's4', 's6', 's7']


def test_empty_report_is_an_error(tmp_path):
    cfg = data_config(tmp_path, name='tiny_source', reports_only=True, min_count=1)
    with pytest.raises(ValueError, match='study s2: empty or unreadable report'):
        prepare.prepare_dataset(
            cfg, builder_cls=make_builder(tiny_studies(np.random.default_rng(0), empty=2)))


# ---------------------------------------------------------------------- IU X-ray layouts
def _png(path, rng, shape=(40, 36)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path)


def test_iu_r2gen_layout_with_images_and_mesh(tmp_path):
    real = json.loads(shared('iu_xray', 'annotation.json').read_text())
    rng = np.random.default_rng(1)
    ann = {'train': real['train'][:4], 'val': real['val'][:1], 'test': real['test'][:1]}
    src = tmp_path / 'iu'
    for split in ann.values():
        for e in split:
            for p in e['image_path']:
                _png(src / 'images' / p, rng)
    (src / 'annotation.json').write_text(json.dumps(ann))
    cfg = data_config(tmp_path, name='iu_xray', source_dir=str(src), min_count=1, image_size=16,
                      manual_dir=str(shared('iu_xray', 'openi')))
    ds = prepare.load_prepared(cfg)
    assert [len(ds.splits[s]) for s in ('train', 'val', 'test')] == [4, 1, 1]
    assert ds.splits['train'].images.shape == (4, 2, 16, 16)
    first = ann['train'][0]
    np.testing.assert_array_equal(
        ds.splits['train'].images[0],
        fit_views([sources.read_grayscale(src / 'images' / p) for p in first['image_path']], 2, 16))
    by_study = {s.id: s.abnormal for s in get_studies(cfg)}
    assert set(by_study.values()) <= {0, 1}  # every study found in the OpenI XML
    np.testing.assert_array_equal(ds.splits['train'].abnormal,
                                  [by_study[e['id']] for e in ann['train']])
    missing = tmp_path / 'iu2'
    missing.mkdir()
    (missing / 'annotation.json').write_text(json.dumps(ann))
    with pytest.raises(FileNotFoundError, match='reports_only'):
        list(get_studies(data_config(tmp_path, name='iu_xray', source_dir=str(missing))))


XML = ('<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{n}"/>'
       '<MedlineCitation><Article>\n'
       '<Abstract><AbstractText Label="FINDINGS">{findings}</AbstractText>'
       '<AbstractText Label="IMPRESSION">{imp}\n'
       '</AbstractText></Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{images}'
       '</eCitation>')


def _openi_archive(path, docs):
    with tarfile.open(path, 'w:gz') as tar:
        for n, (findings, mesh, images) in enumerate(docs, 1):
            data = XML.format(n=n, findings=findings, imp='none',
                              mesh=''.join(f'<major>{m}</major>' for m in mesh),
                              images=''.join(f'<parentImage id="{i}"/>' for i in images)).encode()
            info = tarfile.TarInfo(f'ecgen-radiology/{n}.xml')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_openi_raw_layout(tmp_path):
    manual = tmp_path / 'openi'
    manual.mkdir()
    docs = [('The lungs are clear.', ['normal'], ['CXR1_IM-0001-1001', 'CXR1_IM-0001-2001']),
            ('Mild cardiomegaly.', ['Cardiomegaly/mild'], ['CXR2_IM-0002-1001']),
            ('', ['normal'], ['CXR3_IM-0003-1001']),  # no findings -> dropped
            ('Small effusion.', ['Pleural Effusion'], [])]  # no images -> dropped
    _openi_archive(manual / sources.OPENI_REPORTS, docs)
    rng = np.random.default_rng(2)
    for i in ('CXR1_IM-0001-1001', 'CXR1_IM-0001-2001', 'CXR2_IM-0002-1001'):
        _png(manual / sources.OPENI_PNG_DIR / f'{i}.png', rng)
    cfg = data_config(tmp_path, name='iu_xray', source_dir=str(tmp_path / 'no_r2gen'),
                      manual_dir=str(manual))
    studies = list(get_studies(cfg))
    assert [(s.id, s.abnormal, s.report) for s in studies] == [
        ('CXR1_IM-0001', 0, 'The lungs are clear.'), ('CXR2_IM-0002', 1, 'Mild cardiomegaly.')]
    assert all(s.split in ('train', 'val', 'test') for s in studies)
    assert [v.shape for v in studies[0].load_views()] == [(40, 36), (40, 36)]
    assert openi.mesh_observations(('Cardiomegaly/mild',))[2]


# ---------------------------------------------------------------------- MIMIC-CXR
def test_mimic_source(tmp_path):
    manual = tmp_path / 'mimic'
    rng = np.random.default_rng(3)
    entries = []
    for k, (sid, split) in enumerate([('50000001', 'train'), ('50000002', 'test')]):
        rel = f'p10/p1000000{k}/s{sid}/img{k}.jpg'
        (manual / 'files' / rel).parent.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (30, 20), np.uint8)).convert('RGB').save(
            manual / 'files' / rel)
        entries.append({'id': f'img{k}', 'study_id': int(sid), 'subject_id': 10000000 + k,
                        'report': 'No acute process.', 'image_path': [rel], 'split': split})
    (manual / 'annotation.json').write_text(json.dumps({'train': entries[:1], 'val': [],
                                                        'test': entries[1:]}))
    with gzip.open(manual / 'mimic-cxr-2.0.0-chexpert.csv.gz', 'wt') as f:
        f.write('subject_id,study_id,No Finding,Cardiomegaly\n'
                '10000000,50000001,1.0,\n10000001,50000002,,1.0\n')
    cfg = data_config(tmp_path, name='mimic_cxr', manual_dir=str(manual), num_views=1)
    studies = list(get_studies(cfg))
    assert [(s.id, s.split, s.abnormal) for s in studies] == [('img0', 'train', 0),
                                                              ('img1', 'test', 1)]
    assert studies[0].load_views()[0].shape == (30, 20)
    cfg = data_config(tmp_path, name='mimic_cxr', manual_dir=str(manual), abnormal_from='labeler')
    assert [s.abnormal for s in get_studies(cfg)] == [None, None]
    with pytest.raises(FileNotFoundError, match='credentialed'):
        list(get_studies(data_config(tmp_path, name='mimic_cxr', manual_dir=str(tmp_path))))


def test_unknown_source_name(tmp_path):
    with pytest.raises(ValueError, match='data.name'):
        get_studies(data_config(tmp_path, name='cifar10'))
