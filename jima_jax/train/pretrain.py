"""Visual pre-training: f_R learns to see before Algorithm 1 starts (`pretrain.steps`).

Task 1's targets are a weak signal for a backbone trained from scratch: the entity words of a
report ("pleural", "effusion", "pneumothorax") also stand in the negated normal sentences of
nearly every study, so their presence says little about the image, and in the README's sweep a
from-scratch ResNet-18 began to read the phantom images only after 800-1,600 steps. Here f_R and a
linear head learn the labels the package's labeler reads from each TRAINING report (13 findings
found, i.e. positive or uncertain, plus normal/abnormal) with a multi-label BCE, the classifier
pre-training radiology report generators commonly start from. No test or validation text is used.
`pretrain.targets='findings'` adds the three findings the labeler reads outside CheXpert's 13
(calcified granuloma, degenerative spine, hiatal hernia: IU X-ray's commonest, and drawn by the
phantom corpora); with the 13 alone f_R is never asked to see them, and a frozen f_R never does.

The result is written as `<workdir>/pretrain/backbone.safetensors` in torchvision layout, the
format `model.pretrained` reads, plus `pretrain/summary.json` (losses and per-label validation
AUC, the evidence that the backbone sees). `train_and_evaluate` runs it first when
`pretrain.steps > 0` and the run starts fresh; `--mode pretrain` runs it alone.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jima_jax import atomic, kernel_choice, torch_files
from jima_jax.data import pipeline as pipeline_lib, prepare
from jima_jax.data.types import PreparedSplit
from jima_jax.evaluation import phantom_truth
from jima_jax.model import jima, resnet
from jima_jax.runtime import parallel
from jima_jax.text.symbols import LABEL_POSITIVE, LABEL_UNCERTAIN, OBSERVATIONS
from jima_jax.train import inputs, step as step_lib

TARGETS = OBSERVATIONS[1:] + ('abnormal',)  # "No Finding" is the complement of `abnormal`
TARGET_SETS = ('chexpert', 'findings')  # pretrain.targets
BACKBONE_FILE = 'backbone.safetensors'
_STREAM = 2  # its own shuffling stream, apart from Task 1's (0) and Task 2's (1)


def target_names(kind: str = 'chexpert') -> tuple[str, ...]:
    """The head's outputs for `pretrain.targets`: the 13 CheXpert findings (+ the 3 the labeler
    reads outside them, for 'findings'), then abnormal."""
    if kind == 'chexpert':
        return TARGETS
    if kind == 'findings':
        return tuple(phantom_truth.FINDINGS) + ('abnormal',)
    raise ValueError(f"pretrain.targets={kind!r}: expected one of {', '.join(TARGET_SETS)}.")


def label_targets(split: PreparedSplit, kind: str = 'chexpert') -> np.ndarray:
    """float32 [N, len(target_names(kind))]: each finding positive-or-uncertain in the report
    (read by the labeler, as `phantom_truth` reads generated reports), then abnormal."""
    if kind == 'findings':
        found, _ = phantom_truth.read_reports([str(r) for r in split.reports])
    else:
        target_names(kind)  # refuses an unknown kind
        found = np.isin(split.labels[:, 1:], (LABEL_POSITIVE, LABEL_UNCERTAIN))
    return np.concatenate([found, split.abnormal[:, None] > 0], axis=1).astype(np.float32)


def targets_of(pcfg) -> str:
    """pretrain.targets, 'chexpert' for configs written before the key existed."""
    return str(pcfg.get('targets', 'chexpert'))


def backbone_path(workdir) -> pathlib.Path:
    return pathlib.Path(workdir) / 'pretrain' / BACKBONE_FILE


def check_config(pcfg) -> None:
    for key, low in (('steps', 0), ('batch_size', 1), ('log_every_steps', 1)):
        if int(pcfg[key]) < low:
            raise ValueError(f'pretrain.{key}={pcfg[key]}: expected an integer >= {low}.')
    if not float(pcfg.lr) > 0:
        raise ValueError(f'pretrain.lr={pcfg.lr}: expected a positive learning rate.')
    target_names(targets_of(pcfg))


class LabelNet(nnx.Module):
    """f_R exactly as JIMA builds it, views pooled and concatenated as in `JIMA.features`, and a
    linear multi-label head."""

    def __init__(self, mcfg, num_views: int, num_targets: int, *, rngs: nnx.Rngs):
        self.visual = resnet.ResNet(
            mcfg.backbone, in_channels=mcfg.in_channels, base_width=resnet.base_width(mcfg),
            freeze_bn_stats=mcfg.freeze_bn_stats,
            kernels=kernel_choice.configured(mcfg), remat=mcfg.remat_backbone,
            dtype=jima.compute_dtype(mcfg.dtype), rngs=rngs)
        self.head = nnx.Linear(self.visual.feature_dim * num_views, num_targets, rngs=rngs)

    def features(self, images, train: bool):
        """Pooled f_R features [B, V*d], as `JIMA.features` pools them for f_E and the decoder."""
        b, v, h, w, c = images.shape
        fmap = self.visual(images.reshape(b * v, h, w, c), train)
        return jnp.mean(fmap.astype(jnp.float32), axis=(1, 2)).reshape(b, -1)

    def __call__(self, images, train: bool):
        return self.head(self.features(images, train))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); nan without both classes."""
    pos, neg = scores[labels > 0], scores[labels <= 0]
    if len(pos) == 0 or len(neg) == 0:
        return float('nan')
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


class LabelTrainer:
    """f_R + a linear head trained with multi-label BCE on given per-study targets of the
    training split, one jitted step over the device mesh. `pretrain` uses it with the reports'
    labels; experiments/visibility_ceiling.py with the phantom's drawn findings."""

    def __init__(self, config: ml_collections.ConfigDict, train: PreparedSplit,
                 targets: np.ndarray, *, batch_size: int, lr: float):
        mcfg = config.model
        self.config, self.targets = config, np.asarray(targets, np.float32)
        if self.targets.shape[0] != len(train):
            raise ValueError(f'{self.targets.shape[0]} target rows for {len(train)} studies.')
        self.mesh = parallel.make_mesh(config.parallel)
        self.icfg = icfg = ml_collections.ConfigDict(config.input.to_dict())
        icfg.batch_size = int(batch_size)
        parallel.check_batch_size(icfg.batch_size, self.mesh, 'pretrain.batch_size')
        net = LabelNet(mcfg, config.data.num_views, self.targets.shape[1],
                       rngs=nnx.Rngs(params=config.seed))
        self.modeldef, params, stats = step_lib.split_model(net)
        tx = optax.adam(float(lr))
        self.rep, self.batch_sh = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)
        self.params, self.stats = jax.device_put((params, stats), self.rep)
        self.opt = jax.device_put(tx.init(params), self.rep)

        def forward(p, s, images, train_mode):
            model = self.modeldef.merge(p, s)
            logits = model(jima.input_images(images, mcfg, icfg), train_mode)
            return logits.astype(jnp.float32), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

        def step(p, s, o, images, targets):
            def loss_fn(p):
                logits, new_s = forward(p, s, images, True)
                return optax.sigmoid_binary_cross_entropy(logits, targets).mean(), new_s
            (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
            updates, o = tx.update(grads, o, p)
            return optax.apply_updates(p, updates), s, o, loss

        rep, batch_sh = self.rep, self.batch_sh
        self._step = jax.jit(step, in_shardings=(rep, rep, rep, batch_sh, batch_sh),
                             out_shardings=(rep, rep, rep, rep), donate_argnums=(0, 1, 2))
        self._predict = jax.jit(lambda p, s, x: jax.nn.sigmoid(forward(p, s, x, False)[0]))
        self._features = jax.jit(lambda p, s, x: self.modeldef.merge(p, s).features(
            jima.input_images(x, mcfg, icfg), False))
        self._pipe = inputs.training_pipeline(config, train, icfg)
        self._kept = pipeline_lib.StreamSpec(np.arange(len(train), dtype=np.int32), _STREAM)
        self._per_epoch = pipeline_lib.steps_per_epoch([self._kept], icfg.batch_size)
        self.done, self._epoch, self._pos = 0, 0, 0

    def fit(self, steps: int, log_every: int = 0, total: int = 0) -> None:
        """`steps` more updates, continuing the epoch order; a line every `log_every` steps."""
        target, losses, t0, start = self.done + int(steps), [], time.perf_counter(), self.done
        while self.done < target:
            stop = min(self._per_epoch, self._pos + target - self.done)
            for batch in self._pipe.train_batches(self._kept, epoch=self._epoch, num_steps=stop,
                                                  start_step=self._pos):
                b = parallel.put_batch({'images': batch['images'],
                                        'targets': self.targets[batch['index']]}, self.batch_sh)
                self.params, self.stats, self.opt, loss = self._step(
                    self.params, self.stats, self.opt, b['images'], b['targets'])
                self.done += 1
                losses.append(loss)
                if log_every and (self.done % log_every == 0 or self.done == target):
                    mean = float(np.mean(jax.device_get(losses)))
                    losses = []
                    rate = ((self.done - start) * self.icfg.batch_size
                            / (time.perf_counter() - t0))
                    if jax.process_index() == 0:
                        print(f'pretrain step {self.done}/{total or target} | label BCE '
                              f'{mean:.4f} | {rate:.1f} ex/s', flush=True)
            self._pos = stop
            if stop == self._per_epoch:  # a later call goes on where this one stopped
                self._epoch, self._pos = self._epoch + 1, 0

    def predict(self, split: PreparedSplit) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, targets], study indices [N]) on `split`'s evaluation images."""
        return self._evaluate(self._predict, split)

    def features(self, split: PreparedSplit) -> tuple[np.ndarray, np.ndarray]:
        """(pooled f_R features [N, V*d], study indices [N]) on `split`'s evaluation images."""
        return self._evaluate(self._features, split)

    def _evaluate(self, fn, split):
        return eval_rows(lambda images: fn(self.params, self.stats, images), split, self.icfg,
                         self.config.seed, self.batch_sh)

    def backbone(self):
        """The trained f_R as a host-side module."""
        return self.modeldef.merge(jax.device_get(self.params), jax.device_get(self.stats)).visual


def eval_rows(fn, split: PreparedSplit, icfg, seed: int, batch_sh) -> tuple[np.ndarray, np.ndarray]:
    """(fn(images) rows [N, ...], study indices [N]) over `split`'s evaluation batches, padding
    dropped; `fn` takes the batch's images placed with `batch_sh`."""
    rows, index = [], []
    for batch in inputs.host_pipeline(split, icfg, seed).eval_batches():
        images = parallel.put_batch({'images': batch['images']}, batch_sh)['images']
        keep = np.asarray(parallel.to_host(batch['mask'])) > 0
        rows.append(np.asarray(parallel.to_host(fn(images)))[keep])
        index.append(np.asarray(parallel.to_host(batch['index']))[keep])
    return np.concatenate(rows), np.concatenate(index)


def pretrain(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
    """Trains f_R on the training reports' labels; writes and returns the backbone file."""
    pcfg, mcfg = config.pretrain, config.model
    check_config(pcfg)
    dataset = prepare.load_prepared(config.data)
    train = dataset.splits['train']
    kind = targets_of(pcfg)
    trainer = LabelTrainer(config, train, label_targets(train, kind),
                           batch_size=int(pcfg.batch_size), lr=float(pcfg.lr))
    total = int(pcfg.steps)
    t0 = time.perf_counter()
    trainer.fit(total, log_every=int(pcfg.log_every_steps))
    summary = {'steps': total, 'batch_size': int(pcfg.batch_size),
               'targets': list(target_names(kind)),
               'seconds': round(time.perf_counter() - t0, 1)}
    val = dataset.splits.get('val')
    if val is not None and len(val):
        summary.update(validate_head(val, trainer, kind))
    path = backbone_path(workdir)
    if jax.process_index() == 0:
        write_backbone(path, trainer, mcfg, summary)
        atomic.write_text(path.parent / 'summary.json', json.dumps(summary, indent=2) + '\n')
        auc_text = (f', validation macro AUC {summary["val/macro_auc"]:.3f}'
                    if 'val/macro_auc' in summary else '')
        print(f'pretrain: wrote {path}{auc_text}', flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices('jima_jax pretrain written')
    return path


def write_backbone(path, trainer: LabelTrainer, mcfg, summary: dict) -> None:
    """The trained f_R as a safetensors file in torchvision's names (what model.pretrained
    reads), its pre-training summary in the file's metadata; written whole or not at all."""
    meta = {'backbone': mcfg.backbone, 'source': 'jima_jax pretrain',
            'summary': json.dumps(summary)}
    torch_files.write_safetensors(path, resnet.torchvision_state(trainer.backbone()), meta)


def validate_head(split, trainer: LabelTrainer, kind: str = 'chexpert') -> dict:
    """Validation BCE and per-label AUC of the head: does the backbone see the findings?"""
    probs, index = trainer.predict(split)
    targets = label_targets(split, kind)[index]
    eps = 1e-7
    bce = -np.mean(targets * np.log(probs + eps) + (1 - targets) * np.log(1 - probs + eps))
    aucs = {name: auc(probs[:, i], targets[:, i]) for i, name in enumerate(target_names(kind))}
    valid = [v for v in aucs.values() if not np.isnan(v)]
    return {'val/bce': float(bce), 'val/macro_auc': float(np.mean(valid)) if valid else None,
            **{f'val/auc/{k}': (None if np.isnan(v) else v) for k, v in aucs.items()}}


def with_pretrained_backbone(config: ml_collections.ConfigDict, workdir,
                             fresh: bool) -> ml_collections.ConfigDict:
    """`config` with model.pretrained set to this run's pre-trained backbone (pre-training it
    first on a fresh run); unchanged when pretrain.steps is 0 or model.pretrained is given."""
    if int(config.pretrain.steps) <= 0 or config.model.pretrained:
        return config
    path = backbone_path(workdir)
    if not path.exists():
        if not fresh:  # a resumed run restores its trained backbone from the checkpoint
            return config
        pretrain(config, workdir)
    out = ml_collections.ConfigDict(config.to_dict())
    out.model.pretrained = str(path)
    out.lock()
    return out
