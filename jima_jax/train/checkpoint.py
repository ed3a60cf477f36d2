"""Orbax checkpoints: train state, config, and an "extra" JSON (curriculum, data position).

One `CheckpointManager` under `<workdir>/checkpoints` (or `train.checkpoint_dir`, gs:// too),
saving asynchronously. Preserved: the last `train.keep_checkpoints` steps plus the best one by
`train.best_metric` (only checkpoints saved with that metric compete). Orbax writes each step
into a temporary directory and renames it when complete, so a crash mid-save never leaves a
checkpoint that `restore` would pick up.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger(__name__)


def _jsonable(tree: Any) -> Any:
    """Extra state may hold numpy arrays/scalars; JSON gets lists and Python numbers."""
    if isinstance(tree, dict):
        return {str(k): _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return tree.tolist()
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def checkpoint_dir(workdir: str | pathlib.Path, train_cfg):
    """`train.checkpoint_dir` (a local path or a gs:// URL), or `<workdir>/checkpoints`."""
    where = str(train_cfg.get('checkpoint_dir', '') or '')
    if not where:
        return pathlib.Path(workdir).absolute() / 'checkpoints'
    if where.startswith('gs://'):
        from etils import epath  # Orbax's own path type; handles gs:// through tensorstore/gcs
        return epath.Path(where)
    if '://' in where:
        raise ValueError(f'train.checkpoint_dir={where!r}: only local paths and gs:// URLs are '
                         'supported.')
    return pathlib.Path(where).absolute()


class Checkpointer:
    """Saves and restores (state, extra) pairs; `config` is written with every step for provenance."""

    def __init__(self, directory: str | pathlib.Path, train_cfg, *, async_save: bool = True):
        self.directory = (directory if str(directory).startswith('gs://')
                          else pathlib.Path(directory).absolute())
        self.metric = train_cfg.best_metric
        if train_cfg.best_mode not in ('min', 'max'):
            raise ValueError(f"train.best_mode={train_cfg.best_mode!r}: expected 'min' or 'max'.")
        metric = self.metric
        policies = [checkpoint_managers.LatestN(n=max(int(train_cfg.keep_checkpoints), 1)),
                    checkpoint_managers.BestN(
                        get_metric_fn=lambda m: m[metric], reverse=train_cfg.best_mode == 'min',
                        n=1, keep_checkpoints_without_metrics=False)]
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_names=('state', 'extra', 'config'))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, extra: dict, config_json: dict,
             metrics: Optional[dict] = None) -> None:
        """Starts an (asynchronous) save; `metrics` with `best_metric` makes it a best candidate."""
        if step in self.manager.all_steps():
            return  # already saved (e.g. a preemption right after a periodic save)
        if metrics is not None and self.metric not in metrics:
            metrics = None
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    extra=ocp.args.JsonSave(_jsonable(extra)),
                                    config=ocp.args.JsonSave(_jsonable(config_json))),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True)

    def restore(self, abstract_state, step: Optional[int] = None):
        """(state, extra) of `step` (default: latest), arrays placed per the abstract shardings."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          extra=ocp.args.JsonRestore()))
        log.info('restored checkpoint step %d from %s', step, self.directory)
        return restored['state'], restored['extra']

    def read_extra(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(
            extra=ocp.args.JsonRestore()))['extra']

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with shardings: the restore target for `Checkpointer.restore`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
