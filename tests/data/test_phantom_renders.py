"""data.phantom.train_renders: K drawings of each phantom training study, drawing (epoch mod K)
shown in training, drawing 0 the prepared image, cached beside the prepared data."""

import pathlib

import ml_collections
import numpy as np
import pytest

from jima_jax.data import phantom, phantom_corpus, phantom_renders, pipeline, prepare
from tests.data.test_pipeline import _icfg, _split


def _all_batches(p, stream, epoch, steps):
    return list(p.train_batches(stream, epoch=epoch, num_steps=steps))


def test_training_shows_drawing_epoch_mod_k_and_evaluation_drawing_0():
    s = _split(n=8, size=8)
    rng = np.random.default_rng(1)
    drawings = np.concatenate([s.images[None], rng.integers(0, 256, (2,) + s.images.shape,
                                                            dtype=np.uint8)])
    # Stored size == model size and no flip: the batch holds the stored drawing as it is.
    icfg = _icfg(image_size=8, flip=False)
    p = pipeline.SplitPipeline(s, icfg, seed=3, train_images=drawings)
    stream = pipeline.StreamSpec(np.arange(8, dtype=np.int32), 0)
    for epoch in range(5):
        for batch in _all_batches(p, stream, epoch, 2):
            np.testing.assert_array_equal(batch['images'], drawings[epoch % 3][batch['index']])
    for batch in p.eval_batches():
        np.testing.assert_array_equal(batch['images'], s.images[batch['index']])
    # Everything but the images is what the pipeline without drawings gives.
    plain = pipeline.SplitPipeline(s, icfg, seed=3)
    for a, b in zip(_all_batches(p, stream, 1, 2), _all_batches(plain, stream, 1, 2)):
        for key in ('index', 'tokens', 'entities', 'abnormal', 'mask'):
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a['images'], b['images'])


def test_pipeline_refuses_drawings_of_another_shape():
    s = _split(n=8, size=8)
    with pytest.raises(ValueError, match=r'expected \[K, 8, 2, 8, 8\]'):
        pipeline.SplitPipeline(s, _icfg(), seed=0, train_images=np.zeros((2, 7, 2, 8, 8),
                                                                         np.uint8))


def _data_cfg(**kw):
    c = ml_collections.ConfigDict(dict(name='phantom', image_store='memory',
                                       phantom=dict(seed=0, train_renders=1)))
    for key, value in kw.items():
        if key == 'train_renders':
            c.phantom.train_renders = value
        else:
            c[key] = value
    return c


@pytest.mark.parametrize('value', [0, -1, True, 2.5, '3'])
def test_a_bad_count_names_the_key(value):
    c = _data_cfg()
    c.phantom = ml_collections.ConfigDict(dict(seed=0, train_renders=value))
    with pytest.raises(ValueError, match=r'data\.phantom\.train_renders=.*integer >= 1'):
        phantom_renders.num_renders(c)


def test_drawings_need_a_phantom_corpus_in_memory():
    assert phantom_renders.num_renders(_data_cfg(train_renders=4)) == 4
    assert phantom_renders.num_renders(_data_cfg(name='iu_xray')) == 1
    old = ml_collections.ConfigDict(dict(name='phantom', phantom=dict(seed=0)))  # predates the key
    assert phantom_renders.num_renders(old) == 1
    with pytest.raises(ValueError, match="data.name='iu_xray' has one fixed image"):
        phantom_renders.num_renders(_data_cfg(name='iu_xray', train_renders=2))
    with pytest.raises(ValueError, match="data.image_store='disk'"):
        phantom_renders.num_renders(_data_cfg(image_store='disk', train_renders=2))


def test_the_count_does_not_change_the_prepared_dataset():
    from configs import smoke
    a, b = smoke.get_config(), smoke.get_config()
    b.data.phantom.train_renders = 5
    assert prepare.prepared_dir(a.data) == prepare.prepared_dir(b.data)
    b.data.phantom.seed = 1
    assert prepare.prepared_dir(a.data) != prepare.prepared_dir(b.data)


def test_drawings_of_the_smoke_corpus_are_new_patients_with_the_same_findings(
        smoke_dataset, monkeypatch):
    from configs import smoke
    cfg = smoke.get_config()
    assert phantom_renders.train_images(cfg.data, smoke_dataset.splits['train']) is None
    cfg.data.phantom.train_renders = 3
    train = smoke_dataset.splits['train']
    cache = phantom_renders.cache_path(prepare.prepared_dir(cfg.data), 3)
    cache.unlink(missing_ok=True)
    got = phantom_renders.train_images(cfg.data, train)
    n, views, size = len(train), cfg.data.num_views, cfg.data.image_size
    assert got.shape == (3, n, views, size, size) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], train.images)
    # Every drawing is another image of its study ...
    for k in (1, 2):
        assert all(not np.array_equal(got[k, i], got[0, i]) for i in range(n))
    assert all(not np.array_equal(got[1, i], got[2, i]) for i in range(n))
    # ... drawn from the findings of the prepared study (its stored drawn truth): a normal study
    # stays normal, and drawing 1 of study 0 is the renderer's image of its findings.
    studies = {s.id: s for s in phantom_corpus.synthetic_studies(cfg.data) if s.split == 'train'}
    for i, sid in enumerate(train.ids):
        np.testing.assert_array_equal(
            phantom_corpus.truth_labels(studies[sid].meta['findings']), train.truth_labels[i])
    sid = str(train.ids[0])
    seed = phantom_corpus.study_seed(cfg.data.phantom.seed, f'{sid}#render1')
    findings = phantom.Findings(studies[sid].meta['findings'].items,
                                phantom.Patient.from_seed(seed))
    np.testing.assert_array_equal(
        got[1, 0], phantom.render_study(findings, seed=seed, size=size, views=views))
    # Cached: a second call draws nothing and gives the same array; no temporary file is left.
    assert cache.is_file()
    assert not [p for p in cache.parent.iterdir() if p.name.endswith('.tmp')]
    monkeypatch.setattr(phantom_renders, '_draw_extra',
                        lambda *a: pytest.fail('drew again instead of reading the cache'))
    np.testing.assert_array_equal(phantom_renders.train_images(cfg.data, train), got)


def test_a_cache_of_another_shape_is_drawn_again(smoke_dataset):
    from configs import smoke
    cfg = smoke.get_config()
    cfg.data.phantom.train_renders = 2
    train = smoke_dataset.splits['train']
    cache = phantom_renders.cache_path(prepare.prepared_dir(cfg.data), 2)
    pathlib.Path(cache).parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, np.zeros((1, 3, 1, 4, 4), np.uint8))
    got = phantom_renders.train_images(cfg.data, train)
    assert got.shape == (2,) + train.images.shape
    assert np.load(cache).shape == (1,) + train.images.shape


def test_training_pipeline_uses_the_drawings(smoke_dataset):
    from configs import smoke
    from jima_jax.train import inputs
    cfg = smoke.get_config()
    train = smoke_dataset.splits['train']
    assert inputs.training_pipeline(cfg, train).num_drawings == 1
    cfg.data.phantom.train_renders = 2
    p = inputs.training_pipeline(cfg, train)
    assert p.num_drawings == 2
    stream = pipeline.StreamSpec(np.arange(len(train), dtype=np.int32), 0)
    batch = next(p.train_batches(stream, epoch=1, num_steps=1))
    assert p._train_images is None  # the pipeline keeps the drawings once, as its tf constant
    plain = next(inputs.host_pipeline(train, cfg.input, cfg.seed).train_batches(
        stream, epoch=1, num_steps=1))
    np.testing.assert_array_equal(batch['index'], plain['index'])
    assert not np.array_equal(batch['images'], plain['images'])  # epoch 1 shows drawing 1
