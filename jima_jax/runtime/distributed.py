"""Joining a multi-process job: one call, before any JAX computation, from one of three sources.

Every process of a job runs the same `python -m jima_jax.main ...`; `resolve` works out who it is:
  * explicit flags (`--coordinator_address --num_processes --process_id`): local runs, any launcher;
  * SLURM, inside an `srun` step with more than one task: the coordinator is the first node of the
    step's node list, the port `$JIMA_COORDINATOR_PORT` or one derived from the job id, and each
    task takes the GPU `SLURM_LOCALID` unless the launcher already bound one GPU per task;
  * Cloud TPU VM slices (`--distributed=tpu`, or `TPU_WORKER_HOSTNAMES` listing several hosts):
    JAX reads the worker list from the TPU metadata itself.
Anything else is one process, and `initialize` does nothing (beyond the simulated CPU device count).
After `initialize`, `jax.devices()` lists every device of the job: the mesh, the global batch
(`parallel.put_batch`) and the per-process data slices (`SplitPipeline(process_index=...)`) follow.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from typing import Callable, Mapping, Optional, Sequence, TypeVar

log = logging.getLogger(__name__)

MODES = ('auto', 'off', 'slurm', 'tpu')
PORT_ENV = 'JIMA_COORDINATOR_PORT'
T = TypeVar('T')


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Who this process is in its job. `source`: flags | slurm | tpu | single."""

    source: str
    coordinator_address: Optional[str] = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: Optional[tuple[int, ...]] = None

    @property
    def multiprocess(self) -> bool:
        # A TPU slice's size is only known once JAX has read the metadata.
        return self.source == 'tpu' or self.num_processes > 1


def expand_hostlist(spec: str) -> list[str]:
    """SLURM's compressed host list -> host names: 'gpu[01-02,07],cpu-a[1-2]-x' -> gpu01, gpu02,
    gpu07, cpu-a1-x, cpu-a2-x. Zero padding of ranges is kept."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(spec + ','):
        depth += (ch == '[') - (ch == ']')
        if depth < 0:
            raise ValueError(f'malformed SLURM host list {spec!r}: unbalanced "]".')
        if ch == ',' and depth == 0:
            if spec[start:i].strip():
                items.append(spec[start:i].strip())
            start = i + 1
    if depth:
        raise ValueError(f'malformed SLURM host list {spec!r}: unbalanced "[".')
    hosts = []
    for item in items:
        parts = re.split(r'(\[[^\]]*\])', item)
        choices = [_expand_range(p[1:-1], spec) if p.startswith('[') else [p] for p in parts]
        hosts += [''.join(c) for c in itertools.product(*choices)]
    return hosts


def _expand_range(body: str, spec: str) -> list[str]:
    out = []
    for piece in body.split(','):
        lo, sep, hi = piece.partition('-')
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f'malformed SLURM host list {spec!r}: bad range {piece!r}.')
        if not sep:
            out.append(lo)
            continue
        width = len(lo)
        out += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    return out


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f'${name}={env[name]!r} is not an integer.') from None


def coordinator_port(env: Mapping[str, str]) -> int:
    """`$JIMA_COORDINATOR_PORT`, else a port in 20000..39999 derived from the SLURM job id, so
    that two jobs sharing a first node do not collide."""
    if env.get(PORT_ENV):
        port = _int_env(env, PORT_ENV)
        if not 0 < port < 65536:
            raise ValueError(f'${PORT_ENV}={port} is not a TCP port.')
        return port
    return 20000 + _int_env(env, 'SLURM_JOB_ID') % 20000


def slurm_cluster(env: Mapping[str, str]) -> Optional[Cluster]:
    """This task's place in the current `srun` step, or None outside a multi-task step.

    Only srun sets SLURM_STEP_NUM_TASKS: a batch script that starts python without srun is one
    process even when the job asked for many tasks (it would otherwise wait for peers forever).
    """
    if 'SLURM_JOB_ID' not in env or 'SLURM_STEP_NUM_TASKS' not in env:
        return None
    num = _int_env(env, 'SLURM_STEP_NUM_TASKS')
    if num <= 1:
        return None
    for name in ('SLURM_PROCID', 'SLURM_LOCALID'):
        if name not in env:
            raise ValueError(f'SLURM step with {num} tasks but ${name} is unset; start the '
                             'processes with srun.')
    nodes = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST')
    if not nodes:
        raise ValueError('SLURM step without $SLURM_STEP_NODELIST / $SLURM_JOB_NODELIST: cannot '
                         'find the coordinator node.')
    first = expand_hostlist(nodes)[0]
    visible = [d for d in env.get('CUDA_VISIBLE_DEVICES', '').split(',') if d.strip()]
    # One GPU already bound to this task (srun --gpus-per-task=1 / --gpu-bind): use what it sees.
    local = None if len(visible) == 1 else (_int_env(env, 'SLURM_LOCALID'),)
    return Cluster('slurm', f'{first}:{coordinator_port(env)}', num,
                   _int_env(env, 'SLURM_PROCID'), local)


def tpu_slice_detected(env: Mapping[str, str]) -> bool:
    """True when the environment names several TPU workers (GKE and some VM images set this);
    plain TPU VMs do not, so launchers pass --distributed=tpu (launch/tpu_pod.sh does)."""
    hosts = [h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]
    return len(hosts) > 1


def resolve(mode: str = 'auto', *, coordinator_address: Optional[str] = None,
            num_processes: Optional[int] = None, process_id: Optional[int] = None,
            local_device_ids: Optional[Sequence[int]] = None,
            env: Optional[Mapping[str, str]] = None) -> Cluster:
    """The `Cluster` this process belongs to (see the module docstring for the order)."""
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ValueError(f'--distributed={mode!r}: expected one of {MODES}.')
    local = None if local_device_ids is None else tuple(int(i) for i in local_device_ids)
    explicit = {'--coordinator_address': coordinator_address, '--num_processes': num_processes,
                '--process_id': process_id}
    given = [k for k, v in explicit.items() if v is not None]
    if given:
        if mode not in ('auto', 'off'):
            raise ValueError(f'{", ".join(given)} given with --distributed={mode}: use one or '
                             'the other.')
        missing = [k for k, v in explicit.items() if v is None]
        if num_processes == 1 and not coordinator_address:
            return Cluster('single', local_device_ids=local)
        if missing:
            raise ValueError(f'{", ".join(given)} given without {", ".join(missing)}: a '
                             'multi-process run needs all three.')
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f'--process_id={process_id} must be in [0, --num_processes='
                             f'{num_processes}).')
        if ':' not in coordinator_address:
            raise ValueError(f'--coordinator_address={coordinator_address!r}: expected '
                             'host:port (process 0 listens there).')
        return Cluster('flags', coordinator_address, num_processes, process_id, local)
    if mode == 'off':
        return Cluster('single', local_device_ids=local)
    if mode in ('auto', 'slurm'):
        cluster = slurm_cluster(env)
        if cluster is not None:
            return dataclasses.replace(cluster, local_device_ids=local or cluster.local_device_ids)
        if mode == 'slurm':
            raise ValueError('--distributed=slurm outside a multi-task srun step '
                             '($SLURM_STEP_NUM_TASKS unset or 1); launch with srun '
                             '(see launch/gpu_slurm.sbatch).')
    if mode == 'tpu' or tpu_slice_detected(env):
        return Cluster('tpu', local_device_ids=local)
    return Cluster('single', local_device_ids=local)


def initialize(cluster: Cluster, *, num_cpu_devices: int = 0, timeout_s: int = 300) -> None:
    """Joins the job described by `cluster`; must run before JAX creates its backends.

    `num_cpu_devices` > 0 simulates that many CPU devices in this process (local multi-host runs).
    """
    import jax

    if num_cpu_devices:
        jax.config.update('jax_num_cpu_devices', int(num_cpu_devices))
    if not cluster.multiprocess:
        return
    # JAX's preemption service catches SIGTERM in C++ for `reached_preemption_sync_point`, which
    # this project does not use: the training loop agrees on its stop step itself
    # (`any_process`), and outside the loop SIGTERM should end the process as it does in a
    # one-process run, not be swallowed.
    jax.config.update('jax_enable_preemption_service', False)
    if not os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
        # Cross-process collectives between CPU devices (no-op for GPU/TPU computations).
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if num_cpu_devices or os.environ.get('JAX_PLATFORMS') == 'cpu':
        _symmetric_cpu_compiles()
    where = (f'process {cluster.process_id} of {cluster.num_processes} via '
             f'{cluster.coordinator_address}' if cluster.source != 'tpu' else 'a TPU slice')
    try:
        if cluster.source == 'tpu':
            jax.distributed.initialize(initialization_timeout=timeout_s)
        else:
            jax.distributed.initialize(
                coordinator_address=cluster.coordinator_address,
                num_processes=cluster.num_processes, process_id=cluster.process_id,
                local_device_ids=(list(cluster.local_device_ids)
                                  if cluster.local_device_ids is not None else None),
                initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(
            f'could not join the {cluster.source} job as {where}: {e}\nCheck that every process '
            'started (their logs), that the coordinator host:port is reachable from all hosts, '
            f'and that no other job uses the port (${PORT_ENV} overrides it under SLURM).'
        ) from e
    if cluster.source != 'tpu' and jax.process_count() != cluster.num_processes:
        raise RuntimeError(f'joined a job of {jax.process_count()} processes, expected '
                           f'{cluster.num_processes}.')
    log.info('process %d/%d: %d local of %d devices (%s)', jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count(), cluster.source)


def _symmetric_cpu_compiles() -> None:
    """CPU processes: no persistent compilation cache, so that every process compiles.

    Gloo gives every process 30 s (fixed) to reach a program's first collective. JAX's cache
    keys differ between the processes of a CPU job and only process 0 writes entries, so with the
    cache on, process 0 would load the train step in a second on a rerun while the others
    compile it for a minute, and the run would fail at its first step.
    """
    import jax
    jax.config.update('jax_enable_compilation_cache', False)


def process_zero_first(fn: Callable[[], T], name: str) -> T:
    """Runs `fn` on process 0, then, after a barrier, on every other process.

    For idempotent work with a shared result (preparing a dataset on shared storage): the others
    then find it done instead of racing to build it.
    """
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return fn()
    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f'jima:{name}')
    return fn() if jax.process_index() != 0 else result


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any one of them.

    A host sync (one tiny all-gather across processes): call it only at steps that every process
    of the job reaches, in the same order, or the call waits for the others forever.
    """
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))
    return bool(np.asarray(flags).any())
