"""Difficulty measurers: rank as a count vs a full sort, hand-computed k1/k2, the sharded pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import smoke
from jima_jax.data import pipeline as pipeline_lib
from jima_jax.data.types import PreparedSplit
from jima_jax.model import jima
from jima_jax.runtime import parallel
from jima_jax.text.symbols import EOS_ID, PAD_ID
from jima_jax.train import difficulty, step as step_lib
from tests.helpers import run_python

VOCAB = 40
MAX_LEN = 10


def sort_rank(scores: np.ndarray, ref: float) -> int:
    """Brute force: 1 + the position of the first entry equal to `ref` in the descending sort."""
    ordered = np.sort(scores)[::-1]
    return int(np.flatnonzero(ordered == ref)[0]) + 1


def brute_force(ent_logits, rep_logits, targets, entities) -> dict:
    """k1 / k2 with Python loops and sorts, straight from the spec's definitions."""
    vocab = ent_logits.shape[-1]
    out = {k: [] for k in ('k1', 'k2_all', 'k2_balanced', 'has_entities')}
    for b in range(len(ent_logits)):
        ents = [int(e) for e in entities[b] if e >= 0]
        k1 = [sort_rank(ent_logits[b], ent_logits[b, e]) / vocab for e in ents]
        out['k1'].append(np.mean(k1) if k1 else 0.0)
        out['has_entities'].append(bool(ents))
        ent_k, non_k = [], []
        for i, z in enumerate(targets[b]):
            if z in (PAD_ID, EOS_ID):
                continue
            k = sort_rank(rep_logits[b, i], rep_logits[b, i, z]) / vocab
            (ent_k if int(z) in ents else non_k).append(k)
        out['k2_all'].append(np.mean(ent_k + non_k) if ent_k + non_k else 0.0)
        means = [np.mean(g) for g in (ent_k, non_k) if g]
        out['k2_balanced'].append(np.mean(means) if means else 0.0)
    return {k: np.asarray(v) for k, v in out.items()}


def test_rank_is_the_count_of_strictly_larger_scores_ties_included():
    rng = np.random.default_rng(0)
    scores = rng.integers(-3, 4, size=(6, 9, 25)).astype(np.float32)  # many ties
    pick = rng.integers(0, 25, size=(6, 9))
    ref = np.take_along_axis(scores, pick[..., None], -1)[..., 0]
    got = np.asarray(difficulty.reference_rank(jnp.asarray(scores), jnp.asarray(ref)))
    want = np.vectorize(lambda b, i: sort_rank(scores[b, i], ref[b, i]))(
        *np.indices(ref.shape))
    np.testing.assert_array_equal(got, want)
    assert got.min() == 1 and (got == 1).any() and got.max() <= 25


def test_difficulties_by_hand():
    ent = np.array([[0.1, 0.5, 0.5, 0.2, 0.9, 0.5, 0.2, 0.0], [0.0] * 8], np.float32)
    # Example 0, entities {5, 6}: ranks 2 (only 0.9 is larger) and 5 (the tied 0.2 does not
    # count) -> k1 = (2 + 5) / 2 / 8. Example 1 has none -> k1 = 0.
    entities = np.array([[5, 6, -1], [-1, -1, -1]], np.int32)
    rep = np.zeros((2, 4, 8), np.float32)
    rep[0, 0] = [0, 0, 0, 0, 0, 9, 1, 0]  # target 5 (entity): rank 1
    rep[0, 1] = [0, 3, 2, 1, 5, 0, 4, 0]  # target 4 (not an entity): rank 1
    rep[0, 2] = [0, 3, 2, 1, 5, 0, 4, 6]  # target 6 (entity): 5 and 6 are larger -> rank 3
    rep[0, 3] = [9, 9, 9, 9, 9, 9, 9, 9]  # target EOS: ignored
    rep[1, 0] = [1, 1, 1, 1, 1, 1, 1, 1]  # target 4: all tied -> rank 1
    rep[1, 1] = [7, 6, 5, 4, 3, 2, 1, 0]  # target 7: rank 8
    targets = np.array([[5, 4, 6, EOS_ID], [4, 7, EOS_ID, PAD_ID]], np.int32)
    got = jax.tree.map(np.asarray, difficulty.example_difficulty(
        jnp.asarray(ent), jnp.asarray(rep), jnp.asarray(targets), jnp.asarray(entities)))
    np.testing.assert_allclose(got['k1'], [7 / 16, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(got['has_entities'], [True, False])
    # all tokens: (1 + 1 + 3) / 3 / 8; balanced: mean(entity (1 + 3) / 2 / 8, non-entity 1 / 8)
    np.testing.assert_allclose(got['k2_all'], [5 / 24, 9 / 16], rtol=1e-6)
    np.testing.assert_allclose(got['k2_balanced'], [0.1875, 9 / 16], rtol=1e-6)


def test_difficulties_match_a_brute_force_sort_on_random_logits():
    rng = np.random.default_rng(1)
    b, length, vocab = 7, 9, 30
    ent = rng.normal(size=(b, vocab)).round(1).astype(np.float32)  # rounding makes ties
    rep = rng.normal(size=(b, length, vocab)).round(1).astype(np.float32)
    targets = rng.integers(3, vocab, size=(b, length)).astype(np.int32)
    targets[0, 4:] = PAD_ID
    targets[0, 3] = EOS_ID
    targets[1, :] = PAD_ID  # an empty report
    entities = np.full((b, 5), -1, np.int32)
    for i in range(2, b):  # entities drawn partly from the report's own tokens
        entities[i, :3] = np.unique(np.r_[targets[i, :2], rng.integers(3, vocab, 1)])[:3]
    entities[3, :] = targets[3, :5]  # a report that is nearly all entity tokens
    got = jax.tree.map(np.asarray, difficulty.example_difficulty(
        jnp.asarray(ent), jnp.asarray(rep), jnp.asarray(targets), jnp.asarray(entities)))
    want = brute_force(ent, rep, targets, entities)
    for key in ('k1', 'k2_all', 'k2_balanced'):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(got['has_entities'], want['has_entities'])


def synthetic_split(n: int, *, seed: int = 0, image: int = 32) -> PreparedSplit:
    """A PreparedSplit of random studies (entity-less and empty reports included)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, MAX_LEN + 1, n).astype(np.int32)
    lengths[0] = 0
    tokens = np.zeros((n, MAX_LEN), np.int32)
    entities = np.full((n, 4), -1, np.int32)
    for i, length in enumerate(lengths):
        tokens[i, :length] = rng.integers(4, VOCAB, length)
        if i % 3 and length:
            chosen = np.unique(tokens[i, :length])[:3]
            entities[i, :len(chosen)] = chosen
    yy, xx = np.mgrid[0:image, 0:image] / image
    a = rng.normal(size=(n, 2, 3, 1, 1))
    images = 128 + 60 * np.sin(4 * xx * a[:, :, 0] + a[:, :, 1]) * np.cos(3 * yy * a[:, :, 2])
    return PreparedSplit(
        ids=np.array([f's{i:03d}' for i in range(n)]), reports=np.array(['x'] * n),
        images=images.astype(np.uint8), tokens=tokens, lengths=lengths, entities=entities,
        abnormal=(np.arange(n) % 2).astype(np.int8), labels=np.zeros((n, 14), np.int8))


@functools.lru_cache(maxsize=None)
def tiny_model():
    c = smoke.get_config()
    c.data.max_len = MAX_LEN
    c.input.eval_batch_size = 8
    model = jima.JIMA(c.model, vocab_size=VOCAB, num_views=2, max_len=MAX_LEN + 1,
                      rngs=nnx.Rngs(0))
    modeldef, params, stats = step_lib.split_model(model)
    return c, modeldef, params, stats


def score_on_mesh(devices: int, n: int = 21) -> difficulty.Difficulty:
    """score_split over `n` synthetic studies on a mesh of the first `devices` devices."""
    c, modeldef, params, stats = tiny_model()
    mesh = parallel.make_mesh(c.parallel, jax.devices()[:devices])
    state_sharding = parallel.state_shardings(mesh, {'params': params, 'batch_stats': stats},
                                              c.parallel)

    class Shardings:  # what jit_score_step reads from a TrainState sharding
        params = state_sharding['params']
        batch_stats = state_sharding['batch_stats']

    fn = difficulty.jit_score_step(difficulty.build_score_step(modeldef, c.model, c.input),
                                   mesh, Shardings)
    return difficulty.score_split(fn, params, stats, synthetic_split(n), c.input, seed=0,
                                  mesh=mesh)


def test_score_split_equals_the_definition_on_the_model_forward():
    c, modeldef, params, stats = tiny_model()
    split = synthetic_split(13)  # 13 = one full and one padded batch of 8
    got = score_on_mesh(1, 13)
    tokens = pipeline_lib.decoder_tokens(split)

    @jax.jit
    def forward(images, tokens_in):  # the whole split at once, unsharded
        model = modeldef.merge(params, stats)
        x = jima.normalize_images(images, c.input.mean, c.input.std, 3)
        patches, pooled = model.features(x, train=False)
        ent = model.entity_logits(patches, pooled)
        return ent, model.report(patches, jax.nn.sigmoid(ent), tokens_in, None)

    ent, rep = forward(jnp.asarray(split.images), jnp.asarray(tokens[:, :-1]))
    want = brute_force(np.asarray(ent), np.asarray(rep), tokens[:, 1:], split.entities)
    for key in ('k1', 'k2_all', 'k2_balanced'):
        np.testing.assert_allclose(getattr(got, key), want[key], rtol=1e-5, err_msg=key)
    np.testing.assert_array_equal(got.has_entities, want['has_entities'])
    assert got.k2_all[0] == 0.0 and not got.has_entities[0]  # the empty report
    assert list(got.by_id()) == list(split.ids)
    again = score_on_mesh(1, 13)  # eval mode: no dropout, no augmentation -> deterministic
    np.testing.assert_array_equal(again.k2_all, got.k2_all)
    with pytest.raises(ValueError, match='k2_mode'):
        got.k2('entity')


def test_one_and_eight_devices_give_identical_scores():
    code = (
        'import json, numpy as np\n'
        'from tests.train.test_difficulty import score_on_mesh\n'
        'a, b = score_on_mesh(1), score_on_mesh(8)\n'
        'print(json.dumps({k: [getattr(a, k).tolist(), getattr(b, k).tolist()]\n'
        '                  for k in ("k1", "k2_all", "k2_balanced", "has_entities")}))\n')
    out = run_python(code, devices=8, timeout=300)
    for key, (one, eight) in out.items():
        assert one == eight, key
    assert len(out['k1'][0]) == 21 and any(out['has_entities'][0])
