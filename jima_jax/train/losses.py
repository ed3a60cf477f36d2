"""Task losses (spec section 4) with imbalance-aware weights looked up inside the jitted step.

Each loss returns a (weighted sum, count) pair rather than a mean: the caller divides once, which
keeps the value identical whether the batch sits on one device, is sharded by `jit`, or is split
by `pmap` (benchmarks/pmap_step.py sums both across devices). With every weight equal to 1 the
pair's ratio is exactly the plain loss: mean NLL over non-pad tokens, mean BCE over vocabulary x
examples.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class LossTables:
    """Per-vocabulary and per-label weight arrays from the frequency tables (device-resident)."""

    token_weights: jax.Array  # [V] multiplier of each target token's NLL
    entity_pos_weights: jax.Array  # [V] BCE weight of positive entity targets
    label_weights: jax.Array  # [2] example weight of normal (0) / abnormal (1) studies

    @classmethod
    def uniform(cls, vocab_size: int) -> 'LossTables':
        """All weights 1: the paper's plain losses."""
        return cls(token_weights=jnp.ones(vocab_size, jnp.float32),
                   entity_pos_weights=jnp.ones(vocab_size, jnp.float32),
                   label_weights=jnp.ones(2, jnp.float32))


def make_loss_tables(tables, loss_cfg) -> LossTables:
    """The weight arrays `config.loss` asks for, from `jima_jax.text.tables.FrequencyTables`."""
    token = tables.token_loss_weights(loss_cfg.token_weighting, alpha=loss_cfg.token_alpha,
                                      beta=loss_cfg.token_beta)
    entity = tables.entity_pos_weights(loss_cfg.entity_pos_weighting,
                                       max_weight=loss_cfg.entity_pos_weight_max)
    label = tables.example_loss_weight(np.array([0, 1]), loss_cfg.example_weighting,
                                       strength=loss_cfg.example_strength)
    return LossTables(token_weights=jnp.asarray(token, jnp.float32),
                      entity_pos_weights=jnp.asarray(entity, jnp.float32),
                      label_weights=jnp.asarray(label, jnp.float32))


def report_nll(logits: jax.Array, targets: jax.Array, token_mask: jax.Array,
               token_weights: Optional[jax.Array] = None,
               example_weights: Optional[jax.Array] = None):
    """Weighted NLL of the reference tokens.

    logits [B, L, V]; targets [B, L] int; token_mask [B, L] (1 = real token, incl. EOS);
    token_weights [V] looked up at the targets; example_weights [B].
    Returns (sum of weight * nll over real tokens, number of real tokens).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    w = token_mask.astype(jnp.float32)
    count = jnp.sum(w)
    if token_weights is not None:
        w = w * token_weights[targets]
    if example_weights is not None:
        w = w * example_weights[:, None]
    return jnp.sum(w * nll), count


def entity_bce(logits: jax.Array, targets: jax.Array, example_mask: jax.Array,
               pos_weights: Optional[jax.Array] = None,
               example_weights: Optional[jax.Array] = None):
    """Weighted binary cross-entropy of the entity distribution q = sigmoid(logits).

    logits, targets [B, V]; example_mask [B] (0 = padding example); pos_weights [V] scales the
    positive term (as PyTorch's BCEWithLogitsLoss(pos_weight=...)); example_weights [B].
    Returns (weighted sum over real examples x vocabulary, real examples x V).
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    pos = targets * jax.nn.log_sigmoid(logits)
    if pos_weights is not None:
        pos = pos * pos_weights
    per_entry = -(pos + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
    w = example_mask.astype(jnp.float32)
    count = jnp.sum(w) * logits.shape[-1]
    if example_weights is not None:
        w = w * example_weights
    return jnp.sum(per_entry * w[:, None]), count


def entity_targets(entity_ids: jax.Array, vocab_size: int) -> jax.Array:
    """Multi-hot [B, V] float32 from entity id lists [B, E] padded with -1."""
    return jnp.max(jax.nn.one_hot(entity_ids, vocab_size, dtype=jnp.float32), axis=1)


def safe_mean(total, count):
    return total / jnp.maximum(count, 1.0)
