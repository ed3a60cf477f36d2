"""The tf.data pipeline: exact, resumable order; deterministic augmentation; eval padding."""

import numpy as np
import ml_collections
import pytest

from jima_jax.data import pipeline
from jima_jax.data.types import PreparedSplit
from jima_jax.text.symbols import BOS_ID, EOS_ID, NUM_OBSERVATIONS, PAD_ID


def _split(n=10, views=2, size=12):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 6, n).astype(np.int32)
    tokens = np.zeros((n, 6), np.int32)
    for i, k in enumerate(lengths):
        tokens[i, :k] = rng.integers(4, 30, k)
    return PreparedSplit(
        ids=np.array([f's{i}' for i in range(n)]), reports=np.array(['r'] * n),
        images=rng.integers(0, 256, (n, views, size, size), dtype=np.uint8), tokens=tokens,
        lengths=lengths, entities=rng.integers(-1, 30, (n, 3)).astype(np.int32),
        abnormal=(np.arange(n) % 3 == 0).astype(np.int8),
        labels=np.full((n, NUM_OBSERVATIONS), -2, np.int8))


def _icfg(**kw):
    c = ml_collections.ConfigDict(dict(batch_size=4, eval_batch_size=4, image_size=8,
                                       augment=True, flip=True, prefetch=2))
    c.update(kw)
    return c


def test_decoder_tokens_wrap_the_report_in_bos_and_eos():
    s = _split()
    t = pipeline.decoder_tokens(s)
    assert t.shape == (10, 8)
    for i in range(10):
        n = s.lengths[i]
        assert t[i, 0] == BOS_ID and t[i, n + 1] == EOS_ID
        np.testing.assert_array_equal(t[i, 1:n + 1], s.tokens[i, :n])
        assert (t[i, n + 2:] == PAD_ID).all()


def test_epoch_order_is_a_reshuffled_permutation_per_pass():
    kept = np.arange(5)
    order = pipeline.epoch_order(kept, 12, seed=0, stream=0, epoch=3)
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:10]) == list(range(5))
    np.testing.assert_array_equal(order, pipeline.epoch_order(kept, 12, seed=0, stream=0,
                                                              epoch=3))
    assert not np.array_equal(order, pipeline.epoch_order(kept, 12, seed=0, stream=1, epoch=3))
    assert not np.array_equal(order, pipeline.epoch_order(kept, 12, seed=0, stream=0, epoch=4))
    with pytest.raises(ValueError, match='empty kept set'):
        pipeline.epoch_order(np.zeros(0, int), 4, seed=0, stream=0, epoch=0)


def test_resuming_mid_epoch_gives_the_same_remaining_batches():
    p = pipeline.SplitPipeline(_split(), _icfg(), seed=7)
    stream = pipeline.StreamSpec(np.arange(10, dtype=np.int32), 0)
    full = list(p.train_batches(stream, epoch=2, num_steps=2))
    tail = list(p.train_batches(stream, epoch=2, num_steps=2, start_step=1))
    assert len(full) == 2 and len(tail) == 1
    for key in full[1]:
        np.testing.assert_array_equal(full[1][key], tail[0][key])  # augmentation included
    again = list(pipeline.SplitPipeline(_split(), _icfg(), seed=7).train_batches(
        stream, epoch=2, num_steps=2))
    np.testing.assert_array_equal(full[0]['images'], again[0]['images'])


def test_training_batches_are_crops_of_the_stored_views():
    s = _split()
    p = pipeline.SplitPipeline(s, _icfg(flip=False), seed=0)
    batch = next(p.train_batches(pipeline.StreamSpec(np.arange(10, dtype=np.int32), 0),
                                 epoch=0, num_steps=1))
    assert batch['images'].shape == (4, 2, 8, 8) and batch['images'].dtype == np.uint8
    for b, i in enumerate(batch['index']):
        for v in range(2):
            crop = batch['images'][b, v]
            full = s.images[i, v]
            found = any(np.array_equal(full[y:y + 8, x:x + 8], crop)
                        for y in range(5) for x in range(5))
            assert found
    np.testing.assert_array_equal(batch['abnormal'], s.abnormal[batch['index']])
    np.testing.assert_array_equal(batch['entities'], s.entities[batch['index']])


def test_eval_batches_cover_every_example_once_and_pad_the_last():
    s = _split()
    p = pipeline.SplitPipeline(s, _icfg(eval_batch_size=4), seed=0)
    batches = list(p.eval_batches())
    assert len(batches) == 3
    mask = np.concatenate([b['mask'] for b in batches])
    index = np.concatenate([b['index'] for b in batches])
    assert mask.sum() == 10 and (mask[10:] == 0).all()
    np.testing.assert_array_equal(index[:10], np.arange(10))
    # eval resizes (no random crop): the whole view at the model size
    assert batches[0]['images'].shape == (4, 2, 8, 8)


def test_each_process_gets_its_own_slice_of_the_global_batch():
    stream = pipeline.StreamSpec(np.arange(10, dtype=np.int32), 0)
    whole = next(pipeline.SplitPipeline(_split(), _icfg(), seed=1).train_batches(
        stream, epoch=0, num_steps=1))
    parts = [next(pipeline.SplitPipeline(_split(), _icfg(), seed=1, process_index=k,
                                         process_count=2).train_batches(stream, epoch=0,
                                                                        num_steps=1))
             for k in range(2)]
    np.testing.assert_array_equal(np.concatenate([p['index'] for p in parts]), whole['index'])
    np.testing.assert_array_equal(np.concatenate([p['images'] for p in parts]), whole['images'])


def test_reports_only_split_is_refused_with_the_fix():
    s = _split()
    s.images = None
    with pytest.raises(ValueError, match='reports_only'):
        pipeline.SplitPipeline(s, _icfg(), seed=0)



def test_pipelines_do_not_autotune():
    """tf.data's autotuner made every epoch end of training wait 16-20 s (the demo on 2 CPU
    cores, 2026-12-07: about a fifth of its training time): the loop drops an epoch's iterator
    after its last batch, and that waited for the tuner's thread, whose sleep doubles while an
    epoch runs. It does not show outside a training run (nothing here could time it), so this
    checks the setting that removed it, on both kinds of pipeline."""
    p = pipeline.SplitPipeline(_split(), _icfg(), seed=0)
    order = np.arange(8, dtype=np.int32).reshape(2, 4)
    for train in (True, False):
        options = p._dataset(order, np.ones(order.shape, np.float32), train=train,
                             epoch=0).options()
        assert options.autotune.enabled is False
        assert options.threading.private_threadpool_size == pipeline._THREADS
