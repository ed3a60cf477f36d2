"""Greedy and beam-search decoding on the KV cache, one XLA program per batch of studies.

Both searches are pure functions built on `jax.lax.while_loop` over output positions, so they run
fully jitted (and batch-sharded: every array keeps the study axis first). They see the model only
through `step_fn(tokens [N], cache) -> (logits [N, V], cache)`.

Scoring conventions (shared by both searches, so beam size 1 equals greedy):
  * log-probabilities are `log_softmax` over the full vocabulary; PAD and BOS are then masked to
    -inf (never generated) without renormalising, and so are trigram-blocked tokens;
  * a hypothesis is scored by its length-penalised sum of log-probabilities
        score = sum(log p) / length ** length_penalty,
    where `length` counts generated tokens, EOS included (PAD and BOS excluded);
    `length_penalty=0` is the raw sum;
  * beam search follows R2Gen's procedure: at each position the `beam_size` best one-token
    extensions of the live hypotheses (ranked by raw sum) are taken; those that end in EOS leave
    the beam at once for a per-study store that keeps the best finished one by score, so they hold
    no slot at the next position, which again takes the `beam_size` best extensions of the rest.
    At `max_len` the live hypotheses finish as they are (truncated) and compete with the store;
    the result is the best of all. With one hypothesis this is greedy: it stops at its first EOS;
  * the search stops early once no live hypothesis of any study can still beat its study's best
    finished one (log-probabilities are <= 0, so a raw sum only falls as a hypothesis grows);
    the result is the same as running to `max_len`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from jima_jax.model import jima
from jima_jax.text.symbols import BOS_ID, EOS_ID, PAD_ID

StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def _check_tokens(*, max_len: int, vocab_size: int, bos_id: int, eos_id: int,
                  pad_id: int) -> None:
    if max_len < 1:
        raise ValueError(f'decode.max_len={max_len} must be >= 1.')
    ids = {'bos_id': bos_id, 'eos_id': eos_id, 'pad_id': pad_id}
    if len(set(ids.values())) != 3:
        raise ValueError(f'bos/eos/pad ids must be distinct, got {ids}.')
    for name, i in ids.items():
        if not 0 <= i < vocab_size:
            raise ValueError(f'{name}={i} is outside the vocabulary of size {vocab_size}.')


def _leaf_map(fn: Callable, cache, what: str):
    """Applies `fn(x, path)` to every leaf with an example axis; scalars (such as the cache's
    `index`) have none and are left alone."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x if jnp.ndim(x) == 0 else fn(x, f'{what}: cache leaf '
                                                       f'{jax.tree_util.keystr(path)}'), cache)


def _check_rows(cache, n: int, what: str):
    """Every non-scalar leaf must have a leading axis of size `n`: anything else would be silently
    mixed up across beams or studies."""

    def check(x, name):
        if x.shape[0] != n:
            raise ValueError(f'{name} has shape {x.shape}; every non-scalar leaf needs a '
                             f'leading axis of size {n}.')
        return x

    return _leaf_map(check, cache, what)


def _expand_to_beams(cache, b: int, k: int):
    """Per-study leaves ([B, ...]) are repeated to [B*K, ...] (study-major); leaves already of
    B*K rows are taken as they are (the two cannot be confused: they differ unless K == 1)."""

    def expand(x, name):
        if x.shape[0] == b * k:
            return x
        if x.shape[0] == b:
            return jnp.repeat(x, k, axis=0)
        raise ValueError(f'{name} has shape {x.shape}; every non-scalar leaf needs a leading '
                         f'axis of size batch_size={b} or batch_size*beam_size={b * k}.')

    return _leaf_map(expand, cache, 'beam_search')


def _log_probs(logits: jax.Array, vocab_size: int) -> jax.Array:
    if logits.shape[-1] != vocab_size:
        raise ValueError(f'step_fn returned logits of shape {logits.shape}; expected the last '
                         f'axis to be vocab_size={vocab_size}.')
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _trigram_ban(tokens: jax.Array, t: jax.Array, vocab_size: int) -> jax.Array:
    """[..., L] tokens with positions < t generated -> [..., V] bool: tokens that would repeat a
    trigram already in the hypothesis (the last two tokens followed by the token)."""
    length = tokens.shape[-1]
    lead = tokens.shape[:-1]
    if length < 3:
        return jnp.zeros(lead + (vocab_size,), bool)
    a = jnp.take(tokens, jnp.maximum(t - 2, 0), axis=-1)[..., None]
    b = jnp.take(tokens, jnp.maximum(t - 1, 0), axis=-1)[..., None]
    start = jnp.arange(length - 2)
    match = (tokens[..., :-2] == a) & (tokens[..., 1:-1] == b) & (start + 2 < t)
    follow = tokens[..., 2:].reshape(-1, length - 2)

    def ban_row(ids, hit):
        return jnp.zeros(vocab_size, jnp.int32).at[ids].add(hit.astype(jnp.int32)) > 0

    return jax.vmap(ban_row)(follow, match.reshape(-1, length - 2)).reshape(lead + (vocab_size,))


def _next_log_probs(logits, tokens, t, *, vocab_size, bos_id, pad_id, block_trigrams):
    """Masked log-probabilities of the next token, [..., V]."""
    logp = _log_probs(logits, vocab_size)
    vocab = jnp.arange(vocab_size)
    banned = (vocab == pad_id) | (vocab == bos_id)
    if block_trigrams:
        banned = banned | _trigram_ban(tokens, t, vocab_size)
    return jnp.where(banned, -jnp.inf, logp)


def _penalised(scores: jax.Array, lengths, length_penalty: float) -> jax.Array:
    if length_penalty == 0.0:
        return scores
    return scores / jnp.maximum(lengths, 1).astype(jnp.float32) ** length_penalty


def greedy_search(step_fn: StepFn, init_cache, batch_size: int, *, max_len: int,
                  bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = PAD_ID,
                  length_penalty: float = 0.0, block_trigrams: bool = False,
                  vocab_size: int) -> dict:
    """Arg-max decoding. `init_cache` leaves have a leading axis of size `batch_size`.

    Returns tokens [B, max_len] int32, scores [B] (length-penalised, see the module docstring)
    and logprobs [B, max_len] (0 after EOS).
    """
    _check_tokens(max_len=max_len, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id,
                  pad_id=pad_id)
    b = batch_size
    _check_rows(init_cache, b, 'greedy_search')
    positions = jnp.arange(max_len)
    pad_only = jnp.where(jnp.arange(vocab_size) == pad_id, 0.0, -jnp.inf)

    def body(s):
        t, tokens, logprobs, score, finished, lengths, last, cache = s
        logits, cache = step_fn(last, cache)
        logp = _next_log_probs(logits, tokens, t, vocab_size=vocab_size, bos_id=bos_id,
                               pad_id=pad_id, block_trigrams=block_trigrams)
        logp = jnp.where(finished[:, None], pad_only, logp)  # finished rows only grow by PAD
        token = jnp.argmax(logp, axis=-1).astype(jnp.int32)
        lp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
        here = positions == t
        tokens = jnp.where(here, token[:, None], tokens)
        logprobs = jnp.where(here, lp[:, None], logprobs)
        lengths = lengths + (~finished).astype(jnp.int32)
        finished = finished | (token == eos_id)
        return t + 1, tokens, logprobs, score + lp, finished, lengths, token, cache

    def cond(s):
        return (s[0] < max_len) & ~jnp.all(s[4])

    init = (jnp.zeros((), jnp.int32), jnp.full((b, max_len), pad_id, jnp.int32),
            jnp.zeros((b, max_len), jnp.float32), jnp.zeros((b,), jnp.float32),
            jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32),
            jnp.full((b,), bos_id, jnp.int32), init_cache)
    _, tokens, logprobs, score, _, lengths, _, _ = jax.lax.while_loop(cond, body, init)
    return {'tokens': tokens, 'scores': _penalised(score, lengths, length_penalty),
            'logprobs': logprobs}


def beam_search(step_fn: StepFn, init_cache, batch_size: int, *, beam_size: int, max_len: int,
                bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = PAD_ID,
                length_penalty: float = 0.0, block_trigrams: bool = False,
                vocab_size: int) -> dict:
    """Beam search with `beam_size` live hypotheses per study (R2Gen's procedure, see the module
    docstring): finished hypotheses are set aside, so finishing never loses one.

    `step_fn` sees N = batch_size * beam_size rows, study-major (row = study * beam_size + beam).
    Non-scalar `init_cache` leaves have either one row per study (repeated to the beams here,
    the cheap way to build a cache) or N rows already.
    After each step every non-scalar cache leaf is reordered to follow its surviving beams
    (within a study, so a batch-sharded cache stays sharded). Returns the best hypothesis per
    study: tokens [B, max_len] int32 (no BOS, EOS when produced, PAD after), scores [B]
    (length-penalised) and logprobs [B, max_len] (per-token, 0 after EOS).
    """
    _check_tokens(max_len=max_len, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id,
                  pad_id=pad_id)
    if beam_size < 1:
        raise ValueError(f'decode.beam_size={beam_size} must be >= 1.')
    b, k, v = batch_size, beam_size, vocab_size
    n = b * k
    alpha = float(length_penalty)
    cache = _expand_to_beams(init_cache, b, k)
    positions = jnp.arange(max_len)
    pick = jax.vmap(lambda x, i: x[i])  # per-study gather of beams: [B, K, ...] by [B, K]

    def take(x, j):  # [B, K, ...] by [B] -> [B, ...]
        return jnp.take_along_axis(x, j.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]

    def keep_better(best, scores, tokens, logprobs):
        """Folds the best of `scores` [B, K] (-inf = not a candidate) into the finished store;
        an equal score keeps the earlier hypothesis."""
        j = jnp.argmax(scores, axis=1)
        score = take(scores, j)
        better = score > best[0]
        return (jnp.where(better, score, best[0]),
                jnp.where(better[:, None], take(tokens, j), best[1]),
                jnp.where(better[:, None], take(logprobs, j), best[2]))

    def reorder_cache(cache, parent):
        cache = _check_rows(cache, n, 'beam_search step_fn output')
        return _leaf_map(
            lambda x, _: pick(x.reshape((b, k) + x.shape[1:]), parent).reshape(x.shape),
            cache, 'beam_search')

    def body(s):
        t, tokens, logprobs, scores, last, cache, best = s
        logits, cache = step_fn(last.reshape(n), cache)
        logp = _next_log_probs(logits.reshape(b, k, -1), tokens, t, vocab_size=v,
                               bos_id=bos_id, pad_id=pad_id, block_trigrams=block_trigrams)
        flat_logp = logp.reshape(b, k * v)
        top, index = jax.lax.top_k((scores[..., None] + logp).reshape(b, k * v), k)
        parent, token = index // v, (index % v).astype(jnp.int32)
        valid = top > -jnp.inf  # fewer valid candidates than beams (first steps, blocking)
        token = jnp.where(valid, token, pad_id)
        lp = jnp.where(valid, jnp.take_along_axis(flat_logp, index, axis=-1), 0.0)
        here = positions == t
        tokens = jnp.where(here, token[..., None], pick(tokens, parent))
        logprobs = jnp.where(here, lp[..., None], pick(logprobs, parent))
        ended = valid & (token == eos_id)
        best = keep_better(best, jnp.where(ended, _penalised(top, t + 1, alpha), -jnp.inf),
                           tokens, logprobs)
        scores = jnp.where(ended, -jnp.inf, top)  # ended hypotheses leave the beam
        return t + 1, tokens, logprobs, scores, token, reorder_cache(cache, parent), best

    def cond(s):
        t, scores, best_score = s[0], s[3], s[6][0]
        # Live hypotheses have t tokens and raw sums that only fall: the best score any of them
        # can still reach is its raw sum at the most favourable final length in (t, max_len].
        raw = jnp.max(scores, axis=1)
        reach = jnp.maximum(_penalised(raw, t + 1, alpha), _penalised(raw, max_len, alpha))
        return (t < max_len) & ~jnp.all(best_score > reach)

    # Only the first beam of each study is live at the start (all beams would be identical).
    first = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf).astype(jnp.float32)
    best = (jnp.full((b,), -jnp.inf, jnp.float32), jnp.full((b, max_len), pad_id, jnp.int32),
            jnp.zeros((b, max_len), jnp.float32))
    init = (jnp.zeros((), jnp.int32), jnp.full((b, k, max_len), pad_id, jnp.int32),
            jnp.zeros((b, k, max_len), jnp.float32), jnp.broadcast_to(first, (b, k)),
            jnp.full((b, k), bos_id, jnp.int32), cache, best)
    t, tokens, logprobs, scores, _, _, best = jax.lax.while_loop(cond, body, init)
    # Hypotheses still live at max_len finish there, truncated (none can win after an early stop).
    truncated = jnp.where(t == max_len, _penalised(scores, max_len, alpha), -jnp.inf)
    score, tokens, logprobs = keep_better(best, truncated, tokens, logprobs)
    return {'tokens': tokens, 'scores': score, 'logprobs': logprobs}


def make_generate_fn(modeldef, config: ml_collections.ConfigDict, vocab_size: int) -> Callable:
    """(params, batch_stats, images uint8 [B, V, H, W]) -> dict(tokens, scores, logprobs,
    entity_probs [B, vocab], absent without entity fusion): the whole generation path (f_R, f_E,
    encoder, search) as one pure function for the caller to jit with its shardings. `modeldef`
    is a `train.step.ModelDef`.

    Uses config.decode.{beam_size, max_len, length_penalty, block_trigrams}; beam size 1 runs
    `greedy_search`."""
    dcfg, mcfg, icfg = config.decode, config.model, config.input
    beam_size, max_len = int(dcfg.beam_size), int(dcfg.max_len)
    _check_max_len(max_len, int(config.data.max_len) + 1)
    search = dict(max_len=max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
                  length_penalty=float(dcfg.length_penalty),
                  block_trigrams=bool(dcfg.block_trigrams), vocab_size=vocab_size)

    def generate(params, batch_stats, images) -> dict:
        model = modeldef.merge(params, batch_stats)
        # q is None in the R2Gen baseline (model.entity_fusion=False), which has no f_E
        enc = model.encode(jima.input_images(images, mcfg, icfg), train=False)
        q = enc.q
        decoder = model.report.transformer
        _check_max_len(max_len, decoder.max_len)
        cache = decoder.init_cache(model.report.memory(enc.patches, q, None), max_len)
        if beam_size == 1:
            out = greedy_search(decoder.decode_step, cache, images.shape[0], **search)
        else:
            step_fn, carried = hoist_cross_attention(decoder.decode_step, cache, beam_size)
            out = beam_search(step_fn, carried, images.shape[0], beam_size=beam_size, **search)
        return out if q is None else {**out, 'entity_probs': q}

    return generate


_CROSS = ('cross_k', 'cross_v')


def hoist_cross_attention(decode_step: StepFn, cache, beam_size: int) -> tuple[StepFn, Any]:
    """(step_fn, cache) for `beam_search` that keep the cross-attention keys/values of an
    `EncoderDecoder` cache out of the loop carry.

    They are the same at every step and for every beam of a study, so carrying them would
    re-gather them at each beam reordering for nothing (about 30% of beam-3 decoding time at the
    paper's size); instead they are repeated to the beams once and closed over.
    """
    cross = [{k: jnp.repeat(layer[k], beam_size, axis=0) for k in _CROSS}
             for layer in cache['layers']]

    def strip(c):
        return {**c, 'layers': [{k: v for k, v in layer.items() if k not in _CROSS}
                                for layer in c['layers']]}

    def step_fn(token, carried):
        full = {**carried, 'layers': [{**layer, **x}
                                      for layer, x in zip(carried['layers'], cross)]}
        logits, new = decode_step(token, full)
        return logits, strip(new)

    return step_fn, strip(cache)


def _check_max_len(max_len: int, limit: int) -> None:
    if max_len > limit:
        raise ValueError(f'decode.max_len={max_len} exceeds the {limit} decoder positions of '
                         f'the model (data.max_len + 1); lower decode.max_len.')
