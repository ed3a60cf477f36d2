"""Greedy and beam search: exactness against brute force, EOS/PAD/BOS rules, trigram blocking,
KV-cache decoding vs full recomputation, and 1 vs 8 devices on the smoke JIMA model."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import smoke
from jima_jax import decode
from jima_jax.model import transformer
from jima_jax.train import step as step_lib

# Persistent compilation cache (also inherited by the subprocess): reruns skip most compiles.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '/tmp/jax_cache')
if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])

REPO = pathlib.Path(__file__).resolve().parents[1]
PAD, BOS, EOS = 0, 1, 2
IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def repeats_trigram(seq, tok):
    """Would appending `tok` to `seq` repeat a trigram already in `seq`?"""
    if len(seq) < 2:
        return False
    grams = {tuple(seq[i:i + 3]) for i in range(len(seq) - 2)}
    return (seq[-2], seq[-1], tok) in grams


def strip(row):
    """Generated ids up to and including the first EOS."""
    row = list(map(int, row))
    return row[:row.index(EOS) + 1] if EOS in row else row


# ----------------------------------------------------------------- prefix-hash step function
# The logits depend on the whole prefix (a base-V hash carried in the cache) and on the study, so
# a beam that is reordered without its cache, or mixed up with another study, scores wrongly.
V_SMALL, L_SMALL, B_SMALL = 6, 5, 2


def prefix_table(seed=0, repetitive=False):
    """Random logits; `repetitive` favours token 3 so that the unblocked optimum repeats a
    trigram (3 3 3 ...)."""
    rng = np.random.default_rng(seed)
    table = 2 * rng.normal(size=(B_SMALL, V_SMALL ** L_SMALL, V_SMALL))
    if repetitive:
        table[..., 3] += 6.0
    return table.astype(np.float32)


def prefix_step(table):
    t = jnp.asarray(table)

    def step(tokens, cache):
        h = cache['h'] * V_SMALL + tokens
        return t[cache['study'], h], {'index': cache['index'] + 1, 'h': h,
                                      'study': cache['study']}

    return step


def prefix_cache():
    return {'index': jnp.zeros((), jnp.int32), 'h': jnp.zeros(B_SMALL, jnp.int32),
            'study': jnp.arange(B_SMALL)}


def prefix_score(table, study, seq, alpha):
    """Length-penalised score of one generated sequence under the prefix-hash model."""
    h, prev, total = 0, BOS, 0.0
    for tok in seq:
        h = h * V_SMALL + prev
        total += log_softmax(table[study, h])[tok]
        prev = tok
    return total / len(seq) ** alpha


def brute_force(table, study, alpha, block_trigrams):
    """Best (score, sequence) over every sequence the search may return."""
    best = (-np.inf, None)
    stack = [[]]
    while stack:
        seq = stack.pop()
        for tok in (EOS, 3, 4, 5):
            if block_trigrams and repeats_trigram(seq, tok):
                continue
            new = seq + [tok]
            if tok == EOS or len(new) == L_SMALL:
                score = prefix_score(table, study, new, alpha)
                best = max(best, (score, new), key=lambda x: x[0])
            else:
                stack.append(new)
    return best


def run_beam(step, cache, batch, beam, **kw):
    fn = jax.jit(lambda c: decode.beam_search(step, c, batch, beam_size=beam, **IDS, **kw))
    return jax.tree.map(np.asarray, fn(cache))


def run_greedy(step, cache, batch, **kw):
    fn = jax.jit(lambda c: decode.greedy_search(step, c, batch, **IDS, **kw))
    return jax.tree.map(np.asarray, fn(cache))


@pytest.mark.parametrize('alpha,block', [(0.0, False), (1.0, False), (0.0, True), (0.7, True)])
def test_exhaustive_beam_finds_brute_force_optimum(alpha, block):
    # 364 distinct sequences (incl. EOS-terminated) fit in 512 beams: the search is exhaustive.
    table = prefix_table(repetitive=block)
    out = run_beam(prefix_step(table), prefix_cache(), B_SMALL, 512, max_len=L_SMALL,
                   length_penalty=alpha, block_trigrams=block, vocab_size=V_SMALL)
    for s in range(B_SMALL):
        score, seq = brute_force(table, s, alpha, block)
        assert strip(out['tokens'][s]) == seq
        np.testing.assert_allclose(out['scores'][s], score, rtol=1e-5)
        np.testing.assert_allclose(out['logprobs'][s].sum(),
                                   score * len(seq) ** alpha, rtol=1e-5)


def test_brute_force_cases_are_not_trivial():
    # Guards the test above against tables on which alpha or blocking would change nothing.
    table = prefix_table()
    assert brute_force(table, 0, 0.0, False)[1] != brute_force(table, 0, 1.0, False)[1]
    table = prefix_table(repetitive=True)
    for s in range(B_SMALL):
        assert has_repeated_trigram(brute_force(table, s, 0.0, False)[1])
        assert not has_repeated_trigram(brute_force(table, s, 0.0, True)[1])


@pytest.mark.parametrize('beam', [2, 3])
def test_small_beam_scores_its_own_sequence(beam):
    table = prefix_table(seed=1)
    out = run_beam(prefix_step(table), prefix_cache(), B_SMALL, beam, max_len=L_SMALL,
                   length_penalty=0.5, vocab_size=V_SMALL)
    for s in range(B_SMALL):
        seq = strip(out['tokens'][s])
        np.testing.assert_allclose(out['scores'][s], prefix_score(table, s, seq, 0.5), rtol=1e-5)
        assert out['scores'][s] <= brute_force(table, s, 0.5, False)[0] + 1e-5


def test_cache_given_per_beam_equals_per_study():
    # A cache already expanded to B*K study-major rows gives the same search as a per-study one.
    table, k = prefix_table(seed=1), 3
    per_beam = {'index': jnp.zeros((), jnp.int32), 'h': jnp.zeros(B_SMALL * k, jnp.int32),
                'study': jnp.repeat(jnp.arange(B_SMALL), k)}
    kw = dict(max_len=L_SMALL, vocab_size=V_SMALL)
    a = run_beam(prefix_step(table), prefix_cache(), B_SMALL, k, **kw)
    b = run_beam(prefix_step(table), per_beam, B_SMALL, k, **kw)
    np.testing.assert_array_equal(a['tokens'], b['tokens'])
    np.testing.assert_array_equal(a['scores'], b['scores'])


# --------------------------------------------- plain-Python reference on random toy models
# Each study is its own random language model: logits = table[study, hash of the whole prefix].
V_REF, M_REF, L_REF, N_REF = 8, 1031, 10, 50


def hash_table(seed=8):
    """N_REF random models; per-study EOS offsets make some end early and some never."""
    rng = np.random.default_rng(seed)
    table = 2 * rng.normal(size=(N_REF, M_REF, V_REF))
    table[..., EOS] += rng.uniform(-6.0, 2.0, size=(N_REF, 1))
    return table.astype(np.float32)


def hash_step(table):
    t = jnp.asarray(table)

    def step(tokens, cache):
        h = (cache['h'] * V_REF + tokens) % M_REF
        return t[cache['study'], h], {**cache, 'h': h}

    return step


def hash_logits(table, study, seq):
    h = 0
    for tok in [BOS] + seq:
        h = (h * V_REF + tok) % M_REF
    return table[study, h]


def reference_beam(table, study, k, alpha, block):
    """R2Gen's beam search, written plainly: each position takes the k best extensions of the
    live hypotheses (raw sums, ties to the lower beam then token, as lax.top_k); those ending in
    EOS are set aside, the rest stay live; at L_REF the live ones finish truncated.
    Returns (score, tokens, logprobs) of the best finished hypothesis."""
    def pen(raw, length):
        return raw / length ** alpha

    live, best = [(0.0, [], [])], (-np.inf, None, None)
    for t in range(L_REF):
        cands = []
        for i, (raw, seq, lps) in enumerate(live):
            lp = log_softmax(hash_logits(table, study, seq))
            lp[[PAD, BOS]] = -np.inf
            for tok in range(V_REF):
                if lp[tok] > -np.inf and not (block and repeats_trigram(seq, tok)):
                    cands.append((raw + lp[tok], i * V_REF + tok, seq + [tok], lps + [lp[tok]]))
        cands.sort(key=lambda c: (-c[0], c[1]))
        live = []
        for raw, _, seq, lps in cands[:k]:
            if seq[-1] == EOS:
                if pen(raw, t + 1) > best[0]:
                    best = (pen(raw, t + 1), seq, lps)
            else:
                live.append((raw, seq, lps))
        if not live:
            break
    for raw, seq, lps in live:  # reached L_REF
        if pen(raw, L_REF) > best[0]:
            best = (pen(raw, L_REF), seq, lps)
    return best


@pytest.mark.parametrize('beam,alpha,block', [(1, 0.5, True), (2, 0.0, False), (3, 0.0, True),
                                              (3, 0.7, False), (4, 1.0, True)])
def test_beam_equals_plain_reference_on_random_models(beam, alpha, block):
    table = hash_table()
    cache = {'h': jnp.zeros(N_REF, jnp.int32), 'study': jnp.arange(N_REF)}
    out = run_beam(hash_step(table), cache, N_REF, beam, max_len=L_REF, length_penalty=alpha,
                   block_trigrams=block, vocab_size=V_REF)
    ended = 0
    for s in range(N_REF):
        score, seq, lps = reference_beam(table, s, beam, alpha, block)
        n = len(seq)
        assert strip(out['tokens'][s]) == seq, s
        assert (out['tokens'][s, n:] == PAD).all() and (out['logprobs'][s, n:] == 0).all()
        np.testing.assert_allclose(out['scores'][s], score, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out['logprobs'][s, :n], lps, rtol=1e-5, atol=1e-5)
        ended += seq[-1] == EOS
    # The models must exercise both endings: EOS before max_len and truncation at it.
    assert 0 < ended < N_REF


def test_beam_keeps_a_finished_hypothesis_that_live_ones_outscore_for_a_while():
    """Beam 2, no penalty. Step 1: 'A X' (log .784) and 'B EOS' (log .176) are the best two.
    Step 2: both extensions of 'A X' (log .392, log .376) outscore 'B EOS', so a beam that keeps
    finished hypotheses in its slots drops it; step 3 (the last, p = 1/6 each) takes both below
    it. The answer is 'B EOS'."""
    A, B_, X, Y, Z = 3, 4, 5, 6, 7
    vocab, length = 8, 4
    p = np.full((1, length, vocab, vocab), 1 / 6)  # uniform over EOS and 3..7 ...
    p[..., [PAD, BOS]] = 0  # ... never PAD or BOS
    for t, prev, probs in ((0, BOS, {A: .8, B_: .18, X: .02}), (1, A, {X: .98, Y: .02}),
                           (1, B_, {EOS: .98, Y: .02}), (2, X, {Y: .5, Z: .48, EOS: .02})):
        p[0, t, prev] = 0
        p[0, t, prev, list(probs)] = list(probs.values())
    p = np.maximum(p, 1e-12)
    table = np.log(p).astype(np.float32)
    out = run_beam(position_step(table), position_cache(1), 1, 2, max_len=length,
                   vocab_size=vocab)
    assert strip(out['tokens'][0]) == [B_, EOS]
    np.testing.assert_allclose(out['scores'][0], np.log(.18 * .98), rtol=1e-4)
    np.testing.assert_allclose(out['logprobs'][0], np.log([.18, .98, 1, 1]), atol=1e-4)


# ------------------------------------------------------------ position x previous-token table
def position_step(table):
    """logits = table[study, position, previous token]; the cache also carries a per-study row."""
    t = jnp.asarray(table)

    def step(tokens, cache):
        logits = t[cache['study'], cache['index'], tokens]
        return logits, {**cache, 'index': cache['index'] + 1}

    return step


def position_cache(batch):
    return {'index': jnp.zeros((), jnp.int32), 'study': jnp.arange(batch)}


@pytest.mark.parametrize('block', [False, True])
def test_beam_size_one_equals_greedy_on_table(block):
    batch, length, vocab = 3, 10, 9
    table = np.random.default_rng(2).normal(size=(batch, length, vocab, vocab)).astype(np.float32)
    kw = dict(max_len=length, length_penalty=0.5, block_trigrams=block, vocab_size=vocab)
    greedy = run_greedy(position_step(table), position_cache(batch), batch, **kw)
    beam = run_beam(position_step(table), position_cache(batch), batch, 1, **kw)
    np.testing.assert_array_equal(beam['tokens'], greedy['tokens'])
    np.testing.assert_allclose(beam['scores'], greedy['scores'], rtol=1e-6)
    np.testing.assert_allclose(beam['logprobs'], greedy['logprobs'], rtol=1e-6)


def eos_table(batch, length, vocab, seed=3):
    """PAD and BOS are the most likely tokens everywhere (they must still never be generated);
    after PAD (what finished hypotheses feed) a real token is near certain."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(batch, length, vocab, vocab)).astype(np.float32)
    table[..., PAD] += 8.0
    table[..., BOS] += 8.0
    table[..., EOS] += np.linspace(-2.0, 1.5, length)[None, :, None]
    table[:, :, PAD, 5] += 30.0
    return table


@pytest.mark.parametrize('beam', [1, 3])
def test_eos_pad_bos_rules(beam):
    batch, length, vocab = 6, 12, 10
    step, cache = position_step(eos_table(batch, length, vocab)), position_cache(batch)
    kw = dict(max_len=length, vocab_size=vocab)
    out = run_greedy(step, cache, batch, **kw) if beam == 1 else run_beam(step, cache, batch,
                                                                          beam, **kw)
    tokens, logprobs = out['tokens'], out['logprobs']
    assert tokens.shape == (batch, length) and tokens.dtype == np.int32
    assert not (tokens == BOS).any()
    ended_early = 0
    for row, lp in zip(tokens, logprobs):
        n = len(strip(row))
        assert (row[:n] != PAD).all() and (row[n:] == PAD).all()
        assert (lp[n:] == 0).all() and (lp[:n] < 0).all()
        ended_early += n < length
    assert ended_early > 0, 'the table should make some hypotheses end before max_len'
    np.testing.assert_allclose(out['scores'], logprobs.sum(1), rtol=1e-5)


@pytest.mark.parametrize('beam', [1, 3])
def test_stops_once_every_hypothesis_finished(beam):
    batch, length, vocab = 2, 8, 7
    table = np.zeros((batch, length, vocab, vocab), np.float32)
    table[:, 0, :, EOS] = -20.0
    table[:, 1, :, EOS] = 20.0  # every hypothesis ends at its second token
    positions = []

    def step(tokens, cache):
        jax.debug.callback(lambda i: positions.append(int(i)), cache['index'])
        return position_step(table)(tokens, cache)

    kw = dict(max_len=length, vocab_size=vocab)
    cache = position_cache(batch)
    out = run_greedy(step, cache, batch, **kw) if beam == 1 else run_beam(step, cache, batch,
                                                                          beam, **kw)
    jax.effects_barrier()
    assert positions == [0, 1]
    assert (out['tokens'][:, 1] == EOS).all() and (out['tokens'][:, 2:] == PAD).all()


@pytest.mark.parametrize('alpha', [0.0, 1.0])
def test_beam_stops_once_no_live_hypothesis_can_win(alpha):
    """'3 EOS' (p = .7 * .99) ends at the second position; every live hypothesis is then below
    p = .1 and can only fall, so the search stops although hypotheses are still live."""
    length, vocab = 8, 7
    p = np.full((1, length, vocab, vocab), 1 / 5)
    p[..., [PAD, BOS]] = 1e-12
    p[0, 0, BOS, 2:] = 1e-12, .7, .1, .1, .1
    p[0, 1, 3, 2:] = .99, .0025, .0025, .0025, .0025
    table = np.log(p).astype(np.float32)
    positions = []

    def step(tokens, cache):
        jax.debug.callback(lambda i: positions.append(int(i)), cache['index'])
        return position_step(table)(tokens, cache)

    out = run_beam(step, position_cache(1), 1, 3, max_len=length, length_penalty=alpha,
                   vocab_size=vocab)
    jax.effects_barrier()
    assert positions == [0, 1]
    assert strip(out['tokens'][0]) == [3, EOS]
    np.testing.assert_allclose(out['scores'][0], np.log(.7 * .99) / 2 ** alpha, rtol=1e-5)


def has_repeated_trigram(seq):
    grams = [tuple(seq[i:i + 3]) for i in range(len(seq) - 2)]
    return len(grams) != len(set(grams))


def reference_greedy_blocked(table, study, length):
    seq, prev = [], BOS
    for t in range(length):
        lp = log_softmax(table[study, t, prev])
        lp[[PAD, BOS]] = -np.inf
        for tok in range(lp.size):
            if repeats_trigram(seq, tok):
                lp[tok] = -np.inf
        prev = int(np.argmax(lp))
        seq.append(prev)
        if prev == EOS:
            break
    return seq


def test_trigram_blocking_blocks():
    batch, length, vocab = 2, 12, 8
    rng = np.random.default_rng(4)
    table = rng.normal(size=(batch, length, vocab, vocab)).astype(np.float32)
    table[..., EOS] -= 10.0
    table[:, :, BOS, 3] += 10.0  # a 3-4-3-4... cycle is by far the most likely report
    table[:, :, 3, 4] += 10.0
    table[:, :, 4, 3] += 10.0
    step, cache = position_step(table), position_cache(batch)
    kw = dict(max_len=length, vocab_size=vocab)
    free = run_greedy(step, cache, batch, block_trigrams=False, **kw)['tokens']
    assert all(has_repeated_trigram(strip(r)) for r in free)
    greedy = run_greedy(step, cache, batch, block_trigrams=True, **kw)['tokens']
    beam = run_beam(step, cache, batch, 3, block_trigrams=True, **kw)['tokens']
    for s in range(batch):
        assert strip(greedy[s]) == reference_greedy_blocked(table, s, length)
        assert strip(greedy[s])[:4] == [3, 4, 3, 4]
        for row in (greedy[s], beam[s]):
            assert not has_repeated_trigram(strip(row))


def test_bad_inputs_are_named():
    step = position_step(np.zeros((2, 4, 5, 5), np.float32))
    bad = {'index': jnp.zeros((), jnp.int32), 'study': jnp.arange(3)}
    with pytest.raises(ValueError, match=r"\['study'\].*batch_size=2 or batch_size\*beam_size=4"):
        decode.beam_search(step, bad, 2, beam_size=2, max_len=4, vocab_size=5, **IDS)
    with pytest.raises(ValueError, match=r"greedy_search: cache leaf \['study'\]"):
        decode.greedy_search(step, bad, 2, max_len=4, vocab_size=5, **IDS)
    with pytest.raises(ValueError, match='vocab_size=6'):
        decode.greedy_search(step, position_cache(2), 2, max_len=4, vocab_size=6, **IDS)
    with pytest.raises(ValueError, match='decode.beam_size=0'):
        decode.beam_search(step, position_cache(2), 2, beam_size=0, max_len=4, vocab_size=5)
    config = smoke.get_config()
    config.decode.max_len = config.data.max_len + 2
    with pytest.raises(ValueError, match=r'decode.max_len=26 exceeds the 25'):
        decode.make_generate_fn(None, config, vocab_size=30)


# ------------------------------------------------------------------ the smoke-size Transformer
def random_weights(abstract, seed=0):
    """(ModelDef, params, batch_stats) with fan-in scaled normal weights for an abstract model
    (from `nnx.eval_shape`): eager or jitted initialisers cost seconds per test on this CPU."""
    modeldef = step_lib.ModelDef(abstract)
    _, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(seed)

    def init(path, x):
        if len(x.shape) >= 2:
            return (rng.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1]))).astype(np.float32)
        return np.full(x.shape, 1.0 if path[-1].key in ('scale', 'var') else 0.0, np.float32)

    fill = lambda tree: jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(tree))
    return modeldef, fill(params), fill(stats)


def smoke_transformer(vocab=20, max_len=12):
    m = smoke.get_config().model
    abstract = nnx.eval_shape(lambda: transformer.EncoderDecoder(
        vocab_size=vocab, width=m.width, heads=m.num_heads, hidden=m.ffn_dim,
        encoder_layers=m.num_encoder_layers, decoder_layers=m.num_decoder_layers,
        dropout=m.dropout, max_len=max_len, rngs=nnx.Rngs(0)))
    modeldef, params, stats = random_weights(abstract)
    return lambda p: modeldef.merge(p, stats), params


def test_kv_cache_decoding_equals_full_recomputation():
    model, params = smoke_transformer()
    length, width = 12, smoke.get_config().model.width
    rng = np.random.default_rng(5)
    memory = jnp.asarray(rng.normal(size=(2, 7, width)), jnp.float32)
    tokens = jnp.asarray(rng.integers(3, 20, size=(2, length)), jnp.int32).at[:, 0].set(BOS)
    full = jax.jit(lambda p, x, m: model(p).decode(x, m, None))(params, tokens, memory)
    step = jax.jit(lambda p, x, c: model(p).decode_step(x, c))
    cache = jax.jit(lambda p, m: model(p).init_cache(m, length))(params, memory)
    stepped = []
    for t in range(length):
        logits, cache = step(params, tokens[:, t], cache)
        stepped.append(logits)
    assert float(jnp.std(full)) > 0.1  # a model whose logits vary, so the check means something
    np.testing.assert_allclose(np.stack(stepped, 1), full, atol=1e-5)


def test_transformer_searches_agree():
    """Beam size 1 equals greedy, and hoisting the cross-attention keys/values out of the loop
    carry (what make_generate_fn does) changes nothing, on the smoke-size Transformer."""
    model, params = smoke_transformer()
    length, width = 12, smoke.get_config().model.width
    memory = jnp.asarray(np.random.default_rng(6).normal(size=(3, 5, width)), jnp.float32)
    kw = dict(**IDS, max_len=length, length_penalty=0.6, block_trigrams=True, vocab_size=20)

    def search(p, m, beam, hoist):
        decoder = model(p)
        cache = decoder.init_cache(m, length)
        if beam == 0:
            return decode.greedy_search(decoder.decode_step, cache, 3, **kw)
        step_fn = decoder.decode_step
        if hoist:
            step_fn, cache = decode.hoist_cross_attention(decoder.decode_step, cache, beam)
            assert 'cross_k' not in cache['layers'][0]
        return decode.beam_search(step_fn, cache, 3, beam_size=beam, **kw)

    run = jax.jit(search, static_argnums=(2, 3))
    greedy = run(params, memory, 0, False)
    np.testing.assert_array_equal(run(params, memory, 1, True)['tokens'], greedy['tokens'])
    np.testing.assert_allclose(run(params, memory, 1, True)['scores'], greedy['scores'],
                               rtol=1e-5)
    hoisted, plain = run(params, memory, 3, True), run(params, memory, 3, False)
    np.testing.assert_array_equal(hoisted['tokens'], plain['tokens'])
    np.testing.assert_allclose(hoisted['scores'], plain['scores'], rtol=1e-5)
    assert (np.asarray(greedy['tokens'])[:, 0] >= 3).all()
    assert len({tuple(r) for r in np.asarray(plain['tokens'])}) > 1


# ------------------------------------------------------- the whole generate fn, 1 vs 8 devices
SHARDED_SCRIPT = r"""
import sys
import jax, numpy as np
from flax import nnx
from configs import smoke
from jima_jax import decode
from jima_jax.model import jima
from jima_jax.runtime import parallel

VOCAB, BATCH = 24, 8
config = smoke.get_config()
config.decode.max_len = 10
sys.path.insert(0, 'tests')
from test_decode import random_weights
model = nnx.eval_shape(lambda: jima.JIMA(config.model, vocab_size=VOCAB, num_views=2,
                                         max_len=config.data.max_len + 1, rngs=nnx.Rngs(0)))
modeldef, params, stats = random_weights(model)
params['report']['transformer']['logits']['bias'][2] = 1.0  # EOS: some reports end early
side = config.input.image_size
images = np.random.default_rng(1).integers(0, 256, (BATCH, 2, side, side), dtype=np.uint8)
config.decode.beam_size = 2
generate = decode.make_generate_fn(modeldef, config, VOCAB)
one = jax.jit(generate)(params, stats, images)
mesh = parallel.make_mesh(config.parallel)
rep, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)
many = jax.jit(generate, in_shardings=(rep, rep, shard))(params, stats, images)
assert len(many['tokens'].sharding.device_set) == 8, many['tokens'].sharding
out = {f'{name}_{n}': np.asarray(x[name]) for n, x in ((1, one), (8, many)) for name in x}
np.savez(sys.argv[1], **out)
"""


def test_generate_one_vs_eight_devices(tmp_path):
    """make_generate_fn (beam 2) jitted on 1 device and batch-sharded over 8 simulated ones."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=8')
    result = tmp_path / 'out.npz'
    proc = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT, str(result)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(np.load(result))
    tokens = out['tokens_1']
    np.testing.assert_array_equal(out['tokens_8'], tokens)
    np.testing.assert_allclose(out['scores_8'], out['scores_1'], atol=1e-4)
    np.testing.assert_allclose(out['entity_probs_8'], out['entity_probs_1'], atol=1e-5)
    assert tokens.shape == (8, 10) and not (tokens == BOS).any()
    assert len({tuple(r) for r in tokens}) > 1, 'reports should depend on the images'
    lengths = np.array([len(strip(r)) for r in tokens])
    assert (lengths > 1).all() and (lengths < 10).any()  # some end with EOS early
    np.testing.assert_allclose(out['scores_1'], out['logprobs_1'].sum(1), rtol=1e-5)
    q = out['entity_probs_1']
    assert q.shape == (8, 24) and ((q > 0) & (q < 1)).all()
