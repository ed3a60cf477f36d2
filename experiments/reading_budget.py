r"""How much pre-training a report model needs to name what it sees: phantom-truth F1 vs budget.

The demo's report model reads a frozen f_R pre-trained on the labels of the training reports
(`pretrain.steps`). Its phantom-truth macro F1 is bounded by what that f_R sees, and pre-training
is the dearest part of the demo on a CPU. This experiment measures the curve the 10-minute goal
sits on:

1. `pretrain`: one pre-training run exactly as `--mode pretrain` does it (same trainer, data order
   and learning rate), with f_R written at each step count of --steps. A constant learning rate
   makes the snapshot at step n the backbone an n-step run would write.
2. `reports`: for each snapshot (or those of --steps), the config's report training
   (`model.pretrained` = the snapshot, so no pre-training of its own) and its test evaluation, as
   `python -m jima_jax.main` runs them; --jobs of them at a time (quality only: their wall times
   share the cores).
3. `evaluate --num_test N`: each finished run scored again on a test split of N studies (the
   demo's 96 leave most findings 1-3 positives: too noisy for a curve; see
   `evaluate_larger_test`).
4. `report`: the table (`<out>.md`), the rows (`<out>.json`) and the curve (`<out>.png`), with
   --num_test N the larger split's scores beside the config's.

  python -m experiments.reading_budget pretrain --config configs/demo.py \
      --steps 900,1800,2700,3600,5400,7200 --workdir runs/reading_budget
  python -m experiments.reading_budget reports --config configs/demo.py \
      --workdir runs/reading_budget --jobs 2
  python -m experiments.reading_budget evaluate --config configs/demo.py \
      --workdir runs/reading_budget --num_test 480
  python -m experiments.reading_budget report --workdir runs/reading_budget --num_test 480 \
      --out experiments/results/reading_budget_demo

Each stage keeps what an earlier call wrote (a snapshot or a finished run is not redone), so a
stopped call picks up where it stopped. `--config.<key>=<value>` overrides go to every stage.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from jima_jax import atomic

METRICS = (('image reliance', 'test/image_reliance/report'),
           ('distinct reports', 'test/distinct_reports'),
           ('phantom-truth macro F1', 'test/phantom_truth/macro_f1'),
           ('phantom-truth micro F1', 'test/phantom_truth/micro_f1'),
           ('abnormal recall', 'test/phantom_truth/abnormal_recall'),
           ('BLEU-4', 'test/BLEU_4'))
LAST_CHECKPOINT_COLUMNS = ('distinct reports', 'phantom-truth macro F1', 'abnormal recall')
USAGE = ('usage: python -m experiments.reading_budget pretrain|reports|evaluate|report '
         '--workdir DIR [--config FILE[:variant]] [--steps N,N,...] [--jobs J] [--num_test N] '
         '[--checkpoint auto|latest] '
         '[--out PREFIX] [--config.<key>=<value> ...]')


def backbone_file(workdir: pathlib.Path, steps: int) -> pathlib.Path:
    return workdir / f'backbone_{steps}.safetensors'


def snapshots(workdir: pathlib.Path) -> list[int]:
    """The step counts whose backbone is written, ascending."""
    found = [int(p.stem.split('_')[1]) for p in workdir.glob('backbone_*.safetensors')]
    return sorted(found)


def pretrain(config, steps: list[int], workdir: pathlib.Path) -> None:
    """One pre-training run; f_R written at every count of `steps` (those already there kept)."""
    from jima_jax.data import prepare
    from jima_jax.train import pretrain as pretrain_lib
    pretrain_lib.check_config(config.pretrain)  # the checks `--mode pretrain` makes
    todo = [n for n in sorted(steps) if not backbone_file(workdir, n).exists()]
    if not todo:
        print(f'every snapshot of --steps is in {workdir}')
        return
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = prepare.load_prepared(config.data)
    train = dataset.splits['train']
    kind = pretrain_lib.targets_of(config.pretrain)
    trainer = pretrain_lib.LabelTrainer(config, train, pretrain_lib.label_targets(train, kind),
                                        batch_size=int(config.pretrain.batch_size),
                                        lr=float(config.pretrain.lr))
    log = workdir / 'pretrain.jsonl'
    t0 = time.perf_counter()
    for n in todo:
        trainer.fit(n - trainer.done, log_every=int(config.pretrain.log_every_steps),
                    total=todo[-1])
        seconds = round(time.perf_counter() - t0, 1)
        summary = {'steps': n, 'batch_size': int(config.pretrain.batch_size),
                   'targets': list(pretrain_lib.target_names(kind)), 'seconds': seconds}
        summary.update(pretrain_lib.validate_head(dataset.splits['val'], trainer, kind))
        pretrain_lib.write_backbone(backbone_file(workdir, n), trainer, config.model, summary)
        earlier = log.read_text() if log.exists() else ''  # rewritten whole: never half a line
        atomic.write_text(log, earlier + json.dumps(summary) + '\n')
        print(f'snapshot {n}: {seconds:.0f} s of pre-training, validation macro AUC '
              f'{summary["val/macro_auc"]:.3f}', flush=True)


def _run_dir(workdir: pathlib.Path, steps: int) -> pathlib.Path:
    return workdir / f'report_{steps}'


def _results(workdir: pathlib.Path, steps: int) -> pathlib.Path:
    return _run_dir(workdir, steps) / 'eval' / 'test' / 'results.json'


def reports(config_arg: str, overrides: list[str], workdir: pathlib.Path, jobs: int,
            steps: list[int] | None = None) -> None:
    """Report training + test evaluation on each snapshot (those of `steps` only, when given)
    without a finished run, `jobs` at a time."""
    from concurrent.futures import ThreadPoolExecutor
    todo = [n for n in snapshots(workdir) if not _results(workdir, n).exists()
            and (not steps or n in steps)]
    if not todo:
        print(f'no snapshot without its report run in {workdir}')
        return
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for n, status in zip(todo, pool.map(
                lambda n: _report_run(config_arg, overrides, workdir, n), todo)):
            print(f'report run on the {n}-step backbone: {status}; log in '
                  f'{_run_dir(workdir, n)}.log', flush=True)


def _report_run(config_arg: str, overrides: list[str], workdir: pathlib.Path, n: int) -> str:
    """Trains and evaluates one report model on snapshot `n`; its wall times to a JSON file."""
    run_dir = _run_dir(workdir, n)
    base = [sys.executable, '-m', 'jima_jax.main', '--config', config_arg,
            '--workdir', str(run_dir), *overrides,
            f'--config.model.pretrained={backbone_file(workdir, n).resolve()}',
            '--config.pretrain.steps=0']
    seconds = {}
    with open(f'{run_dir}.log', 'w') as log:
        for stage, argv in (('train', base), ('eval', base + ['--mode', 'eval'])):
            t0 = time.perf_counter()
            code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
            seconds[f'{stage}_seconds'] = round(time.perf_counter() - t0, 1)
            if code:
                return f'FAILED in {stage} (exit {code})'
    atomic.write_text(run_dir.with_suffix('.time.json'), json.dumps(seconds) + '\n')
    return 'done'


def _big_test_dir(workdir: pathlib.Path, n: int, num_test: int,
                  checkpoint: str = 'auto') -> pathlib.Path:
    suffix = '' if checkpoint == 'auto' else f'.{checkpoint}'
    return workdir / f'report_{n}.test{num_test}{suffix}'


def evaluate_larger_test(config_arg: str, workdir: pathlib.Path, num_test: int,
                         steps: list[int] | None = None, checkpoint: str = 'auto') -> None:
    """Each finished report run scored again on a larger test split (`num_test` studies).

    96 test studies leave 1-3 positives to most of the 16 findings, so one study named or missed
    moves macro F1 by about 0.03: too noisy to draw a curve from. The phantom corpus draws each
    study from its split and id alone, so `data.phantom.num_test` changes the test split only
    (its first studies are the smaller split's); training never reads it. The run (checkpoints
    and config) is copied, its config's num_test raised, and the copy evaluated at
    `checkpoint` (`--checkpoint` of jima_jax.main: 'auto' is the best by validation loss, which
    64 validation studies choose noisily; 'latest' compares every run after the same steps)."""
    import shutil
    for n in snapshots(workdir):
        if steps and n not in steps or not _results(workdir, n).exists():
            continue
        big = _big_test_dir(workdir, n, num_test, checkpoint)
        if (big / 'eval' / 'test' / 'results.json').exists():
            continue
        shutil.rmtree(big, ignore_errors=True)
        shutil.copytree(_run_dir(workdir, n), big, ignore=shutil.ignore_patterns('eval'))
        config = json.loads((big / 'config.json').read_text())
        config['data']['phantom']['num_test'] = int(num_test)
        atomic.write_text(big / 'config.json', json.dumps(config, indent=1) + '\n')
        argv = [sys.executable, '-m', 'jima_jax.main', '--config', config_arg, '--workdir',
                str(big), '--mode', 'eval', '--checkpoint', checkpoint,
                f'--config.model.pretrained={backbone_file(workdir, n).resolve()}',
                '--config.pretrain.steps=0']
        with open(f'{big}.log', 'w') as log:
            code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
        print(f'{n}-step backbone on {num_test} test studies ({checkpoint} checkpoint): '
              f'{"done" if code == 0 else f"FAILED (exit {code})"}; log in {big}.log', flush=True)


def rows(workdir: pathlib.Path, num_test: int = 0) -> list[dict]:
    """One row per snapshot with a finished report run."""
    pre = {}
    if (workdir / 'pretrain.jsonl').exists():
        for line in (workdir / 'pretrain.jsonl').read_text().splitlines():
            r = json.loads(line)
            pre[r['steps']] = r
    out = []
    for n in snapshots(workdir):
        if not _results(workdir, n).exists():
            continue
        res = json.loads(_results(workdir, n).read_text())
        timing = _run_dir(workdir, n).with_suffix('.time.json')
        row = {'pretrain_steps': n, 'pretrain_seconds': pre.get(n, {}).get('seconds'),
               'pretrain_val_macro_auc': pre.get(n, {}).get('val/macro_auc'),
               **(json.loads(timing.read_text()) if timing.exists() else {})}
        for _, key in METRICS:  # results.json names some keys without the split
            row[key] = res.get(key, res.get(key.split('/', 1)[1]))
        for checkpoint, tag in (('auto', ''), ('latest', ':latest')):
            big = _big_test_dir(workdir, n, num_test, checkpoint) / 'eval' / 'test'
            if num_test and (big / 'results.json').exists():
                res = json.loads((big / 'results.json').read_text())
                for _, key in METRICS:
                    row[f'{key}@{num_test}{tag}'] = res.get(key, res.get(key.split('/', 1)[1]))
        out.append(row)
    return out


def markdown(table: list[dict], meta: dict, num_test: int = 0) -> str:
    big = [(f'{name} ({num_test} test studies)', f'{key}@{num_test}') for name, key in METRICS
           if num_test and name != 'BLEU-4']
    big += [(f'{name} ({num_test}, last checkpoint)', f'{key}@{num_test}:latest')
            for name, key in METRICS if num_test and name in LAST_CHECKPOINT_COLUMNS
            and any(f'{key}@{num_test}:latest' in r for r in table)]
    columns = list(METRICS) + big
    lines = [f'# Phantom-truth F1 of the report model vs f_R\'s pre-training ({meta["date"]})', '',
             f'{meta["cpu"]}, {meta["cores"]} cores. Commands: `experiments/reading_budget.py` '
             f'(docstring), config `{meta["config"]}` {" ".join(meta["overrides"])}. Pre-training '
             'seconds are cumulative, from one run with snapshots; report runs shared the cores '
             "with other runs. Test split: the config's"
             + (f'; then the same models on a test split of {num_test} studies (the first of '
                "them are the smaller split's)" if num_test else '') + '.', '',
             '| pre-training steps | pre-training s | val AUC (pre-training head) | '
             + ' | '.join(n for n, _ in columns) + ' |',
             '|---:|---:|---:|' + '---:|' * len(columns)]
    for r in table:
        cells = [str(r['pretrain_steps']), _fmt(r.get('pretrain_seconds'), 0),
                 _fmt(r.get('pretrain_val_macro_auc'), 3)]
        for name, key in columns:
            v = r.get(key)
            cells.append(_fmt(v * 100 if name == 'BLEU-4' and v is not None else v,
                              0 if name.startswith('distinct reports') else 3))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _fmt(v, digits: int) -> str:
    if v is None:
        return '–'
    return f'{v:.{digits}f}'


def plot(table: list[dict], path: pathlib.Path, num_test: int = 0) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    shown = ('phantom-truth macro F1', 'abnormal recall')
    series = [('', ':', " (config's test split, best checkpoint)")]
    if num_test:
        series += [(f'@{num_test}', '-', f' ({num_test} test studies, best checkpoint)'),
                   (f'@{num_test}:latest', '--', f' ({num_test}, last checkpoint)')]
    for suffix, style, label in series:
        for i, (name, key) in enumerate(m for m in METRICS if m[0] in shown):
            pts = [(r['pretrain_steps'], r[key + suffix]) for r in table
                   if r.get(key + suffix) is not None]
            if pts:
                ax.plot(*zip(*pts), style, marker='o', color=f'C{i}', label=name + label)
    ax.axhline(0.60, color='grey', linestyle=':', linewidth=1, label='demo goal, macro F1')
    ax.set_xlabel('pre-training steps of f_R')
    ax.set_ylabel('test split')
    ax.set_ylim(0, 1)
    ax.legend(loc='lower right', fontsize=7)
    ax.set_title('Report model on a frozen f_R: what pre-training buys')
    fig.tight_layout()
    tmp = path.with_name(path.name + '.tmp.png')
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def _parse(argv: list[str]) -> dict:
    args = {'stage': None, 'workdir': None, 'config': None, 'steps': None, 'jobs': '1',
            'out': None, 'num_test': '0', 'checkpoint': 'auto', 'overrides': []}
    it = iter(argv)
    for a in it:
        if a.startswith('--config.'):
            args['overrides'].append(a)
        elif a.startswith('--') and a[2:].split('=')[0] in args:
            key, _, val = a[2:].partition('=')
            args[key] = val if _ else next(it, None)
        elif args['stage'] is None and not a.startswith('-'):
            args['stage'] = a
        else:
            sys.exit(f'reading_budget: unexpected argument {a!r}\n{USAGE}')
    if args['stage'] not in ('pretrain', 'reports', 'evaluate', 'report') or not args['workdir']:
        sys.exit(USAGE)
    if args['stage'] != 'report' and not args['config']:
        sys.exit(f'reading_budget {args["stage"]}: --config is required\n{USAGE}')
    if args['stage'] == 'report' and not args['out']:
        sys.exit(f'reading_budget report: --out is required\n{USAGE}')
    if args['stage'] == 'evaluate' and int(args['num_test']) <= 0:
        sys.exit(f'reading_budget evaluate: --num_test N (N > 0) is required\n{USAGE}')
    return args


def _load_config(config_arg: str, overrides: list[str]):
    """The config as `python -m jima_jax.main --config ... --config.<key>=...` would build it."""
    from absl import flags
    from ml_collections import config_flags

    from jima_jax import configs
    argv = ['reading_budget', f'--config={configs.resolve(config_arg)}', *overrides]
    values = flags.FlagValues()  # overrides are read from `sys_argv`, not from sys.argv
    config_flags.DEFINE_config_file('config', None, 'config file', flag_values=values,
                                    sys_argv=argv)
    values(argv)
    return values.config


def main(argv: list[str]) -> None:
    args = _parse(argv)
    workdir = pathlib.Path(args['workdir'])
    workdir.mkdir(parents=True, exist_ok=True)
    meta_path = workdir / 'meta.json'
    if args['stage'] == 'report':
        meta = json.loads(meta_path.read_text())
        num_test = int(args['num_test'])
        table = rows(workdir, num_test)
        if not table:
            sys.exit(f'reading_budget report: no finished report run in {workdir}')
        out = pathlib.Path(args['out'])
        atomic.write_text(out.with_suffix('.json'), json.dumps(
            {**meta, 'larger_test_split': num_test, 'rows': table}, indent=1) + '\n')
        atomic.write_text(out.with_suffix('.md'), markdown(table, meta, num_test))
        plot(table, out.with_suffix('.png'), num_test)
        print(markdown(table, meta, num_test))
        print(f'wrote {out}.json, .md and .png')
        return
    from benchmarks import vs_pytorch
    meta = {'config': args['config'], 'overrides': args['overrides'],
            'date': time.strftime('%Y-%m-%d'), 'cpu': vs_pytorch.cpu_model(),
            'cores': os.cpu_count()}
    if not meta_path.exists():
        atomic.write_text(meta_path, json.dumps(meta, indent=1) + '\n')
    steps = [int(s) for s in args['steps'].split(',')] if args['steps'] else []
    if steps and min(steps) <= 0:
        sys.exit(f'--steps={args["steps"]}: expected positive step counts.')
    if args['stage'] == 'pretrain':
        if not steps:
            sys.exit(f'reading_budget pretrain: --steps is required\n{USAGE}')
        config = _load_config(args['config'], args['overrides'])
        from jima_jax.runtime import cpu_host
        cpu_host.configure_cpu_host(config.parallel)
        pretrain(config, steps, workdir)
    elif args['stage'] == 'reports':
        reports(args['config'], args['overrides'], workdir, int(args['jobs']), steps)
    else:
        evaluate_larger_test(args['config'], workdir, int(args['num_test']), steps,
                             args['checkpoint'])


if __name__ == '__main__':
    main(sys.argv[1:])
