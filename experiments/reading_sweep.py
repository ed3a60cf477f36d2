r"""Which training levers make a small model read its radiographs: a fast sweep.

The real loop (`python -m jima_jax.main`) is what the presets are measured with; this script only
ranks candidate levers quickly, on any backend, with the package's own model, fused train step,
decoder and labeler but a plain numpy input path (no tf.data, so it also runs where TensorFlow is
not installed, e.g. a lent GPU machine). Two stages:

  # on a machine with the package installed: prepare a phantom corpus, pickle its arrays
  python -m experiments.reading_sweep export --config configs/demo.py --out /tmp/sweep.pkl \
      --config.data.phantom.num_train=6000
  # anywhere with jax + flax + optax + ml_collections + sentencepiece
  python -m experiments.reading_sweep run --data /tmp/sweep.pkl --variants base,fresh \
      --eval_at 180,600,1200 --out /tmp/sweep.jsonl
  # tables and learning curves
  python -m experiments.reading_sweep report experiments/results/reading_sweep.jsonl \
      experiments/results/reading_sweep

Each evaluation reports on the test split: teacher-forced report / entity NLL, image reliance (the
NLL increase when each study gets its neighbour's images), distinct generated reports, and the
labeler's reading of the generated reports against the test labels (on the synthetic phantom the
labeler reads the reference reports without error, so these are the drawn findings): macro and
micro F1 over the 13 CheXpert findings present, and recall of abnormal studies. (`--mode eval`'s
`phantom_truth/*` scores use the stored drawn findings and add the three non-CheXpert ones, so its
figures are close to, not identical with, these.)

Results of the 2026-12-04 sweep on an H200: experiments/results/reading_sweep.{jsonl,md,png}.
The `joint` rows there were measured with the joint mode of that morning (one batch, report loss
reaching f_R); `train.mode=joint` now follows the release (two batches, report gradients stopped
at f_R/f_E), so those rows describe the old mode.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import pickle
import sys
import time

import numpy as np

# Lever name -> config overrides (dotted keys). `num_train` limits the training studies used.
VARIANTS = {
    'base': {'num_train': 480},
    'fresh': {},
    'lr1': {'optim.task1.lr': 1e-3, 'optim.task1.decay_rate': 1.0},
    'lr2': {'optim.task1.lr': 2e-3, 'optim.task1.decay_rate': 1.0},
    'lr2both': {'optim.task1.lr': 2e-3, 'optim.task1.decay_rate': 1.0,
                'optim.task2.lr': 1e-3, 'optim.task2.decay_rate': 1.0},
    'posw': {'loss.entity_pos_weighting': 'inverse_frequency'},
    'posw_lr2': {'loss.entity_pos_weighting': 'inverse_frequency', 'optim.task1.lr': 2e-3,
                 'optim.task1.decay_rate': 1.0},
    'joint': {'train.mode': 'joint'},
    'joint_lr1': {'train.mode': 'joint', 'optim.task1.lr': 1e-3, 'optim.task1.decay_rate': 1.0,
                  'optim.task2.lr': 1e-3, 'optim.task2.decay_rate': 1.0},
    'gray1': {'model.in_channels': 1},
    'nodecay': {'optim.task1.decay_rate': 1.0, 'optim.task2.decay_rate': 1.0},
    'base_lr2': {'num_train': 480, 'optim.task1.lr': 2e-3, 'optim.task1.decay_rate': 1.0},
    'warm300': {'warmup_steps': 300},
    'lab400': {'label_pretrain_steps': 400},
    'lab2': {'label_pretrain_steps': 2},  # a seconds-long check of the pre-training path
    'lab800': {'label_pretrain_steps': 800},
    'lab400_lr2both': {'label_pretrain_steps': 400, 'optim.task1.lr': 2e-3,
                       'optim.task1.decay_rate': 1.0, 'optim.task2.lr': 1e-3,
                       'optim.task2.decay_rate': 1.0},
    'warm300_lr2': {'warmup_steps': 300, 'optim.task1.lr': 2e-3, 'optim.task1.decay_rate': 1.0},
}
# Second sweep (long runs): the best levers of the first, and what the imbalance losses, one view,
# a larger batch and faster rates add on top ('L' = 800 label pre-training steps, rates 2e-3/1e-3).
_L = {'label_pretrain_steps': 800, 'optim.task1.lr': 2e-3, 'optim.task1.decay_rate': 1.0,
      'optim.task2.lr': 1e-3, 'optim.task2.decay_rate': 1.0}
VARIANTS.update({
    'L': dict(_L),
    'L_1v': {**_L, 'views': 1},  # frontal view only: half the backbone cost per study
    'L_posw': {**_L, 'loss.entity_pos_weighting': 'inverse_frequency'},
    'L_tokw': {**_L, 'loss.token_weighting': 'inverse_power'},
    'L_exw': {**_L, 'loss.example_weighting': 'inverse_prevalence'},
    'L_b32': {**_L, 'input.batch_size': 32},
    'L_lr4': {**_L, 'optim.task1.lr': 4e-3, 'optim.task2.lr': 2e-3},
    'L_1v_tokw': {**_L, 'views': 1, 'loss.token_weighting': 'inverse_power'},
    'L_check': {**_L, 'label_pretrain_steps': 2, 'views': 1},  # a seconds-long path check
})


def _set(config, key: str, value) -> None:
    node = config
    *path, last = key.split('.')
    for p in path:
        node = node[p]
    node[last] = value


def export(argv) -> None:
    from absl import flags
    from ml_collections import config_flags
    from jima_jax.data import prepare
    flags.FLAGS.unparse_flags()
    cfg_flag = config_flags.DEFINE_config_file('config', None, 'config file', lock_config=True)
    flags.DEFINE_string('out', None, 'pickle to write')
    flags.FLAGS(argv)
    config = cfg_flag.value
    prepare.prepare_dataset(config.data)
    ds = prepare.load_prepared(config.data)
    blob = {'config': config.to_json_best_effort(), 'dataset': ds}
    with open(flags.FLAGS.out, 'wb') as f:
        pickle.dump(blob, f)
    print(f'wrote {flags.FLAGS.out}: ' + ', '.join(f'{k} {len(v)}' for k, v in ds.splits.items()))


def _batches(split, idx_order, step, batch, size, rng):
    idx = idx_order[step * batch:(step + 1) * batch]
    imgs = split.images[idx]
    stored = imgs.shape[-1]
    if stored > size:
        out = np.empty(imgs.shape[:2] + (size, size), np.uint8)
        for i in range(len(idx)):
            for v in range(imgs.shape[1]):
                y, x = rng.integers(0, stored - size + 1, 2)
                out[i, v] = imgs[i, v, y:y + size, x:x + size]
        imgs = out
    return idx, imgs


def run(args) -> None:
    import jax
    import jax.numpy as jnp
    import ml_collections
    from jima_jax import decode
    from jima_jax.data.pipeline import decoder_tokens
    from jima_jax.model import jima
    from jima_jax.text import labeler
    from jima_jax.text.symbols import LABEL_POSITIVE, LABEL_UNCERTAIN, OBSERVATIONS
    from jima_jax.train import losses, step as step_lib
    from flax import nnx

    with open(args.data, 'rb') as f:
        blob = pickle.load(f)
    ds = blob['dataset']
    train, test = ds.splits['train'], ds.splits['test']
    tok_train, tok_test = decoder_tokens(train), decoder_tokens(test)
    base = ml_collections.ConfigDict(json.loads(blob['config']))
    eval_at = sorted(int(x) for x in args.eval_at.split(','))
    out = open(args.out, 'a') if args.out else None
    print(f'backend {jax.default_backend()} {jax.devices()[0].device_kind}; train {len(train)} '
          f'test {len(test)}', flush=True)

    for name in args.variants.split(','):
        over = dict(VARIANTS[name])
        config = ml_collections.ConfigDict(base.to_dict())
        n_train = int(over.pop('num_train', len(train)))
        warmup = int(over.pop('warmup_steps', 0))
        label_steps = int(over.pop('label_pretrain_steps', 0))
        views = int(over.pop('views', 0))
        if views and views != config.data.num_views:  # keep the first (frontal) view only
            train, test = (dataclasses.replace(sp, images=sp.images[:, :views])
                           for sp in (ds.splits['train'], ds.splits['test']))
            config.data.num_views = views
        else:
            train, test = ds.splits['train'], ds.splits['test']
        for k, v in over.items():
            _set(config, k, v)
        if args.beam:
            config.decode.beam_size = args.beam
        icfg = config.input
        b, size = int(icfg.batch_size), int(icfg.image_size)
        model = jima.JIMA(config.model, vocab_size=ds.vocab_size, num_views=config.data.num_views,
                          max_len=config.data.max_len + 1, rngs=nnx.Rngs(params=config.seed))
        modeldef, params, stats = step_lib.split_model(model)
        state = step_lib.init_train_state(config, params, stats)
        tables = losses.make_loss_tables(ds.tables, config.loss)
        # Test losses and image reliance are plain NLL / BCE, as in `--mode eval` (the rows of
        # the 2026-12-04 sweeps with loss reweighting were scored with the training weights).
        plain = losses.LossTables.uniform(ds.vocab_size)
        train_step = jax.jit(step_lib.build_train_step(modeldef, config, ds.vocab_size),
                             donate_argnums=(0,))
        tasks = step_lib.TaskUpdates(modeldef, config, ds.vocab_size)

        def task1_only(st, batch_a, epoch, tabs):
            st, l1 = tasks.task1(st, batch_a, epoch, tabs)
            return st.replace(step=st.step + 1), {'loss/entity': l1, 'loss/report': jnp.nan}

        warm_step = jax.jit(task1_only, donate_argnums=(0,))
        eval_step = jax.jit(step_lib.build_eval_step(modeldef, config, ds.vocab_size))
        gen = jax.jit(decode.make_generate_fn(modeldef, config, ds.vocab_size))
        steps_per_epoch = max(1, n_train // b)
        rng = np.random.default_rng(config.seed)
        orders = {}
        t0 = time.perf_counter()

        def batch_dict(split, toks, idx, imgs):
            return {'images': imgs, 'tokens': toks[idx],
                    'entities': split.entities[idx].astype(np.int32),
                    'abnormal': split.abnormal[idx].astype(np.int32),
                    'mask': np.ones(len(idx), np.float32), 'index': idx.astype(np.int32)}

        def label_pretrain(state, n_steps):
            """f_R + a linear head on the report labels, as `--mode pretrain` (numpy batches)."""
            import optax
            # the targets of --mode pretrain (jima_jax.train.pretrain.label_targets, which is not
            # imported: its module needs TensorFlow for the prepared data, the device has none)
            found = np.isin(train.labels[:, 1:], (LABEL_POSITIVE, LABEL_UNCERTAIN))
            targets = np.concatenate([found, train.abnormal[:, None] > 0], 1).astype(np.float32)
            targets = targets[:n_train]
            feat = model.visual.feature_dim * config.data.num_views
            head = {'w': jnp.zeros((feat, targets.shape[1])), 'b': jnp.zeros(targets.shape[1])}
            tx = optax.adam(1e-3)
            p = {'visual': state.params['visual'], 'head': head}
            opt = tx.init(p)

            def loss_fn(p, stats, images, y):
                m = modeldef.merge({**state.params, 'visual': p['visual']}, stats)
                x = jima.normalize_images(images, icfg.mean, icfg.std, config.model.in_channels)
                _, pooled = m.features(x, train=True)
                logits = pooled @ p['head']['w'] + p['head']['b']
                loss = optax.sigmoid_binary_cross_entropy(logits, y).mean()
                return loss, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

            @jax.jit
            def upd(p, opt, stats, images, y):
                (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(p, stats, images, y)
                u, opt = tx.update(g, opt, p)
                return optax.apply_updates(p, u), opt, stats, loss

            stats = state.batch_stats
            prng = np.random.default_rng(config.seed + 7)
            order = np.concatenate([prng.permutation(n_train)
                                    for _ in range(n_steps * 2 * b // n_train + 1)])
            for i in range(n_steps):
                idx, imgs = _batches(train, order, i, 2 * b, size, prng)
                p, opt, stats, loss = upd(p, opt, stats, imgs, targets[idx])
            print(f'label pretrain {n_steps} steps: loss {float(loss):.4f}', flush=True)
            return state.replace(params={**state.params, 'visual': p['visual']}, batch_stats=stats)

        def evaluate(state):
            eb = int(icfg.eval_batch_size)
            n = len(test)
            pad = -(-n // eb) * eb
            idx_all = np.concatenate([np.arange(n), np.zeros(pad - n, int)])
            mask_all = (np.arange(pad) < n).astype(np.float32)
            stored = test.images.shape[-1]
            res = {}
            totals = {True: None, False: None}
            texts = []
            for s0 in range(0, pad, eb):
                idx = idx_all[s0:s0 + eb]
                imgs = test.images[idx]
                if stored != size:
                    imgs = np.asarray(jax.image.resize(jnp.asarray(imgs, jnp.float32),
                                                       imgs.shape[:2] + (size, size), 'bilinear'))
                    imgs = np.clip(np.round(imgs), 0, 255).astype(np.uint8)
                bd = batch_dict(test, tok_test, idx, imgs)
                bd['mask'] = mask_all[s0:s0 + eb]
                for shuffled in (False, True):
                    d = dict(bd, images=np.roll(imgs, 1, axis=0)) if shuffled else bd
                    o = jax.device_get(eval_step(state.params, state.batch_stats, d, plain))
                    totals[shuffled] = o if totals[shuffled] is None else {
                        k: totals[shuffled][k] + o[k] for k in o}
                g = jax.device_get(gen(state.params, state.batch_stats, imgs))
                keep = bd['mask'] > 0
                texts += [ds.tokenizer.decode([int(t) for t in row]) for row in g['tokens'][keep]]
            for shuffled, t in totals.items():
                tag = '_shuffled' if shuffled else ''
                res['report_nll' + tag] = float(t['report_sum'] / t['report_count'])
                res['entity_nll' + tag] = float(t['entity_sum'] / t['entity_count'])
            res['reliance_report'] = res['report_nll_shuffled'] - res['report_nll']
            res['reliance_entity'] = res['entity_nll_shuffled'] - res['entity_nll']
            res['distinct_reports'] = len(set(texts))
            pred = labeler.label_reports(texts)
            found = lambda L: np.isin(L, (LABEL_POSITIVE, LABEL_UNCERTAIN))
            truth, got = found(test.labels[:, 1:]), found(pred[:, 1:])  # the 13 findings
            tp, fp, fn = [(a & c).sum(0) for a, c in ((truth, got), (~truth, got), (truth, ~got))]
            present = truth.sum(0) > 0
            f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
            res['pt_macro_f1'] = float(f1[present].mean())
            res['pt_f1'] = {name: round(float(v), 3) for name, v, here in
                            zip(OBSERVATIONS[1:], f1, present) if here}
            first = slice(0, min(n, 96))  # the demo's own test split (same study ids)
            res['distinct_reports_first96'] = len(set(texts[first]))
            tp96, fp96, fn96 = [(a[first] & c[first]).sum(0) for a, c in
                                ((truth, got), (~truth, got), (truth, ~got))]
            p96 = truth[first].sum(0) > 0
            res['pt_macro_f1_first96'] = float(
                (2 * tp96 / np.maximum(2 * tp96 + fp96 + fn96, 1))[p96].mean())
            res['num_test'] = n
            res['pt_micro_f1'] = float(2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1))
            ab = test.abnormal.astype(bool)
            pred_ab = np.array([labeler.abnormal_from_labels(r) for r in pred])
            res['abnormal_recall'] = float(pred_ab[ab].mean())
            res['normal_specificity'] = float((~pred_ab[~ab]).mean())
            res['example'] = texts[:2]
            return res

        if label_steps:
            state = label_pretrain(state, label_steps)
        for step in range(eval_at[-1]):
            epoch = step // steps_per_epoch
            if epoch not in orders:
                orders = {epoch: [
                    np.random.default_rng((config.seed, s, epoch)).permutation(n_train)
                    for s in (0, 1)]}
            in_epoch = step % steps_per_epoch
            parts = []
            for s in (0, 1):
                idx, imgs = _batches(train, orders[epoch][s], in_epoch, b, size, rng)
                parts.append(batch_dict(train, tok_train, idx, imgs))
            if step < warmup:
                state, metrics = warm_step(state, parts[0], np.int32(epoch), tables)
            else:
                state, metrics = train_step(state, parts[0], parts[1],  # joint: A and B too
                                            np.int32(epoch), tables)
            if step + 1 in eval_at:
                m = jax.device_get(metrics)
                res = evaluate(state)
                row = {'data': pathlib.Path(args.data).stem, 'variant': name,
                       'pretrain_steps': label_steps, 'step': step + 1, 'epoch': epoch,
                       'train_loss_report': float(m['loss/report']),
                       'train_loss_entity': float(m['loss/entity']),
                       'wall_s': round(time.perf_counter() - t0, 1), **res}
                print(json.dumps(row), flush=True)
                if out:
                    out.write(json.dumps(row) + '\n')
                    out.flush()


def report(rows_path: str, out_stem: str) -> None:
    """Markdown table + learning curves (reliance, distinct reports, phantom-truth F1 vs steps)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from jima_jax import atomic
    rows = [json.loads(line) for line in open(rows_path)]
    first96 = any('distinct_reports_first96' in r for r in rows)  # the long sweep's extra columns
    extra = ' first 96: distinct | first 96: macro F1 |' if first96 else ''
    lines = ['| corpus | lever | run | pre-train steps | steps | report NLL | image reliance, '
             'report / entity | distinct reports | phantom-truth macro F1 | micro F1 | '
             'abnormal recall |' + extra,
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|' + '---:|---:|' * first96]
    for r in rows:
        of = f" of {r['num_test']}" if 'num_test' in r else ''
        more = (f" {r['distinct_reports_first96']} | {r['pt_macro_f1_first96']:.3f} |"
                if first96 else '')
        lines.append(f"| {r['data']} | {r['variant']} | {r.get('run', 1)} | "
                     f"{r.get('pretrain_steps', 0)} | {r['step']} | {r['report_nll']:.3f} | "
                     f"{r['reliance_report']:.3f} / {r['reliance_entity']:.3f} | "
                     f"{r['distinct_reports']}{of} | {r['pt_macro_f1']:.3f} | "
                     f"{r['pt_micro_f1']:.3f} | {r['abnormal_recall']:.2f} |{more}")
    atomic.write_text(out_stem + '.md', '\n'.join(lines) + '\n')
    metrics = (('reliance_report', 'image reliance (nats/token)'),
               ('distinct_reports', 'distinct reports'), ('pt_macro_f1', 'phantom-truth macro F1'),
               ('abnormal_recall', 'abnormal recall'))
    corpora = sorted({r['data'] for r in rows})
    fig, axes = plt.subplots(len(corpora), len(metrics), figsize=(4 * len(metrics),
                                                                  3.2 * len(corpora)),
                             squeeze=False)
    for i, corpus in enumerate(corpora):
        runs = sorted({(r['variant'], r.get('run', 1)) for r in rows if r['data'] == corpus})
        for j, (key, title) in enumerate(metrics):
            ax = axes[i][j]
            for variant, run in runs:
                pts = sorted((r['step'], r[key]) for r in rows if r['data'] == corpus
                             and r['variant'] == variant and r.get('run', 1) == run)
                ax.plot(*zip(*pts), marker='o', ms=3, label=f'{variant} ({run})')
            ax.set_title(f'{corpus}: {title}', fontsize=9)
            ax.set_xlabel('train steps (after any pre-training)', fontsize=8)
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=6)
    fig.tight_layout()
    atomic.save_figure(fig, out_stem + '.png', dpi=110)
    print(f'wrote {out_stem}.md and {out_stem}.png')


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == 'report':
        report(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == 'export':
        export([sys.argv[0]] + sys.argv[2:])
        return
    p = argparse.ArgumentParser()
    p.add_argument('cmd', choices=['run'])
    p.add_argument('--data', required=True)
    p.add_argument('--variants', default='base,fresh')
    p.add_argument('--eval_at', default='180,600,1200')
    p.add_argument('--beam', type=int, default=0)
    p.add_argument('--out', default='')
    run(p.parse_args())


if __name__ == '__main__':
    main()
