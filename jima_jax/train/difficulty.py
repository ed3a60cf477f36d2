"""Difficulty measurers k1 and k2 (spec section 5), scored on device over a whole split.

One jitted program per eval batch runs the model in eval mode (running BatchNorm statistics, no
dropout, no augmentation, teacher forcing) and turns its logits into per-example difficulties.
Rank(p, p[z]) = 1 + #{j : p_j > p[z]} is a count over the vocabulary, never a sort, so scoring adds
an O(B x L x |V|) comparison to a forward pass whose output projection alone is O(B x L x W x |V|).
Ranks are taken on logits: sigmoid (Task 1) and softmax (Task 2) are strictly increasing maps of
them, so the order is the one of the probabilities, without the float ties that saturated
probabilities would add. Ties count in the example's favour.

- k1: mean over the example's gold entities e_i of Rank(q, q[e_i]) / |V|; 0 for an example without
  entities (as the authors' release does). The R2Gen baseline (model.entity_fusion=False) has no
  q: its k1 is NaN and `has_entities` False everywhere (`Difficulty.measures_k1`), and the
  curriculum ranks both of its sets by k2.
- k2 ('all'): mean over the reference's report tokens (targets other than PAD and EOS) of
  Rank(P_i, P_i[z_i]) / |V|.
- k2 ('balanced'): the mean of the entity-token mean and the non-entity-token mean (a token is an
  entity token when its id is one of the example's entity ids); the one available mean when the
  report has only one kind; 0 for an empty report.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jima_jax.data.types import PreparedSplit
from jima_jax.model import jima
from jima_jax.runtime import parallel
from jima_jax.text.symbols import EOS_ID, PAD_ID
from jima_jax.train import feature_cache, inputs, step as step_lib

K2_MODES = ('all', 'balanced')


@dataclasses.dataclass
class Difficulty:
    """Per-example difficulties of one split, indexed by example position (ids[i] names it)."""

    ids: np.ndarray  # [N] str: the study ids, so results can be keyed by id
    k1: np.ndarray  # [N] float32
    k2_all: np.ndarray  # [N] float32
    k2_balanced: np.ndarray  # [N] float32
    has_entities: np.ndarray  # [N] bool: k1 is measured (not the entity-less 0)

    @property
    def measures_k1(self) -> bool:
        """False for scores of the R2Gen baseline (no f_E: k1 is NaN throughout)."""
        return not (len(self.k1) and bool(np.all(np.isnan(self.k1))))

    def k2(self, mode: str) -> np.ndarray:
        if mode not in K2_MODES:
            raise ValueError(f'curriculum.k2_mode={mode!r}: expected one of {K2_MODES}.')
        return self.k2_all if mode == 'all' else self.k2_balanced

    def by_id(self) -> dict[str, dict[str, float]]:
        """{study id: {'k1', 'k2_all', 'k2_balanced'}} for reports and inspection."""
        return {str(i): {'k1': float(a), 'k2_all': float(b), 'k2_balanced': float(c)}
                for i, a, b, c in zip(self.ids, self.k1, self.k2_all, self.k2_balanced)}


def reference_rank(scores: jax.Array, reference: jax.Array) -> jax.Array:
    """1 + #{j : scores[..., j] > reference[...]}: int32 of shape `reference.shape`."""
    return 1 + jnp.sum(scores > reference[..., None], axis=-1, dtype=jnp.int32)


def _masked_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    count = jnp.sum(mask, axis=-1)
    total = jnp.sum(jnp.where(mask, values, 0.0), axis=-1)
    return total / jnp.maximum(count, 1), count


def example_difficulty(entity_logits: jax.Array, report_logits: jax.Array, targets: jax.Array,
                       entities: jax.Array) -> dict[str, jax.Array]:
    """k1, k2 (both forms) per example from one batch's logits.

    entity_logits [B, V], or None (the R2Gen baseline: k1 NaN, has_entities False);
    report_logits [B, L, V] (teacher-forced); targets [B, L] int;
    entities [B, E] int, -1 padded.
    """
    vocab = report_logits.shape[-1]
    has = entities >= 0
    if entity_logits is None:
        k1 = jnp.full(entities.shape[:1], jnp.nan, jnp.float32)
        n_entities = jnp.zeros(entities.shape[:1], jnp.int32)
    else:
        safe = jnp.where(has, entities, 0)
        ref1 = jnp.take_along_axis(entity_logits, safe, axis=-1)  # [B, E]
        rank1 = reference_rank(entity_logits[:, None, :], ref1).astype(jnp.float32)
        k1, n_entities = _masked_mean(rank1 / vocab, has)

    ref2 = jnp.take_along_axis(report_logits, targets[..., None], axis=-1)[..., 0]  # [B, L]
    k_tok = reference_rank(report_logits, ref2).astype(jnp.float32) / vocab
    tokens = (targets != PAD_ID) & (targets != EOS_ID)
    is_entity = jnp.any((targets[..., None] == entities[:, None, :]) & has[:, None, :], axis=-1)
    k2_all, _ = _masked_mean(k_tok, tokens)
    k_ent, n_ent = _masked_mean(k_tok, tokens & is_entity)
    k_non, n_non = _masked_mean(k_tok, tokens & ~is_entity)
    k2_bal = jnp.where((n_ent > 0) & (n_non > 0), 0.5 * (k_ent + k_non),
                       jnp.where(n_ent > 0, k_ent, k_non))
    return {'k1': k1, 'k2_all': k2_all, 'k2_balanced': k2_bal, 'has_entities': n_entities > 0}


def build_score_step(modeldef: step_lib.ModelDef, mcfg, icfg) -> Callable:
    """Pure (params, batch_stats, batch) -> per-example difficulties of one batch."""

    def score(params, batch_stats, batch):
        model = modeldef.merge(params, batch_stats)
        tokens_in, targets = step_lib._tokens(batch)
        if 'patches' in batch:  # cached f_R features (train.feature_cache): evaluation mode too
            enc = model.encode_features(batch['patches'], batch['pooled'])
        else:
            enc = model.encode(jima.input_images(batch['images'], mcfg, icfg), train=False)
        logits = model.report(enc.patches, enc.q, tokens_in, None)
        # entity logits are None in the R2Gen baseline
        return example_difficulty(enc.entity_logits, logits.astype(jnp.float32), targets,
                                  batch['entities'])

    return score


def jit_score_step(score_fn: Callable, mesh, state_sharding) -> Callable:
    """The sharded scoring program: batch split over every device, outputs stay split."""
    batch = parallel.batch_sharding(mesh)
    return jax.jit(score_fn, in_shardings=(state_sharding.params, state_sharding.batch_stats,
                                           batch), out_shardings=batch)



def score_split(score_fn: Callable, params, batch_stats, split: PreparedSplit, icfg, *,
                seed: int, mesh, features=None) -> Difficulty:
    """Difficulties of every example of `split` (eval batches; padding rows dropped); with
    `features` (the split's `feature_cache.FeatureTable`) f_R is read from it, not run."""
    pipe = inputs.host_pipeline(split, icfg, seed)
    sharding = parallel.batch_sharding(mesh)
    outputs = []  # device arrays; fetched once at the end so dispatch runs ahead of the host
    for batch in pipe.eval_batches():
        if features is not None:
            batch = feature_cache.swap_in(batch, features)
        device_batch = parallel.put_batch(batch, sharding)
        outputs.append((score_fn(params, batch_stats, device_batch), device_batch['index'],
                        device_batch['mask']))
    n = len(split)
    result = {'k1': np.zeros(n, np.float32), 'k2_all': np.zeros(n, np.float32),
              'k2_balanced': np.zeros(n, np.float32), 'has_entities': np.zeros(n, bool)}
    seen = np.zeros(n, bool)
    for out, index, mask in parallel.to_host(outputs):
        keep = np.asarray(mask) > 0
        rows = np.asarray(index)[keep]
        for key, values in result.items():
            values[rows] = np.asarray(out[key])[keep]
        seen[rows] = True
    if not seen.all():
        raise RuntimeError(f'difficulty scoring missed {int((~seen).sum())} of {n} examples.')
    return Difficulty(ids=np.asarray(split.ids), **result)
