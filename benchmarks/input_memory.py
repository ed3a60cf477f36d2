r"""Peak host memory per process of a 2-process CPU training job: memory vs disk image store.

  nice -n 19 python -m benchmarks.input_memory                 # N = 400 and 10N = 4000 studies
  python -m benchmarks.input_memory --sizes 100,1000 --out /tmp/im   # a quicker look

For each size the phantom dataset (configs/smoke.py, stored at `--image_size` px, 2 views; val and
test a tenth of train each) is prepared once (`--mode prepare`, timed), then trained with
`launch/local_multihost.sh 2 1` (2 processes x 1 CPU device, gloo, `train.max_steps` steps) once
with `data.image_store=memory` and once with `=disk` (the disk run writes the store files, so its
peak includes that). Each process's peak RSS is its own `ru_maxrss`, read by a small wrapper the
launcher starts instead of Python (`$PYTHON`). The question is how the peaks move from N to 10N:
the memory store holds every image in every process, the disk store only the batches in flight.
Writes benchmarks/results/input_memory_<date>_<cpu model>-<cores>cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

from benchmarks.vs_pytorch import machine, slug

RESULTS_DIR = pathlib.Path(__file__).parent / 'results'
ROOT = pathlib.Path(__file__).resolve().parents[1]
STORES = ('memory', 'disk')
VIEWS = 2  # configs/smoke.py (default data.num_views)

# Runs the real interpreter as a child and records the child's peak RSS (the wrapper's own is
# not mixed in: RUSAGE_CHILDREN counts only children that have been waited for).
_WRAPPER = """#!{python}
import json, os, resource, signal, subprocess, sys
args = sys.argv[1:]
child = subprocess.Popen([{python!r}] + args)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, f: child.send_signal(s))
rc = child.wait()
ids = [a.split('=', 1)[1] for a in args if a.startswith('--process_id=')]
if ids:
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    path = os.path.join(os.environ['JIMA_RSS_DIR'], 'process_' + ids[0] + '.json')
    with open(path, 'w') as f:
        json.dump(dict(peak_kib=peak, returncode=rc), f)
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def data_overrides(n: int, image_size: int, crop: int) -> list[str]:
    return ['--config', 'configs/smoke.py', f'--config.data.phantom.num_train={n}',
            f'--config.data.phantom.num_val={max(n // 10, 8)}',
            f'--config.data.phantom.num_test={max(n // 10, 8)}',
            f'--config.data.image_size={image_size}', f'--config.input.image_size={crop}']


def studies(n: int) -> int:
    return n + 2 * max(n // 10, 8)


def prepare(n: int, args, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, '-m', 'jima_jax.main', '--mode', 'prepare',
                           *data_overrides(n, args.image_size, args.crop)], cwd=str(ROOT),
                          env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode:
        raise RuntimeError(f'prepare of {n} studies failed:\n{proc.stderr[-3000:]}')
    return time.perf_counter() - t0


def train(n: int, store: str, args, env: dict, tmp: pathlib.Path) -> dict:
    """One 2-process training job; its processes' peak RSS and the wall time."""
    run = tmp / f'run_{n}_{store}'
    rss_dir = run / 'rss'
    rss_dir.mkdir(parents=True)
    cmd = ['bash', 'launch/local_multihost.sh', '2', '1', *data_overrides(n, args.image_size,
                                                                           args.crop),
           f'--config.data.image_store={store}', f'--config.train.max_steps={args.steps}',
           '--config.train.log_every_steps=1', '--workdir', str(run / 'workdir')]
    job_env = dict(env, PYTHON=str(tmp / 'rss_python'), JIMA_RSS_DIR=str(rss_dir),
                   JIMA_COORDINATOR_PORT=str(_free_port()))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(ROOT), env=job_env, capture_output=True, text=True,
                          timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode:
        logs = ''.join(p.read_text()[-2000:] for p in (run / 'workdir' / 'logs').glob('*.log'))
        raise RuntimeError(f'training {n} studies, {store} store failed ({proc.returncode}):\n'
                           f'{proc.stderr[-3000:]}\n{logs}')
    peaks = []
    for i in range(2):
        record = json.loads((rss_dir / f'process_{i}.json').read_text())
        peaks.append(record['peak_kib'] / 1024)
    # whichever process took the file lock first wrote the store files (process 1 logs to a file)
    logs = proc.stderr + ''.join(p.read_text() for p in (run / 'workdir' / 'logs').glob('*.log'))
    built = [float(s) for s in re.findall(r'wrote \S+images-\w+\.u8 in ([0-9.]+) s', logs)]
    return dict(peak_rss_mib=peaks, wall_s=wall, store_build_s=sum(built) if built else None,
                steps=args.steps)


def markdown(result: dict) -> str:
    m, rows = result['machine'], result['rows']
    sizes = sorted({r['train_studies'] for r in rows})
    out = [f'## {result["run_id"]}: peak RSS per process, memory vs disk image store', '',
           f'Machine: {m["cpu_model"]}, {m["cpu_count"]} cores, {m["machine"]}, Python '
           f'{m["python"]}; {m["date"]}. `{result["command"]}`. Job: '
           '`launch/local_multihost.sh 2 1` (2 processes x 1 CPU device), configs/smoke.py, '
           f'phantom data stored at {result["image_size"]} px x {VIEWS} views, '
           f'{result["crop"]} px crops, {result["steps"]} train steps.', '',
           '| train / all studies | images, all splits | store | peak RSS process 0 | '
           'process 1 | job wall time | store files written in |',
           '|---:|---:|---|---:|---:|---:|---:|']
    for r in rows:
        built = f'{r["store_build_s"]:.1f} s' if r['store_build_s'] is not None else '-'
        out.append(f'| {r["train_studies"]} / {r["all_studies"]} | {r["image_mib"]:.0f} MiB | '
                   f'{r["store"]} | {r["peak_rss_mib"][0]:.0f} MiB | {r["peak_rss_mib"][1]:.0f} '
                   f'MiB | {r["wall_s"]:.0f} s | {built} |')
    out.append('')
    if len(sizes) == 2:
        small, large = sizes
        for store in STORES:
            a = [r for r in rows if r['store'] == store and r['train_studies'] == small]
            b = [r for r in rows if r['store'] == store and r['train_studies'] == large]
            if a and b:
                grow = [y - x for x, y in zip(a[0]['peak_rss_mib'], b[0]['peak_rss_mib'])]
                out.append(f'- {store} store, {small} -> {large} train studies (images +'
                           f'{b[0]["image_mib"] - a[0]["image_mib"]:.0f} MiB): peak RSS '
                           f'{" / ".join(f"{g:+.0f}" for g in grow)} MiB (process 0 / 1).')
    out.append('- Most of each peak is the rest of the process (TensorFlow, JAX, XLA compiling '
               'the train step: about 1.7 GiB here), which varies by some tens of MiB from run '
               'to run; the image store is what moves it with the dataset size.')
    out.append('- Prepare (`--mode prepare`, one process): ' + ', '.join(
        f'{n} train studies {s:.0f} s' for n, s in result['prepare_s'].items()) + '.')
    return '\n'.join(out) + '\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default='400,4000', help='train studies, comma separated')
    parser.add_argument('--image_size', type=int, default=128, help='stored px (data.image_size)')
    parser.add_argument('--crop', type=int, default=64, help='model input px (input.image_size)')
    parser.add_argument('--steps', type=int, default=4, help='train.max_steps of each job')
    parser.add_argument('--stores', default=','.join(STORES))
    parser.add_argument('--timeout', type=int, default=600, help='seconds per subprocess')
    parser.add_argument('--out', default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(',') if s]
    stores = [s for s in args.stores.split(',') if s]
    if not sizes or set(stores) - set(STORES) or not stores:
        parser.error(f'--sizes: integers; --stores: from {",".join(STORES)}.')
    from jima_jax import atomic
    m = machine()
    run_id = datetime.datetime.now().isoformat(timespec='seconds')
    rows, prepared = [], {}
    with tempfile.TemporaryDirectory(prefix='input_memory_') as tmp_name:
        tmp = pathlib.Path(tmp_name)
        wrapper = tmp / 'rss_python'
        wrapper.write_text(_WRAPPER.format(python=sys.executable))
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        env = dict(os.environ, JIMA_DATA_DIR=str(tmp / 'data'), PYTHONPATH=str(ROOT),
                   TF_CPP_MIN_LOG_LEVEL='2')
        for n in sizes:
            prepared[n] = prepare(n, args, env)
            print(f'prepared {studies(n)} studies ({n} train) in {prepared[n]:.0f} s', flush=True)
            for store in stores:
                r = train(n, store, args, env, tmp)
                r.update(store=store, train_studies=n, all_studies=studies(n),
                         image_mib=studies(n) * VIEWS * args.image_size ** 2 / 2**20)
                rows.append(r)
                print(f'  {store:6s}: peak RSS {r["peak_rss_mib"][0]:.0f} / '
                      f'{r["peak_rss_mib"][1]:.0f} MiB (process 0 / 1), {r["wall_s"]:.0f} s',
                      flush=True)
            shutil.rmtree(tmp / 'data', ignore_errors=True)  # disk space: one size at a time
    command = ' '.join(['python -m benchmarks.input_memory', *(sys.argv[1:] if argv is None
                                                               else argv)])
    result = dict(run_id=run_id, machine=m, command=command, image_size=args.image_size,
                  crop=args.crop,
        steps=args.steps, prepare_s={str(n): s for n, s in prepared.items()}, rows=rows)
    stem = f'input_memory_{m["date"]}_{slug(m["cpu_model"])}-{m["cpu_count"]}cpu'
    out = pathlib.Path(args.out)
    atomic.write_text(out / f'{stem}.json', json.dumps(result, indent=1) + '\n')
    atomic.write_text(out / f'{stem}.md', markdown(result))
    print(out / f'{stem}.json', out / f'{stem}.md', sep='\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
