r"""What the pixels allow: a ceiling on phantom-truth F1 at a given image size and backbone.

A report model can only name a finding its backbone can see. On the phantom corpora the drawn
findings of every training study are known, so here f_R (exactly as JIMA builds it) and a linear
head are trained on them directly: 16 findings, multi-label BCE, the package's own input pipeline
(`jima_jax.train.pretrain.LabelTrainer`). At each step count of --steps the test split is scored
per finding with the definitions of `phantom_truth` (macro over findings with a positive test
study):

- AUC;
- F1 at the threshold that maximises F1 on the validation split (what a tuned classifier gets);
- F1 at the threshold that maximises it on the test split itself (an optimistic ceiling: no report
  model reading these images with this backbone and budget should beat it);
- F1 at probability 0.5: a finding named when the classifier finds it more likely than not, the
  rule a decoder that writes its most probable sentence follows (rare findings, whose F1-best
  threshold lies far below 0.5, are the ones it loses).

Drawn truth is a training signal no real dataset has, so this measures the images, not JIMA.

  python -m experiments.visibility_ceiling --config configs/demo.py --steps 500,1000,2000,4000 \
      --out experiments/results/visibility_ceiling_64px
  python -m experiments.visibility_ceiling --config configs/demo.py --steps 500,1000,2000 \
      --out experiments/results/visibility_ceiling_128px \
      --config.data.image_size=144 --config.input.image_size=128
  python -m experiments.visibility_ceiling --config configs/demo.py --steps 900,1800,3600,7200 \
      --out experiments/results/visibility_ceiling_64px_probe
  python -m experiments.visibility_ceiling report experiments/results/visibility_ceiling_64px.json \
      experiments/results/visibility_ceiling_128px.json \
      experiments/results/visibility_ceiling_64px_probe.json \
      --out experiments/results/visibility_ceiling

With --probe (on by default) each step count also fits a logistic regression to convergence on
the backbone's frozen pooled features (`experiments.probe_backbone.fit_probe`): what f_R holds,
apart from how far its own head has come. Runs before 2026-12-07 night have no probe and no F1 at
0.5.

Writes `<out>.json` (one row per step count; per-finding values included) and `<out>.md`;
`report` draws the macro-F1 curves of several runs into `<out>.png` and a combined `<out>.md`.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from jima_jax import atomic, configs

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command line's flags, defined only when run as a script: importing this module (the
    tests do, beside jima_jax.main, whose --config has the same name) must not define them."""
    config_flags.DEFINE_config_file('config', None, 'A config file or packaged name.')
    flags.DEFINE_list('steps', ['500', '1000', '2000'], 'Step counts to score at.')
    flags.DEFINE_integer('batch_size', 32, 'Studies per step.')
    flags.DEFINE_float('lr', 1e-3, 'Adam learning rate (pretrain.lr of the presets).')
    flags.DEFINE_string('out', None, 'Output path prefix: <out>.json and <out>.md.')
    flags.DEFINE_bool('probe', True, 'Also fit a linear probe on the backbone at each count.')


def _thresholded_f1(scores, labels, threshold) -> float:
    pred = scores >= threshold
    tp = int((pred & labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def best_threshold(scores, labels) -> float:
    """The threshold (one of the scores) with the highest F1 on (scores, labels); the highest
    score plus one (nothing predicted) when there is no positive."""
    import numpy as np
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    if not labels.any():
        return float(scores.max(initial=0.0)) + 1.0
    candidates = np.unique(scores)
    f1 = [_thresholded_f1(scores, labels, t) for t in candidates]
    return float(candidates[int(np.argmax(f1))])


def score(test_probs, test_truth, val_probs, val_truth, names) -> dict:
    """Per finding and macro: AUC, F1 at the validation-chosen threshold, F1 at the test-chosen
    (oracle) threshold; macro over the findings with a positive test study."""
    import numpy as np

    from jima_jax.train.pretrain import auc
    per = {}
    for i, name in enumerate(names):
        labels = test_truth[:, i]
        if not labels.any():
            continue
        per[name] = {
            'support': int(labels.sum()),
            'auc': auc(test_probs[:, i], labels),
            'f1_val_threshold': _thresholded_f1(
                test_probs[:, i], labels, best_threshold(val_probs[:, i], val_truth[:, i])),
            'f1_oracle': _thresholded_f1(test_probs[:, i], labels,
                                         best_threshold(test_probs[:, i], labels)),
            'f1_at_half': _thresholded_f1(test_probs[:, i], labels, 0.5),
        }
    macro = {k: float(np.nanmean([v[k] for v in per.values()]))
             for k in ('auc', 'f1_val_threshold', 'f1_oracle', 'f1_at_half')}
    return {'macro': macro, 'findings': per}


def _truth(split):
    from jima_jax.evaluation import phantom_truth
    if split.truth_labels is None:
        raise ValueError('experiments.visibility_ceiling needs a phantom corpus (data.name '
                         "'phantom' or 'iu_phantom'), whose splits store the drawn findings.")
    return phantom_truth.drawn_findings(split.truth_labels)


def run(config, steps: list[int], batch_size: int, lr: float, probe: bool = True) -> list[dict]:
    """Trains the classifier to each step count and scores it (and, with `probe`, a logistic
    regression fitted to convergence on its frozen backbone's features:
    experiments.probe_backbone)."""
    from jima_jax.data import prepare
    from jima_jax.evaluation import phantom_truth
    from jima_jax.train.pretrain import LabelTrainer
    dataset = prepare.load_prepared(config.data)
    train, val, test = (dataset.splits[k] for k in ('train', 'val', 'test'))
    trainer = LabelTrainer(config, train, _truth(train), batch_size=batch_size, lr=lr)
    names = [phantom_truth.finding_key(n) for n in phantom_truth.FINDINGS]
    rows, t0 = [], time.perf_counter()
    for target in sorted(steps):
        trainer.fit(target - trainer.done, log_every=250, total=max(steps))
        seconds = time.perf_counter() - t0
        test_probs, test_idx = trainer.predict(test)
        val_probs, val_idx = trainer.predict(val)
        result = score(test_probs, _truth(test)[test_idx], val_probs, _truth(val)[val_idx],
                       names)
        rows.append({'steps': target, 'train_seconds': round(seconds, 1), **result})
        if probe:  # what the backbone holds, whatever the head has learned so far
            from experiments import probe_backbone
            feats = {k: trainer.features(s) for k, s in (('train', train), ('val', val),
                                                         ('test', test))}
            predict = probe_backbone.fit_probe(feats['train'][0],
                                               _truth(train)[feats['train'][1]])
            rows[-1]['probe'] = score(predict(feats['test'][0]), _truth(test)[feats['test'][1]],
                                      predict(feats['val'][0]), _truth(val)[feats['val'][1]],
                                      names)
        m = result['macro']
        print(f'steps {target}: test macro AUC {m["auc"]:.3f}, F1 (val threshold) '
              f'{m["f1_val_threshold"]:.3f}, F1 (oracle threshold) {m["f1_oracle"]:.3f}, '
              f'F1 (at 0.5) {m["f1_at_half"]:.3f} ({seconds:.0f} s of training)', flush=True)
        if probe:
            m = rows[-1]['probe']['macro']
            print(f'  linear probe of f_R: AUC {m["auc"]:.3f}, F1 (val threshold) '
                  f'{m["f1_val_threshold"]:.3f}, F1 (at 0.5) {m["f1_at_half"]:.3f}', flush=True)
    return rows


def markdown(runs: list[dict]) -> str:
    lines = ['# What the pixels allow: drawn-finding classifiers on the phantom test split', '',
             'f_R as JIMA builds it plus a linear head, trained on the 16 drawn findings of the '
             'training studies (python -m experiments.visibility_ceiling; see its docstring). '
             'Macro over the findings with a positive test study, as `phantom_truth/macro_f1`. '
             '"train s" is the wall time of training, on cores the runs may have shared.', '']
    for r in runs:
        if 'command' in r:
            lines.append(f'- {r["name"]}: `{r["command"]}` ({r["date"]}, {r["cpu"]}, '
                         f'{r.get("cores", "?")} cores, jax {r["jax"]}; batch {r["batch_size"]}, '
                         f'Adam {r["lr"]})')
    lines += ['', '| run | image size | steps | train s | macro AUC | macro F1, val threshold | '
             'macro F1, oracle threshold | macro F1 at 0.5 | probe: AUC / F1 val / F1 at 0.5 |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---|']
    for r in runs:
        for row in r['rows']:
            m = row['macro']
            half = f'{m["f1_at_half"]:.3f}' if 'f1_at_half' in m else '–'
            pm = row.get('probe', {}).get('macro')
            probe = (f'{pm["auc"]:.3f} / {pm["f1_val_threshold"]:.3f} / {pm["f1_at_half"]:.3f}'
                     if pm else '–')
            lines.append(f'| {r["name"]} | {r["image_size"]} | {row["steps"]} | '
                         f'{row["train_seconds"]:.0f} | {m["auc"]:.3f} | '
                         f'{m["f1_val_threshold"]:.3f} | {m["f1_oracle"]:.3f} | {half} | {probe} |')
    last = [r for r in runs if r['rows']]
    if last:
        names = sorted({n for r in last for n in r['rows'][-1]['findings']})
        lines += ['', 'Per finding at the last step count (test support; AUC / F1 at the '
                  'validation threshold / oracle F1):', '',
                  '| finding | ' + ' | '.join(r['name'] for r in last) + ' |',
                  '|---|' + '---|' * len(last)]
        for n in names:
            cells = []
            for r in last:
                f = r['rows'][-1]['findings'].get(n)
                cells.append('–' if f is None else f'{f["support"]}: {f["auc"]:.2f} / '
                             f'{f["f1_val_threshold"]:.2f} / {f["f1_oracle"]:.2f}')
            lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot(runs: list[dict], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in runs:
        steps = [row['steps'] for row in r['rows']]
        line, = ax.plot(steps, [row['macro']['f1_oracle'] for row in r['rows']], 'o-',
                        label=f'{r["name"]}: oracle threshold')
        ax.plot(steps, [row['macro']['f1_val_threshold'] for row in r['rows']], 's--',
                color=line.get_color(), label=f'{r["name"]}: validation threshold')
        probed = [row for row in r['rows'] if 'probe' in row]
        if probed:
            ax.plot([row['steps'] for row in probed],
                    [row['probe']['macro']['f1_at_half'] for row in probed], '^:',
                    color=line.get_color(), label=f'{r["name"]}: linear probe at 0.5')
    ax.axhline(0.60, color='grey', lw=0.8, ls=':', label='demo goal (report model)')
    ax.set_xlabel('classifier training steps (batch 32)')
    ax.set_ylabel('test macro F1 over drawn findings')
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title('What a backbone can see: drawn-finding classifier on the phantom')
    fig.tight_layout()
    tmp = path.with_name(path.name + '.tmp.png')
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def report(paths: list[str], out: str) -> None:
    runs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    for r in runs:  # a re-run of the same backbone and size is told apart by its probe
        if any('probe' in row for row in r['rows']) and not r['name'].endswith(', probed'):
            r['name'] += ', probed'
    out_path = pathlib.Path(out)
    atomic.write_text(out_path.with_suffix('.md'), markdown(runs))
    plot(runs, out_path.with_suffix('.png'))
    print(f'wrote {out_path.with_suffix(".md")} and {out_path.with_suffix(".png")}')


def main(argv):
    if len(argv) > 1:  # ('report' never gets here: it is dispatched before absl parses)
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    config = FLAGS.config
    if config is None or not FLAGS.out:
        raise app.UsageError('--config and --out are required.')
    if config.data.name not in ('phantom', 'iu_phantom'):
        raise app.UsageError(f'data.name={config.data.name!r}: the ceiling needs a phantom corpus '
                             "('phantom' or 'iu_phantom'), whose splits store the drawn findings.")
    from jima_jax.runtime import cpu_host
    cpu_host.configure_cpu_host(config.parallel)
    steps = [int(s) for s in FLAGS.steps]
    if not steps or min(steps) <= 0:
        raise app.UsageError(f'--steps={",".join(FLAGS.steps)}: expected positive step counts.')
    import jax

    from benchmarks import vs_pytorch
    rows = run(config, steps, FLAGS.batch_size, FLAGS.lr, FLAGS.probe)
    out = pathlib.Path(FLAGS.out)
    result = {'name': f'{config.model.backbone} w{config.model.backbone_width} '
                      f'{config.input.image_size}px',
              'image_size': int(config.input.image_size), 'config': config.to_dict(),
              'command': ' '.join(sys.argv), 'date': time.strftime('%Y-%m-%d'),
              'cpu': vs_pytorch.cpu_model(), 'cores': os.cpu_count(), 'jax': jax.__version__,
              'batch_size': FLAGS.batch_size, 'lr': FLAGS.lr, 'rows': rows}
    atomic.write_text(out.with_suffix('.json'), json.dumps(result, indent=1) + '\n')
    atomic.write_text(out.with_suffix('.md'), markdown([result]))
    print(f'wrote {out.with_suffix(".json")} and {out.with_suffix(".md")}')


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'report':
        if '--out' not in sys.argv:
            sys.exit('usage: python -m experiments.visibility_ceiling report A.json [B.json ...] '
                     '--out PREFIX')
        i = sys.argv.index('--out')
        report(sys.argv[2:i] + sys.argv[i + 2:], sys.argv[i + 1])
    else:
        sys.argv = configs.resolve_argv(sys.argv)
        _define_flags()
        app.run(main)
