r"""What a trained f_R still sees: a linear probe of a backbone on the phantom's drawn findings.

Freezing f_R after label pre-training gave better reports than training it in Task 1 (README,
"What the pixels allow"). The explanation offered was that Task 1's entity targets, which hardly
depend on the image, move f_R away from the findings. This measures it: for each backbone named,
f_R's pooled features (both views, evaluation-mode BatchNorm, exactly what the report model
reads) of the 3,000 training studies feed a logistic-regression probe per drawn finding; the
test split is scored as `experiments.visibility_ceiling` scores its classifiers (macro AUC, F1 at
the validation-chosen threshold, oracle F1, F1 at 0.5). The features are fixed, so the probe says
what the backbone holds, whichever head was trained on it.

  python -m experiments.probe_backbone --config configs/demo.py --workdir runs/demo \
      --backbones pretrained,latest --out experiments/results/probe_demo

--backbones: `pretrained` (<workdir>/pretrain/backbone.safetensors, or model.pretrained),
`random` (f_R freshly initialised from the config's seed: the floor), `latest`, or a checkpoint
step. Writes `<out>.json` and `<out>.md`.
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
    """Defined only when run as a script (see experiments/visibility_ceiling.py)."""
    config_flags.DEFINE_config_file('config', None, "The run's config file or packaged name.")
    flags.DEFINE_string('workdir', None, 'The run whose backbones are probed.')
    flags.DEFINE_list('backbones', ['pretrained', 'latest'],
                      'pretrained | random | latest | a checkpoint step.')
    flags.DEFINE_integer('probe_steps', 600, 'Full-batch Adam steps of the probe.')
    flags.DEFINE_string('out', None, 'Output path prefix: <out>.json and <out>.md.')


def fit_probe(x, y, steps: int = 600, lr: float = 1e-2, l2: float = 1e-4):
    """Logistic regression per column of y (bool [N, K]) on standardised x [N, D]: full-batch
    Adam from zero weights, so the result is deterministic. Returns predict(x) -> probs."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = jnp.asarray((x - mean) / std)
    params = {'w': jnp.zeros((x.shape[1], y.shape[1])), 'b': jnp.zeros(y.shape[1])}
    tx = optax.adam(lr)

    def loss(p):
        logits = xs @ p['w'] + p['b']
        return (optax.sigmoid_binary_cross_entropy(logits, y).mean()
                + l2 * jnp.sum(p['w'] ** 2))

    @jax.jit
    def train(p):
        def body(_, carry):
            p, o = carry
            g = jax.grad(loss)(p)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o
        return jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0]

    params = jax.device_get(train(params))

    def predict(z):
        z = (np.asarray(z, np.float32) - mean) / std
        return 1.0 / (1.0 + np.exp(-(z @ params['w'] + params['b'])))
    return predict


def pooled_features(config, model, splits: dict) -> dict:
    """{name: f_R's pooled features [N, V*d] in study order} for each split of `splits`
    (evaluation-mode BatchNorm; one jitted function for all of them)."""
    import jax
    import numpy as np

    from jima_jax.model import jima
    from jima_jax.runtime import parallel
    from jima_jax.train import pretrain, step as step_lib
    sh = parallel.batch_sharding(parallel.make_mesh(config.parallel))
    modeldef, params, stats = step_lib.split_model(model)
    icfg = config.input

    @jax.jit
    def pooled(p, s, images):
        m = modeldef.merge(p, s)
        return m.features(jima.input_images(images, config.model, icfg), False, False)[1]

    out = {}
    for name, split in splits.items():
        rows, index = pretrain.eval_rows(lambda x: pooled(params, stats, x), split, icfg,
                                         config.seed, sh)
        out[name] = np.empty_like(rows)
        out[name][index] = rows
    return out


def backbone_model(config, workdir: pathlib.Path, which: str, vocab_size: int):
    """A JIMA model whose f_R is the backbone named by `which` (other parts as initialised)."""
    import jax
    import ml_collections

    from jima_jax.train import checkpoint, pretrain, run_setup
    cfg = ml_collections.ConfigDict(config.to_dict())
    if which == 'pretrained':
        path = cfg.model.pretrained or str(pretrain.backbone_path(workdir))
        if not pathlib.Path(path).exists():
            raise FileNotFoundError(f'{path}: no pre-trained backbone (pretrain.steps=0, or the '
                                    'run has not reached training); drop "pretrained".')
        cfg.model.pretrained = path
        modeldef, params, stats = run_setup.build_model(cfg, vocab_size)
    elif which == 'random':
        cfg.model.pretrained = ''
        modeldef, params, stats = run_setup.build_model(cfg, vocab_size)
    else:
        step = checkpoint.checkpoint_step(workdir, cfg.train, which)
        run = run_setup.setup(cfg, workdir, step=step)
        try:
            params, stats = jax.device_get((run.state.params, run.state.batch_stats))
            modeldef = run.modeldef
        finally:
            run.checkpointer.close()
    return modeldef.merge(params, stats)


def probe(config, workdir, backbones, probe_steps: int) -> list[dict]:
    from experiments import visibility_ceiling as ceiling
    from jima_jax.data import prepare
    from jima_jax.evaluation import phantom_truth
    dataset = prepare.load_prepared(config.data)
    splits = {k: dataset.splits[k] for k in ('train', 'val', 'test')}
    truth = {k: ceiling._truth(s) for k, s in splits.items()}
    names = [phantom_truth.finding_key(n) for n in phantom_truth.FINDINGS]
    rows = []
    for which in backbones:
        t0 = time.perf_counter()
        model = backbone_model(config, pathlib.Path(workdir), which, dataset.vocab_size)
        feats = pooled_features(config, model, splits)
        predict = fit_probe(feats['train'], truth['train'], steps=probe_steps)
        result = ceiling.score(predict(feats['test']), truth['test'], predict(feats['val']),
                               truth['val'], names)
        rows.append({'backbone': which, 'seconds': round(time.perf_counter() - t0, 1),
                     **result})
        m = result['macro']
        print(f'{which}: test macro AUC {m["auc"]:.3f}, F1 (val threshold) '
              f'{m["f1_val_threshold"]:.3f}, oracle {m["f1_oracle"]:.3f}, at 0.5 '
              f'{m["f1_at_half"]:.3f}', flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = ['# Linear probe of f_R on the drawn findings', '',
             f'`{result["command"]}` ({result["date"]}, {result["cpu"]}, jax {result["jax"]}). '
             'Logistic regression on the frozen pooled features of the training studies; test '
             'split, macro over the findings with a positive test study.', '',
             '| backbone | macro AUC | macro F1, val threshold | oracle F1 | F1 at 0.5 |',
             '|---|---:|---:|---:|---:|']
    for r in result['rows']:
        m = r['macro']
        lines.append(f'| {r["backbone"]} | {m["auc"]:.3f} | {m["f1_val_threshold"]:.3f} | '
                     f'{m["f1_oracle"]:.3f} | {m["f1_at_half"]:.3f} |')
    names = sorted({n for r in result['rows'] for n in r['findings']})
    lines += ['', 'Per finding (test support: AUC / F1 at the validation threshold):', '',
              '| finding | ' + ' | '.join(r['backbone'] for r in result['rows']) + ' |',
              '|---|' + '---|' * len(result['rows'])]
    for n in names:
        cells = []
        for r in result['rows']:
            f = r['findings'].get(n)
            cells.append('–' if f is None else
                         f'{f["support"]}: {f["auc"]:.2f} / {f["f1_val_threshold"]:.2f}')
        lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    config = FLAGS.config
    if config is None or not FLAGS.workdir or not FLAGS.out:
        raise app.UsageError('--config, --workdir and --out are required.')
    if config.data.name not in ('phantom', 'iu_phantom'):
        raise app.UsageError(f'data.name={config.data.name!r}: the probe needs a phantom corpus '
                             "('phantom' or 'iu_phantom'), whose splits store the drawn findings.")
    from jima_jax.runtime import cpu_host
    cpu_host.configure_cpu_host(config.parallel)
    import jax

    from benchmarks import vs_pytorch
    rows = probe(config, FLAGS.workdir, FLAGS.backbones, FLAGS.probe_steps)
    result = {'command': ' '.join(sys.argv), 'date': time.strftime('%Y-%m-%d'),
              'cpu': vs_pytorch.cpu_model(), 'cores': os.cpu_count(), 'jax': jax.__version__,
              'workdir': str(FLAGS.workdir), 'rows': rows}
    out = pathlib.Path(FLAGS.out)
    atomic.write_text(out.with_suffix('.json'), json.dumps(result, indent=1) + '\n')
    atomic.write_text(out.with_suffix('.md'), markdown(result))
    print(f'wrote {out.with_suffix(".json")} and {out.with_suffix(".md")}')


if __name__ == '__main__':
    sys.argv = configs.resolve_argv(sys.argv)
    _define_flags()
    app.run(main)
