"""prepare_dataset / load_prepared end to end on the real IU X-ray reports (reports-only)."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from jima_jax.data import prepare, sources
from jima_jax.text.symbols import NUM_OBSERVATIONS, UNK_ID
from jima_jax.text.tables import FrequencyTables
from jima_jax.text.tokenizer import Tokenizer


def data_config(tmp, **overrides):
    spec = importlib.util.spec_from_file_location('_jima_default',
                                                  sources.repo_root() / 'configs' / 'default.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config().data
    cfg.data_dir = str(tmp)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope='module')
def iu(tmp_path_factory):
    if not (sources.shared_data_dir() / 'iu_xray' / 'annotation.json').is_file():
        pytest.skip(f'shared data not found at {sources.shared_data_dir()} (set JIMA_SHARED_DATA)')
    cfg = data_config(tmp_path_factory.mktemp('prepared'), name='iu_xray', reports_only=True)
    return cfg, prepare.load_prepared(cfg)


def test_iu_xray_counts_vocabulary_and_labels(iu):
    cfg, ds = iu
    assert {s: len(v) for s, v in ds.splits.items()} == {'train': 2069, 'val': 296, 'test': 590}
    assert ds.vocab_size == 763
    train, test = ds.splits['train'], ds.splits['test']
    assert (train.images is None and train.tokens.shape == (2069, 60)
            and train.tokens.dtype == np.int32)
    assert train.entities.shape == (2069, 48) and train.labels.shape == (2069, NUM_OBSERVATIONS)
    # MeSH "normal": 33% of the R2Gen train split, 52% of its test split (spec section 2)
    assert int((train.abnormal == 0).sum()) == 682 and int((test.abnormal == 0).sum()) == 307
    assert (train.lengths <= 60).all() and (train.lengths == 60).sum() > 0  # some reports truncated
    i = int(np.argmax((train.lengths < 60) & (train.tokens != UNK_ID).all(axis=1)))
    assert ds.tokenizer.decode(train.tokens[i]) == train.reports[i]
    ents = train.entities[train.entities >= 0]
    assert ents.min() > UNK_ID and ents.max() < ds.vocab_size


def test_iu_xray_tables_summary(iu):
    _, ds = iu
    t = ds.tables
    assert t.tokenizer_fingerprint == ds.tokenizer.fingerprint
    assert t.num_examples == 2069 and t.abnormal_count == 1387
    assert t.token_counts.sum() == int(ds.splits['train'].lengths.sum()) + 2069
    s = t.summary()
    assert 'vocabulary size         763' in s and 'top 1/8 of vocabulary   95 ids cover 84.8%' in s
    assert 'normal share            33.0%' in s and 'rarest observations     Pneumothorax' in s


def test_prepare_is_idempotent_and_fingerprinted(iu):
    cfg, _ = iu
    path = prepare.prepare_dataset(cfg)
    stamp = (path / prepare.MANIFEST).stat().st_mtime_ns
    assert (prepare.prepare_dataset(cfg) == path
            and (path / prepare.MANIFEST).stat().st_mtime_ns == stamp)
    manifest = json.loads((path / prepare.MANIFEST).read_text())
    assert (manifest['splits'] == {'train': 2069, 'val': 296, 'test': 590}
            and manifest['vocab_size'] == 763)
    assert path.parent.name == 'iu_xray' and path.name == prepare.config_fingerprint(cfg)
    other = data_config(cfg.data_dir, name='iu_xray', reports_only=True, max_len=100)
    assert prepare.config_fingerprint(other) != prepare.config_fingerprint(cfg)
    # image keys do not matter in reports-only mode
    same = data_config(cfg.data_dir, name='iu_xray', reports_only=True, image_size=128)
    assert prepare.config_fingerprint(same) == prepare.config_fingerprint(cfg)
    assert not [p for p in path.parent.iterdir() if p.name.startswith('.tmp')]


def test_tokenizer_fingerprint_mismatch_is_an_error(iu, tmp_path):
    cfg, _ = iu
    copy_root = tmp_path / 'copy'
    src = prepare.prepared_dir(cfg)
    copied = data_config(copy_root, name='iu_xray', reports_only=True)
    shutil.copytree(src, prepare.prepared_dir(copied))
    Tokenizer.train(['another vocabulary entirely .'], min_count=1).save(
        prepare.prepared_dir(copied) / 'tokenizer.model')
    with pytest.raises(ValueError, match='built for tokenizer .* delete its directory and re-run'):
        prepare.load_prepared(copied)
    with pytest.raises(ValueError, match='tokenizer in use'):
        FrequencyTables.load(src / prepare.TABLES_STEM, tokenizer_fingerprint='0' * 64)


def test_data_root_precedence(monkeypatch, tmp_path):
    cfg = data_config('')
    monkeypatch.setenv('JIMA_DATA_DIR', str(tmp_path / 'env'))
    assert prepare.data_root(cfg) == tmp_path / 'env'
    cfg.data_dir = str(tmp_path / 'cfg')
    assert prepare.data_root(cfg) == tmp_path / 'cfg'
    monkeypatch.delenv('JIMA_DATA_DIR')
    cfg.data_dir = ''
    assert str(prepare.data_root(cfg)).endswith('.cache/jima_jax')
