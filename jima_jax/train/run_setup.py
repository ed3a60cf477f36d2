"""`Setup`: what a train, eval or predict run builds before its first step.

One place that turns a config and a `--workdir` into the prepared data, the mesh, the model, its
(fresh or restored) state and the checkpointer, so training (`train.loop`), `--mode eval`
(`train.evaluate`) and `--mode predict` all start from the same objects.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from typing import Any, Optional

import jax
import ml_collections

from jima_jax import torch_files
from jima_jax.data import phantom_renders, prepare
from jima_jax.data.types import PreparedDataset
from jima_jax.model import jima, resnet
from jima_jax.runtime import parallel
from jima_jax.train import checkpoint, losses, step as step_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a train or eval run builds before its first step (frozen: a run reads it)."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    dataset: PreparedDataset
    mesh: jax.sharding.Mesh
    modeldef: step_lib.ModelDef
    state: step_lib.TrainState  # fresh, or the restored checkpoint's
    state_sharding: Any  # a TrainState-shaped tree of shardings
    loss_tables: losses.LossTables  # training's loss weights, replicated over the mesh
    checkpointer: checkpoint.Checkpointer
    extra: dict  # the restored checkpoint's extra state ({} for a fresh run)

    @property
    def vocab_size(self) -> int:
        return self.dataset.vocab_size


def _check_config(config, dataset: PreparedDataset) -> None:
    phantom_renders.num_renders(config.data)  # a bad value fails before the model is built
    train = dataset.splits['train']
    if len(train) == 0:
        raise ValueError(f'dataset {dataset.name!r} has no training examples.')
    if train.images is None:
        raise ValueError(f'dataset {dataset.name!r} was prepared reports-only; set '
                         'data.reports_only=False (with images available) to train.')
    stored = train.images.shape[-1]
    if config.input.image_size > stored:
        raise ValueError(f'input.image_size={config.input.image_size} exceeds the prepared image '
                         f'size {stored} (data.image_size); lower it or re-prepare.')
    metric = config.train.best_metric
    if not metric.split('/', 1)[-1].startswith('loss/') and not config.train.eval_decode:
        raise ValueError(f'train.best_metric={metric!r} needs generated reports during '
                         "validation: set train.eval_decode=True, or use 'val/loss/report'.")
    if config.train.best_mode not in ('min', 'max'):
        raise ValueError(f"train.best_mode={config.train.best_mode!r}: expected 'min' or 'max'.")
    if int(config.train.early_stop_patience) < 0:
        raise ValueError(f'train.early_stop_patience={config.train.early_stop_patience}: expected '
                         'an integer >= 0 (0 = off).')
    if config.model.in_channels not in (1, 3):
        raise ValueError(f'model.in_channels={config.model.in_channels}: expected 1 or 3.')


def config_to_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def build_model(config, vocab_size: int, *, abstract: bool = False):
    """A fresh JIMA model (optionally with torchvision backbone weights) and its pure pytrees;
    with `abstract`, shapes only (ShapeDtypeStructs: the target of a checkpoint restore)."""
    model = jima.build(config, vocab_size, abstract=abstract)
    if config.model.pretrained and not abstract:
        state = torch_files.read_weights(config.model.pretrained)
        resnet.load_torchvision_state(model.visual, state, source=config.model.pretrained)
        log.info('loaded backbone weights from %s', config.model.pretrained)
    return step_lib.split_model(model)


def setup(config, workdir: str | pathlib.Path, *, restore: bool = True,
          step: Optional[int] = None) -> Setup:
    """The run's `Setup`; its state restored from `<workdir>`'s checkpoint `step` (None: the
    newest intact one) when `restore` and one exists, else freshly initialised."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = prepare.load_prepared(config.data)
    _check_config(config, dataset)
    mesh = parallel.make_mesh(config.parallel)
    parallel.check_batch_size(config.input.batch_size, mesh)
    parallel.check_batch_size(config.input.eval_batch_size, mesh, 'input.eval_batch_size')
    checkpointer = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, config.train),
                                           config.train)
    # A run that restores builds its model as shapes only: initialising the parameters eagerly
    # costs seconds (7-10 s for the demo's model on 2 cores) for values the checkpoint replaces.
    restoring = restore and checkpointer.latest_step() is not None
    modeldef, params, stats = build_model(config, dataset.vocab_size, abstract=restoring)
    init = functools.partial(step_lib.init_train_state, config)
    host_state = jax.eval_shape(init, params, stats) if restoring else init(params, stats)
    state_sharding = parallel.state_shardings(mesh, host_state, config.parallel)
    extra: dict = {}
    restored = None
    if restoring:
        restored = checkpointer.restore(checkpoint.abstract_like(host_state, state_sharding),
                                        step)
    if restored is not None:
        state, extra = restored
    else:
        if restoring:  # every checkpoint vanished between the two looks: start afresh
            modeldef, params, stats = build_model(config, dataset.vocab_size)
            host_state = init(params, stats)
        state = jax.device_put(host_state, state_sharding)
    loss_tables = jax.device_put(losses.make_loss_tables(dataset.tables, config.loss),
                                 parallel.replicated(mesh))
    return Setup(config=config, workdir=workdir, dataset=dataset, mesh=mesh, modeldef=modeldef,
                 state=state, state_sharding=state_sharding, loss_tables=loss_tables,
                 checkpointer=checkpointer, extra=extra)
