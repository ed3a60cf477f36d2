r"""ResNet-101 alone, JAX (this package) against PyTorch (torchvision), on this host's CPU.

  python -m benchmarks.backbone --frameworks jax
  python -m benchmarks.backbone --torch_python /path/to/venv-with-torch/bin/python
                                 # jax and torch (torch, torchvision: not jima_jax dependencies)

The fused train step is compared with the authors' PyTorch code as they ship it (7.1 s + 17.6 s
at batch 16, ResNet-101, 2 views). This script answers the fair follow-up question: kernel for
kernel, how does the backbone compare with plain PyTorch here, with glibc's default allocator and
with the settings `parallel.cpu_malloc='reuse'` applies? It times, on 32 random 224^2 images in
train mode (BatchNorm batch statistics), what the two JIMA tasks need from f_R: forward + backward
+ Adam (Task 1) and a forward without gradients (Task 2's frozen f_R). Each (framework,
allocator) pair runs in its own process: glibc reads its tunables at start-up. Prints a table and
appends JSON lines to benchmarks/results/backbone_<date>_<machine>.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

RESULTS_DIR = pathlib.Path(__file__).parent / 'results'
# The environment equivalent of `cpu_host.use_cpu_malloc`: one heap, no mmap, never trimmed.
REUSE_TUNABLES = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
                  'glibc.malloc.trim_threshold=68719476736')


def _timed(tasks, steps: int) -> dict:
    row = {}
    for name, fn in tasks:
        fn()  # warm-up (and, for JAX, compilation)
        times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        row[f'{name}_seconds'] = statistics.median(times)
        row[f'{name}_seconds_all'] = times
        row[f'{name}_page_faults_per_step'] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    row['peak_host_mem_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def _measure_jax(steps: int, allocator: str) -> dict:
    from configs import default
    from jima_jax.runtime import cpu_host
    pcfg = default.get_config().parallel
    pcfg.cpu_malloc = allocator
    cpu_host.configure_cpu_host(pcfg)  # as `jima_jax.main` does, before JAX starts
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jima_jax.model import resnet

    graphdef, params, rest = nnx.split(resnet.ResNet('resnet101', rngs=nnx.Rngs(0)),
                                       nnx.Param, ...)
    opt = optax.adam(1e-4)
    opt_state = opt.init(params)
    keys = jax.random.split(jax.random.PRNGKey(0))
    batch_a, batch_b = (jax.random.normal(k, (32, 224, 224, 3)) for k in keys)

    def loss(p, r, x):
        return jnp.mean(jnp.square(nnx.merge(graphdef, p, r)(x, True, False)))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def task1(p, s, r, x):
        grads = jax.grad(loss)(p, r, x)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    task2 = jax.jit(lambda p, r, x: nnx.merge(graphdef, p, r)(x, True, False))
    state = [params, opt_state]

    def run_task1():
        state[:] = task1(state[0], state[1], rest, batch_a)
        jax.block_until_ready(state)

    row = dict(framework='jax', version=jax.__version__, threads=os.cpu_count(),
               xla_flags=os.environ.get('XLA_FLAGS', ''))
    row.update(_timed((('fwd_bwd_adam', run_task1),
                       ('fwd_no_grad', lambda: jax.block_until_ready(
                           task2(state[0], rest, batch_b)))), steps))
    return row


def _measure_torch(steps: int, threads: int) -> dict:
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet101()
    model.fc = torch.nn.Identity()  # JIMA uses the feature map, not the classifier
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch_a, batch_b = torch.randn(32, 3, 224, 224), torch.randn(32, 3, 224, 224)

    def task1():
        opt.zero_grad()
        model(batch_a).square().mean().backward()
        opt.step()

    def task2():
        with torch.no_grad():
            model(batch_b)

    row = dict(framework='torch', version=torch.__version__, threads=threads,
               glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''))
    row.update(_timed((('fwd_bwd_adam', task1), ('fwd_no_grad', task2)), steps))
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frameworks', default='jax,torch')
    parser.add_argument('--allocators', default='system,reuse')
    parser.add_argument('--steps', type=int, default=3, help='timed steps per task')
    parser.add_argument('--torch_python', default=sys.executable,
                        help='a Python with torch and torchvision installed')
    parser.add_argument('--out', default=str(RESULTS_DIR))
    parser.add_argument('--_child', default='', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        framework, allocator = args._child.split(':')
        row = (_measure_jax(args.steps, allocator) if framework == 'jax'
               else _measure_torch(args.steps, os.cpu_count()))
        print(json.dumps(row))
        return
    rows = []
    for framework in args.frameworks.split(','):
        for allocator in args.allocators.split(','):
            env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
            if framework == 'torch' and allocator == 'reuse':
                env['GLIBC_TUNABLES'] = REUSE_TUNABLES
            python = args.torch_python if framework == 'torch' else sys.executable
            proc = subprocess.run(
                [python, '-m', 'benchmarks.backbone', '--_child',
                 f'{framework}:{allocator}', '--steps', str(args.steps)], env=env,
                capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f'{framework} ({allocator}) failed'
                         f'{"; is torch/torchvision installed?" if framework == "torch" else ""}'
                         f'\n{proc.stderr[-2000:]}')
            row = dict(json.loads(proc.stdout.strip().splitlines()[-1]), allocator=allocator,
                       machine=f'{platform.machine()} {os.cpu_count()} cpus',
                       date=datetime.date.today().isoformat())
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f'backbone_{datetime.date.today().isoformat()}_'
                    f'{platform.machine()}-{os.cpu_count()}cpu.jsonl', 'a') as f:
        for row in rows:
            f.write(json.dumps(row) + '\n')
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = ['| framework | allocator | ResNet-101 fwd+bwd+Adam, 32 images | fwd, no grad | '
             'page faults / fwd+bwd | peak host mem |', '|---|---|---:|---:|---:|---:|']
    for r in rows:
        lines.append(
            f'| {r["framework"]} {r["version"]} | {r["allocator"]} | '
            f'{r["fwd_bwd_adam_seconds"]:.2f} s | {r["fwd_no_grad_seconds"]:.2f} s | '
            f'{r["fwd_bwd_adam_page_faults_per_step"]:,.0f} | {r["peak_host_mem_gb"]:.1f} GB |')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
