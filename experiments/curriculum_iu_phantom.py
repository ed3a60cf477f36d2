r"""Does the curriculum help? A phantom corpus, same epochs and seeds for every schedule.

  nohup nice -n 10 python -m experiments.curriculum_iu_phantom [--config configs/iu_phantom.py:X] \
      > experiments/results/curriculum_iu_phantom.log 2>&1 &
  # the demo corpus, whose models read their images (results: curriculum_phantom.*; the last two
  # overrides give the demo recipe those runs used, with f_R trained in Task 1)
  python -m experiments.curriculum_iu_phantom --config configs/demo.py:uncached \
      --rows none,jima,jima_release,competence_sqrt --config.curriculum.warmup_epochs=4 \
      --config.optim.task1.visual_lr=-1 --config.train.num_epochs=14
  python -m experiments.curriculum_iu_phantom --summarize    # tables from the finished runs
  python -m experiments.curriculum_iu_phantom --rows none,jima --seeds 0 --root /tmp/cur \
      --results-dir /tmp/cur_results --config.train.num_epochs=3   # a small check

Every (row, seed) trains `--config` in its own subprocess under `<root>/<config>/<row>_s<seed>`
(<config>: e.g. iu_phantom_small, plus a hash of any extra --config.* flags) and then scores the
final checkpoint on the test split (`--mode eval`: beam search, every metric, image reliance,
distinct reports, phantom truth) and, with teacher forcing, by the difficulty measurers themselves
(mean k1, and mean k2 over all / abnormal test studies). Finished runs are skipped, so an
interrupted experiment picks up where it stopped; runs recorded in the results file are read back
from it. A run records its config (`--config` and the extra --config.* flags);
one table only ever holds runs of one config: runs of other configs stay in the results file under
`other_configs`, and a run directory holding another config's run is refused. Writes, atomically,
into --results-dir (default experiments/results), named after the config's corpus
(`curriculum_iu_phantom.*` for IU-phantom, `curriculum_phantom.*` for the demo corpus):
  curriculum_<corpus>.json    every run's final metrics, cost and c1/c2 per epoch
  curriculum_<corpus>.md      whether the models read their images; paired differences to
                              `none` (same seed) with their spread; mean +- sd per row;
                              c per epoch
  curriculum_<corpus>_c.png   c1 and c2 per epoch, one line per run, coloured by row
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Optional

from jima_jax import atomic

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / 'experiments' / 'results'
NAME = 'curriculum_iu_phantom'  # the results files' stem for IU-phantom configs
# Corpora the experiment is meant for (`data.name` of the config): the table's title, and the
# results files' stem (`curriculum_<data.name>`), so each corpus keeps its own table.
DATASETS = {'iu_phantom': 'IU-phantom', 'phantom': 'The demo phantom corpus'}
DEFAULT_CONFIG = 'configs/iu_phantom.py:small'
# The only config earlier versions of this script trained (their records do not name one).
LEGACY_CONFIG = 'configs/iu_phantom.py:small'
DEFAULT_ROWS = 'none,jima,jima_release,competence_sqrt,r2gen'
BASE_ROW = 'none'  # paired differences are taken against this row, seed by seed
SPLIT = 'test'
RELIANCE_KEY = f'{SPLIT}/image_reliance/report'
# (results key, column title); x100 in the tables except losses, reliance and counts.
# tf/ = teacher_forced().
METRICS = (
    ('BLEU_4', 'BLEU-4'),
    ('ce/micro_u0/f1', 'CE F1 (micro, u=0)'),
    ('token_f1/1_8/infrequent', 'infrequent-token F1 (1/8)'),
    ('BLEU_4/abnormal', 'abnormal BLEU-4'),
    ('BLEU_4/normal', 'normal BLEU-4'),
    ('token_f1/1_8/frequent', 'frequent-token F1 (1/8)'),
    ('phantom_truth/abnormal_recall', 'phantom-truth abnormal recall'),
    ('test/loss/report', 'test report NLL (teacher-forced)'),
    ('tf/k2', 'test k2 (all)'),
    ('tf/k2/abnormal', 'test k2 (abnormal)'),
    ('tf/k1', 'test k1'),
)
# The comparison issue 12 asks for: paired differences to `none` with their spread.
PAIRED = (
    ('token_f1/1_8/infrequent', 'infrequent-token F1 (1/8)'),
    ('BLEU_4/abnormal', 'abnormal BLEU-4'),
    ('phantom_truth/abnormal_recall', 'phantom-truth abnormal recall'),
    ('BLEU_4', 'BLEU-4'),
)
# Whether the models read their images (a comparison of models that do not says nothing).
READING = (
    (RELIANCE_KEY, 'image reliance (report, nats/token)'),
    ('distinct_reports', 'distinct reports'),
    ('phantom_truth/macro_f1', 'phantom-truth macro F1'),
)
# Per-run fields of the results JSON: field -> eval results key.
RUN_FIELDS = {
    'image_reliance_report': RELIANCE_KEY,
    'distinct_reports': 'distinct_reports',
    'test_studies': 'count/studies',
    'phantom_truth_macro_f1': 'phantom_truth/macro_f1',
    'phantom_truth_abnormal_recall': 'phantom_truth/abnormal_recall',
}
# jima_release's s_t is the validation BLEU-4, so its validations must decode.
SCHEDULE_FLAGS = {'jima_release': ['--config.train.eval_decode=True']}
# Baseline rows: name -> (curriculum schedule, flags). `r2gen` is the model JIMA builds on (no f_E,
# no entity fusion, one task), with everything else equal.
BASELINES = {'r2gen': ('none', ['--config.model.entity_fusion=False'])}
PAPER_ROW = 'jima'  # the paper's rule (s = 1 - mean k)
INERT_C = 0.95  # a schedule whose final c1 and c2 stay at or above this keeps nearly everything


def row_setup(row: str) -> tuple[str, list[str]]:
    """(curriculum schedule, extra flags) of a table row: a schedule name or a baseline."""
    if row in BASELINES:
        return BASELINES[row]
    return row, SCHEDULE_FLAGS.get(row, [])


def config_id(config: str, extra) -> str:
    """What a run was trained with, as one string: `--config` and the extra --config.* flags.
    Runs with different ids never share a table."""
    return ' '.join([config, *extra])


def config_slug(config: str) -> str:
    """A directory name for `config`: 'configs/iu_phantom.py:small' -> 'iu_phantom_small'."""
    file, _, arg = config.partition(':')
    parts = (pathlib.PurePath(file).stem, arg)
    return re.sub(r'[^A-Za-z0-9]+', '_', '_'.join(p for p in parts if p))


def run_dir(root: pathlib.Path, schedule: str, seed: int, config: str = DEFAULT_CONFIG,
            extra=()) -> pathlib.Path:
    """<root>/<config slug>[-<hash of the extra flags>]/<row>_s<seed>: runs of another config
    (a small check with --config.* flags, say) never land in the experiment's directories."""
    tag = config_slug(config)
    if extra:
        tag += '-' + hashlib.sha1(' '.join(extra).encode()).hexdigest()[:8]
    return root / tag / f'{schedule}_s{seed}'


def load_config(config: str):
    """The ConfigDict of `--config` ('<file>.py[:arg]' or a packaged 'name[:arg]')."""
    from jima_jax import configs
    file, _, arg = configs.resolve(config).partition(':')
    path = pathlib.Path(file)
    if not path.is_absolute() and not path.is_file():
        path = REPO / path
    if not path.is_file():
        raise ValueError(f'--config={config!r}: no config file {path}; pass a file such as '
                         f'{DEFAULT_CONFIG} or a packaged name such as iu_phantom:small.')
    spec = importlib.util.spec_from_file_location(f'_{NAME}_config_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _config_flag(config: str) -> str:
    """`config` with its file made absolute, for the subprocesses (they run in the repository)."""
    from jima_jax import configs
    file, sep, arg = configs.resolve(config).partition(':')
    path = pathlib.Path(file)
    return f'{path.resolve() if path.is_file() else file}{sep}{arg}'


def _main_module(args: list[str], log: pathlib.Path) -> float:
    """Runs `python -m jima_jax.main args`, output appended to `log`; returns seconds."""
    t0 = time.perf_counter()
    with open(log, 'a') as out:
        proc = subprocess.run([sys.executable, '-m', 'jima_jax.main', *args], cwd=str(REPO),
                              stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f'jima_jax.main {" ".join(args)} failed ({proc.returncode}); see {log}')
    return time.perf_counter() - t0


def curriculum_from_log(path: pathlib.Path) -> list[dict]:
    """The `curriculum/*` values the loop logs at the start of every epoch (c1, c2, kept sizes,
    s1/s2 once scored, kept-set shares), one dict per epoch in order, with its 0-based `epoch`; the
    last row of an epoch wins (a resumed run may log one twice). Empty for `none`, which logs
    none."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{path}: no train log; the run has not trained (or was made with '
                                'another --workdir).')
    curves = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}, line {n}: not JSON ({e}); fix or remove that line.') from e
        if 'curriculum/c1' in row:
            if 'epoch' not in row:
                raise ValueError(f'{path}, line {n}: a curriculum row without "epoch".')
            curves[int(row['epoch'])] = {'epoch': int(row['epoch']), **{
                k.split('/', 1)[1]: v for k, v in row.items() if k.startswith('curriculum/')}}
    return [curves[e] for e in sorted(curves)]


def reads_verdict(results: dict) -> str:
    """'yes' / 'no' / 'unknown': the verdict of the package's own 'Reads its images' line."""
    from jima_jax.evaluation import report
    match = re.match(r'Reads its images: (yes|no|unknown)\b', report.reads_images_line(results))
    if match is None:
        raise ValueError('jima_jax.evaluation.report.reads_images_line no longer starts with '
                         '"Reads its images: yes|no|unknown"; update reads_verdict.')
    return match.group(1)


def upgrade(record: dict, config: str, extra) -> dict:
    """A run record with the fields this version writes; older records get them from their own
    test metrics (None where those lack them) and the config they were made with."""
    record.setdefault('config', config)
    record.setdefault('extra_flags', list(extra))
    metrics = record.get('all_test_metrics', {})
    for field, key in RUN_FIELDS.items():
        record.setdefault(field, metrics.get(key))
    record['reads_images'] = reads_verdict(metrics)  # always by the package's current rule
    record.setdefault('curriculum_by_epoch', [])
    return record


def run_one(root: pathlib.Path, schedule: str, seed: int, extra: list[str],
            config: str = DEFAULT_CONFIG) -> dict:
    """Train + test-evaluate one run (or read it back if it already finished)."""
    workdir = run_dir(root, schedule, seed, config, extra)
    done = workdir / 'experiment_run.json'
    if done.exists():
        record = upgrade(json.loads(done.read_text()), LEGACY_CONFIG, [])
        made, asked = config_id(record['config'], record['extra_flags']), config_id(config, extra)
        if made != asked:
            raise RuntimeError(f'{done} is a run made with `{made}`, this experiment asks for '
                               f'`{asked}`; runs of different configs are not mixed: pass another '
                               '--root, or move that run away.')
        if 'teacher_forced' not in record:  # a run of an earlier version of this script
            record['teacher_forced'] = teacher_forced(workdir, schedule, seed, extra, config)
            atomic.write_text(done, json.dumps(record, indent=2) + '\n')
        return record
    workdir.mkdir(parents=True, exist_ok=True)
    curriculum, row_flags = row_setup(schedule)
    flags = ['--config', _config_flag(config), '--workdir', str(workdir),
             f'--config.curriculum.schedule={curriculum}', f'--config.seed={seed}',
             *row_flags, *extra]
    log = workdir / 'stdout.log'
    train_s = _main_module(flags, log)
    eval_s = _main_module([*flags, '--mode', 'eval', '--split', SPLIT,
                           '--checkpoint', 'latest'], log)
    summary = json.loads((workdir / 'train_summary.json').read_text())
    results = json.loads((workdir / 'eval' / SPLIT / 'results.json').read_text())
    record = {'schedule': schedule, 'seed': seed, 'config': config, 'extra_flags': list(extra),
              'date': datetime.date.today().isoformat(), 'train_steps': summary['step'],
              'train_seconds': round(train_s, 1), 'eval_seconds': round(eval_s, 1),
              'metrics': {k: results.get(k) for k, _ in METRICS},
              'all_test_metrics': results,
              'curriculum_by_epoch': curriculum_from_log(workdir / 'train_log.jsonl')}
    upgrade(record, config, extra)
    record['teacher_forced'] = teacher_forced(workdir, schedule, seed, extra, config)
    atomic.write_text(done, json.dumps(record, indent=2) + '\n')
    return record


def run_config(schedule: str, seed: int, extra: list[str], config: str = DEFAULT_CONFIG):
    """The config a run trained with (extra flags: --config.a.b=value)."""
    import ast
    cfg = load_config(config)
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


def teacher_forced(workdir: pathlib.Path, schedule: str, seed: int, extra: list[str],
                   config: str = DEFAULT_CONFIG) -> dict:
    """Test-split difficulties of the final checkpoint (teacher forcing, no decoding): mean k1,
    and mean k2 over all / abnormal / normal studies. Lower = the references rank higher."""
    import numpy as np
    from jima_jax.train import difficulty, run_setup
    cfg = run_config(schedule, seed, extra, config)
    s = run_setup.setup(cfg, workdir)
    try:
        fn = difficulty.jit_score_step(
            difficulty.build_score_step(s.modeldef, cfg.model, cfg.input), s.mesh,
            s.state_sharding)
        test = s.dataset.splits[SPLIT]
        d = difficulty.score_split(fn, s.state.params, s.state.batch_stats, test, cfg.input,
                                   seed=cfg.seed, mesh=s.mesh)
    finally:
        s.checkpointer.close()
    abnormal = np.asarray(test.abnormal, bool)
    return {'k1': float(d.k1[d.has_entities].mean()), 'k2': float(d.k2_all.mean()),
            'k2_balanced': float(d.k2_balanced.mean()),
            'k2/abnormal': float(d.k2_all[abnormal].mean()),
            'k2/normal': float(d.k2_all[~abnormal].mean())}


# ---------------------------------------------------------------------------------- the tables
def _scale(key: str) -> tuple[float, int]:
    """(factor, decimals) of a metric in the tables: nats as they are, counts as they are,
    every score x100."""
    if 'loss' in key or 'image_reliance' in key:
        return 1, 3
    if key == 'distinct_reports':
        return 1, 1
    return 100, 2


def _mean_sd(values: list[float], key: str) -> str:
    """mean ± sample sd in the metric's scale (see _scale)."""
    if not values:
        return 'n/a'
    scale, digits = _scale(key)
    mean = scale * statistics.fmean(values)
    sd = scale * statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{mean:.{digits}f} ± {sd:.{digits}f}'


def _spread(values: list[float], key: str) -> str:
    """mean ± sd (min..max): a paired difference and how far the seeds spread."""
    if not values:
        return 'n/a'
    scale, digits = _scale(key)
    return (f'{_mean_sd(values, key)} ({scale * min(values):.{digits}f}..'
            f'{scale * max(values):.{digits}f})')


def _value(record: dict, key: str):
    """A run's metric; None where it has none (e.g. k1 of the r2gen row, which has no f_E)."""
    if key.startswith('tf/'):
        value = record.get('teacher_forced', {}).get(key[3:])
    else:
        value = record['all_test_metrics'].get(key)
    return None if value is None or value != value else value  # NaN -> None


def paired_differences(records: list[dict], row: str, key: str,
                       base: str = BASE_ROW) -> list[tuple[int, float]]:
    """(seed, value of `row` - value of `base`) for every seed where both runs have the metric."""
    by = {(r['schedule'], r['seed']): r for r in records}
    out = []
    for seed in sorted({r['seed'] for r in records}):
        if (row, seed) in by and (base, seed) in by:
            a, b = _value(by[(row, seed)], key), _value(by[(base, seed)], key)
            if a is not None and b is not None:
                out.append((seed, a - b))
    return out


def one_config(records: list[dict]) -> Optional[str]:
    """The config id every record shares (None for no records); refuses a mixture."""
    ids = {config_id(r['config'], r['extra_flags']) for r in records}
    if len(ids) > 1:
        counts = {i: sum(config_id(r['config'], r['extra_flags']) == i for r in records)
                  for i in sorted(ids)}
        raise ValueError('runs of different configs in one table: ' + '; '.join(
            f'{n} run(s) of `{i}`' for i, n in counts.items()) + '. Tabulate each config on its '
            'own (--config, and the same --config.* flags as its runs).')
    return next(iter(ids), None)


def reads_line(records: list[dict]) -> str:
    """One plain sentence: does every compared run read its images (the package's rule)?"""
    from jima_jax.evaluation import report
    rule = (f'image reliance >= {report.MIN_RELIANCE} nats/token and distinct reports > '
            f'max(1, {report.MIN_DISTINCT_SHARE:.0%} of the test studies), the rule of '
            '`jima_jax.evaluation.report.reads_images_line`')
    verdicts = {}
    for r in records:
        verdicts.setdefault(r['reads_images'], []).append(f'{r["schedule"]} s{r["seed"]}')
    n = len(records)
    if not n:
        return 'No finished runs of this config yet.'
    if len(verdicts.get('yes', [])) == n:
        return f'**Every compared run reads its images** ({n} of {n}; {rule}).'
    parts = [f'{len(verdicts.get("yes", []))} of {n} read']
    if verdicts.get('no'):
        parts.append(f'{len(verdicts["no"])} do not ({", ".join(verdicts["no"])})')
    if verdicts.get('unknown'):
        parts.append(f'{len(verdicts["unknown"])} unknown: no image reliance or distinct-report '
                     f'count in their results ({", ".join(verdicts["unknown"])})')
    return (f'**Not every compared run reads its images**: {"; ".join(parts)} ({rule}). '
            'Differences between rows then compare models that do not all look at the radiograph.')


def _reading(records: list[dict], rows: list[str], seeds: list[int]) -> list[str]:
    by = {(r['schedule'], r['seed']): r for r in records}
    studies = sorted({int(r['test_studies']) for r in records if r.get('test_studies')})
    of = f' (of {", ".join(map(str, studies))} test studies)' if studies else ''
    lines = ['Do the models read their images? Mean ± sd over seeds (phantom truth x100):', '',
             '| row | runs | reads (yes / no / unknown) | '
             + ' | '.join(t + (of if k == 'distinct_reports' else '') for k, t in READING) + ' |',
             '|---|---|---|' + '---|' * len(READING)]
    for row in rows:
        runs = [by[(row, seed)] for seed in seeds if (row, seed) in by]
        votes = ' / '.join(str(sum(r['reads_images'] == v for r in runs))
                           for v in ('yes', 'no', 'unknown'))
        cells = [_mean_sd([_value(r, k) for r in runs if _value(r, k) is not None], k)
                 for k, _ in READING]
        lines.append(f'| {row} | {len(runs)} | {votes} | ' + ' | '.join(cells) + ' |')
    return lines + ['', reads_line([by[(row, seed)] for row in rows for seed in seeds
                                    if (row, seed) in by])]


def _paired(records: list[dict], rows: list[str], metrics, spread: bool) -> list[str]:
    lines = ['| row | pairs | ' + ' | '.join(t for _, t in metrics) + ' |',
             '|---|---|' + '---|' * len(metrics)]
    for row in rows:
        if row == BASE_ROW:
            continue
        cells, pairs = [], 0
        for k, _ in metrics:
            diffs = [d for _, d in paired_differences(records, row, k)]
            pairs = max(pairs, len(diffs))
            cells.append(_spread(diffs, k) if spread else _mean_sd(diffs, k))
        lines.append(f'| {row} | {pairs} | ' + ' | '.join(cells) + ' |')
    return lines


def final_ratios(records: list[dict], rows: list[str]) -> dict[str, dict[str, list[float]]]:
    """Row -> {'c1': [...], 'c2': [...], 's2': [...]}: each run's values in its last logged
    epoch (s2 where scored). Rows whose runs log no curriculum (`none`, `r2gen`) are left out."""
    out = {}
    for row in rows:
        last = [r['curriculum_by_epoch'][-1] for r in records
                if r['schedule'] == row and r.get('curriculum_by_epoch')]
        if last:
            out[row] = {k: [e[k] for e in last if e.get(k) is not None] for k in ('c1', 'c2', 's2')}
    return out


def _range(values: list[float]) -> str:
    return 'n/a' if not values else f'{min(values):.3f}..{max(values):.3f}'


def curriculum_sentences(records: list[dict], rows: list[str]) -> list[str]:
    """The final c2 range per row, and a plain verdict on whether the paper's schedule moved c."""
    final = final_ratios(records, rows)
    if not final:
        return ['No run logged a curriculum (only rows without one: every study, every epoch).']
    lines = ['Final c2 (the Task-2 kept share in the last epoch; range over seeds): ' + '; '.join(
        f'`{row}` {_range(v["c2"])} (c1 {_range(v["c1"])})' for row, v in final.items()) + '.'
        + ' Rows without a curriculum train on every study (c = 1).']
    paper = final.get(PAPER_ROW)
    if paper and paper['c1'] and paper['c2']:
        lowest = min(paper['c1'] + paper['c2'])
        s = f', with s2 = 1 - mean k2 at {_range(paper["s2"])}' if paper['s2'] else ''
        if lowest >= INERT_C:
            lines.append(f"**The paper's schedule (`{PAPER_ROW}`) is nearly inert here**: in its "
                         f'last epoch it still keeps at least {lowest:.1%} of the training '
                         f'studies for each task (final c2 {_range(paper["c2"])}{s}), so its runs '
                         'differ from `none` by very little training data.')
        else:
            lines.append(f"The paper's schedule (`{PAPER_ROW}`) moves c: its smallest final "
                         f'ratio is {lowest:.3f} (final c2 {_range(paper["c2"])}{s}).')
    return lines


def _curves(records: list[dict], schedules: list[str]) -> list[str]:
    """Kept ratios and the kept Task-2 set's composition per epoch, mean over seeds."""
    lines = ['', "Per epoch (mean over seeds): c1 / c2, and the Task-2 kept set's abnormal and "
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


def stem(meta: dict) -> str:
    """The results files' name for the table's corpus: `curriculum_<data.name>`."""
    return f'curriculum_{meta.get("dataset", "iu_phantom")}'


def markdown(records: list[dict], schedules: list[str], meta: dict) -> str:
    ident = one_config(records) or config_id(meta.get('config', DEFAULT_CONFIG),
                                             meta.get('extra_flags', []))
    by = {(r['schedule'], r['seed']): r for r in records}
    seeds = sorted({r['seed'] for r in records})
    title = DATASETS.get(meta.get('dataset', 'iu_phantom'), meta.get('dataset'))
    lines = [f'{title} (`{ident}`, {meta["epochs"]} epochs incl. {meta["warmup"]} warm-up, '
             f'test split, final checkpoint), seeds {seeds}; mean ± sd over seeds, x100 '
             '(the NLL and image reliance in nats/token).' + (
                 f' Runs read back from the results file were made on {meta["previous_runs_date"]}'
                 f', the others on {meta["date"]} ({meta["machine"]}).'
                 if meta.get('previous_runs_date') not in (None, meta['date']) else ''),
             '']
    lines += _reading(records, schedules, seeds)
    lines += ['', f'Paired difference to `{BASE_ROW}` (same seed): mean ± sd over seeds '
              '(min..max), x100:', '']
    lines += _paired(records, schedules, PAIRED, spread=True)
    lines += ['', '| schedule | runs | ' + ' | '.join(t for _, t in METRICS) + ' | train steps |',
              '|---|---|' + '---|' * (len(METRICS) + 1)]
    for s in schedules:
        runs = [by[(s, seed)] for seed in seeds if (s, seed) in by]
        cells = [_mean_sd([_value(r, k) for r in runs if _value(r, k) is not None], k)
                 for k, _ in METRICS]
        steps = statistics.fmean(r['train_steps'] for r in runs) if runs else 0
        lines.append(f'| {s} | {len(runs)} | ' + ' | '.join(cells) + f' | {steps:.0f} |')
    lines += ['', f'Every metric, paired difference to `{BASE_ROW}` (same seed), mean ± sd over '
              'seeds:', '']
    lines += _paired(records, schedules, METRICS, spread=False)
    for sentence in curriculum_sentences(records, schedules):
        lines += ['', sentence]
    lines += ['', f'c1 and c2 per epoch for every run: `{stem(meta)}_c.png`.']
    lines += _curves(records, schedules)
    return '\n'.join(lines) + '\n'


def curriculum_figure(records: list[dict], rows: list[str]):
    """c1 and c2 against the epoch, one line per run, one colour per row."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = plt.get_cmap('tab10')
    drawn = False
    for i, row in enumerate(rows):
        runs = [r for r in records if r['schedule'] == row and r.get('curriculum_by_epoch')]
        for j, r in enumerate(sorted(runs, key=lambda r: r['seed'])):
            epochs = [e.get('epoch', n) + 1 for n, e in enumerate(r['curriculum_by_epoch'])]
            for ax, key in zip(axes, ('c1', 'c2')):
                ax.plot(epochs, [e[key] for e in r['curriculum_by_epoch']], marker='.',
                        color=colours(i % 10), alpha=0.8, label=row if j == 0 else None)
            drawn = True
    for ax, key in zip(axes, ('c1 (Task 1 kept share)', 'c2 (Task 2 kept share)')):
        ax.set_title(key)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('kept share of the training studies')
    if drawn:
        axes[1].legend(fontsize=8)
    else:
        axes[0].text(0.5, 0.5, 'no run logged a curriculum', ha='center',
                     transform=axes[0].transAxes)
    fig.tight_layout()
    return fig


def plot_curriculum(records: list[dict], rows: list[str], path: pathlib.Path) -> pathlib.Path:
    from matplotlib import pyplot as plt
    fig = curriculum_figure(records, rows)
    try:
        return atomic.save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------- the files
def read_results(path: pathlib.Path) -> dict[str, dict]:
    """Config id -> {'config', 'meta', 'runs'} of a results file (the table's config and the
    `other_configs` it carries); records of earlier versions are upgraded."""
    if not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not JSON ({e}); restore it from git or move it away.') from e
    groups = {}
    for group in [payload, *payload.get('other_configs', {}).values()]:
        config = group.get('config', LEGACY_CONFIG)
        extra = group.get('meta', {}).get('extra_flags', [])
        runs = [upgrade(r, config, extra) for r in group.get('runs', [])]
        try:  # a group keyed by one config may not hold another's runs
            one_config(runs)
        except ValueError as e:
            raise ValueError(f'{path}: {e}') from None
        ident = config_id(config, extra)
        groups[ident] = {'config': config, 'meta': group.get('meta', {}), 'runs': runs}
    return groups


def summarize(records: list[dict], schedules: list[str], meta: dict,
              results_dir: pathlib.Path = RESULTS, others: Optional[dict] = None) -> str:
    """Writes the JSON (this config's runs, other configs' kept apart), the table and the plot."""
    ident = one_config(records)
    if ident is not None and ident != config_id(meta['config'], meta['extra_flags']):
        raise ValueError(f'runs of `{ident}` under a table for '
                         f'`{config_id(meta["config"], meta["extra_flags"])}`.')
    results_dir = pathlib.Path(results_dir)
    payload = {'config': meta['config'], 'meta': meta, 'runs': records}
    others = {k: v for k, v in (others or {}).items() if v['runs']}
    if others:
        payload['other_configs'] = others
    atomic.write_text(results_dir / f'{stem(meta)}.json', json.dumps(payload, indent=2) + '\n')
    text = markdown(records, schedules, meta)
    atomic.write_text(results_dir / f'{stem(meta)}.md', text)
    plot_curriculum(records, schedules, results_dir / f'{stem(meta)}_c.png')
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='the config every run trains (a file[:arg] or a packaged name[:arg])')
    parser.add_argument('--rows', '--schedules', dest='rows', default=DEFAULT_ROWS,
                        help=f'table rows: schedules, or the baselines {sorted(BASELINES)}')
    parser.add_argument('--seeds', default='0,1,2')
    parser.add_argument('--root', default=str(REPO / 'runs' / NAME),
                        help='run directories: <root>/<config>/<row>_s<seed>')
    parser.add_argument('--results-dir', default=str(RESULTS),
                        help='where the JSON, the table and the plot go (and earlier runs are '
                             'read back from)')
    parser.add_argument('--summarize', action='store_true', help='only tabulate finished runs')
    args, extra = parser.parse_known_args(argv)  # the rest: --config.key=value for every run
    if any(not flag.startswith('--config.') for flag in extra):
        parser.error(f'unexpected arguments {extra}; extra flags must be --config.key=value.')
    from jima_jax.train.curriculum import SCHEDULES
    rows = args.rows.split(',')
    unknown = [r for r in rows if r not in SCHEDULES and r not in BASELINES]
    if unknown:
        parser.error(f'--rows: unknown {unknown}; choose from {list(SCHEDULES)} and the '
                     f'baselines {sorted(BASELINES)}.')
    try:
        seeds = [int(s) for s in args.seeds.split(',')]
    except ValueError:
        parser.error(f'--seeds={args.seeds!r}: expected integers separated by commas, e.g. 0,1,2.')
    root, results_dir = pathlib.Path(args.root), pathlib.Path(args.results_dir)
    cfg = run_config(BASE_ROW, seeds[0], extra, args.config)  # fails early on a bad config/flag
    ident = config_id(args.config, extra)
    if cfg.data.name not in DATASETS:
        parser.error(f'--config {args.config}: data.name={cfg.data.name!r}; the experiment '
                     f'scores phantom truth, so it needs one of {sorted(DATASETS)}.')
    meta = {'config': args.config, 'dataset': cfg.data.name, 'epochs': cfg.train.num_epochs,
            'warmup': cfg.curriculum.warmup_epochs, 'extra_flags': extra,
            'machine': f'{platform.machine()} {os.cpu_count()} cpus',
            'date': datetime.date.today().isoformat()}
    # Runs recorded in the results file but not under --root are read back from it (their date is
    # in the table's meta), so a new row can be added without re-running the others. Only runs of
    # this config: the others are carried along, apart.
    groups = read_results(results_dir / f'{stem(meta)}.json')
    old = groups.pop(ident, None)
    previous = {}
    if old is not None:
        previous = {(r['schedule'], r['seed']): r for r in old['runs']}
        meta['previous_runs_date'] = old['meta'].get('previous_runs_date', old['meta'].get('date'))
    fresh = [(seed, schedule) for seed in seeds for schedule in rows
             if (run_dir(root, schedule, seed, args.config, extra) / 'experiment_run.json').exists()
             or (schedule, seed) not in previous]
    records = [previous[(schedule, seed)] for seed in seeds for schedule in rows
               if (seed, schedule) not in fresh]  # kept in every rewrite of the results file
    for seed, schedule in fresh:  # seed-major: a partial experiment still compares fairly
        workdir = run_dir(root, schedule, seed, args.config, extra)
        if args.summarize:
            if (workdir / 'experiment_run.json').exists():
                records.append(run_one(root, schedule, seed, extra, args.config))
            continue
        print(f'{datetime.datetime.now():%H:%M:%S} {schedule} seed {seed}', flush=True)
        records.append(run_one(root, schedule, seed, extra, args.config))
        r = records[-1]
        print(f'  {r["train_steps"]} steps, train {r["train_seconds"]:.0f}s, eval '
              f'{r["eval_seconds"]:.0f}s; reads its images: {r["reads_images"]}; ' + ', '.join(
                  f'{t} {_mean_sd([_value(r, k)], k).split(" ")[0]}'
                  for k, t in (*READING, *METRICS) if _value(r, k) is not None), flush=True)
        summarize(records, rows, meta, results_dir, groups)
    print(summarize(records, rows, meta, results_dir, groups), flush=True)


if __name__ == '__main__':
    main()
