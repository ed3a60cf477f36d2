"""`train_and_evaluate(config, workdir)`: the training loop.

Flow: prepared data -> model + state (fresh, or restored from `<workdir>/checkpoints`) -> one flat
loop over units of work: a training step, or an epoch's end (validation, best tracking,
curriculum scoring). Between any two units the loop decides, in one place, whether to stop
(`_stop_reason`) and whether to save (`_save_reason`, the one checkpoint save). Epochs are not
known in advance: the curriculum picks each epoch's kept sets, and so its number of steps, at
the end of the epoch before.

SIGTERM makes the loop save the current position and return cleanly (every process of a
multi-process job at the same step, even when only one got the signal); rerunning with the same
`--workdir` resumes from it exactly.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import time
from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np

from jima_jax import atomic
from jima_jax.data import pipeline as pipeline_lib
from jima_jax.model import jima
from jima_jax.runtime import distributed, parallel
from jima_jax.train import checkpoint, curriculum as curriculum_lib, difficulty, feature_cache
from jima_jax.train import inputs
from jima_jax.train import optim as optim_lib, pretrain as pretrain_lib, reporting, run_setup
from jima_jax.train import step as step_lib
from jima_jax.train import validate
from jima_jax.train.run_setup import Setup


def frozen_random_backbone_warning(config: ml_collections.ConfigDict) -> str:
    """The warning for a frozen f_R with nothing to start from ('' when there is none): the
    report model would read fixed random features. `config` as `train_and_evaluate` sees it,
    model.pretrained already set by this run's pre-training."""
    if optim_lib.visual_frozen(config.optim.task1) and not config.model.pretrained:
        return ('warning: optim.task1.visual_lr=0 freezes f_R, and it starts from random weights '
                '(pretrain.steps=0 and no model.pretrained): the report model reads fixed random '
                'features. Set pretrain.steps or model.pretrained unless that is the point.')
    return ''


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from `workdir` when it holds a checkpoint); returns the final metrics."""
    feature_cache.enabled(config)  # a setting it cannot honour fails before any pre-training
    config = _with_pretrained_backbone(config, workdir)
    warning = frozen_random_backbone_warning(config)
    if warning and jax.process_index() == 0:
        print(warning, flush=True)
    run = run_setup.setup(config, workdir)
    config_json = run_setup.config_to_json(config)
    if jax.process_index() == 0:
        atomic.write_text(run.workdir / 'config.json', json.dumps(config_json, indent=2) + '\n')
    cur = _curriculum(run)
    progress = Progress.from_extra(run.extra)
    state, step = run.state, int(jax.device_get(run.state.step))
    train_step = step_lib.jit_train_step(
        step_lib.build_train_step(run.modeldef, config, run.vocab_size), run.mesh,
        run.state_sharding)
    features = feature_cache.for_run(run)  # None unless train.feature_cache
    epochs = _Epochs(run, cur, features)
    reporter = reporting.RunReporter(run.workdir, enabled=jax.process_index() == 0,
                                     resume_step=step)
    if step:
        print(f'resuming from step {step} (epoch {progress.epoch + 1}, batch '
              f'{progress.in_epoch})', flush=True)
    step_log = _StepLog(reporter, config, epochs, first_step=step,
                        total_steps=epochs.estimated_total(progress.epoch))
    validation = _Validation(run, reporter)
    score_curriculum = _CurriculumScoring(run, cur, features)

    epoch: Optional[_Epoch] = None  # the epoch being trained; None between two epochs
    after: Optional[str] = None  # the last unit of work: None (none yet), 'step' or 'epoch_end'
    validated: Optional[dict] = None  # that epoch end's validation metrics (None: not validated)
    last_eval: dict = {}
    with _Preemption() as preempt:
        while True:
            epoch_end_next = epoch is not None and progress.in_epoch >= epoch.num_steps
            stop = _stop_reason(preempt, progress, step, after, epoch_end_next, config.train)
            why = _save_reason(stop, after, step, epoch_end_next, config.train)
            if why:  # with metrics: a candidate for the best checkpoint
                run.checkpointer.save(step, state, progress.to_extra(cur), config_json,
                                      validated if why == 'epoch_end' else None)
            if stop:
                break
            if epoch is None:  # the epoch's first unit of work in this run
                if progress.in_epoch == 0 and cur.rule is not None:
                    reporter.write(step, cur.epoch_scalars(progress.epoch), epoch=progress.epoch)
                epoch = epochs.open(progress.epoch, progress.in_epoch)
            if progress.in_epoch < epoch.num_steps:
                state, metrics = train_step(state, *next(epoch.batches),
                                            np.int32(progress.epoch), run.loss_tables)
                step += 1
                progress.in_epoch += 1
                synced = step_log.after_step(step, progress.epoch, metrics,
                                             epoch_done=progress.in_epoch == epoch.num_steps)
                preempt.poll(sync_point=synced)
                after = 'step'
            else:  # the epoch's end
                validated = (validation(state, step, progress.epoch)
                             if _validation_due(progress.epoch, cur, config.train) else None)
                if validated is not None:
                    last_eval = validated
                    progress.best, progress.stale = track_best(progress.best, progress.stale,
                                                               validated, step, config.train)
                if cur.scores_due(progress.epoch):
                    score_curriculum(progress.epoch, state, validated or {})
                progress.epoch, progress.in_epoch, epoch = progress.epoch + 1, 0, None
                after = 'epoch_end'
        if (message := _stop_message(stop, preempt, progress, step, config.train)):
            print(message, flush=True)

    run.checkpointer.close()
    reporter.close()
    result = {'status': stop, 'step': step, **last_eval}
    if progress.best:
        result['best_step'] = progress.best['step']
        result[f'best/{progress.best["metric"]}'] = progress.best['value']
    if jax.process_index() == 0:
        _write_summary(run.workdir, result, with_curriculum=cur.rule is not None)
    return result


# ------------------------------------------------------------------ what is saved, and when

@dataclasses.dataclass
class Progress:
    """What a checkpoint's extra records besides the curriculum: where the run is, and its best
    evaluation by train.best_metric (for the best checkpoint and early stopping)."""

    epoch: int = 0
    in_epoch: int = 0  # steps of `epoch` done
    best: dict = dataclasses.field(default_factory=dict)  # {'step', 'value', 'metric'}
    stale: int = 0  # evaluations since `best` last improved

    @classmethod
    def from_extra(cls, extra: dict) -> 'Progress':
        position = extra.get('position', {})
        return cls(epoch=int(position.get('epoch', 0)),
                   in_epoch=int(position.get('step_in_epoch', 0)), best=extra.get('best', {}),
                   stale=int(extra.get('early_stop', {}).get('stale_evals', 0)))

    def to_extra(self, cur: curriculum_lib.Curriculum) -> dict:
        return {'position': {'epoch': self.epoch, 'step_in_epoch': self.in_epoch},
                'curriculum': cur.state_dict(), 'best': self.best,
                'early_stop': {'stale_evals': self.stale}}


def _stop_reason(preempt: _Preemption, progress: Progress, step: int, after: Optional[str],
                 epoch_end_next: bool, train_cfg) -> Optional[str]:
    """Why the run stops before its next unit of work, or None to go on.

    `after`: the last unit (None at this run's start); `epoch_end_next`: the epoch's steps are
    done and its end is next. SIGTERM is acted on after a training step (where `_Preemption.poll`
    agreed on it across processes). train.max_steps is checked before any work too, so rerunning
    a run it stopped trains nothing more, but never between an epoch's last step and its end, which
    validates and saves that epoch first. Early stopping is checked before any work too, so a
    resumed run that had stopped stays stopped.
    """
    max_steps, patience = int(train_cfg.max_steps), int(train_cfg.early_stop_patience)
    if after == 'step' and preempt.requested:
        return 'preempted'
    if max_steps and step >= max_steps and not epoch_end_next:
        return 'max_steps'
    if progress.epoch >= int(train_cfg.num_epochs):
        return 'completed'
    if patience and progress.stale >= patience:
        return 'early_stopped'
    return None


def _save_reason(stop: Optional[str], after: Optional[str], step: int, epoch_end_next: bool,
                 train_cfg) -> Optional[str]:
    """Why the run saves here, or None: 'epoch_end' (at the next epoch's start; with the epoch's
    validation metrics, a candidate for the best checkpoint), 'stop' (preempted or max_steps: the
    exact position, mid-epoch included) or 'periodic' (every train.checkpoint_every_steps within
    an epoch). A step already saved is not saved again (`Checkpointer.save`)."""
    every = int(train_cfg.checkpoint_every_steps)
    if after == 'epoch_end':
        return 'epoch_end'
    if stop in ('preempted', 'max_steps'):
        return 'stop'
    if after == 'step' and every and step % every == 0 and not epoch_end_next:
        return 'periodic'
    return None


def _stop_message(stop: Optional[str], preempt: _Preemption, progress: Progress, step: int,
                  train_cfg) -> Optional[str]:
    if stop == 'early_stopped':
        return (f'early stop: {train_cfg.best_metric} has not improved for {progress.stale} '
                f'evaluations (train.early_stop_patience={int(train_cfg.early_stop_patience)}); '
                f'best at step {progress.best.get("step")}.')
    if stop == 'preempted':
        return (f'SIGTERM{"" if preempt.received else " (to another process)"}: saved step '
                f'{step} (epoch {progress.epoch + 1}, batch {progress.in_epoch}); rerun with the '
                'same --workdir to resume.')
    return None


def track_best(best: dict, stale: int, metrics: dict, step: int, train_cfg) -> tuple[dict, int]:
    """(best record, evaluations since it last improved) after an evaluation's `metrics`:
    unchanged when train.best_metric is not among them; a tie is no improvement."""
    metric = train_cfg.best_metric
    if metric not in metrics:
        return best, stale
    value = metrics[metric]
    better = not best or (value < best['value'] if train_cfg.best_mode == 'min'
                          else value > best['value'])
    if better:
        return {'step': step, 'value': value, 'metric': metric}, 0
    return best, stale + 1


class _Preemption:
    """SIGTERM sets a flag the loop checks between steps (never interrupts a step or a save).

    One process stops at the next step. In a multi-process job each process gets its own signal
    (a scheduler may warn one node first, a user may kill one task), and one that stopped alone
    would leave the others waiting in the next collective (a train step, the checkpoint save).
    So there `requested` is what all processes agreed at the last `poll(sync_point=True)`: the
    loop polls with True at the steps where it reads its metrics back anyway (every
    train.log_every_steps and each epoch's last step), so every process stops at the same step
    and the agreement adds no host sync of its own.
    """

    def __init__(self):
        self.received = False  # this process got SIGTERM
        self._agreed = False
        self._multi = jax.process_count() > 1
        self._previous = None

    @property
    def requested(self) -> bool:
        """Whether the loop stops (the same answer on every process of a job)."""
        return self._agreed if self._multi else self.received

    def poll(self, sync_point: bool) -> bool:
        """`requested`, after agreeing with the other processes when `sync_point` (a step every
        process reaches: a host sync)."""
        if self._multi and sync_point and not self._agreed:
            self._agreed = distributed.any_process(self.received)
        return self.requested

    def __enter__(self):
        def handler(signum, frame):
            del signum, frame
            self.received = True
        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not in the main thread (e.g. a notebook worker): no handler
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------ the units of work

@dataclasses.dataclass
class _Epoch:
    index: int
    num_steps: int  # decided by the epoch's kept sets
    batches: Iterator[tuple[dict, dict]]  # (stream A, stream B) batches of the steps left


class _Epochs:
    """Each epoch's batches: two streams (A: Task 1's kept set, B: Task 2's) in both modes; the
    R2Gen baseline (model.entity_fusion=False) trains on stream B alone. With a feature table
    (train.feature_cache) each batch carries its studies' cached f_R features, not images."""

    def __init__(self, run: Setup, cur: curriculum_lib.Curriculum,
                 features: Optional[feature_cache.FeatureTable] = None):
        config = run.config
        self._cur = cur
        self._features = features
        self._pipe = inputs.training_pipeline(config, run.dataset.splits['train'])
        self._sharding = parallel.batch_sharding(run.mesh)
        self._one_stream = not jima.entity_fusion(config.model)
        self._batch_size = int(config.input.batch_size)
        self._steps_override = config.train.steps_per_epoch
        self._train_cfg = config.train
        self.examples_per_step = self._batch_size * (1 if self._one_stream else 2)

    def estimated_total(self, epoch: int) -> int:
        """The run's steps for the ETA, every epoch as long as `epoch` (rough: the curriculum may
        shorten later ones)."""
        per_epoch = pipeline_lib.steps_per_epoch(
            [pipeline_lib.StreamSpec(k, i) for i, k in enumerate(self._cur.kept(epoch))],
            self._batch_size, self._steps_override)
        return min(int(self._train_cfg.max_steps) or 10**12,
                   int(self._train_cfg.num_epochs) * per_epoch)

    def open(self, epoch: int, begin: int) -> _Epoch:
        """`epoch` from its step `begin` on (the kept sets must be final: after the scoring at
        the end of the epoch before)."""
        kept1, kept2 = self._cur.kept(epoch)
        streams = [pipeline_lib.StreamSpec(kept1, 0), pipeline_lib.StreamSpec(kept2, 1)]
        if self._one_stream:
            streams = streams[1:]
        num_steps = pipeline_lib.steps_per_epoch(streams, self._batch_size, self._steps_override)
        iters = [self._pipe.train_batches(s, epoch=epoch, num_steps=num_steps, start_step=begin,
                                          with_images=self._features is None)
                 for s in streams]
        return _Epoch(epoch, num_steps, self._on_devices(iters))

    def _on_devices(self, iters) -> Iterator[tuple[dict, dict]]:
        for batches in zip(*iters):
            if self._features is not None:
                batches = [feature_cache.swap_in(b, self._features) for b in batches]
            batch_b = parallel.put_batch(batches[-1], self._sharding)
            batch_a = batch_b if self._one_stream else parallel.put_batch(batches[0],
                                                                          self._sharding)
            yield batch_a, batch_b


class _StepLog:
    """Train metrics, read back and averaged every train.log_every_steps and at each epoch's last
    step: a train_log.jsonl row and a progress line."""

    def __init__(self, reporter: reporting.RunReporter, config, epochs: _Epochs, *,
                 first_step: int, total_steps: int):
        self._reporter = reporter
        self._every = config.train.log_every_steps
        self._num_epochs = int(config.train.num_epochs)
        self._views = config.data.num_views
        self._examples_per_step = epochs.examples_per_step
        self._throughput = reporting.Throughput()
        self._pending: list[dict] = []
        self._total, self._first_step = total_steps, first_step
        self._start = time.perf_counter()

    def after_step(self, step: int, epoch: int, metrics: dict, *, epoch_done: bool) -> bool:
        """Logs when due; returns whether it read the metrics back (a host sync)."""
        self._pending.append(metrics)
        self._throughput.add(self._examples_per_step)
        if not (step % self._every == 0 or epoch_done):
            return False
        host = jax.device_get(self._pending)
        self._pending = []
        scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        rate = self._throughput.tick()
        scalars['examples_per_sec'] = rate
        scalars['images_per_sec'] = rate * self._views
        elapsed = time.perf_counter() - self._start
        left = (self._total - step) * elapsed / max(step - self._first_step, 1)
        self._reporter.write(step, scalars, epoch=epoch)
        self._reporter.progress(step, self._total, epoch, self._num_epochs, scalars, left)
        return True


def _validation_due(epoch: int, cur: curriculum_lib.Curriculum, train_cfg) -> bool:
    """At the end of every train.eval_every_epochs-th epoch, of the last one, and of those whose
    curriculum scoring measures a validation metric."""
    return ((epoch + 1) % max(int(train_cfg.eval_every_epochs), 1) == 0
            or epoch + 1 == int(train_cfg.num_epochs) or cur.needs_validation(epoch))


class _Validation:
    """Losses on train.eval_splits (and, with train.eval_decode, the generated reports' scores):
    one train_log.jsonl row and one console line."""

    def __init__(self, run: Setup, reporter: reporting.RunReporter):
        self._run, self._reporter = run, reporter
        self._eval_fn = validate.make_eval_fn(run)
        self._generate_fn = None  # jitted on first use: only with train.eval_decode

    def __call__(self, state, step: int, epoch: int) -> dict[str, float]:
        run, train_cfg = self._run, self._run.config.train
        metrics: dict[str, float] = {}
        for split_name in train_cfg.eval_splits:
            metrics.update(validate.evaluate_loss(run, self._eval_fn, split_name, state))
            if train_cfg.eval_decode:
                self._generate_fn = self._generate_fn or validate.make_generate(run)
                scores = validate.evaluate_split(run, self._generate_fn, split_name, state,
                                                 with_meteor=False)
                metrics.update({f'{split_name}/{k}': v for k, v in scores.items()
                                if v is not None})
        if metrics:
            self._reporter.write(step, metrics, epoch=epoch)
            shown = [k for k in metrics if '/loss/' in k or k.endswith(
                ('BLEU_4', 'CIDEr', 'ROUGE_L', 'ce/micro_u0/f1'))]
            print('  ' + '  '.join(f'{k} {metrics[k]:.4f}' for k in shown), flush=True)
        return metrics


class _CurriculumScoring:
    """At the end of an epoch the curriculum scores: every training example's difficulty under
    the current model -> the next epoch's kept sets; one console line."""

    def __init__(self, run: Setup, cur: curriculum_lib.Curriculum,
                 features: Optional[feature_cache.FeatureTable] = None):
        self._run, self._cur, self._features = run, cur, features
        self._score_fn = None  # jitted on first use

    def __call__(self, epoch: int, state, metrics: dict) -> None:
        run, cur, config = self._run, self._cur, self._run.config
        train = run.dataset.splits['train']
        self._score_fn = self._score_fn or difficulty.jit_score_step(
            difficulty.build_score_step(run.modeldef, config.model, config.input), run.mesh,
            run.state_sharding)
        t0 = time.perf_counter()
        cur.observe(epoch, difficulty.score_split(
            self._score_fn, state.params, state.batch_stats, train, config.input,
            seed=config.seed, mesh=run.mesh, features=self._features), metrics)
        c1, c2 = cur.ratios()
        print(f'  curriculum: scored {len(train)} examples in {time.perf_counter() - t0:.1f}s; '
              f'next epoch keeps {len(cur.kept(epoch + 1)[0])} / {len(cur.kept(epoch + 1)[1])} '
              f'(c1 {c1:.3f}, c2 {c2:.3f})', flush=True)


# ------------------------------------------------------------------ before and after the loop

def _with_pretrained_backbone(config: ml_collections.ConfigDict, workdir: str):
    """With pretrain.steps > 0, f_R is pre-trained first (on a fresh run only: a resumed run
    restores its trained backbone from the checkpoint)."""
    if int(config.pretrain.steps) <= 0:
        return config
    ck = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, config.train), config.train)
    fresh = ck.latest_step() is None
    ck.close()
    return pretrain_lib.with_pretrained_backbone(config, workdir, fresh)


def _curriculum(run: Setup) -> curriculum_lib.Curriculum:
    """The run's curriculum, with the restored checkpoint's state."""
    config, train = run.config, run.dataset.splits['train']
    cur = curriculum_lib.Curriculum(
        config.curriculum, len(train), seed=config.seed, num_epochs=config.train.num_epochs,
        composition=curriculum_lib.Composition.from_split(
            train, run.dataset.tables.frequent_mask(1 / 8)),
        entity_task=jima.entity_fusion(config.model))
    cur.check_validation(config.train)
    if 'curriculum' in run.extra:
        cur.load_state_dict(run.extra['curriculum'])
    return cur


def _write_summary(workdir: pathlib.Path, result: dict, *, with_curriculum: bool) -> None:
    """Loss (and curriculum) plots and train_summary.json (process 0)."""
    reporting.plot_losses(workdir / 'train_log.jsonl', workdir / 'plots' / 'loss.png')
    if with_curriculum:
        curriculum_lib.plot_curves(reporting.read_log(workdir / 'train_log.jsonl'),
                                   workdir / 'plots' / 'curriculum.png')
    atomic.write_text(workdir / 'train_summary.json', json.dumps(result, indent=2))
