r"""jima_jax against a PyTorch reference of the authors' code: one run, one machine, interleaved.

  python -m benchmarks.vs_pytorch                      # paper shape; results in benchmarks/results/
  python -m benchmarks.vs_pytorch --benchmarks train_step --torch_allocators reuse --steps 3
  python -m benchmarks.vs_pytorch --shape tiny --steps 2 --out /tmp/vs   # checks the runner
  python -m benchmarks.vs_pytorch --torch_python /venv-with-torch/bin/python

A speed claim only holds as a ratio measured in one run on one machine, so this script measures
both sides together. Benchmarks (the paper shape: ResNet-101, 2 views of 224^2, the 3 + 3-layer
width-512 Transformer, |V| 760, 60 tokens, batch 16):
  train_step   jima_jax's fused step (`cases._Step('fused_jit')`: Task 1 on batch A, then Task 2
               on batch B) against the release's two updates (`torch_reference.Trainer`: entity
               step on A, report step on B). Both sides use the release's optimizer settings,
               read from `configs.default.use_release_recipe` (AMSGrad, weight decay 5e-5, lr 5e-5
               for f_R and 1e-4 for the rest, gradient values clipped at 0.1), and the f_E of
               configs/iu_xray.py.
  beam_search  beam-3 generation of a batch, all `max_len` positions (`cases.beam_program` with
               `full_length`; the PyTorch search recomputes the decoder over the prefix, no cache).
  difficulty   k1, k2 of `--difficulty_batches` batches (`benchmarks.difficulty.build_programs`,
               its scoring program) against the release's per-token sorting loops, on the same
               random studies (`difficulty._batches`, IU X-ray-like report lengths).
Each side runs in its own process (its peak RSS is its own), set up and warmed up first; then the
runner asks them for one timed unit in turns (jima_jax, PyTorch, jima_jax, ...), so a change in
the host's load hits both alike, and reports medians. jima_jax runs as `jima_jax.main` sets it up
(`parallel.cpu_malloc='reuse'`, `cpu_scheduler='memory'`); PyTorch runs once per allocator in
`--torch_allocators`: 'reuse' = the same glibc settings through GLIBC_TUNABLES, 'system' = as it
ships (a fresh jima_jax process for each pair, so at most two big processes live at once).
`--dtype bfloat16` runs train_step and beam_search in bfloat16 on both sides: jima_jax with
`model.dtype='bfloat16'` (bfloat16 compute, float32 parameters and losses), PyTorch under
`torch.autocast('cpu', dtype=torch.bfloat16)` (its own mixed precision, float32 parameters);
difficulty stays float32.
Writes benchmarks/results/vs_pytorch_<date>_<cpu model>-<cores>cpu[_<shape>][_bf16].{jsonl,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

RESULTS_DIR = pathlib.Path(__file__).parent / 'results'
ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ('train_step', 'beam_search', 'difficulty')
ALLOCATORS = ('reuse', 'system')
PREFIX = 'VS_PYTORCH '
NOTE = ('PyTorch side: benchmarks/torch_reference.py (torchvision ResNet called once per view, '
        "PyTorch's pre-LN Transformer layers, one AMSGrad Adam with value clipping; the report "
        'step runs f_R and f_E without gradients; beam search recomputes the decoder over the '
        'prefix, no KV cache; difficulty = one full sort per reference token in a Python loop). '
        'jima_jax side: XLA:CPU sizes its thread pool from the usable cores.')
UNITS = {'train_step': 'one train step: Task 1 (entity) on batch A + Task 2 (report) on batch B',
         'beam_search': 'beam-3 generation of one batch, all max_len positions',
         'difficulty': 'k1 + k2 of difficulty_batches batches'}


# ------------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    """`lscpu`'s Model name (else /proc/cpuinfo's, else the platform's)."""
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith('Model name:'):
                return line.split(':', 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector and matrix extensions that decide CPU speed here (x86 /proc/cpuinfo)."""
    wanted = ('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_tile', 'amx_bf16', 'fma')
    try:
        for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('flags'):
                have = set(line.split(':', 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def slug(text: str) -> str:
    """'Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz' -> 'intel-xeon-gold-6338-cpu-2-00ghz'."""
    text = re.sub(r'\((r|tm)\)', '', text.lower())
    return re.sub(r'[^a-z0-9]+', '-', text).strip('-') or 'unknown-cpu'


def machine() -> dict:
    cores = os.cpu_count()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = cores
    return dict(cpu_model=cpu_model(), cpu_count=cores, cpu_affinity=affinity,
                cpu_flags=cpu_flags(), machine=platform.machine(),
                python=platform.python_version(), date=datetime.date.today().isoformat())


def _settings() -> dict:
    """Thread and allocator settings of this process's environment."""
    keys = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'XLA_FLAGS', 'GLIBC_TUNABLES', 'JAX_PLATFORMS')
    return {k: os.environ.get(k, '') for k in keys}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


# ------------------------------------------------------------------ what both sides are told
def release_optimizer() -> dict:
    """The release's optimizer settings, as jima_jax's ':release' presets hold them."""
    from configs import default
    c = default.get_config()
    default.use_release_recipe(c, decay_rate=0.1, decay_every_epochs=50)
    o1, o2 = c.optim.task1, c.optim.task2
    keys = ('lr', 'b1', 'b2', 'eps', 'weight_decay', 'amsgrad', 'clip', 'clip_value')
    if any(o1[k] != o2[k] for k in keys):
        raise ValueError('use_release_recipe gives the two tasks different optimizer settings; '
                         'the release has one optimizer: update benchmarks/vs_pytorch.py.')
    return dict({k: o1[k] for k in keys}, visual_lr=o1.visual_lr)


def paper_entity_head() -> str:
    from configs import iu_xray
    return iu_xray.get_config().model.entity_head


def shape_spec(shape: str) -> dict:
    """The sizes of a `benchmarks.cases.SHAPES` entry, which the jima_jax side builds."""
    from benchmarks.cases import SHAPES
    if shape not in SHAPES:
        raise ValueError(f'--shape={shape!r}: expected one of {sorted(SHAPES)} '
                         '(benchmarks/cases.py SHAPES).')
    return dict(SHAPES[shape])


def jax_parameter_counts(params: dict) -> dict:
    """Parameters per group of a jima_jax params pure dict (arrays or ShapeDtypeStructs)."""
    import math

    import jax
    counts = {g: sum(math.prod(x.shape) for x in jax.tree.leaves(params[g]))
              for g in ('visual', 'entity', 'report')}
    counts['total'] = sum(counts.values())
    return counts


# ------------------------------------------------------------------------------- the workers
def _jax_unit(job: dict):
    """jima_jax, set up as `jima_jax.main` does: (run one unit, extras of its last output,
    facts, studies per unit)."""
    from configs import default
    from jima_jax.runtime import cpu_host
    pcfg = default.get_config().parallel
    cpu_host.use_cpu_scheduler(pcfg)
    malloc_applied = cpu_host.use_cpu_malloc(pcfg)
    import jax
    import numpy as np

    from benchmarks import cases
    from benchmarks import difficulty as difficulty_bench

    shape, spec = job['shape'], job['spec']
    facts = dict(jax_version=jax.__version__, devices=jax.device_count(),
                 platform=jax.devices()[0].platform, cpu_malloc=pcfg.cpu_malloc,
                 cpu_malloc_applied=malloc_applied, cpu_scheduler=pcfg.cpu_scheduler)
    if job['benchmark'] == 'train_step':
        cfg = cases.make_config(shape, job['dtype'])
        if cfg.model.entity_head != job['entity_head']:
            raise ValueError(f'cases.make_config has entity_head={cfg.model.entity_head!r}, '
                             f'configs/iu_xray.py {job["entity_head"]!r}.')
        o = job['optim']
        for task in (cfg.optim.task1, cfg.optim.task2):
            for key in ('lr', 'b1', 'b2', 'eps', 'weight_decay', 'amsgrad', 'clip', 'clip_value'):
                task[key] = o[key]
        cfg.optim.task1.visual_lr = o['visual_lr']
        rng = np.random.default_rng(0)
        batches = tuple(cases.random_batch(rng, spec['batch'], shape) for _ in range(2))
        step = cases._Step('fused_jit', cfg, shape, jax.devices(), batches)
        facts.update(parameters=jax_parameter_counts(step.state.params),
                     compile_seconds=step.compile_s)
        holder = [step.state]

        def run():
            holder[0], metrics = step.call(holder[0])
            jax.block_until_ready((holder[0], metrics))
            return {'metrics': metrics}

        def extras(out):
            return {'losses': {k: float(np.ravel(jax.device_get(v))[0])
                               for k, v in out['metrics'].items() if k.startswith('loss/')}}

        return run, extras, facts, 2 * spec['batch']
    if job['benchmark'] == 'beam_search':
        generate, info = cases.beam_program(dict(shape=shape, beam_size=3, full_length=True,
                                                  dtype=job['dtype']))
        facts.update(compile_seconds=info['compile_seconds'],
                     parameters=jax_parameter_counts(info['params']))

        def extras(out):
            return {'mean_generated_tokens': float(np.mean(np.sum(
                np.asarray(out['tokens']) != 0, axis=-1)))}

        return generate, extras, facts, info['batch']
    built = difficulty_bench.build_programs(spec, job['difficulty_batches'])
    score = built.programs['scoring']
    facts.update(parameters=jax_parameter_counts(built.params))

    def run():
        return jax.device_get([score(b) for b in built.batches])

    def extras(out):
        return {'mean_k1': float(np.mean([o['k1'] for o in out])),
                'mean_k2': float(np.mean([o['k2_all'] for o in out]))}

    return run, extras, facts, spec['batch'] * job['difficulty_batches']


def _torch_unit(job: dict):
    """The PyTorch reference: (run one unit, extras of its last output, facts, studies per
    unit)."""
    import numpy as np
    import torch

    from benchmarks import difficulty as difficulty_bench
    from benchmarks import torch_reference as ref

    spec = job['spec']
    if job['torch_threads'] > 0:
        torch.set_num_threads(job['torch_threads'])
    torch.manual_seed(0)
    model = ref.JIMAReference(spec, entity_head=job['entity_head'])
    facts = dict(torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                 torch_interop_threads=torch.get_num_interop_threads(),
                 torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                 mkldnn=torch.backends.mkldnn.is_available(),
                 parameters=ref.parameter_counts(model))
    rng = np.random.default_rng(0)
    facts['autocast'] = job['dtype'] if job['benchmark'] != 'difficulty' else 'float32'
    if facts['autocast'] == 'bfloat16':  # PyTorch's own mixed precision, for a fair bf16 row
        def precision():
            return torch.autocast('cpu', dtype=torch.bfloat16)
    else:
        precision = contextlib.nullcontext
    if job['benchmark'] == 'train_step':
        trainer = ref.Trainer(model, job['optim'])
        batch_a, batch_b = difficulty_bench._batches(spec, 2, rng)

        def run():
            t0 = time.perf_counter()
            with precision():
                entity = trainer.entity_step(batch_a)
            t1 = time.perf_counter()
            with precision():
                report = trainer.report_step(batch_b)
            return {'parts': {'entity_step': t1 - t0, 'report_step': time.perf_counter() - t1},
                    'losses': {'loss/entity': entity, 'loss/report': report}}

        return run, lambda out: out, facts, 2 * spec['batch']
    if job['benchmark'] == 'beam_search':
        ref.suppress_eos(model)
        images = difficulty_bench._batches(spec, 1, rng)[0]['images']

        def run():
            with precision():
                return ref.beam_search(model, images, 3, spec['length'])

        def extras(out):
            return {'mean_generated_tokens': float((out['tokens'] != 0).sum(-1).float().mean()),
                    'decoder_positions': out['positions']}

        return run, extras, facts, spec['batch']
    batches = difficulty_bench._batches(spec, job['difficulty_batches'],
                                        np.random.default_rng(0))  # as build_programs

    def run():
        seconds = {}
        out = [ref.score_release_style(model, b, seconds) for b in batches]
        return {'parts': seconds, 'scores': out}

    def extras(out):
        return {'parts': out['parts'],
                'mean_k1': float(np.mean([o['k1'] for o in out['scores']])),
                'mean_k2': float(np.mean([o['k2_all'] for o in out['scores']]))}

    return run, extras, facts, spec['batch'] * job['difficulty_batches']


def _emit(kind: str, payload: dict) -> None:
    print(PREFIX + kind + ' ' + json.dumps(payload), flush=True)


def worker_main(job: dict) -> None:
    """Set up, warm up, then one timed unit per 'step' line on stdin until 'done'."""
    t0 = time.perf_counter()
    unit = _jax_unit if job['side'] == 'jax' else _torch_unit
    run, extras, facts, studies = unit(job)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(job['warmup']):
        run()
    _emit('READY', dict(facts, setup_seconds=setup_s, warmup_seconds=time.perf_counter() - t0,
                        studies_per_unit=studies, settings=_settings()))
    last = None
    for line in sys.stdin:
        if line.strip() == 'done':
            break
        t0 = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - t0
        last = out
        parts = out.get('parts') if isinstance(out, dict) else None
        _emit('TIME', {'seconds': seconds, 'parts': parts})
    _emit('DONE', dict(extras(last) if last is not None else {}, peak_rss_gb=_peak_rss_gb(),
                       load_avg_1m=round(os.getloadavg()[0], 2)))


class Worker:
    """One side's process; speaks the line protocol of `worker_main` through its pipes."""

    def __init__(self, job: dict, python: str, env: dict, log_dir: str):
        self.job = job
        self.log = pathlib.Path(log_dir) / f'{job["side"]}_{job["benchmark"]}_{job["pair"]}.log'
        self._err = open(self.log, 'w')
        self.proc = subprocess.Popen(
            [python, '-m', 'benchmarks.vs_pytorch', '--_worker', json.dumps(job)], cwd=str(ROOT),
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)

    def _read(self, kind: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                got, payload = line[len(PREFIX):].split(' ', 1)
                if got != kind:
                    raise RuntimeError(f'{self.job["side"]} worker sent {got}, expected {kind}.')
                return json.loads(payload)
        self.proc.wait()
        self._err.flush()
        tail = self.log.read_text()[-3000:]
        hint = ('; is torch/torchvision installed for this Python (--torch_python)?'
                if self.job['side'] == 'torch' else '')
        raise RuntimeError(f'{self.job["side"]} worker ({self.job["benchmark"]}) exited with '
                           f'{self.proc.returncode}{hint}\n{tail}')

    def ready(self) -> dict:
        return self._read('READY')

    def step(self) -> dict:
        self.proc.stdin.write('step\n')
        self.proc.stdin.flush()
        return self._read('TIME')

    def finish(self) -> dict:
        self.proc.stdin.write('done\n')
        self.proc.stdin.flush()
        out = self._read('DONE')
        self.proc.wait()
        self._err.close()
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def _env(side: str, allocator: str) -> dict:
    from benchmarks.backbone import REUSE_TUNABLES
    env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    env['PYTHONPATH'] = str(ROOT) + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH')
                                     else '')
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    if side == 'jax':
        env['JAX_PLATFORMS'] = 'cpu'  # the comparison is CPU against CPU
    elif allocator == 'reuse':
        env['GLIBC_TUNABLES'] = REUSE_TUNABLES
    return env


def _median_parts(times: list[dict]) -> dict | None:
    if not times[0].get('parts'):
        return None
    return {k: statistics.median(t['parts'][k] for t in times) for k in times[0]['parts']}


def run_pair(benchmark: str, allocator: str, args, base: dict, log_dir: str) -> list[dict]:
    """jima_jax and PyTorch (with `allocator`) on one benchmark, interleaved; three rows."""
    workers = []
    try:
        for side in ('jax', 'torch'):
            job = dict(base, side=side, benchmark=benchmark, pair=allocator)
            python = args.torch_python if side == 'torch' else sys.executable
            workers.append(Worker(job, python, _env(side, allocator), log_dir))
        ready = [w.ready() for w in workers]
        times = [[], []]
        for _ in range(args.steps):
            for i, w in enumerate(workers):
                times[i].append(w.step())
        done = [w.finish() for w in workers]
    finally:
        for w in workers:
            w.kill()
    rows = []
    for side, r, t, d in zip(('jax', 'torch'), ready, times, done):
        seconds = statistics.median(x['seconds'] for x in t)
        rows.append(dict(
            base['row'], kind='measurement', benchmark=benchmark, pair=allocator, side=side,
            allocator='reuse' if side == 'jax' else allocator, unit=UNITS[benchmark],
            studies_per_unit=r['studies_per_unit'], seconds=seconds,
            seconds_all=[x['seconds'] for x in t],
            per_study_seconds=seconds / r['studies_per_unit'],
            parts=_median_parts(t), peak_rss_gb=d.pop('peak_rss_gb'), facts=r, result=d))
    jax_row, torch_row = rows
    rows.append(dict(
        base['row'], kind='comparison', benchmark=benchmark, pair=allocator,
        jax_seconds=jax_row['seconds'], torch_seconds=torch_row['seconds'],
        speedup=torch_row['seconds'] / jax_row['seconds'],
        jax_per_study_seconds=jax_row['per_study_seconds'],
        torch_per_study_seconds=torch_row['per_study_seconds'],
        jax_peak_rss_gb=jax_row['peak_rss_gb'], torch_peak_rss_gb=torch_row['peak_rss_gb'],
        parameters_equal=jax_row['facts'].get('parameters') == torch_row['facts'].get(
            'parameters')))
    return rows


# ------------------------------------------------------------------------------- the results
def _fmt_s(seconds: float) -> str:
    return f'{seconds:.3f} s' if seconds < 10 else f'{seconds:.2f} s'


def markdown(rows: list[dict]) -> str:
    """One section per run: machine line, the comparison table, each side's settings."""
    out = []
    runs = []
    for r in rows:
        if r['run_id'] not in runs:
            runs.append(r['run_id'])
    for run_id in runs:
        rs = [r for r in rows if r['run_id'] == run_id]
        m = rs[0]['machine']
        dtype = rs[0].get('dtype', 'float32')
        precision = ('' if dtype == 'float32' else ', bfloat16 (jima_jax model.dtype; PyTorch '
                     'autocast) for train_step and beam_search')
        out += [f'## {run_id}: jima_jax vs PyTorch reference, shape `{rs[0]["shape"]}`{precision}',
                '',
                f'Machine: {m["cpu_model"]}, {m["cpu_count"]} cores ({m["cpu_affinity"]} usable), '
                f'{m["machine"]}, flags {" ".join(m["cpu_flags"]) or "-"}; {m["date"]}; load '
                f'average {rs[0]["load_avg_1m_start"]} at the start. `{rs[0]["command"]}`; median '
                f'of {rs[0]["steps"]} interleaved timed units after {rs[0]["warmup"]} warm-up.', '',
                '| benchmark | PyTorch allocator | jima_jax | PyTorch reference | '
                'jima_jax speed-up | per study, jima_jax / PyTorch | peak RSS, jima_jax / '
                'PyTorch | same parameters |', '|---|---|---:|---:|---:|---:|---:|---|']
        measured = {(r['benchmark'], r['pair'], r['side']): r for r in rs
                    if r['kind'] == 'measurement'}
        for c in (r for r in rs if r['kind'] == 'comparison'):
            t = measured[(c['benchmark'], c['pair'], 'torch')]
            torch_cell = _fmt_s(c['torch_seconds'])
            if t['parts']:
                torch_cell = (' + '.join(f'{k.replace("_", " ")} {v:.2f}'
                                         for k, v in t['parts'].items()) + f' = {torch_cell}')
            out.append(
                f'| {c["benchmark"]} | {c["pair"]} | {_fmt_s(c["jax_seconds"])} | {torch_cell} | '
                f'{c["speedup"]:.2f}x | {c["jax_per_study_seconds"]:.3f} / '
                f'{c["torch_per_study_seconds"]:.3f} s | {c["jax_peak_rss_gb"]:.2f} / '
                f'{c["torch_peak_rss_gb"]:.2f} GB | {"yes" if c["parameters_equal"] else "NO"} |')
        out.append('')
        out.append('Speed-up = PyTorch seconds / jima_jax seconds (above 1: jima_jax is faster). '
                   'Units: ' + '; '.join(f'{b}: {u}' for b, u in UNITS.items()) + '. ' + NOTE)
        out.append('')
        for r in (r for r in rs if r['kind'] == 'measurement'):
            f, s = r['facts'], r['facts']['settings']
            if r['side'] == 'jax':
                what = (f'jax {f["jax_version"]} on {f["devices"]} {f["platform"]} device(s), '
                        f'cpu_malloc={f["cpu_malloc"]} (applied: {f["cpu_malloc_applied"]}), '
                        f'cpu_scheduler={f["cpu_scheduler"]}, XLA_FLAGS=`{s["XLA_FLAGS"]}`')
            else:
                what = (f'torch {f["torch_version"]}, {f["torch_threads"]} intra-op / '
                        f'{f["torch_interop_threads"]} inter-op threads, '
                        f'{f["torch_cpu_capability"]}, GLIBC_TUNABLES=`{s["GLIBC_TUNABLES"]}`')
            env = ', '.join(f'{k}={s[k]}' for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')
                            if s[k]) or 'no OMP/MKL thread variables'
            extra = ', '.join(f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}'
                              for k, v in r['result'].items() if not isinstance(v, dict))
            out.append(f'- {r["benchmark"]} / {r["pair"]} / {r["side"]}: {what}; {env}; set-up '
                       f'{r["facts"]["setup_seconds"]:.1f} s, warm-up '
                       f'{r["facts"]["warmup_seconds"]:.1f} s; {extra}.')
        out.append('')
    return '\n'.join(out)


def write_results(rows: list[dict], out_dir: pathlib.Path, stem: str) -> tuple:
    """Adds `rows` to <stem>.jsonl (kept rows first) and rewrites <stem>.md from all of them."""
    from jima_jax import atomic
    jsonl, md = out_dir / f'{stem}.jsonl', out_dir / f'{stem}.md'
    kept = jsonl.read_text().splitlines() if jsonl.exists() else []
    lines = [line for line in kept if line.strip()] + [json.dumps(r) for r in rows]
    atomic.write_text(jsonl, '\n'.join(lines) + '\n')
    atomic.write_text(md, markdown([json.loads(line) for line in lines]) + '\n')
    return jsonl, md


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--shape', default='paper', help='a benchmarks/cases.py SHAPES entry')
    parser.add_argument('--benchmarks', default=','.join(BENCHMARKS))
    parser.add_argument('--steps', type=int, default=5, help='timed units per side')
    parser.add_argument('--warmup', type=int, default=1, help='untimed units per side first')
    parser.add_argument('--torch_allocators', default=','.join(ALLOCATORS))
    parser.add_argument('--difficulty_batches', type=int, default=2)
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                        help='compute dtype of train_step and beam_search, both sides')
    parser.add_argument('--torch_threads', type=int, default=0,
                        help="PyTorch's intra-op threads; 0 = its default (one per core)")
    parser.add_argument('--torch_python', default=sys.executable,
                        help='a Python with torch and torchvision (the bench extra)')
    parser.add_argument('--out', default=str(RESULTS_DIR))
    parser.add_argument('--_worker', default='', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        worker_main(json.loads(args._worker))
        return 0
    benchmarks = [b for b in args.benchmarks.split(',') if b]
    allocators = [a for a in args.torch_allocators.split(',') if a]
    for name, given, allowed in (('--benchmarks', benchmarks, BENCHMARKS),
                                 ('--torch_allocators', allocators, ALLOCATORS)):
        if not given or set(given) - set(allowed):
            parser.error(f'{name}={",".join(given)}: choose from {",".join(allowed)}.')
    if args.steps < 1 or args.warmup < 0 or args.difficulty_batches < 1:
        parser.error('--steps and --difficulty_batches must be >= 1, --warmup >= 0.')
    spec = shape_spec(args.shape)
    m = machine()
    run_id = datetime.datetime.now().isoformat(timespec='seconds')
    base = dict(shape=args.shape, spec=spec, optim=release_optimizer(),
                entity_head=paper_entity_head(), warmup=args.warmup,
                difficulty_batches=args.difficulty_batches, torch_threads=args.torch_threads,
                dtype=args.dtype)
    base['row'] = dict(run_id=run_id, shape=args.shape, dtype=args.dtype, steps=args.steps,
                       warmup=args.warmup,
                       machine=m, load_avg_1m_start=round(os.getloadavg()[0], 2),
                       command='python -m benchmarks.vs_pytorch ' + ' '.join(
                           sys.argv[1:] if argv is None else argv),
                       optimizer=base['optim'], entity_head=base['entity_head'])
    rows = []
    with tempfile.TemporaryDirectory(prefix='vs_pytorch_') as log_dir:
        for benchmark in benchmarks:
            for allocator in allocators:
                print(f'{benchmark}: jima_jax vs PyTorch ({allocator} allocator) ...', flush=True)
                pair = run_pair(benchmark, allocator, args, base, log_dir)
                c = pair[-1]
                print(f'    jima_jax {c["jax_seconds"]:.3f} s, PyTorch {c["torch_seconds"]:.3f} s:'
                      f' {c["speedup"]:.2f}x', flush=True)
                rows += pair
    stem = f'vs_pytorch_{m["date"]}_{slug(m["cpu_model"])}-{m["cpu_count"]}cpu'
    if args.shape != 'paper':
        stem += f'_{args.shape}'
    if args.dtype != 'float32':
        stem += '_bf16'
    paths = write_results(rows, pathlib.Path(args.out), stem)
    print('\n'.join(str(p) for p in paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
