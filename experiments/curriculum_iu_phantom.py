r"""Does the curriculum help? IU-phantom, same epochs and seeds for every schedule (issue 6).

  nohup nice -n 10 python -m experiments.curriculum_iu_phantom \
      > experiments/results/curriculum_iu_phantom.log 2>&1 &
  python -m experiments.curriculum_iu_phantom --summarize    # tables from the finished runs

Every (schedule, seed) trains `configs/iu_phantom.py:small` in its own subprocess under
`runs/curriculum_iu_phantom/<schedule>_s<seed>` and then scores the final checkpoint on the test
split (`--mode eval`: beam search, every metric) and, with teacher forcing, by the difficulty
measurers themselves (mean k1, and mean k2 over all / abnormal test studies: how high the model
ranks the reference words, which moves even when beam search emits one template for every study).
Finished runs are skipped, so an interrupted experiment picks up where it stopped. Writes,
atomically:
  experiments/results/curriculum_iu_phantom.json   every run's final metrics and cost
  experiments/results/curriculum_iu_phantom.md     mean +- sd per schedule, and paired
                                                   differences to `none` (same seeds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

from jima_jax import atomic

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / 'experiments' / 'results'
NAME = 'curriculum_iu_phantom'
CONFIG = 'configs/iu_phantom.py:small'
# (results key, column title); x100 in the tables except losses. tf/ = teacher_forced().
METRICS = (
    ('BLEU_4', 'BLEU-4'),
    ('ce/micro_u0/f1', 'CE F1 (micro, u=0)'),
    ('token_f1/1_8/infrequent', 'infrequent-token F1 (1/8)'),
    ('BLEU_4/abnormal', 'abnormal BLEU-4'),
    ('BLEU_4/normal', 'normal BLEU-4'),
    ('token_f1/1_8/frequent', 'frequent-token F1 (1/8)'),
    ('test/loss/report', 'test report NLL (teacher-forced)'),
    ('tf/k2', 'test k2 (all)'),
    ('tf/k2/abnormal', 'test k2 (abnormal)'),
    ('tf/k1', 'test k1'),
)
# jima_release's s_t is the validation BLEU-4, so its validations must decode.
SCHEDULE_FLAGS = {'jima_release': ['--config.train.eval_decode=True']}
# Baseline rows: name -> (curriculum schedule, flags). `r2gen` is the model JIMA builds on (no f_E,
# no entity fusion, one task), with everything else equal.
BASELINES = {'r2gen': ('none', ['--config.model.entity_fusion=False'])}


def row_setup(row: str) -> tuple[str, list[str]]:
    """(curriculum schedule, extra flags) of a table row: a schedule name or a baseline."""
    if row in BASELINES:
        return BASELINES[row]
    return row, SCHEDULE_FLAGS.get(row, [])


def run_dir(root: pathlib.Path, schedule: str, seed: int) -> pathlib.Path:
    return root / f'{schedule}_s{seed}'


def _main_module(args: list[str], log: pathlib.Path) -> float:
    """Runs `python -m jima_jax.main args`, output appended to `log`; returns seconds."""
    t0 = time.perf_counter()
    with open(log, 'a') as out:
        proc = subprocess.run([sys.executable, '-m', 'jima_jax.main', *args], cwd=str(REPO),
                              stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f'jima_jax.main {" ".join(args)} failed ({proc.returncode}); see {log}')
    return time.perf_counter() - t0


def run_one(root: pathlib.Path, schedule: str, seed: int, extra: list[str]) -> dict:
    """Train + test-evaluate one run (or read it back if it already finished)."""
    workdir = run_dir(root, schedule, seed)
    done = workdir / 'experiment_run.json'
    if done.exists():
        record = json.loads(done.read_text())
        if 'teacher_forced' not in record:  # a run of an earlier version of this script
            record['teacher_forced'] = teacher_forced(workdir, schedule, seed, extra)
            atomic.write_text(done, json.dumps(record, indent=2) + '\n')
        return record
    workdir.mkdir(parents=True, exist_ok=True)
    curriculum, row_flags = row_setup(schedule)
    flags = ['--config', CONFIG, '--workdir', str(workdir),
             f'--config.curriculum.schedule={curriculum}', f'--config.seed={seed}',
             *row_flags, *extra]
    log = workdir / 'stdout.log'
    train_s = _main_module(flags, log)
    eval_s = _main_module([*flags, '--mode', 'eval', '--split', 'test',
                           '--checkpoint', 'latest'], log)
    summary = json.loads((workdir / 'train_summary.json').read_text())
    results = json.loads((workdir / 'eval' / 'test' / 'results.json').read_text())
    rows = [json.loads(line) for line in (workdir / 'train_log.jsonl').read_text().splitlines()]
    curves = {}
    for row in rows:
        if 'curriculum/c1' in row:
            curves[int(row['epoch'])] = {k.split('/', 1)[1]: v for k, v in row.items()
                                         if k.startswith('curriculum/')}
    record = {'schedule': schedule, 'seed': seed, 'train_steps': summary['step'],
              'train_seconds': round(train_s, 1), 'eval_seconds': round(eval_s, 1),
              'metrics': {k: results.get(k) for k, _ in METRICS},
              'all_test_metrics': results,
              'curriculum_by_epoch': [curves[e] for e in sorted(curves)]}
    record['teacher_forced'] = teacher_forced(workdir, schedule, seed, extra)
    atomic.write_text(done, json.dumps(record, indent=2) + '\n')
    return record


def run_config(schedule: str, seed: int, extra: list[str]):
    """The config a run trained with (extra flags: --config.a.b=value)."""
    import ast
    from configs import iu_phantom
    cfg = iu_phantom.get_config('small')
    curriculum, row_flags = row_setup(schedule)
    cfg.curriculum.schedule, cfg.seed = curriculum, seed
    flags = [*row_flags, *extra]
    for key, _, value in (f[len('--config.'):].partition('=') for f in flags):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        cfg.update_from_flattened_dict({key: value})
    return cfg


def teacher_forced(workdir: pathlib.Path, schedule: str, seed: int, extra: list[str]) -> dict:
    """Test-split difficulties of the final checkpoint (teacher forcing, no decoding): mean k1,
    and mean k2 over all / abnormal / normal studies. Lower = the references rank higher."""
    import numpy as np
    from jima_jax.train import difficulty, loop
    cfg = run_config(schedule, seed, extra)
    s = loop.setup(cfg, workdir)
    try:
        fn = difficulty.jit_score_step(
            difficulty.build_score_step(s.modeldef, cfg.model, cfg.input), s.mesh,
            s.state_sharding)
        test = s.dataset.splits['test']
        d = difficulty.score_split(fn, s.state.params, s.state.batch_stats, test, cfg.input,
                                   seed=cfg.seed, mesh=s.mesh)
    finally:
        s.checkpointer.close()
    abnormal = np.asarray(test.abnormal, bool)
    return {'k1': float(d.k1[d.has_entities].mean()), 'k2': float(d.k2_all.mean()),
            'k2_balanced': float(d.k2_balanced.mean()),
            'k2/abnormal': float(d.k2_all[abnormal].mean()),
            'k2/normal': float(d.k2_all[~abnormal].mean())}


def _mean_sd(values: list[float], key: str) -> str:
    """mean ± sample sd; losses in nats (3 decimals), every other metric x100."""
    if not values:
        return 'n/a'
    scale, digits = (1, 3) if 'loss' in key else (100, 2)
    mean = scale * statistics.fmean(values)
    sd = scale * statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{mean:.{digits}f} ± {sd:.{digits}f}'


def _value(record: dict, key: str):
    """A run's metric; None where it has none (e.g. k1 of the r2gen row, which has no f_E)."""
    if key.startswith('tf/'):
        value = record.get('teacher_forced', {}).get(key[3:])
    else:
        value = record['all_test_metrics'].get(key)
    return None if value is None or value != value else value  # NaN -> None


def _curves(records: list[dict], schedules: list[str]) -> list[str]:
    """Kept ratios and the kept Task-2 set's composition per epoch, mean over seeds."""
    lines = ['', 'Per epoch (mean over seeds): c1 / c2, and the Task-2 kept set\'s abnormal and '
             'infrequent-token shares (all training studies: '
             '{all_abn:.3f} / {all_inf:.3f}):', '']
    shares = None
    for s in schedules:
        runs = [r for r in records if r['schedule'] == s and r['curriculum_by_epoch']]
        if not runs:
            continue
        cells = []
        for e in range(min(len(r['curriculum_by_epoch']) for r in runs)):
            rows = [r['curriculum_by_epoch'][e] for r in runs]
            mean = lambda k: statistics.fmean(row.get(k, float('nan')) for row in rows)
            shares = shares or (mean('all_abnormal_share'), mean('all_infrequent_token_share'))
            cells.append(f'{mean("c1"):.3f} / {mean("c2"):.3f}; {mean("kept_abnormal_share"):.3f}'
                         f', {mean("kept_infrequent_token_share"):.3f}')
        lines.append(f'| {s} | ' + ' | '.join(cells) + ' |')
    if shares is None:
        return []
    lines[1] = lines[1].format(all_abn=shares[0], all_inf=shares[1])
    n = max(line.count('|') for line in lines) - 2
    lines.insert(3, '| schedule | ' + ' | '.join(f'epoch {e + 1}' for e in range(n)) + ' |')
    lines.insert(4, '|---|' + '---|' * n)
    return lines


def markdown(records: list[dict], schedules: list[str], meta: dict) -> str:
    by = {(r['schedule'], r['seed']): r for r in records}
    seeds = sorted({r['seed'] for r in records})
    lines = [f'IU-phantom (`{CONFIG}`, {meta["epochs"]} epochs incl. {meta["warmup"]} warm-up, '
             f'test split, final checkpoint), seeds {seeds}; mean ± sd over seeds, x100 '
             '(the NLL in nats).' + (
                 f' Runs read back from the results file were made on {meta["previous_runs_date"]}'
                 f', the others on {meta["date"]} ({meta["machine"]}).'
                 if meta.get('previous_runs_date') not in (None, meta['date']) else ''),
             '',
             '| schedule | runs | ' + ' | '.join(t for _, t in METRICS) + ' | train steps |',
             '|---|---|' + '---|' * (len(METRICS) + 1)]
    for s in schedules:
        runs = [by[(s, seed)] for seed in seeds if (s, seed) in by]
        cells = [_mean_sd([_value(r, k) for r in runs if _value(r, k) is not None], k)
                 for k, _ in METRICS]
        steps = statistics.fmean(r['train_steps'] for r in runs) if runs else 0
        lines.append(f'| {s} | {len(runs)} | ' + ' | '.join(cells) + f' | {steps:.0f} |')
    lines += ['', 'Paired difference to `none` (same seed), mean ± sd over seeds:', '',
              '| schedule | ' + ' | '.join(t for _, t in METRICS) + ' |',
              '|---|' + '---|' * len(METRICS)]
    for s in schedules:
        if s == 'none':
            continue
        cells = []
        for k, _ in METRICS:
            pairs = [(_value(by[(s, seed)], k), _value(by[('none', seed)], k))
                     for seed in seeds if (s, seed) in by and ('none', seed) in by]
            diffs = [a - b for a, b in pairs if a is not None and b is not None]
            cells.append(_mean_sd(diffs, k))
        lines.append(f'| {s} | ' + ' | '.join(cells) + ' |')
    lines += _curves(records, schedules)
    return '\n'.join(lines) + '\n'


def summarize(records: list[dict], schedules: list[str], meta: dict) -> str:
    payload = {'config': CONFIG, 'meta': meta, 'runs': records}
    atomic.write_text(RESULTS / f'{NAME}.json', json.dumps(payload, indent=2) + '\n')
    text = markdown(records, schedules, meta)
    atomic.write_text(RESULTS / f'{NAME}.md', text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--schedules', default='none,jima,jima_release,competence_sqrt,r2gen',
                        help=f'table rows: schedules, or the baselines {sorted(BASELINES)}')
    parser.add_argument('--seeds', default='0,1,2')
    parser.add_argument('--root', default=str(REPO / 'runs' / NAME))
    parser.add_argument('--summarize', action='store_true', help='only tabulate finished runs')
    args, extra = parser.parse_known_args(argv)  # the rest: --config.key=value for every run
    if any(not flag.startswith('--config.') for flag in extra):
        parser.error(f'unexpected arguments {extra}; extra flags must be --config.key=value.')
    schedules = args.schedules.split(',')
    seeds = [int(s) for s in args.seeds.split(',')]
    root = pathlib.Path(args.root)
    from configs import iu_phantom
    cfg = iu_phantom.get_config('small')
    meta = {'epochs': cfg.train.num_epochs, 'warmup': cfg.curriculum.warmup_epochs,
            'extra_flags': extra, 'machine': f'{platform.machine()} {os.cpu_count()} cpus',
            'date': datetime.date.today().isoformat()}
    # Runs recorded in the results file but not under --root are read back from it (their date is
    # in the table's meta), so a new row can be added without re-running the others.
    previous_file = RESULTS / f'{NAME}.json'
    previous = {}
    if previous_file.exists():
        old = json.loads(previous_file.read_text())
        previous = {(r['schedule'], r['seed']): r for r in old.get('runs', [])}
        meta['previous_runs_date'] = old.get('meta', {}).get('previous_runs_date',
                                                             old.get('meta', {}).get('date'))
    fresh = [(seed, schedule) for seed in seeds for schedule in schedules
             if (run_dir(root, schedule, seed) / 'experiment_run.json').exists()
             or (schedule, seed) not in previous]
    records = [previous[(schedule, seed)] for seed in seeds for schedule in schedules
               if (seed, schedule) not in fresh]  # kept in every rewrite of the results file
    for seed, schedule in fresh:  # seed-major: a partial experiment still compares fairly
        workdir = run_dir(root, schedule, seed)
        if args.summarize:
            if (workdir / 'experiment_run.json').exists():
                records.append(run_one(root, schedule, seed, extra))
            continue
        print(f'{datetime.datetime.now():%H:%M:%S} {schedule} seed {seed}', flush=True)
        records.append(run_one(root, schedule, seed, extra))
        r = records[-1]
        print(f'  {r["train_steps"]} steps, train {r["train_seconds"]:.0f}s, eval '
              f'{r["eval_seconds"]:.0f}s; ' + ', '.join(
                  f'{t} {_mean_sd([_value(r, k)], k).split(" ")[0]}' for k, t in METRICS
                  if _value(r, k) is not None), flush=True)
        summarize(records, schedules, meta)
    print(summarize(records, schedules, meta), flush=True)


if __name__ == '__main__':
    main()
