r"""One runner for every throughput benchmark; `make bench` runs the CPU suite.

  python -m benchmarks.run --suite cpu          # this machine, ~15-20 min on 2 cores
  python -m benchmarks.run --suite gpu          # all visible GPUs
  python -m benchmarks.run --suite tpu          # all devices of this TPU VM
  python -m benchmarks.run --suite cpu --only step_variants,scaling --out /tmp/bench

Covers: phantom rendering (one core), the train step (fused jit-sharded vs pmap vs an unfused
two-program baseline), float32 vs bfloat16 compute, scaling over 1/2/4/8 devices (simulated CPU
devices on the cpu suite: separate processes with XLA_FLAGS; real devices elsewhere), the input
pipeline, difficulty scoring and beam search. Each job runs in its own subprocess (device count
fixed at JAX start, no state shared); a job that fails becomes an error row and the suite goes on.
Writes, under --out:
  bench_<suite>_<date>_<machine>.jsonl   one JSON object per result (config, hardware, jax
                                         version, examples/s, step time, MFU on accelerators)
  bench_<suite>_<date>_<machine>.md      table + checks of the issue's goals
  bench_<suite>_<date>_<machine>.png     chart
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

RESULTS_DIR = pathlib.Path(__file__).parent / 'results'
ROW_PREFIX = 'BENCH_ROW '
BENCHMARKS = ('render', 'step_variants', 'scaling', 'dtype', 'paper_model', 'pipeline',
              'difficulty', 'beam_search')
VARIANTS = ['fused_jit', 'pmap', 'unfused']


def _job(benchmark: str, case: str, **kw) -> dict:
    return dict(benchmark=benchmark, case=case, **kw)


def suite_jobs(suite: str) -> list[dict]:
    """The jobs of a suite. `devices`: an int (simulated CPU devices: that many, in their own
    process), 'all' (every device) or 'powers' (1, 2, 4, ... in one process)."""
    if suite == 'cpu':
        return ([_job('step_variants', 'train_step', shape='tiny', devices=8, variants=VARIANTS,
                      steps=10)]
                + [_job('scaling', 'train_step', shape='tiny', devices=n, variants=['fused_jit'],
                        steps=10) for n in (1, 2, 4)]
                + [_job('dtype', 'train_step', shape='small', devices=1, dtype=d,
                        variants=['fused_jit'], steps=3) for d in ('float32', 'bfloat16')]
                + [_job('render', 'render', shape='256px', num_examples=200, steps=1),
                   _job('pipeline', 'pipeline', shape='paper', num_examples=128, steps=40),
                   _job('difficulty', 'difficulty', shape='small', devices=1, num_examples=128,
                        steps=1),
                   _job('beam_search', 'beam_search', shape='small', devices=1, steps=2,
                        full_length=True),
                   _job('beam_search', 'beam_search', shape='paper', devices=1, steps=2,
                        full_length=True),
                   _job('paper_model', 'train_step', shape='paper', devices=1,
                        variants=['fused_jit'], steps=2)])
    if suite in ('gpu', 'tpu'):
        return ([_job('step_variants', 'train_step', shape='paper', dtype='bfloat16', batch=64,
                      devices='all', variants=VARIANTS, steps=20)]
                + [_job('dtype', 'train_step', shape='paper', dtype=d, batch=b, devices='all',
                        variants=['fused_jit'], steps=20)
                   for d, b in (('float32', 16), ('bfloat16', 16), ('bfloat16', 128))]
                + [_job('scaling', 'train_step', shape='paper', dtype='bfloat16', batch=64,
                        devices='powers', variants=['fused_jit'], steps=20),
                   _job('render', 'render', shape='256px', num_examples=200, steps=1),
                   _job('pipeline', 'pipeline', shape='paper', num_examples=512, steps=100),
                   _job('difficulty', 'difficulty', shape='paper', dtype='bfloat16', batch=64,
                        devices='all', num_examples=512, steps=2),
                   _job('beam_search', 'beam_search', shape='paper', dtype='bfloat16', batch=64,
                        devices='all', steps=5, full_length=True)])
    raise ValueError(f'--suite={suite!r}: expected cpu, gpu or tpu.')


def quick(jobs: list[dict]) -> list[dict]:
    """The same jobs at the tiny shape with few steps: checks a suite's code paths quickly."""
    out = []
    for job in jobs:
        job = dict(job, shape='tiny', steps=min(int(job['steps']), 2))
        job.pop('batch', None)
        if 'num_examples' in job:
            job['num_examples'] = 32
        out.append(job)
    return out


def child_env(suite: str, job: dict) -> dict:
    """The CPU suite simulates `devices` CPU devices; other suites see the real ones."""
    env = dict(os.environ)
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env['PYTHONPATH'] = root + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    if suite == 'cpu':
        env['JAX_PLATFORMS'] = 'cpu'
        n = job.get('devices', 1)
        flags = [f for f in env.get('XLA_FLAGS', '').split()
                 if not f.startswith('--xla_force_host_platform_device_count')]
        if isinstance(n, int) and n > 1:
            flags.append(f'--xla_force_host_platform_device_count={n}')
        env['XLA_FLAGS'] = ' '.join(flags)
    return env


def run_job(suite: str, job: dict, timeout_s: int) -> list[dict]:
    """Runs one job in a subprocess; its rows, or one error row."""
    cmd = [sys.executable, '-m', 'benchmarks.run', '--_child', json.dumps(job)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=child_env(suite, job),
                              cwd=str(pathlib.Path(__file__).resolve().parents[1]))
    except subprocess.TimeoutExpired:
        return [dict(job, error=f'timed out after {timeout_s} s')]
    rows = [json.loads(line[len(ROW_PREFIX):]) for line in proc.stdout.splitlines()
            if line.startswith(ROW_PREFIX)]
    if proc.returncode or not rows:
        return [dict(job, error=f'exit {proc.returncode}: {proc.stderr.strip()[-2000:]}')]
    for r in rows:
        r.update(suite=suite, job_seconds=time.perf_counter() - t0,
                 config={k: v for k, v in job.items() if k not in ('benchmark', 'case')})
        r['jax_version'] = r['hardware']['jax_version']
    return rows


def write_results(rows: list[dict], out: pathlib.Path, suite: str, stem: str | None = None):
    """jsonl + md + png named by suite, date and machine; returns the three paths."""
    from benchmarks import hardware, report
    from jima_jax import atomic

    ok = [r for r in rows if 'error' not in r]
    if stem is None:
        hw = ok[0]['hardware'] if ok else {'date': time.strftime('%Y-%m-%d')}
        tag = hardware.machine_tag(hw) if ok else 'unknown'
        stem = f'bench_{suite}_{hw["date"]}_{tag}'
    title = f'jima_jax benchmarks, {suite} suite'
    paths = (out / f'{stem}.jsonl', out / f'{stem}.md', out / f'{stem}.png')
    atomic.write_text(paths[0], ''.join(json.dumps(r) + '\n' for r in rows))
    atomic.write_text(paths[1], report.markdown(rows, title))
    report.chart(rows, paths[2], title)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--suite', default='cpu', choices=['cpu', 'gpu', 'tpu'])
    parser.add_argument('--only', default='', help=f'comma list of {", ".join(BENCHMARKS)}')
    parser.add_argument('--quick', action='store_true',
                        help='tiny shapes, 2 steps: check the code paths, not the numbers')
    parser.add_argument('--timeout', type=int, default=1800, help='seconds per job')
    parser.add_argument('--out', default=str(RESULTS_DIR))
    parser.add_argument('--_child', default='', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        from benchmarks import cases
        from configs import default
        from jima_jax.runtime import cpu_host
        cpu_host.configure_cpu_host(default.get_config().parallel)  # as `jima_jax.main` does
        job = json.loads(args._child)
        for row in cases.CASES[job['case']](job):
            print(ROW_PREFIX + json.dumps(row), flush=True)
        return 0
    jobs = suite_jobs(args.suite)
    if args.only:
        wanted = set(args.only.split(','))
        unknown = wanted - set(BENCHMARKS)
        if unknown:
            parser.error(f'--only: unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}')
        jobs = [j for j in jobs if j['benchmark'] in wanted]
    if args.quick:
        jobs = quick(jobs)
    rows = []
    for i, job in enumerate(jobs):
        label = f'[{i + 1}/{len(jobs)}] {job["benchmark"]} {job.get("shape")} ' \
                f'{job.get("dtype", "")} devices={job.get("devices", "-")}'
        print(label, flush=True)
        for row in run_job(args.suite, job, args.timeout):
            rows.append(row)
            if 'error' in row:
                print(f'    failed: {row["error"][-500:]}', flush=True)
            else:
                print(f'    {row["case"]}: {row["step_seconds"]:.3f} s, '
                      f'{row["examples_per_sec"]:.1f} examples/s', flush=True)
    stem = None
    if args.quick:
        stem = f'bench_{args.suite}_quick'
    paths = write_results(rows, pathlib.Path(args.out), args.suite, stem)
    print('\n'.join(str(p) for p in paths))
    return 1 if any('error' in r for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
