"""Train state, the fused JIMA train step (Algorithm 1 in one XLA program), and the eval step.

`train_step(state, batch_a, batch_b, epoch, tables)` performs
  1. Task 1: entity BCE on batch A (x loss.entity_weight) -> gradients for f_R + f_E ->
     optimizer alpha;
  2. Task 2: f_R (updated, frozen: batch-statistics BatchNorm without running-stat updates) and
     f_E (frozen) encode batch B; report NLL -> gradients for fusion + f_T -> optimizer beta;
or, in `joint` mode (the release's `--joint`), one update of everything on
entity_weight * L1(batch A) + L2(batch B): both gradients from the same parameters (L2's stopped at
f_R and f_E as in Task 2), the global gradient norm over all groups clipped at
optim.joint_clip_norm (release 1.0; the per-optimizer `clip` settings are not applied), then both
optimizers step. With model.entity_fusion=False (the R2Gen baseline) there is one task: L2 on
batch B trains f_R (optimizer alpha) and fusion + f_T (beta) together. The imbalance weights
(`LossTables`) are looked up inside the same program, so reweighting costs no extra pass. The
model is an NNX module split once into a graph definition and pure dict pytrees; the step merges
it inside the trace, which is free at run time. A batch may carry its studies' cached f_R
features ('patches', 'pooled') in place of 'images' (train.feature_cache, f_R frozen): f_R is then
not run at all.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jima_jax.model import jima
from jima_jax.text.symbols import PAD_ID
from jima_jax.train import losses, optim


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: completed train steps
    params: dict  # {'visual': ..., 'entity': ..., 'report': ...}
    batch_stats: dict  # BatchNorm running statistics of f_R
    opt1: Any  # optimizer alpha state over {'visual', 'entity'}
    opt2: Any  # optimizer beta state over {'report'}
    rng: jax.Array  # uint32 key data; step keys are fold_in(rng, step)


class ModelDef:
    """The model's static structure; rebuilds a live NNX module from pure pytrees in a trace."""

    def __init__(self, model: nnx.Module):
        self.graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        abstract = lambda s: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s)
        self._params_template = abstract(params)
        self._stats_template = abstract(stats)

    def merge(self, params: dict, batch_stats: dict):
        p = jax.tree.map(lambda x: x, self._params_template)
        s = jax.tree.map(lambda x: x, self._stats_template)
        nnx.replace_by_pure_dict(p, params)
        nnx.replace_by_pure_dict(s, batch_stats)
        return nnx.merge(self.graphdef, p, s)


def split_model(model: nnx.Module) -> tuple[ModelDef, dict, dict]:
    """(structure, params pure dict, batch-stats pure dict) of a freshly built model."""
    modeldef = ModelDef(model)
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return modeldef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def task1_params(params: dict) -> dict:
    """Optimizer alpha's groups (only `visual` in the R2Gen baseline, which has no f_E)."""
    return {k: params[k] for k in optim.TASK1_GROUPS if k in params}


def task2_params(params: dict) -> dict:
    return {k: params[k] for k in optim.TASK2_GROUPS}


def make_optimizers(config: ml_collections.ConfigDict, clip: bool = True):
    """(alpha, beta); `clip=False` without their own clip stage (same state structure)."""
    return (optim.build_optimizer(config.optim.task1, optim.TASK1_GROUPS, clip=clip),
            optim.build_optimizer(config.optim.task2, optim.TASK2_GROUPS, clip=clip))


def init_train_state(config, params: dict, batch_stats: dict) -> TrainState:
    opt1, opt2 = make_optimizers(config)
    key = jax.random.key_data(jax.random.key(config.seed))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt1=opt1.init(task1_params(params)), opt2=opt2.init(task2_params(params)),
                      rng=key)


def _tokens(batch):
    """(decoder input tokens, target tokens) of a batch."""
    return batch['tokens'][:, :-1], batch['tokens'][:, 1:]


def _inputs(batch, mcfg, icfg):
    """(images as the model reads them, decoder input tokens, target tokens) of a batch."""
    return (jima.input_images(batch['images'], mcfg, icfg),) + _tokens(batch)


def _encode(model, batch, mcfg, icfg, *, update_stats: bool = True,
            rngs: Optional[nnx.Rngs] = None) -> jima.Encoding:
    """f_R (train mode) and f_E of a training batch; a batch that carries its cached f_R
    features ('patches', 'pooled': train.feature_cache) runs f_E alone on them."""
    if 'patches' in batch:
        return model.encode_features(batch['patches'], batch['pooled'], rngs)
    return model.encode(jima.input_images(batch['images'], mcfg, icfg), train=True,
                        update_stats=update_stats, rngs=rngs)


# Dropout keys of f_E (the release's mlp head) are folded out of the step key under these tags;
# the report generator draws from the step key itself (nnx.Rngs folds in 0, 1, 2, ... per draw),
# so its masks are the same whether or not f_E has dropout.
_ENTITY_DROPOUT_TASK1 = 0x656E7431
_ENTITY_DROPOUT_TASK2 = 0x656E7432


def _entity_rngs(key, tag: int) -> Optional[nnx.Rngs]:
    return None if key is None else nnx.Rngs(dropout=jax.random.fold_in(key, tag))


def _entity_terms(model, batch, tables: losses.LossTables, vocab_size: int, mcfg, icfg,
                  rngs: Optional[nnx.Rngs] = None):
    """(weighted sum, weight count) of the entity BCE of f_R + f_E in train mode."""
    logits = _encode(model, batch, mcfg, icfg, rngs=rngs).entity_logits
    return losses.entity_bce(logits, losses.entity_targets(batch['entities'], vocab_size),
                             batch['mask'], tables.entity_pos_weights,
                             tables.label_weights[batch['abnormal']])


def _report_terms(model, patches, q, tokens_in, targets, batch, tables: losses.LossTables,
                  rngs: Optional[nnx.Rngs]):
    """(weighted sum, token count) of the report NLL of fusion + f_T on `patches` and `q`."""
    logits = model.report(patches, q, tokens_in, rngs)
    token_mask = (targets != PAD_ID) & (batch['mask'][:, None] > 0)
    return losses.report_nll(logits, targets, token_mask, tables.token_weights,
                             tables.label_weights[batch['abnormal']])


def _stop_visual(params: dict, frozen: bool) -> dict:
    """`params` with f_R's gradient stopped when it is frozen (optim.visual_frozen): its gradient
    is then zero and XLA drops the backbone's backward pass."""
    return {**params, 'visual': jax.lax.stop_gradient(params['visual'])} if frozen else params


class TaskUpdates:
    """The updates Algorithm 1 alternates, as pure functions of (state, batch, ...).

    `task1` and `task2` are also exposed on their own so tests can check that the Task-2 update
    leaves f_R and f_E bit-identical; `train_step` composes them into one program.

    Arrays are global under `jax.jit` (however they are sharded), so a loss is its sum over its
    count and a gradient is complete as computed. The pmap comparison step of the benchmarks
    (benchmarks/pmap_step.py), which sees one shard per device, overrides `_merge`, `_total` and
    `step_key` to add its collectives; nothing here depends on it.
    """

    def __init__(self, modeldef: ModelDef, config: ml_collections.ConfigDict, vocab_size: int):
        self.modeldef = modeldef
        self.config = config
        self.vocab_size = vocab_size
        self.tx1, self.tx2 = make_optimizers(config)
        self.unclipped = make_optimizers(config, clip=False)  # joint: one global-norm clip

    def _merge(self, params, stats):
        return self.modeldef.merge(params, stats)

    def _total(self, x):
        """`x` (a count, a loss or a gradient tree) over the whole batch: `x` itself."""
        return x

    def step_key(self, state: TrainState) -> jax.Array:
        """The step's dropout key: the run key folded with the step number."""
        return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def _apply(self, tx, opt_state, params, grads, factor, summed: bool = False):
        if not summed:
            grads = self._total(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, optim.scale_updates(updates, factor)), opt_state

    def task1(self, state: TrainState, batch: dict, epoch, tables: losses.LossTables,
              key=None):
        """Entity BCE on `batch` -> optimizer alpha on f_R + f_E (BatchNorm stats updated).

        The gradient is of loss.entity_weight * L1 (the release's 0.5); the returned loss is L1.
        `key` (the step key) drives f_E's dropout; None runs f_E without it."""
        grads, loss, stats = self.task1_grads(state, batch, tables, key)
        p1, opt1 = self._apply(self.tx1, state.opt1, task1_params(state.params), grads,
                               optim.epoch_lr_factor(self.config.optim.task1, epoch))
        return state.replace(params={**state.params, **p1}, batch_stats=stats, opt1=opt1), loss

    def task1_grads(self, state: TrainState, batch: dict, tables: losses.LossTables, key=None):
        """(gradient of entity_weight * L1 for f_R + f_E (before `_total`), L1, the BatchNorm
        statistics after `batch`)."""
        mcfg, icfg = self.config.model, self.config.input
        p_report = task2_params(state.params)
        weight = float(self.config.loss.entity_weight)
        frozen = optim.visual_frozen(self.config.optim.task1)

        def loss_fn(p1):
            model = self._merge({**_stop_visual(p1, frozen), **p_report}, state.batch_stats)
            s, c = _entity_terms(model, batch, tables, self.vocab_size, mcfg, icfg,
                                 _entity_rngs(key, _ENTITY_DROPOUT_TASK1))
            loss = s / self._total(c)
            stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
            return (loss if weight == 1.0 else weight * loss), (loss, stats)

        (_, (loss, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            task1_params(state.params))
        return grads, loss, stats

    def task2(self, state: TrainState, batch: dict, epoch, tables: losses.LossTables, key):
        """Report NLL on `batch` -> optimizer beta on fusion + f_T; f_R and f_E frozen (still
        in train mode: batch-statistics BatchNorm, f_E's dropout)."""
        grads, loss = self.task2_grads(state, batch, tables, key)
        p2, opt2 = self._apply(self.tx2, state.opt2, task2_params(state.params), grads,
                               optim.epoch_lr_factor(self.config.optim.task2, epoch))
        return state.replace(params={**state.params, **p2}, opt2=opt2), loss

    def task2_grads(self, state: TrainState, batch: dict, tables: losses.LossTables, key):
        """(gradient of L2 for fusion + f_T (before `_total`), L2): f_R and f_E encode `batch`
        with their gradients stopped, so L2 reaches nothing else."""
        tokens_in, targets = _tokens(batch)
        frozen = self._merge(state.params, state.batch_stats)
        enc = _encode(frozen, batch, self.config.model, self.config.input, update_stats=False,
                      rngs=_entity_rngs(key, _ENTITY_DROPOUT_TASK2))
        patches, q = jax.lax.stop_gradient((enc.patches, enc.q))
        p1 = task1_params(state.params)

        def loss_fn(p2):
            model = self._merge({**p1, **p2}, state.batch_stats)
            s, c = _report_terms(model, patches, q, tokens_in, targets, batch, tables,
                                 nnx.Rngs(dropout=key))
            return s / self._total(c)

        return jax.value_and_grad(loss_fn)(task2_params(state.params))[::-1]

    def _apply_both(self, state: TrainState, g1: dict, g2: dict, epoch, global_clip: bool):
        """Both optimizers from `state` on (g1, g2) (before `_total`); with `global_clip` the two
        first share one global-norm clip at optim.joint_clip_norm."""
        g1, g2 = self._total((g1, g2))
        tx1, tx2 = self.tx1, self.tx2
        if global_clip:  # instead of each optimizer's own clip
            g1, g2 = optim.clip_global_norm((g1, g2), float(self.config.optim.joint_clip_norm))
            tx1, tx2 = self.unclipped
        p1, opt1 = self._apply(tx1, state.opt1, task1_params(state.params), g1,
                               optim.epoch_lr_factor(self.config.optim.task1, epoch), summed=True)
        p2, opt2 = self._apply(tx2, state.opt2, task2_params(state.params), g2,
                               optim.epoch_lr_factor(self.config.optim.task2, epoch), summed=True)
        return state.replace(params={**p1, **p2}, opt1=opt1, opt2=opt2)

    def joint(self, state: TrainState, batch_a: dict, batch_b: dict, epoch,
              tables: losses.LossTables, key):
        """The release's joint mode: entity_weight * L1 on `batch_a` (f_R + f_E) and L2 on
        `batch_b` (fusion + f_T, f_R and f_E stopped), both from `state`, one global-norm clip
        over all gradients, one step of each optimizer. BatchNorm statistics follow batch A."""
        g1, l1, stats = self.task1_grads(state, batch_a, tables, key)
        g2, l2 = self.task2_grads(state, batch_b, tables, key)
        state = self._apply_both(state, g1, g2, epoch, global_clip=True)
        return state.replace(batch_stats=stats), (l1, l2)

    def report_only(self, state: TrainState, batch: dict, epoch, tables: losses.LossTables,
                    key, global_clip: bool):
        """The R2Gen baseline (model.entity_fusion=False): L2 on `batch` trains f_R (optimizer
        alpha, BatchNorm statistics updated) and fusion + f_T (beta) in one step; `global_clip`
        (joint mode) clips the global norm as `joint` does, else each optimizer's `clip`."""
        tokens_in, targets = _tokens(batch)
        mcfg, icfg = self.config.model, self.config.input
        frozen = optim.visual_frozen(self.config.optim.task1)

        def loss_fn(params):
            model = self._merge(_stop_visual(params, frozen), state.batch_stats)
            enc = _encode(model, batch, mcfg, icfg)  # no f_E: enc.q is None
            s, c = _report_terms(model, enc.patches, enc.q, tokens_in, targets, batch, tables,
                                 nnx.Rngs(dropout=key))
            return s / self._total(c), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = self._apply_both(state, task1_params(g), task2_params(g), epoch, global_clip)
        return state.replace(batch_stats=stats), loss

    def train_step(self, state: TrainState, batch_a: dict, batch_b: dict, epoch: jax.Array,
                   tables: losses.LossTables):
        """The fused step: Task 1 then Task 2, the joint update, or the R2Gen baseline's one
        update (model.entity_fusion=False; it reads batch B only)."""
        config = self.config
        mode = _train_mode(config)
        key = self.step_key(state)
        l1 = None
        if not jima.entity_fusion(config.model):
            state, l2 = self.report_only(state, batch_b, epoch, tables, key,
                                         global_clip=mode == 'joint')
        elif mode == 'alternate':
            state, l1 = self.task1(state, batch_a, epoch, tables, key)
            state, l2 = self.task2(state, batch_b, epoch, tables, key)
        else:
            state, (l1, l2) = self.joint(state, batch_a, batch_b, epoch, tables, key)
        metrics = {'loss/report': self._total(l2),
                   'lr/task1_factor': optim.epoch_lr_factor(config.optim.task1, epoch),
                   'lr/task2_factor': optim.epoch_lr_factor(config.optim.task2, epoch)}
        if l1 is not None:
            metrics['loss/entity'] = self._total(l1)
        return state.replace(step=state.step + 1), metrics


def _train_mode(config: ml_collections.ConfigDict) -> str:
    mode = config.train.mode
    if mode not in ('alternate', 'joint'):
        raise ValueError(f"train.mode={mode!r}: expected 'alternate' or 'joint'.")
    return mode


def build_train_step(modeldef: ModelDef, config: ml_collections.ConfigDict,
                     vocab_size: int) -> Callable:
    """The pure fused step (not yet jitted), `TaskUpdates.train_step`; a bad train.mode fails
    here, before any tracing."""
    _train_mode(config)
    return TaskUpdates(modeldef, config, vocab_size).train_step


def build_eval_step(modeldef: ModelDef, config: ml_collections.ConfigDict,
                    vocab_size: int) -> Callable:
    """(params, batch_stats, batch, tables) -> summed losses and counts of one (padded) batch."""
    mcfg, icfg = config.model, config.input

    def step(params, batch_stats, batch, tables: losses.LossTables):
        model = modeldef.merge(params, batch_stats)
        images, tokens_in, targets = _inputs(batch, mcfg, icfg)
        ent_logits, logits = model(images, tokens_in)
        ex_w = tables.label_weights[batch['abnormal']]
        out = {}
        if ent_logits is not None:  # the R2Gen baseline has no f_E and no entity loss
            out['entity_sum'], out['entity_count'] = losses.entity_bce(
                ent_logits, losses.entity_targets(batch['entities'], vocab_size), batch['mask'],
                tables.entity_pos_weights, ex_w)
        token_mask = (targets != PAD_ID) & (batch['mask'][:, None] > 0)
        out['report_sum'], out['report_count'] = losses.report_nll(
            logits, targets, token_mask, tables.token_weights, ex_w)
        return out

    return step


def jit_train_step(step_fn: Callable, mesh, state_sharding) -> Callable:
    """The sharded step: state in `state_sharding` (donated), batches split over every device."""
    from jima_jax.runtime import parallel
    rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(state_sharding, batch, batch, rep, rep),
                   out_shardings=(state_sharding, rep), donate_argnums=(0,))

