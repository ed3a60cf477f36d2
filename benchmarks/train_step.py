r"""Examples/s and peak host memory of the fused JIMA train step at fixed shapes.

  python -m benchmarks.train_step                      # both shapes, writes benchmarks/results/
  python -m benchmarks.train_step --cases iu_r101 --steps 3

Each case runs in its own subprocess so its peak resident memory (ru_maxrss) is its own. Inputs
are random arrays of the real shapes (no dataset needed). One "example" is one study of each
task's batch: a step (either mode) consumes batch A + batch B = 2 x batch_size studies, each
with `views` images. No ratio to PyTorch here: a time measured on another day or CPU says
nothing about this one. `python -m benchmarks.vs_pytorch` runs both side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

CASES = {
    # The IU X-ray paper model: ResNet-101, 2 views of 224^2, batch 16, |V| ~ 760, 60 tokens.
    'iu_r101': dict(backbone='resnet101', views=2, image=224, batch=16, vocab=760, length=60),
    'iu_r18': dict(backbone='resnet18', views=2, image=224, batch=16, vocab=760, length=60),
}
RESULTS_DIR = pathlib.Path(__file__).parent / 'results'


def _run_case(name: str, steps: int, mode: str, kernels: str, dtype: str,
              remat: bool, cpu_malloc: str = 'reuse') -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from configs import default
    from jima_jax.model import jima
    from jima_jax.runtime import cpu_host, parallel
    from jima_jax.train import losses, step as step_lib

    spec = CASES[name]
    cfg = default.get_config()
    cfg.model.backbone = spec['backbone']
    cfg.model.kernels = kernels
    cfg.model.dtype = dtype
    cfg.model.remat_backbone = remat
    cfg.parallel.cpu_malloc = cpu_malloc
    cpu_host.configure_cpu_host(cfg.parallel)  # as `jima_jax.main` does, before JAX computes
    cfg.train.mode = mode
    cfg.data.max_len = spec['length']
    cfg.input.batch_size = spec['batch']
    model = jima.JIMA(cfg.model, vocab_size=spec['vocab'], num_views=spec['views'],
                      max_len=spec['length'] + 1, rngs=nnx.Rngs(0))
    modeldef, params, stats = step_lib.split_model(model)
    del model
    state = step_lib.init_train_state(cfg, params, stats)
    mesh = parallel.make_mesh(cfg.parallel)
    sharding = parallel.state_shardings(mesh, state, cfg.parallel)
    state = jax.device_put(state, sharding)
    train_step = step_lib.jit_train_step(
        step_lib.build_train_step(modeldef, cfg, spec['vocab']), mesh, sharding)
    rng = np.random.default_rng(0)

    def batch():
        b, length = spec['batch'], spec['length'] + 2
        tokens = rng.integers(4, spec['vocab'], (b, length)).astype(np.int32)
        tokens[:, 0] = 1
        return parallel.put_batch(dict(
            images=rng.integers(0, 256, (b, spec['views'], spec['image'], spec['image']),
                                dtype=np.uint8),
            tokens=tokens, entities=rng.integers(-1, spec['vocab'], (b, 24)).astype(np.int32),
            abnormal=rng.integers(0, 2, b).astype(np.int32), mask=np.ones(b, np.float32),
            index=np.arange(b, dtype=np.int32)), parallel.batch_sharding(mesh))

    tables = jax.device_put(losses.LossTables.uniform(spec['vocab']), parallel.replicated(mesh))
    a, b = batch(), batch()
    epoch = np.int32(0)
    t0 = time.perf_counter()
    state, metrics = train_step(state, a, b, epoch, tables)
    jax.block_until_ready(metrics)
    compile_and_first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = train_step(state, a, b, epoch, tables)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    studies = spec['batch'] * 2  # batch A + batch B in both modes (joint as the release's)
    return dict(
        case=name, **spec, mode=mode, kernels=kernels, dtype=dtype, remat=remat,
        xla_flags=os.environ.get('XLA_FLAGS', ''), cpu_malloc=cpu_malloc,
        devices=jax.device_count(), platform=jax.devices()[0].platform,
        step_seconds=step_s, step_seconds_all=times, first_step_seconds=compile_and_first,
        examples_per_sec=studies / step_s, images_per_sec=studies * spec['views'] / step_s,
        peak_host_mem_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        jax_version=jax.__version__, python=platform.python_version(),
        machine=f'{platform.machine()} {os.cpu_count()} cpus',
        date=datetime.date.today().isoformat())


def _markdown(rows: list[dict]) -> str:
    lines = ['| case | backbone | mode | remat | XLA_FLAGS | cpu_malloc | step (s) | examples/s | '
             'images/s | peak host mem (GB) |', '|' + '---|' * 10]
    for r in rows:
        lines.append(f'| {r["case"]} | {r["backbone"]} | {r["mode"]} | {r.get("remat", False)} | '
                     f'{r.get("xla_flags") or "-"} | {r.get("cpu_malloc", "system")} | '
                     f'{r["step_seconds"]:.2f} | '
                     f'{r["examples_per_sec"]:.2f} | '
                     f'{r["images_per_sec"]:.2f} | {r["peak_host_mem_gb"]:.2f} |')
    return '\n'.join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', default=','.join(CASES))
    parser.add_argument('--steps', type=int, default=3, help='timed steps after the first')
    parser.add_argument('--mode', default='alternate', choices=['alternate', 'joint'])
    parser.add_argument('--kernels', default='auto', choices=['auto', 'portable', 'xla_cpu'])
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
    parser.add_argument('--remat', action='store_true', help='recompute backbone activations')
    parser.add_argument('--cpu_malloc', default='reuse', choices=['reuse', 'system'],
                        help='parallel.cpu_malloc for the measured process')
    parser.add_argument('--out', default=str(RESULTS_DIR))
    parser.add_argument('--_child', default='', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print(json.dumps(_run_case(args._child, args.steps, args.mode, args.kernels,
                                   args.dtype, args.remat, args.cpu_malloc)))
        return
    rows = []
    for name in args.cases.split(','):
        cmd = [sys.executable, '-m', 'benchmarks.train_step', '--_child', name,
               '--steps', str(args.steps), '--mode', args.mode, '--kernels', args.kernels,
               '--dtype', args.dtype, '--cpu_malloc', args.cpu_malloc] + (
                   ['--remat'] if args.remat else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f'case {name} failed:\n{proc.stderr[-3000:]}')
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = f'{datetime.date.today().isoformat()}_{platform.machine()}_{rows[0]["platform"]}'
    with open(out / f'train_step_{stamp}.jsonl', 'a') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')
    table = _markdown(rows)
    (out / f'train_step_{stamp}.md').write_text(table + '\n')
    print(table)


if __name__ == '__main__':
    main()
