"""Multi-process runs: who-am-I resolution (flags, SLURM, TPU), joining a job, and one end-to-end
job of `launch/local_multihost.sh 2 2` that must stop every process at one step when SIGTERM
reaches one of them, train exactly like one process with 4 devices, and resume in one process.

The end-to-end test (`test_sigterm_to_one_process_stops_every_process_at_one_step`)
is the slow one here (about 2-3 minutes on 2 cores: a smoke training compiled by both processes,
then twice one process); set JIMA_SKIP_MULTIHOST_E2E=1 to skip it.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jima_jax.runtime import distributed
from tests.conftest import REPO

SLURM = {'SLURM_JOB_ID': '123456', 'SLURM_STEP_NUM_TASKS': '16', 'SLURM_PROCID': '9',
         'SLURM_LOCALID': '1', 'SLURM_STEP_NODELIST': 'gpu-[007-008]'}


# ------------------------------------------------------------------ resolution (no JAX needed)

@pytest.mark.parametrize('spec, hosts', [
    ('node1', ['node1']),
    ('gpu[01-03]', ['gpu01', 'gpu02', 'gpu03']),
    ('gpu[8-10,12],cpu-a', ['gpu8', 'gpu9', 'gpu10', 'gpu12', 'cpu-a']),
    ('r[1-2]-n[09-10]', ['r1-n09', 'r1-n10', 'r2-n09', 'r2-n10']),
])
def test_expand_hostlist(spec, hosts):
    assert distributed.expand_hostlist(spec) == hosts


@pytest.mark.parametrize('spec', ['gpu[01-03', 'gpu]1[', 'gpu[a-b]'])
def test_expand_hostlist_rejects_malformed_lists(spec):
    with pytest.raises(ValueError, match='malformed SLURM host list'):
        distributed.expand_hostlist(spec)


def test_no_flags_and_no_cluster_is_one_process():
    c = distributed.resolve(env={})
    assert c == distributed.Cluster('single') and not c.multiprocess


def test_explicit_flags():
    c = distributed.resolve(coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3,
                            env=SLURM)  # flags win over the environment
    assert c == distributed.Cluster('flags', '10.0.0.1:1234', 4, 3) and c.multiprocess


@pytest.mark.parametrize('kwargs, match', [
    (dict(coordinator_address='h:1', num_processes=2), 'without --process_id'),
    (dict(num_processes=2, process_id=0), 'without --coordinator_address'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2),
     r'in \[0, --num_processes=2\)'),
    (dict(coordinator_address='h', num_processes=2, process_id=0), 'expected host:port'),
])
def test_incomplete_or_inconsistent_flags_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distributed.resolve(env={}, **kwargs)


def test_flags_conflict_with_an_explicit_cluster_mode():
    with pytest.raises(ValueError, match='use one or the other'):
        distributed.resolve('slurm', coordinator_address='h:1', num_processes=2, process_id=0,
                            env=SLURM)


def test_slurm_step_variables():
    c = distributed.resolve(env=SLURM)
    assert c == distributed.Cluster('slurm', f'gpu-007:{20000 + 123456 % 20000}', 16, 9, (1,))
    # one GPU already bound to the task: use what it sees
    bound = distributed.resolve(env=dict(SLURM, CUDA_VISIBLE_DEVICES='5'))
    assert bound.local_device_ids is None
    # explicit port and explicit devices
    c = distributed.resolve(local_device_ids=['2', '3'],
                            env=dict(SLURM, JIMA_COORDINATOR_PORT='4000'))
    assert c.coordinator_address == 'gpu-007:4000' and c.local_device_ids == (2, 3)


def test_slurm_outside_an_srun_step_is_one_process():
    batch_script = {k: v for k, v in SLURM.items() if k != 'SLURM_STEP_NUM_TASKS'}
    assert distributed.resolve(env=batch_script).source == 'single'
    assert distributed.resolve(env=dict(SLURM, SLURM_STEP_NUM_TASKS='1')).source == 'single'
    with pytest.raises(ValueError, match='outside a multi-task srun step'):
        distributed.resolve('slurm', env=batch_script)
    assert distributed.resolve('off', env=SLURM).source == 'single'


@pytest.mark.parametrize('env, match', [
    ({k: v for k, v in SLURM.items() if k != 'SLURM_PROCID'}, r'\$SLURM_PROCID is unset'),
    ({k: v for k, v in SLURM.items() if k != 'SLURM_STEP_NODELIST'}, 'coordinator node'),
    (dict(SLURM, SLURM_STEP_NUM_TASKS='x'), 'SLURM_STEP_NUM_TASKS=.x. is not an integer'),
    (dict(SLURM, JIMA_COORDINATOR_PORT='70000'), 'is not a TCP port'),
])
def test_broken_slurm_environments_fail_clearly(env, match):
    with pytest.raises(ValueError, match=match):
        distributed.resolve(env=env)


def test_tpu_slices():
    assert distributed.resolve('tpu', env={}) == distributed.Cluster('tpu')
    assert distributed.resolve(env={'TPU_WORKER_HOSTNAMES': 'w0,w1'}).source == 'tpu'
    assert distributed.resolve(env={'TPU_WORKER_HOSTNAMES': 'w0'}).source == 'single'
    assert distributed.Cluster('tpu').multiprocess


def test_unknown_mode():
    with pytest.raises(ValueError, match="--distributed='mpi'"):
        distributed.resolve('mpi', env={})


def test_initialize_is_a_no_op_for_one_process_and_explains_failures(monkeypatch):
    import jax
    calls = []
    monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
    distributed.initialize(distributed.Cluster('single'))
    assert calls == []

    def fail(**kw):
        raise RuntimeError('DEADLINE_EXCEEDED: barrier timed out')

    monkeypatch.setattr(jax.distributed, 'initialize', fail)
    monkeypatch.setenv('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')  # leave global config alone
    with pytest.raises(RuntimeError, match=r'(?s)process 1 of 2 via h:9.*DEADLINE_EXCEEDED.*'
                                           r'JIMA_COORDINATOR_PORT'):
        distributed.initialize(distributed.Cluster('flags', 'h:9', 2, 1))


def test_cli_reports_incomplete_multiprocess_flags(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'jima_jax.main', '--config', 'configs/smoke.py',
                           '--workdir', str(tmp_path), '--num_processes=2'], cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert ('--num_processes given without --coordinator_address, --process_id'
            in proc.stderr + proc.stdout)


# ------------------------------------------------------------------ real processes

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


JOIN = textwrap.dedent("""
    import json, pathlib, sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jima_jax.runtime import distributed
    cluster = distributed.resolve()
    distributed.initialize(cluster, num_cpu_devices=2, timeout_s=60)
    mesh = Mesh(np.asarray(jax.devices()), ('d',))
    local = np.full(2, jax.process_index() + 1.0, np.float32)
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P('d')), local)
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))(x)
    marker = pathlib.Path(sys.argv[1])
    def touch():
        seen = marker.exists()
        if jax.process_index() == 0:
            marker.write_text('0')
        return seen
    seen = distributed.process_zero_first(touch, 'test')
    # a flag set on process 1 only (its SIGTERM) is seen by every process
    agreed = [distributed.any_process(jax.process_index() == 1), distributed.any_process(False)]
    # a file, not stdout: gloo's C++ logging can land in the middle of a printed line
    pathlib.Path(f'{marker}.result{jax.process_index()}').write_text(json.dumps(dict(
        source=cluster.source, index=jax.process_index(), count=jax.process_count(),
        devices=jax.device_count(), total=float(total), seen_marker=seen, agreed=agreed,
        preemption_service=jax.config.jax_enable_preemption_service)))
""")


def test_two_slurm_tasks_join_one_job(tmp_path):
    """Two srun-like tasks on localhost: one job of 4 CPU devices, global arrays span both."""
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO), SLURM_JOB_ID='42',
               SLURM_STEP_NUM_TASKS='2', SLURM_STEP_NODELIST='localhost',
               JIMA_COORDINATOR_PORT=str(_free_port()))
    env.pop('XLA_FLAGS', None)
    procs = [subprocess.Popen([sys.executable, '-c', JOIN, str(tmp_path / 'marker')],
                              env=dict(env, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=str(REPO)) for i in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f'marker.result{i}').read_text()) for i in range(2)]
    assert [r['index'] for r in results] == [0, 1]
    for r in results:
        assert (r['source'], r['count'], r['devices']) == ('slurm', 2, 4)
        assert r['total'] == 2 * 1.0 + 2 * 2.0  # both processes' slices are in the global sum
    # process 0 ran first; process 1 ran after the barrier and saw its result
    assert [r['seen_marker'] for r in results] == [False, True]
    # the stop agreement: process 1's flag reaches process 0; no flag, no stop
    assert [r['agreed'] for r in results] == [[True, False]] * 2
    # JAX's preemption service (it would swallow SIGTERM outside the training loop) is off
    assert [r['preemption_service'] for r in results] == [False, False]


JOB_FLAGS = ['--config', 'configs/smoke.py', '--config.train.num_epochs=1',
             '--config.train.steps_per_epoch=1000', '--config.train.log_every_steps=3',
             # see tests/train/test_sharding.py: without these two, rounding differences
             # between device layouts are amplified over steps in a tiny random network
             '--config.model.freeze_bn_stats=True', '--config.optim.task1.eps=1e-3',
             '--config.optim.task2.eps=1e-3']


def _assert_close_by_tensor(have, want, rtol: float, atol: float, what) -> None:
    """||have - want|| <= rtol ||want|| + atol sqrt(n): one tensor compared as a whole.

    Two device layouts sum in different orders, so single entries near zero may differ by far
    more than rtol while the tensor agrees. Measured on jax 0.12 (Python 3.12) after 9 steps:
    parameters within 1.0e-3 of their norm (kernels 1e-5), Adam's first moments of the backbone
    within 1.1e-2 (about 0.4% in most layers), with the losses equal to 1e-5. Wrong per-process
    slicing or duplicated batches change the gradients as a whole (and the losses). The attention
    key biases, whose gradient is zero in exact arithmetic, only move by rounding: atol."""
    have, want = np.asarray(have, np.float64), np.asarray(want, np.float64)
    assert have.shape == want.shape, what
    err, ref = np.linalg.norm(have - want), np.linalg.norm(want)
    assert err <= rtol * ref + atol * np.sqrt(want.size), (
        f'{what}: |difference| {err:.3g} > {rtol} x |reference| {ref:.3g} + atol; largest entry '
        f'difference {np.abs(have - want).max():.3g}')


def _train_rows(workdir: pathlib.Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / 'train_log.jsonl').read_text().splitlines()]
    return [r for r in rows if 'loss/report' in r]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the launcher then stops its children's process groups), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)  # the launcher escalates to SIGKILL after 20 s
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _restore_flat(path: pathlib.Path) -> dict:
    """A state saved from 4 devices, restored onto this process's first device."""
    import jax
    import orbax.checkpoint as ocp
    ckpt = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                          ckpt.metadata(path).item_metadata)
    return ocp.tree.to_flat_dict(ckpt.restore(path, target))


def _pid_of(*words: str) -> int:
    """The running process whose command line holds every one of `words`."""
    for entry in pathlib.Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / 'cmdline').read_bytes().decode(errors='replace').split('\0')
        except OSError:
            continue
        if (argv[0].rsplit('/', 1)[-1] != 'setsid' and 'jima_jax.main' in argv
                and all(w in argv for w in words)):
            return int(entry.name)
    raise LookupError(f'no process with {words}')


def _saved_step(text: str, prefix: str) -> int:
    assert prefix in text, text[-3000:]
    return int(text.split(prefix)[1].split()[0])


def _one_process(workdir: pathlib.Path, env: dict, max_steps: int) -> subprocess.CompletedProcess:
    """The job's flags in one process with the job's 4 devices, up to `max_steps`."""
    proc = subprocess.run(
        [sys.executable, '-m', 'jima_jax.main', *JOB_FLAGS, '--workdir', str(workdir),
         '--num_cpu_devices=4', f'--config.train.max_steps={max_steps}'], cwd=str(REPO),
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(os.environ.get('JIMA_SKIP_MULTIHOST_E2E') == '1',
                    reason='JIMA_SKIP_MULTIHOST_E2E=1')
@pytest.mark.skipif(not pathlib.Path('/proc').is_dir(), reason='finds process 1 through /proc')
def test_sigterm_to_one_process_stops_every_process_at_one_step(tmp_path, smoke_dataset):
    """SLOW (2-3 min on 2 busy cores). SIGTERM to one process of a `launch/local_multihost.sh 2 2`
    job (2 processes x 2 CPU devices, gloo) stops every process at one step; the job trains like
    one process with 4 devices; one process resumes it. One job serves all three checks (each
    of its processes compiles the train step without the compilation cache):

    1. SIGTERM reaches process 1 only: both processes must stop at the same step (the next
       logging step), save one complete checkpoint there together, and exit cleanly. Without
       the agreement process 1 would save and exit alone and process 0 would wait for it in the
       next collective until the launcher's SIGKILL.
    2. One process with 4 devices, the same global batches, to that step: the same losses and
       parameters. Wrong per-process slicing, per-process BatchNorm statistics or duplicated
       batches would change them by far more than the tolerance.
    3. The same one-process command resumes the job's checkpoint and trains on.
    """
    job_dir, one = tmp_path / 'job', tmp_path / 'one_process'
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', PYTHON=sys.executable,
               JIMA_COORDINATOR_PORT=str(_free_port()), STOP_GRACE_S='5')
    env.pop('XLA_FLAGS', None)
    job = subprocess.Popen(['bash', 'launch/local_multihost.sh', '2', '2', *JOB_FLAGS,
                            '--workdir', str(job_dir)], cwd=str(REPO), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    log1 = job_dir / 'logs' / 'process_1.log'
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:
            # process 0 logs a step only once process 1 ran it too: both are in the loop; two
            # logged steps (3, 6) before the signal leave at least two to compare
            if (job_dir / 'train_log.jsonl').exists() and len(_train_rows(job_dir)) >= 2:
                break
            time.sleep(0.2)
        assert job.poll() is None, job.communicate()[1][-3000:]
        os.kill(_pid_of('--process_id=1', str(job_dir)), signal.SIGTERM)
        out, err = job.communicate(timeout=240)
        print(f'2x2 job {time.monotonic() - t0:.0f} s')
    finally:
        _stop(job)
    log = log1.read_text()
    assert job.returncode == 0, err[-3000:] + log[-3000:]
    assert '[Gloo]' in err + log  # the CPU collectives really ran
    stopped_0 = _saved_step(out, 'SIGTERM (to another process): saved step ')
    stopped_1 = _saved_step(log, 'SIGTERM: saved step ')
    assert stopped_0 == stopped_1 and stopped_0 % 3 == 0 and 6 <= stopped_0 < 1000
    stopped = stopped_0
    assert 'preempted' in out
    # Only process 0 writes and prints: one row and one progress line per logged step, not two.
    got = _train_rows(job_dir)
    assert [r['step'] for r in got] == list(range(3, stopped + 1, 3))
    assert out.count('step 3/') == 1
    # one checkpoint at that step, complete: the position and every file's checksum written
    import ml_collections
    from jima_jax.train import checkpoint
    ckpt_dir = job_dir / 'checkpoints'
    assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [stopped]
    ck = checkpoint.Checkpointer(ckpt_dir, ml_collections.ConfigDict(dict(
        best_metric='val/loss/report', best_mode='min', keep_checkpoints=3)))
    try:
        assert ck.find_damage(stopped) is None
        assert (ck.step_dir(stopped) / checkpoint.CHECKSUMS).exists()
        assert ck.read_extra(stopped)['position'] == {'epoch': 0, 'step_in_epoch': stopped}
    finally:
        ck.close()

    # 2. one process, 4 devices, to the same step: the same losses and parameters
    single = _one_process(one, env, stopped)
    assert 'max_steps' in single.stdout
    ref = _train_rows(one)
    assert [r['step'] for r in ref] == [r['step'] for r in got]
    for key in ('loss/entity', 'loss/report'):
        want, have = np.array([r[key] for r in ref]), np.array([r[key] for r in got])
        np.testing.assert_allclose(have, want, rtol=1e-5, err_msg=key)
        assert abs(want[-1] - want[0]) > 100 * 1e-5 * abs(want[0])  # the losses do move
    flat = [_restore_flat(d / 'checkpoints' / str(stopped) / 'state') for d in (one, job_dir)]
    assert flat[0].keys() == flat[1].keys()
    for key in flat[0]:
        # Adam's moments are running sums of gradients; BatchNorm's backward subtracts
        # near-equal terms, so the moments carry the reduction order's rounding most
        rtol = 5e-2 if key[0].startswith('opt') else 5e-3
        _assert_close_by_tensor(flat[1][key], flat[0][key], rtol, atol=1e-6, what=key)

    # 3. ... and resumable: one process with the job's 4 devices takes it up and trains on
    resume = _one_process(job_dir, env, stopped + 3)
    assert f'resuming from step {stopped} (epoch 1, batch {stopped})' in resume.stdout
    steps = [r['step'] for r in _train_rows(job_dir)]
    assert steps == list(range(3, stopped + 4, 3))  # logged once each, on from the stop
