"""The phantom tfds builder prepares the synthetic corpus like any real dataset."""

import importlib.util
import pathlib

import numpy as np
import pytest

from jima_jax.data import builders, phantom, phantom_corpus

tfds = pytest.importorskip('tensorflow_datasets')


def _default_data_config():
    """configs/default.py's data section (loaded by path: configs/ is not an installed package)."""
    path = pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'default.py'
    spec = importlib.util.spec_from_file_location('jima_default_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().data


def test_phantom_builder_prepares_the_synthetic_corpus(tmp_path):
    cfg = _default_data_config()
    cfg.name = 'phantom'
    cfg.image_size = 40
    cfg.min_count = 1
    cfg.max_len = 40
    cfg.phantom.num_train, cfg.phantom.num_val, cfg.phantom.num_test = 12, 3, 0
    builder = builders.builder_class('phantom')(data_cfg=cfg, data_dir=str(tmp_path / 'tfds'),
                                                extras_dir=str(tmp_path))
    builder.download_and_prepare()
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
        'train': 12, 'val': 3}
    studies = [s for s in phantom_corpus.synthetic_studies(cfg) if s.split == 'train']
    rows = list(tfds.as_numpy(builder.as_dataset(split='train')))
    assert [r['id'].decode() for r in rows] == [s.id for s in studies]
    for row, study in zip(rows, studies):
        assert row['abnormal'] == study.abnormal
        assert np.array_equal(row['images'], phantom.render_study(
            study.meta['findings'], seed=phantom_corpus.study_seed(0, study.id), size=40))
    assert builders.builder_class('iu_phantom').name == 'iu_phantom'
