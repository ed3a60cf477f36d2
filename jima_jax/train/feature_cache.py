"""Cached f_R features for a frozen backbone (`train.feature_cache`).

With f_R frozen (`optim.task1.visual_lr=0`, e.g. after label pre-training) the train step still
runs f_R forward on both of its batches, about 45% of the demo's step, to recompute features
that cannot change. With `train.feature_cache` the run computes them once, before the first step:
every training study's patch and pooled features with evaluation-mode BatchNorm (the running
statistics) on its evaluation image (no random crop or flip), which are exactly the features
evaluation and decoding give the report model. The input pipeline then skips the images, each
training batch carries its rows of that table ('patches', 'pooled') instead, and the step runs
f_E and the report model on them (`step._encode`).

The cached step is the uncached one with `model.freeze_bn_stats=True` and `input.augment=False`
(tests/train/test_feature_cache.py checks that equivalence): it trains f_E and the report model
on the features evaluation sees rather than on batch-statistics features of augmented crops,
and the BatchNorm running statistics stay those f_R came with. The table is recomputed from the
state on every start, resumed runs included (f_R is frozen, so it is the same table).
"""

from __future__ import annotations

import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jima_jax.data import phantom_renders
from jima_jax.model import jima
from jima_jax.runtime import parallel
from jima_jax.train import optim, pretrain

MAX_GIB = 4.0  # host memory the table may take


class FeatureTable(NamedTuple):
    """f_R's output for every training study, row i = study i of the split."""

    patches: np.ndarray  # [N, V*h*w, d]
    pooled: np.ndarray  # float32 [N, V*d]

    @property
    def nbytes(self) -> int:
        return self.patches.nbytes + self.pooled.nbytes


def enabled(config: ml_collections.ConfigDict) -> bool:
    """train.feature_cache, validated: it needs a frozen f_R and one image per study (configs
    written before the key existed read as False)."""
    value = config.train.get('feature_cache', False)
    if not isinstance(value, bool):
        raise ValueError(f'train.feature_cache={value!r}: expected True or False.')
    if not value:
        return False
    if not optim.visual_frozen(config.optim.task1):
        raise ValueError('train.feature_cache=True caches the features of a frozen f_R, but '
                         f'optim.task1.visual_lr={config.optim.task1.visual_lr} trains it; set '
                         'optim.task1.visual_lr=0 (f_R frozen) or train.feature_cache=False.')
    if phantom_renders.num_renders(config.data) > 1:
        raise ValueError('train.feature_cache=True needs one image per training study, but '
                         f'{phantom_renders.KEY}={phantom_renders.num_renders(config.data)} draws '
                         'a new one every epoch; set one of the two back (train_renders=1 or '
                         'feature_cache=False).')
    return True


def build(config: ml_collections.ConfigDict, modeldef, params: dict, batch_stats: dict,
          split, mesh) -> FeatureTable:
    """The table of `split` under (params, batch_stats): evaluation-mode f_R on each study's
    evaluation image, batches over `mesh` as evaluation runs them. Refuses a table larger than
    MAX_GIB before computing it."""
    mcfg, icfg = config.model, config.input

    @jax.jit
    def features(p, s, images):
        return modeldef.merge(p, s).features(jima.input_images(images, mcfg, icfg), train=False)

    size = int(icfg.image_size)
    one = jax.ShapeDtypeStruct((1, config.data.num_views, size, size), np.uint8)
    patch_shape, pooled_shape = jax.eval_shape(features, params, batch_stats, one)
    patch_dim = int(np.prod(patch_shape.shape[1:]))
    gib = len(split) * (patch_dim + pooled_shape.shape[1]) * 4 / 2**30
    if gib > MAX_GIB:
        raise ValueError(f'train.feature_cache=True: the f_R features of {len(split)} training '
                         f'studies would take {gib:.1f} GiB of host memory (limit {MAX_GIB:g}); '
                         'set train.feature_cache=False for a corpus this size.')
    p, s = jax.device_put((params, batch_stats), parallel.replicated(mesh))

    def rows(images):  # one array per batch for eval_rows: patches flattened, then pooled
        patches, pooled = features(p, s, images)
        return jnp.concatenate([patches.reshape(patches.shape[0], -1).astype(jnp.float32),
                                pooled], axis=1)

    table, index = pretrain.eval_rows(rows, split, icfg, config.seed,
                                      parallel.batch_sharding(mesh))
    order = np.empty(len(split), np.int64)
    order[index] = np.arange(len(index))
    table = table[order]
    return FeatureTable(
        patches=table[:, :patch_dim].reshape((len(split),) + patch_shape.shape[1:])
        .astype(patch_shape.dtype),
        pooled=np.ascontiguousarray(table[:, patch_dim:]))


def for_run(run) -> Optional[FeatureTable]:
    """The run's table when train.feature_cache is on (a console line with its cost), else
    None."""
    config = run.config
    if not enabled(config):
        return None
    train = run.dataset.splits['train']
    t0 = time.perf_counter()
    table = build(config, run.modeldef, run.state.params, run.state.batch_stats, train, run.mesh)
    if jax.process_index() == 0:
        print(f'feature cache: f_R features of {len(train)} training studies in '
              f'{time.perf_counter() - t0:.1f}s ({table.nbytes / 2**20:.0f} MiB)', flush=True)
    return table


def swap_in(batch: dict, table: FeatureTable) -> dict:
    """A host training batch with its studies' cached features (in place of its images, if it
    has any)."""
    out = {k: v for k, v in batch.items() if k != 'images'}
    index = np.asarray(batch['index'])
    out['patches'] = table.patches[index]
    out['pooled'] = table.pooled[index]
    return out
