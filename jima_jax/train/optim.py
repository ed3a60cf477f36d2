"""The two optimizers of Algorithm 1: alpha (Task 1: f_R + f_E) and beta (Task 2: fusion + f_T).

In the R2Gen baseline (model.entity_fusion=False) there is no f_E: alpha updates f_R alone, from
the report loss, so f_R keeps its own learning rate and decay.

Both are Adam (optionally AMSGrad, PyTorch-style coupled weight decay, value or norm clipping) with
a per-group base learning rate. The per-epoch step decay (paper: x0.8 every epoch; release IU
X-ray: x0.1 every 50 epochs) is applied as a factor on the final update, computed from the epoch
number inside the jitted step: epochs have a variable number of steps under the curriculum, so a
step-count schedule could not express it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

TASK1_GROUPS = ('visual', 'entity')
TASK2_GROUPS = ('report',)


def _scale_by_group_lr(group_lrs: dict[str, float]) -> optax.GradientTransformation:
    """Multiplies each top-level parameter group's update by -lr of that group."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return {k: jax.tree.map(lambda u, lr=group_lrs[k]: -lr * u, v)
                for k, v in updates.items()}, state

    return optax.GradientTransformation(init, update)


def build_optimizer(ocfg, groups: tuple[str, ...], *,
                    clip: bool = True) -> optax.GradientTransformation:
    """Adam for the parameter groups `groups` (a dict {group: params} is what it updates).

    `clip=False` (joint mode, which clips one global norm itself) leaves `ocfg.clip` out, with an
    identity in its place so the optimizer state keeps the same structure."""
    parts = []
    if ocfg.clip not in ('none', 'value', 'norm'):
        raise ValueError(f"optim.*.clip={ocfg.clip!r}: expected 'none', 'value' or 'norm'.")
    if ocfg.clip != 'none' and not clip:
        parts.append(optax.identity())
    elif ocfg.clip == 'value':
        parts.append(optax.clip(ocfg.clip_value))
    elif ocfg.clip == 'norm':
        parts.append(optax.clip_by_global_norm(ocfg.clip_value))
    if ocfg.weight_decay:
        parts.append(optax.add_decayed_weights(ocfg.weight_decay))  # PyTorch Adam: L2 on grads
    if ocfg.amsgrad:
        parts.append(optax.scale_by_amsgrad(b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps))
    else:
        parts.append(optax.scale_by_adam(b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps))
    lrs = {g: ocfg.lr for g in groups}
    if 'visual' in groups and ocfg.visual_lr >= 0:
        lrs['visual'] = ocfg.visual_lr
    parts.append(_scale_by_group_lr(lrs))
    return optax.chain(*parts)


def visual_frozen(ocfg) -> bool:
    """optim.task1.visual_lr == 0: f_R is frozen (e.g. after label pre-training). The train step
    then stops f_R's gradient, so its backward pass is never computed (the step's largest cost);
    f_R's parameters stay bit-identical, its BatchNorm statistics still follow the batches."""
    return float(ocfg.visual_lr) == 0.0


def epoch_lr_factor(ocfg, epoch: jax.Array) -> jax.Array:
    """decay_rate ** (epoch // decay_every_epochs), traced from an int32 epoch."""
    every = max(int(ocfg.decay_every_epochs), 1)
    return jnp.asarray(ocfg.decay_rate, jnp.float32) ** (epoch // every).astype(jnp.float32)


def scale_updates(updates, factor):
    return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates)


def clip_global_norm(trees, max_norm: float):
    """`trees` scaled by min(1, max_norm / (norm + 1e-6)), norm = the L2 norm over ALL of them
    together (torch's clip_grad_norm_ over every parameter, as the release's joint mode does;
    one norm, not one per optimizer). max_norm <= 0 returns them unchanged."""
    if max_norm <= 0:
        return trees
    norm = optax.global_norm(trees)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), trees)
