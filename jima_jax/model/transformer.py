"""Pre-LayerNorm Transformer encoder-decoder (f_T, spec section 3) with a KV-cache decode path.

The teacher-forced `decode` and the incremental `decode_step` share every weight and every
operation order, so step-by-step decoding reproduces the full forward pass (tested). Dropout keys
come from an `nnx.Rngs` passed at call time, so the model itself holds no random state and the
jitted train step stays a pure function of (params, batch, key).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Cache = dict[str, Any]


@functools.lru_cache(maxsize=None)
def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    """The fixed sin/cos table of "Attention is all you need" (sin on even, cos on odd dims)."""
    position = np.arange(length, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, width, 2, dtype=np.float64) * (-np.log(10000.0) / width))
    table = np.zeros((length, width), dtype=np.float32)
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div)
    return table


def _dropout(x, rate: float, rngs: Optional[nnx.Rngs]):
    """Inverted dropout; a no-op when `rngs` is None (evaluation, decoding, scoring)."""
    if rngs is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Attention(nnx.Module):
    def __init__(self, width: int, heads: int, dropout: float, *, dtype, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f'model.width={width} is not divisible by model.num_heads={heads}.')
        lin = lambda: nnx.Linear(width, width, dtype=dtype, rngs=rngs)
        self.query, self.key, self.value, self.out = lin(), lin(), lin(), lin()
        self.heads = heads
        self.dropout = dropout

    def split_heads(self, x):
        b, n, w = x.shape
        return x.reshape(b, n, self.heads, w // self.heads)

    def project_kv(self, x):
        return self.split_heads(self.key(x)), self.split_heads(self.value(x))

    def attend(self, x, k, v, mask, rngs):
        """x: [B, Lq, W] queries; k, v: [B, Lk, H, D]; mask: broadcastable to [B, H, Lq, Lk]."""
        q = self.split_heads(self.query(x))
        scale = 1.0 / np.sqrt(q.shape[-1])
        logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) * scale
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = _dropout(jax.nn.softmax(logits, axis=-1), self.dropout, rngs).astype(v.dtype)
        out = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
        return self.out(out.reshape(x.shape[0], x.shape[1], -1))

    def __call__(self, x, context, mask, rngs):
        k, v = self.project_kv(context)
        return self.attend(x, k, v, mask, rngs)


class FeedForward(nnx.Module):
    def __init__(self, width: int, hidden: int, dropout: float, *, dtype, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, dtype=dtype, rngs=rngs)
        self.dropout = dropout

    def __call__(self, x, rngs):
        return self.fc2(_dropout(jax.nn.relu(self.fc1(x)), self.dropout, rngs))


class EncoderLayer(nnx.Module):
    def __init__(self, width, heads, hidden, dropout, *, dtype, rngs):
        self.norm1 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.attn = Attention(width, heads, dropout, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.ffn = FeedForward(width, hidden, dropout, dtype=dtype, rngs=rngs)
        self.dropout = dropout

    def __call__(self, x, rngs):
        h = self.norm1(x)
        x = x + _dropout(self.attn(h, h, None, rngs), self.dropout, rngs)
        return x + _dropout(self.ffn(self.norm2(x), rngs), self.dropout, rngs)


class DecoderLayer(nnx.Module):
    def __init__(self, width, heads, hidden, dropout, *, dtype, rngs):
        self.norm1 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.self_attn = Attention(width, heads, dropout, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.cross_attn = Attention(width, heads, dropout, dtype=dtype, rngs=rngs)
        self.norm3 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.ffn = FeedForward(width, hidden, dropout, dtype=dtype, rngs=rngs)
        self.dropout = dropout

    def __call__(self, x, self_k, self_v, self_mask, cross_k, cross_v, rngs):
        h = self.norm1(x)
        x = x + _dropout(self.self_attn.attend(h, self_k, self_v, self_mask, rngs),
                         self.dropout, rngs)
        h = self.norm2(x)
        x = x + _dropout(self.cross_attn.attend(h, cross_k, cross_v, None, rngs),
                         self.dropout, rngs)
        return x + _dropout(self.ffn(self.norm3(x), rngs), self.dropout, rngs)


class EncoderDecoder(nnx.Module):
    """Encoder over the fused visual tokens; decoder over report tokens (teacher forced)."""

    def __init__(self, *, vocab_size: int, width: int, heads: int, hidden: int,
                 encoder_layers: int, decoder_layers: int, dropout: float, max_len: int,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        layer_args = (width, heads, hidden, dropout)
        self.encoder_layers = nnx.List(
            [EncoderLayer(*layer_args, dtype=dtype, rngs=rngs) for _ in range(encoder_layers)])
        self.encoder_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.embed = nnx.Embed(vocab_size, width, dtype=dtype, rngs=rngs)
        self.decoder_layers = nnx.List(
            [DecoderLayer(*layer_args, dtype=dtype, rngs=rngs) for _ in range(decoder_layers)])
        self.decoder_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.logits = nnx.Linear(width, vocab_size, dtype=dtype, rngs=rngs)
        self.width = width
        self.dropout = dropout
        self.max_len = max_len

    def encode(self, x: jax.Array, rngs: Optional[nnx.Rngs]) -> jax.Array:
        for layer in self.encoder_layers:
            x = layer(x, rngs)
        return self.encoder_norm(x)

    def _embed(self, tokens, offset, rngs):
        table = jnp.asarray(sinusoidal_positions(self.max_len, self.width))
        positions = jax.lax.dynamic_slice_in_dim(table, offset, tokens.shape[1])
        x = self.embed(tokens) * np.sqrt(self.width)
        x = x + positions.astype(x.dtype)
        return _dropout(x, self.dropout, rngs)

    def _cross_kv(self, memory):
        return [layer.cross_attn.project_kv(memory) for layer in self.decoder_layers]

    def decode(self, tokens: jax.Array, memory: jax.Array,
               rngs: Optional[nnx.Rngs]) -> jax.Array:
        """tokens [B, L] (bos first) -> next-token logits [B, L, V], float32."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f'{tokens.shape[1]} decoder positions exceed max_len={self.max_len}.')
        x = self._embed(tokens, 0, rngs)
        length = tokens.shape[1]
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        for layer, (ck, cv) in zip(self.decoder_layers, self._cross_kv(memory)):
            h = layer.norm1(x)
            k, v = layer.self_attn.project_kv(h)
            x = layer(x, k, v, causal, ck, cv, rngs)
        return self.logits(self.decoder_norm(x)).astype(jnp.float32)

    def init_cache(self, memory: jax.Array, max_len: int) -> Cache:
        """Decode cache: empty self-attention keys/values and the cross-attention ones."""
        b = memory.shape[0]
        heads = self.decoder_layers[0].self_attn.heads
        shape = (b, max_len, heads, self.width // heads)
        layers = []
        for ck, cv in self._cross_kv(memory):
            layers.append({'k': jnp.zeros(shape, ck.dtype), 'v': jnp.zeros(shape, ck.dtype),
                           'cross_k': ck, 'cross_v': cv})
        return {'index': jnp.zeros((), jnp.int32), 'layers': layers}

    def decode_step(self, token: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """token [B] at position cache['index'] -> logits [B, V] and the advanced cache."""
        index = cache['index']
        x = self._embed(token[:, None], index, None)
        new_layers = []
        for layer, c in zip(self.decoder_layers, cache['layers']):
            h = layer.norm1(x)
            k, v = layer.self_attn.project_kv(h)
            ks = jax.lax.dynamic_update_slice_in_dim(c['k'], k, index, axis=1)
            vs = jax.lax.dynamic_update_slice_in_dim(c['v'], v, index, axis=1)
            mask = (jnp.arange(ks.shape[1]) <= index)[None, None, None, :]
            x = layer(x, ks, vs, mask, c['cross_k'], c['cross_v'], None)
            new_layers.append({**c, 'k': ks, 'v': vs})
        logits = self.logits(self.decoder_norm(x))[:, 0].astype(jnp.float32)
        return logits, {'index': index + 1, 'layers': new_layers}
