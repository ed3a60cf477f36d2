"""Device mesh and sharding rules, all in one place.

The mesh has two axes, `data` and `fsdp`. Batches are split over both (every device holds a
different slice of the examples). Parameters and optimizer states are replicated, or, with
`parallel.shard_params`, each large array is split over `fsdp` along its largest divisible
dimension (ZeRO-3 style); XLA inserts the all-gathers and reduce-scatters.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


BATCH_AXES = ('data', 'fsdp')
log = logging.getLogger(__name__)


def make_mesh(pcfg, devices=None) -> Mesh:
    """Mesh of shape (data, fsdp) over all (or the given) devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    fsdp = int(pcfg.fsdp)
    data = int(pcfg.data)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f'parallel.fsdp={fsdp} must be >= 1 and divide the {n} devices.')
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f'parallel.data={pcfg.data} x parallel.fsdp={fsdp} != {n} devices; '
                         'set parallel.data=-1 to use the rest.')
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) dimension split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = 'input.batch_size') -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f'{what}={batch_size} is not divisible by the {n} devices of the mesh; '
                         f'use a multiple of {n}.')


def _param_spec(shape, fsdp: int, min_size: int) -> P:
    if fsdp == 1 or math.prod(shape) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % fsdp == 0:
            spec = [None] * len(shape)
            spec[d] = 'fsdp'
            return P(*spec)
    return P()


def state_shardings(mesh: Mesh, tree, pcfg):
    """NamedSharding for every leaf of a (params / optimizer state) tree, per the config."""
    fsdp = mesh.shape['fsdp'] if pcfg.shard_params else 1

    def leaf(x):
        shape = getattr(x, 'shape', ())
        return NamedSharding(mesh, _param_spec(tuple(shape), fsdp, int(pcfg.min_shard_size)))

    return jax.tree.map(leaf, tree)


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Host numpy batch -> global device arrays split over the batch axes.

    Multi-process runs pass each process's local slice; the global array is assembled from all.
    """
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def to_host(tree):
    """Global device arrays (or this process's slices) -> full host numpy arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
