"""`train_and_evaluate(config, workdir)`: the one training loop, and `evaluate(config, workdir)`.

Flow: prepared data -> model + state (fresh, or restored from `<workdir>/checkpoints`) -> per
epoch: curriculum kept sets -> two tf.data streams -> the fused jitted step -> periodic logging ->
validation -> checkpoint. SIGTERM makes the loop save the current position and return cleanly
(every process of a multi-process job at the same step, even when only one got the signal);
rerunning with the same `--workdir` resumes from it exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import signal
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jima_jax import atomic, torch_files
from jima_jax.data import pipeline as pipeline_lib, prepare
from jima_jax.data.types import PreparedDataset
from jima_jax.model import jima, resnet
from jima_jax.evaluation import report as report_lib
from jima_jax.train import checkpoint, curriculum as curriculum_lib, losses, parallel, reporting
from jima_jax.train import difficulty, distributed, pretrain as pretrain_lib
from jima_jax.train import validate
from jima_jax.train import step as step_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Setup:
    """Everything a train or eval run builds before its first step."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    dataset: PreparedDataset
    mesh: jax.sharding.Mesh
    modeldef: step_lib.ModelDef
    state: step_lib.TrainState
    state_sharding: object
    loss_tables: losses.LossTables
    checkpointer: checkpoint.Checkpointer
    extra: dict  # restored extra state ({} for a fresh run)

    @property
    def vocab_size(self) -> int:
        return self.dataset.vocab_size


def _check_config(config, dataset: PreparedDataset) -> None:
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


def build_model(config, vocab_size: int):
    """A fresh JIMA model (optionally with torchvision backbone weights) and its pure pytrees."""
    model = jima.JIMA(config.model, vocab_size=vocab_size, num_views=config.data.num_views,
                      max_len=config.data.max_len + 1, rngs=nnx.Rngs(params=config.seed))
    if config.model.pretrained:
        state = torch_files.read_weights(config.model.pretrained)
        resnet.load_torchvision_state(model.visual, state, source=config.model.pretrained)
        log.info('loaded backbone weights from %s', config.model.pretrained)
    return step_lib.split_model(model)


def setup(config, workdir: str | pathlib.Path, *, restore: bool = True,
          step: Optional[int] = None) -> Setup:
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = prepare.load_prepared(config.data)
    _check_config(config, dataset)
    mesh = parallel.make_mesh(config.parallel)
    parallel.check_batch_size(config.input.batch_size, mesh)
    parallel.check_batch_size(config.input.eval_batch_size, mesh, 'input.eval_batch_size')
    modeldef, params, stats = build_model(config, dataset.vocab_size)
    host_state = step_lib.init_train_state(config, params, stats)
    state_sharding = parallel.state_shardings(mesh, host_state, config.parallel)
    checkpointer = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, config.train), config.train)
    extra: dict = {}
    restored = None
    if restore and checkpointer.latest_step() is not None:
        restored = checkpointer.restore(checkpoint.abstract_like(host_state, state_sharding),
                                        step)
    if restored is not None:
        state, extra = restored
    else:
        state = jax.device_put(host_state, state_sharding)
    loss_tables = jax.device_put(losses.make_loss_tables(dataset.tables, config.loss),
                                 parallel.replicated(mesh))
    return Setup(config, workdir, dataset, mesh, modeldef, state, state_sharding, loss_tables,
                 checkpointer, extra)


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


def make_eval_fn(s: Setup):
    """Jitted (params, stats, batch) -> summed losses, batch split over the mesh."""
    rep, batch = parallel.replicated(s.mesh), parallel.batch_sharding(s.mesh)
    fn = step_lib.build_eval_step(s.modeldef, s.config, s.vocab_size)
    return jax.jit(fn, in_shardings=(s.state_sharding.params, s.state_sharding.batch_stats,
                                     batch, rep), out_shardings=rep)


def evaluate_loss(s: Setup, eval_fn, split_name: str, state=None,
                  shuffle_images: bool = False, tables=None) -> dict[str, float]:
    """Mean entity BCE and report NLL over a whole split (`<split>/loss/...`), weighted as in
    training (`s.loss_tables`) unless `tables` is given.

    `shuffle_images` gives every study the images of its neighbour in the batch (a roll by one):
    the losses a model earns without looking at its own image (`image_reliance` below).
    """
    state = s.state if state is None else state
    tables = s.loss_tables if tables is None else tables
    split = s.dataset.splits[split_name]
    if len(split) == 0:
        return {}
    pipe = parallel.host_pipeline(split, s.config.input, s.config.seed)
    sharding = parallel.batch_sharding(s.mesh)
    totals = None
    for batch in pipe.eval_batches():
        if shuffle_images:
            batch = dict(batch, images=np.roll(np.asarray(batch['images']), 1, axis=0))
        out = eval_fn(state.params, state.batch_stats, parallel.put_batch(batch, sharding),
                      tables)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    t = jax.device_get(totals)
    return {f'{split_name}/loss/{task}': float(t[f'{task}_sum'] / max(t[f'{task}_count'], 1))
            for task in ('entity', 'report') if f'{task}_sum' in t}  # no entity: R2Gen baseline


def _position(extra: dict) -> tuple[int, int]:
    pos = extra.get('position', {})
    return int(pos.get('epoch', 0)), int(pos.get('step_in_epoch', 0))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from `workdir` when it holds a checkpoint); returns the final metrics."""
    if int(config.pretrain.steps) > 0:  # f_R pre-trained first (fresh runs only)
        ck = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, config.train),
                                     config.train)
        fresh = ck.latest_step() is None
        ck.close()
        config = pretrain_lib.with_pretrained_backbone(config, workdir, fresh)
    s = setup(config, workdir)
    is_main = jax.process_index() == 0
    if is_main:
        atomic.write_text(s.workdir / 'config.json',
                               json.dumps(config_to_json(config), indent=2) + '\n')
    train = s.dataset.splits['train']
    cur = curriculum_lib.Curriculum(
        config.curriculum, len(train), seed=config.seed, num_epochs=config.train.num_epochs,
        composition=curriculum_lib.Composition.from_split(
            train, s.dataset.tables.frequent_mask(1 / 8)),
        entity_task=jima.entity_fusion(config.model))
    cur.check_validation(config.train)
    if 'curriculum' in s.extra:
        cur.load_state_dict(s.extra['curriculum'])
    best = s.extra.get('best', {})
    stale = int(s.extra.get('early_stop', {}).get('stale_evals', 0))
    patience = int(config.train.early_stop_patience)
    start_epoch, start_in_epoch = _position(s.extra)

    mesh = s.mesh
    train_step = step_lib.jit_train_step(
        step_lib.build_train_step(s.modeldef, config, s.vocab_size), mesh, s.state_sharding)
    eval_fn = make_eval_fn(s)
    generate_fn = score_fn = None
    pipe = parallel.host_pipeline(train, config.input, config.seed)
    batch_sharding = parallel.batch_sharding(mesh)
    reporter = reporting.RunReporter(s.workdir, enabled=is_main,
                                     resume_step=int(jax.device_get(s.state.step)))
    # Two streams (A: Task 1's kept set, B: Task 2's) in both modes; the R2Gen baseline
    # (model.entity_fusion=False) trains on stream B alone.
    one_stream = not jima.entity_fusion(config.model)
    views = config.data.num_views
    batch_size = int(config.input.batch_size)
    examples_per_step = batch_size * (1 if one_stream else 2)
    num_epochs = int(config.train.num_epochs)
    max_steps = int(config.train.max_steps) or None
    config_json = config_to_json(config)

    state = s.state
    step = int(jax.device_get(state.step))
    if step:
        print(f'resuming from step {step} (epoch {start_epoch + 1}, batch {start_in_epoch})',
              flush=True)

    def save(epoch: int, in_epoch: int, metrics: Optional[dict] = None) -> None:
        extra = {'position': {'epoch': epoch, 'step_in_epoch': in_epoch},
                 'curriculum': cur.state_dict(), 'best': best,
                 'early_stop': {'stale_evals': stale}}
        s.checkpointer.save(step, state, extra, config_json, metrics)

    throughput = reporting.Throughput()
    pending: list[dict] = []
    last_eval: dict[str, float] = {}
    status = 'completed'
    # Rough total for the ETA (the curriculum may shorten later epochs).
    first_kept = cur.kept(start_epoch)
    est_steps_epoch = pipeline_lib.steps_per_epoch(
        [pipeline_lib.StreamSpec(k, i) for i, k in enumerate(first_kept)], batch_size,
        config.train.steps_per_epoch)
    total_steps = min(max_steps or 10**12, num_epochs * est_steps_epoch)
    run_start_step = step
    run_start_time = time.perf_counter()

    with _Preemption() as preempt:
        for epoch in range(start_epoch, num_epochs):
            if patience and stale >= patience:  # checked first, so a resumed run stops too
                status = 'early_stopped'
                print(f'early stop: {config.train.best_metric} has not improved for {stale} '
                      f'evaluations (train.early_stop_patience={patience}); best at step '
                      f'{best.get("step")}.', flush=True)
                break
            kept1, kept2 = cur.kept(epoch)
            streams = [pipeline_lib.StreamSpec(kept1, 0), pipeline_lib.StreamSpec(kept2, 1)]
            if one_stream:
                streams = streams[1:]
            n_steps = pipeline_lib.steps_per_epoch(streams, batch_size,
                                                   config.train.steps_per_epoch)
            begin = start_in_epoch if epoch == start_epoch else 0
            if begin == 0 and cur.rule is not None:
                reporter.write(step, cur.epoch_scalars(epoch), epoch=epoch)
            iters = [pipe.train_batches(st, epoch=epoch, num_steps=n_steps, start_step=begin)
                     for st in streams]
            epoch_arr = np.int32(epoch)
            in_epoch = begin
            for batches in zip(*iters):
                batch_b = parallel.put_batch(batches[-1], batch_sharding)
                batch_a = batch_b if one_stream else parallel.put_batch(batches[0],
                                                                        batch_sharding)
                state, metrics = train_step(state, batch_a, batch_b, epoch_arr, s.loss_tables)
                step += 1
                in_epoch += 1
                pending.append(metrics)
                throughput.add(examples_per_step)
                sync_point = step % config.train.log_every_steps == 0 or in_epoch == n_steps
                if sync_point:
                    host = jax.device_get(pending)
                    pending = []
                    scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                    rate = throughput.tick()
                    scalars['examples_per_sec'] = rate
                    scalars['images_per_sec'] = rate * views
                    done = step - run_start_step
                    elapsed = time.perf_counter() - run_start_time
                    left = (total_steps - step) * elapsed / max(done, 1)
                    reporter.write(step, scalars, epoch=epoch)
                    reporter.progress(step, total_steps, epoch, num_epochs, scalars, left)
                if (config.train.checkpoint_every_steps
                        and step % config.train.checkpoint_every_steps == 0
                        and in_epoch < n_steps):
                    save(epoch, in_epoch)
                if preempt.poll(sync_point) or (max_steps and step >= max_steps):
                    break
            if preempt.requested:
                save(epoch, in_epoch)
                status = 'preempted'
                print(f'SIGTERM{"" if preempt.received else " (to another process)"}: saved '
                      f'step {step} (epoch {epoch + 1}, batch {in_epoch}); rerun with the same '
                      '--workdir to resume.', flush=True)
                break
            if max_steps and step >= max_steps and in_epoch < n_steps:
                save(epoch, in_epoch)
                status = 'max_steps'
                break
            eval_due = ((epoch + 1) % max(int(config.train.eval_every_epochs), 1) == 0
                        or epoch + 1 == num_epochs or cur.needs_validation(epoch))
            if eval_due:
                last_eval = {}
                for split_name in config.train.eval_splits:
                    last_eval.update(evaluate_loss(s, eval_fn, split_name, state))
                    if config.train.eval_decode:
                        generate_fn = generate_fn or validate.make_generate(s)
                        scores = validate.evaluate_split(s, generate_fn, split_name, state,
                                                         with_meteor=False)
                        last_eval.update({f'{split_name}/{k}': v for k, v in scores.items()
                                          if v is not None})
                if last_eval:
                    reporter.write(step, last_eval, epoch=epoch)
                    shown = [k for k in last_eval if '/loss/' in k or k.endswith(
                        ('BLEU_4', 'CIDEr', 'ROUGE_L', 'ce/micro_u0/f1'))]
                    print('  ' + '  '.join(f'{k} {last_eval[k]:.4f}' for k in shown), flush=True)
                best, stale = track_best(best, stale, last_eval, step, config.train)
            if cur.scores_due(epoch):
                score_fn = score_fn or difficulty.jit_score_step(
                    difficulty.build_score_step(s.modeldef, config.model, config.input), mesh,
                    s.state_sharding)
                t0 = time.perf_counter()
                cur.observe(epoch, difficulty.score_split(
                    score_fn, state.params, state.batch_stats, train, config.input,
                    seed=config.seed, mesh=mesh), last_eval if eval_due else {})
                c1, c2 = cur.ratios()
                print(f'  curriculum: scored {len(train)} examples in '
                      f'{time.perf_counter() - t0:.1f}s; next epoch keeps '
                      f'{len(cur.kept(epoch + 1)[0])} / {len(cur.kept(epoch + 1)[1])} '
                      f'(c1 {c1:.3f}, c2 {c2:.3f})', flush=True)
            save(epoch + 1, 0, last_eval if eval_due else None)
            if max_steps and step >= max_steps:
                status = 'max_steps'
                break

    s.checkpointer.close()
    reporter.close()
    result = {'status': status, 'step': step, **last_eval}
    if best:
        result['best_step'] = best['step']
        result[f'best/{best["metric"]}'] = best['value']
    if is_main:
        reporting.plot_losses(s.workdir / 'train_log.jsonl', s.workdir / 'plots' / 'loss.png')
        if cur.rule is not None:
            curriculum_lib.plot_curves(reporting.read_log(s.workdir / 'train_log.jsonl'),
                                       s.workdir / 'plots' / 'curriculum.png')
        atomic.write_text(s.workdir / 'train_summary.json', json.dumps(result, indent=2))
    return result


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


def checkpoint_step(workdir: pathlib.Path, train_cfg, which: str) -> Optional[int]:
    """The step `setup` should restore for --checkpoint=`which`: 'latest' -> None (the newest
    intact one; damaged ones are moved aside there), 'best' (by train.best_metric, recorded
    during training; damaged -> moved aside with a warning, then None), 'auto' ('best' when one
    was recorded, else 'latest') or a step number."""
    ck = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, train_cfg), train_cfg)
    latest = ck.latest_step()
    try:
        if latest is None:
            raise FileNotFoundError(
                f'{ck.directory} holds no checkpoint; train first '
                f'(python -m jima_jax.main --config ... --workdir {workdir}).')
        if which == 'auto':
            which = 'best' if 'step' in ck.best_record() else 'latest'
        if which == 'latest':
            return None
        if which == 'best':
            best = ck.best_record()
            if 'step' not in best:
                raise ValueError(f'{workdir}: no best checkpoint was recorded (train.best_metric='
                                 f'{train_cfg.best_metric!r} never evaluated); use '
                                 '--checkpoint=latest.')
            step = int(best['step'])
            problem = (None if step in ck.manager.all_steps() else
                       f'best checkpoint step {step} is no longer in {ck.directory}.')
            if problem is None and (damage := ck.find_damage(step)) is not None:
                problem = f'{damage} Moved it to {ck.move_aside(step)}.'
            if problem is None:
                return step
            checkpoint.warn(f'{problem} Using the newest intact checkpoint instead.')
            return None
        if not which.isdigit() or int(which) not in ck.manager.all_steps():
            raise ValueError(f'--checkpoint={which!r}: expected latest, best or one of the saved '
                             f'steps {sorted(ck.manager.all_steps())} (or auto: best when one '
                             'was recorded, else latest).')
        return int(which)
    finally:
        ck.close()


def checkpoint_label(which: str, step: Optional[int]):
    """What results.json calls the checkpoint `checkpoint_step(..., which)` chose: 'latest' (None:
    the newest intact one), 'best', or the step number asked for."""
    if step is None:
        return 'latest'
    return 'best' if which in ('best', 'auto') else int(step)


def plain_loss_tables(s: Setup) -> losses.LossTables:
    """All weights 1, placed like `s.loss_tables`: test losses and image reliance are plain
    per-token NLL / BCE whatever the training reweighting, so runs with and without
    `loss.token_weighting` etc. compare on one scale."""
    return jax.device_put(losses.LossTables.uniform(s.vocab_size), parallel.replicated(s.mesh))


def image_reliance(s: Setup, eval_fn, split_name: str, losses_now: dict,
                   tables=None) -> dict[str, float]:
    """How much worse the losses get when each study is given another study's images.

    A model that reads the radiograph loses nats per token when the images are swapped; one that
    has only learnt the corpus's language (a common failure on small data: the same fluent report
    for every study) loses nothing. Reported as `<split>/image_reliance/{report,entity}` =
    shuffled loss - true loss.
    """
    shuffled = evaluate_loss(s, eval_fn, split_name, shuffle_images=True, tables=tables)
    return {f'{split_name}/image_reliance/{task}':
            shuffled[f'{split_name}/loss/{task}'] - losses_now[f'{split_name}/loss/{task}']
            for task in ('report', 'entity') if f'{split_name}/loss/{task}' in shuffled}


def evaluate(config: ml_collections.ConfigDict, workdir: str, split_name: str = 'test',
             which: str = 'auto') -> dict:
    """Every metric on `split_name` for a checkpoint of `workdir` (`which`: see checkpoint_step;
    results say which one: `checkpoint` 'best' / 'latest' / the step asked for, and `step`);
    writes eval/<split>/."""
    workdir = pathlib.Path(workdir)
    step = checkpoint_step(workdir, config.train, which)
    s = setup(config, workdir, step=step)
    if split_name not in s.dataset.splits or len(s.dataset.splits[split_name]) == 0:
        raise ValueError(f'--split={split_name!r}: the dataset has non-empty splits '
                         f'{[k for k, v in s.dataset.splits.items() if len(v)]}.')
    result = {'checkpoint': checkpoint_label(which, step),
              'step': int(jax.device_get(s.state.step))}
    eval_fn = make_eval_fn(s)
    plain = plain_loss_tables(s)  # unweighted, comparable across loss settings
    result.update(evaluate_loss(s, eval_fn, split_name, tables=plain))
    result.update(image_reliance(s, eval_fn, split_name, result, tables=plain))
    out = s.workdir / 'eval' / split_name
    result.update(validate.evaluate_split(s, validate.make_generate(s), split_name, s.state,
                                          with_meteor=True, out_dir=out))
    s.checkpointer.close()
    if jax.process_index() == 0:  # rewrite with the loss keys included
        report_lib.write_results(result, out,
                                 dataset_name=report_lib.paper_dataset(config.data.name))
    return result


def format_results(result: dict) -> str:
    """A two-column Markdown table of a flat results dict."""
    rows = ['| metric | value |', '|---|---|']
    for k, v in result.items():
        rows.append(f'| {k} | {v:.4f} |' if isinstance(v, float) else f'| {k} | {v} |')
    return '\n'.join(rows)
