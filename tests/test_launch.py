"""launch/: every script parses (bash -n, shellcheck when installed); tpu_pod.sh --dry-run prints
the expected gcloud commands and runs nothing; gpu_slurm.sbatch calls srun as intended (a fake
srun records the calls); both fail loudly, before preparing or training, when JAX does not
compute on their accelerator (the real check, run on this CPU-only jax); local_multihost.sh
validates its arguments and stops every process when one fails. The real multi-process training
run is in tests/test_multihost.py.
"""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(p.name for p in (REPO / 'launch').iterdir()
                 if p.suffix in ('.sh', '.sbatch'))
MAIN_FLAGS = ['--config', 'configs/iu_xray.py', '--workdir', '/mnt/shared/runs/iu x',
              '--config.train.num_epochs=2']


def _fake(tmp_path: pathlib.Path, name: str, body: str) -> dict:
    """A fake executable `name` first on PATH; it appends its argv (one JSON list per call)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text('#!/usr/bin/env bash\n'
                   f'printf "%s\\0" "$@" >> {tmp_path}/{name}.calls; printf "\\n" >> '
                   f'{tmp_path}/{name}.calls\n' + body)
    exe.chmod(0o755)
    return dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}')


def _calls(tmp_path: pathlib.Path, name: str) -> list[list[str]]:
    path = tmp_path / f'{name}.calls'
    if not path.exists():
        return []
    return [line.split('\0')[:-1] for line in path.read_text().split('\n') if line]


def _run(args, env=None, timeout=60):
    return subprocess.run(args, cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_there_are_three_launchers():
    assert SCRIPTS == ['gpu_slurm.sbatch', 'local_multihost.sh', 'tpu_pod.sh']


@pytest.mark.parametrize('script', SCRIPTS)
def test_script_parses(script):
    proc = _run(['bash', '-n', f'launch/{script}'])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck not installed')
@pytest.mark.parametrize('script', SCRIPTS)
def test_script_passes_shellcheck(script):
    proc = _run(['shellcheck', '--shell=bash', f'launch/{script}'])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ tpu_pod.sh

def _dry_run_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if not line.startswith('#')]


def test_tpu_pod_dry_run_prints_every_command_and_runs_none(tmp_path):
    env = _fake(tmp_path, 'gcloud', 'exit 1\n')
    proc = _run(['bash', 'launch/tpu_pod.sh', '--dry-run', '--name', 'jima-v4', '--zone',
                 'us-central2-b', '--project', 'proj', '--accelerator-type', 'v4-16', '--create',
                 '--spot', '--', *MAIN_FLAGS], env=env)
    assert proc.returncode == 0, proc.stderr
    assert _calls(tmp_path, 'gcloud') == []  # nothing was run
    cmds = _dry_run_commands(proc.stdout)
    tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
    where = ['--zone=us-central2-b', '--project=proj']
    assert [c[:5] for c in cmds] == [
        tpu + ['describe'], tpu + ['create'], ['tar', '-czf', cmds[2][2], '--exclude=./.git',
                                               '--exclude=./.venv'],
        tpu + ['scp'], tpu + ['ssh'], tpu + ['ssh'], tpu + ['ssh'], tpu + ['ssh'], tpu + ['ssh']]
    describe, create, tar, scp, install, check, prepare, start, stream = cmds
    assert describe == tpu + ['describe', 'jima-v4'] + where
    assert create == tpu + ['create', 'jima-v4'] + where + [
        '--accelerator-type=v4-16', '--version=tpu-ubuntu2204-base', '--spot']
    assert tar[-3:] == ['-C', str(REPO), '.']
    assert scp == tpu + ['scp', tar[2], 'jima-v4:jima_jax.tar.gz', '--worker=all'] + where

    def remote(cmd, worker):
        assert cmd[:6] == tpu + ['ssh', 'jima-v4'] and f'--worker={worker}' in cmd
        assert all(w in cmd for w in where)
        (command,) = [c[len('--command='):] for c in cmd if c.startswith('--command=')]
        return command

    # the pinned set plus jax[tpu], as on any machine; then JAX must find the TPU on every worker
    assert remote(install, 'all').endswith('make install-tpu PYTHON=python3')
    assert remote(check, 'all') == 'cd jima_jax && .venv/bin/python -m jima_jax.accelerator tpu'
    # the main.py flags reach every worker intact (the path with a space stays one argument)
    prepare_words = shlex.split(remote(prepare, 'all'))
    assert prepare_words[:3] == ['cd', 'jima_jax', '&&']
    assert prepare_words[3:] == ['.venv/bin/python', '-m', 'jima_jax.main', *MAIN_FLAGS,
                                 '--mode=prepare']
    start_words = shlex.split(remote(start, 'all'))
    i = start_words.index('-m')
    assert start_words[i:i + 3 + len(MAIN_FLAGS)] == [
        '-m', 'jima_jax.main', '--distributed=tpu', *MAIN_FLAGS]
    assert start_words[i - 2:i] == ['nohup', '.venv/bin/python']
    assert '~/jima_run.log' in start_words and '&' in start_words  # survives a dropped ssh
    assert remote(stream, '0') == 'tail --pid=$(cat ~/jima_run.pid) -n +1 -f ~/jima_run.log'


def test_tpu_pod_attach_runs_the_same_commands(tmp_path):
    """Without --dry-run (gcloud faked): describe succeeds, so no create; nothing else differs."""
    env = _fake(tmp_path, 'gcloud', 'exit 0\n')
    proc = _run(['bash', 'launch/tpu_pod.sh', '--name', 'n', '--zone', 'z', '--skip-install',
                 '--skip-prepare', '--', *MAIN_FLAGS], env=env)
    assert proc.returncode == 0, proc.stderr
    calls = _calls(tmp_path, 'gcloud')
    assert [c[:4] for c in calls] == [['compute', 'tpus', 'tpu-vm', 'describe']] + [
        ['compute', 'tpus', 'tpu-vm', 'ssh']] * 3
    assert [c[4:6] for c in calls[1:]] == [['n', '--worker=all']] * 2 + [['n', '--worker=0']]
    assert 'jima_jax.accelerator tpu' in calls[1][-1]  # checked even with --skip-install
    assert '--distributed=tpu' in calls[2][-1]


def _worker_home(tmp_path: pathlib.Path) -> pathlib.Path:
    """A TPU worker's $HOME with the checkout in ~/jima_jax, whose .venv is this test's Python."""
    home = tmp_path / 'home'
    (home / 'jima_jax' / '.venv' / 'bin').mkdir(parents=True)
    python = home / 'jima_jax' / '.venv' / 'bin' / 'python'
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    return home


def test_tpu_pod_fails_loudly_when_the_workers_jax_is_not_on_a_tpu(tmp_path):
    """gcloud faked: `ssh --command=...` runs the command here, in the worker's home, on this
    CPU-only jax. The real check must stop the launch before preparing or training."""
    home = _worker_home(tmp_path)
    env = _fake(tmp_path, 'gcloud', textwrap.dedent(f"""
        for a in "$@"; do case $a in --command=*) cmd=${{a#--command=}} ;; esac; done
        [ -n "${{cmd:-}}" ] || exit 0
        cd {home} && PYTHONPATH={REPO} JAX_PLATFORMS= bash -c "$cmd"
    """))
    proc = _run(['bash', 'launch/tpu_pod.sh', '--name', 'n', '--zone', 'z', '--skip-install',
                 '--skip-prepare', '--', *MAIN_FLAGS], env=env, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    # the worker's own line: which platform, what JAX found, and the install that fixes it
    assert "expected JAX to compute on tpu, but jax.default_backend() is 'cpu'" in proc.stderr
    assert 'make install-tpu' in proc.stderr
    assert 'error: JAX does not compute on tpu on every worker of n' in proc.stderr
    calls = _calls(tmp_path, 'gcloud')
    assert not any('jima_jax.main' in c[-1] for c in calls)  # nothing prepared or started


def test_tpu_pod_missing_slice_without_create_fails(tmp_path):
    env = _fake(tmp_path, 'gcloud', 'exit 1\n')
    proc = _run(['bash', 'launch/tpu_pod.sh', '--name', 'n', '--zone', 'z', '--', *MAIN_FLAGS],
                env=env)
    assert proc.returncode == 1 and 'pass --create' in proc.stderr
    assert len(_calls(tmp_path, 'gcloud')) == 1  # only the describe


@pytest.mark.parametrize('args, message', [
    (['--zone', 'z', '--', '--config', 'c'], '--name and --zone are required'),
    (['--name', 'n', '--zone', 'z'], 'no jima_jax.main flags after --'),
    (['--name', 'n', '--zone', 'z', '--config', 'c'], 'unknown option --config'),
])
def test_tpu_pod_usage_errors(args, message):
    proc = _run(['bash', 'launch/tpu_pod.sh', '--dry-run', *args])
    assert proc.returncode == 2 and message in proc.stderr


# ------------------------------------------------------------------ gpu_slurm.sbatch

def _sbatch_header() -> dict[str, str]:
    out = {}
    for line in (REPO / 'launch' / 'gpu_slurm.sbatch').read_text().splitlines():
        if line.startswith('#SBATCH --'):
            key, _, value = line[len('#SBATCH --'):].partition('=')
            out[key] = value
    return out


def test_sbatch_header_asks_for_one_task_per_gpu_and_a_warning_signal():
    h = _sbatch_header()
    assert int(h['nodes']) > 1 and h['ntasks-per-node'] == h['gpus-per-node']
    assert h['signal'].startswith('TERM@')  # the loop saves its position on SIGTERM


@pytest.mark.parametrize('per_node', [False, True])
def test_sbatch_prepares_then_runs_one_process_per_task(tmp_path, per_node):
    env = _fake(tmp_path, 'srun', 'echo "port=$JIMA_COORDINATOR_PORT" >> '
                f'{tmp_path}/srun.env\n')
    env.update(SLURM_JOB_ID='987654', SLURM_JOB_NUM_NODES='4', SLURM_SUBMIT_DIR=str(REPO),
               JIMA_PREPARE_PER_NODE='1' if per_node else '0')
    env.pop('JIMA_COORDINATOR_PORT', None)
    env.pop('PYTHON', None)  # the script's default: the checkout's .venv
    proc = _run(['bash', 'launch/gpu_slurm.sbatch', *MAIN_FLAGS], env=env)
    assert proc.returncode == 0, proc.stderr
    check, prepare, train = _calls(tmp_path, 'srun')
    # first, one task per node: JAX must compute on the GPUs there
    assert check == ['--nodes=4', '--ntasks=4', '--ntasks-per-node=1', '.venv/bin/python', '-m',
                     'jima_jax.accelerator', 'gpu']
    i = prepare.index('-m')
    assert prepare[i - 1:] == ['.venv/bin/python', '-m', 'jima_jax.main', *MAIN_FLAGS,
                               '--mode=prepare']
    if per_node:
        assert prepare[:i - 1] == ['--nodes=4', '--ntasks=4', '--ntasks-per-node=1']
    else:
        assert prepare[:i - 1] == ['--nodes=1', '--ntasks=1']
    # the training step takes the job's task layout (one task per GPU) and joins through SLURM
    assert train == ['--kill-on-bad-exit=1', '.venv/bin/python', '-u', '-m', 'jima_jax.main',
                     '--distributed=slurm', *MAIN_FLAGS]
    ports = (tmp_path / 'srun.env').read_text().split()
    assert ports == [f'port={20000 + 987654 % 20000}'] * 3


# A fake srun that runs the accelerator check here (on this CPU-only jax) and records the rest.
_SRUN_RUNS_THE_CHECK = """
while [[ $1 == --* ]]; do shift; done
if [[ " $* " == *" jima_jax.accelerator "* ]]; then exec "$@"; fi
"""


@pytest.mark.parametrize('expect', ['', 'tpu'])
def test_sbatch_fails_loudly_when_jax_is_not_on_the_expected_accelerator(tmp_path, expect):
    env = _fake(tmp_path, 'srun', _SRUN_RUNS_THE_CHECK)
    env.update(SLURM_JOB_ID='42', SLURM_JOB_NUM_NODES='2', SLURM_SUBMIT_DIR=str(REPO),
               PYTHON=sys.executable, PYTHONPATH=str(REPO), JIMA_EXPECT_BACKEND=expect)
    env.pop('JAX_PLATFORMS', None)
    proc = _run(['bash', 'launch/gpu_slurm.sbatch', *MAIN_FLAGS], env=env, timeout=120)
    platform = expect or 'gpu'
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert (f"expected JAX to compute on {platform}, but jax.default_backend() is 'cpu'"
            in proc.stderr)
    assert f'make install-{"cuda" if platform == "gpu" else "tpu"}' in proc.stderr
    assert f'error: JAX does not compute on {platform} on every node of job 42' in proc.stderr
    assert len(_calls(tmp_path, 'srun')) == 1  # neither prepared nor trained


def test_sbatch_trains_when_jax_is_on_the_expected_platform(tmp_path):
    env = _fake(tmp_path, 'srun', _SRUN_RUNS_THE_CHECK)
    env.update(SLURM_JOB_ID='42', SLURM_JOB_NUM_NODES='1', SLURM_SUBMIT_DIR=str(REPO),
               PYTHON=sys.executable, PYTHONPATH=str(REPO), JIMA_EXPECT_BACKEND='cpu',
               JAX_PLATFORMS='cpu')
    proc = _run(['bash', 'launch/gpu_slurm.sbatch', *MAIN_FLAGS], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'JAX computes on cpu' in proc.stdout
    calls = _calls(tmp_path, 'srun')
    assert len(calls) == 3 and '--distributed=slurm' in calls[2]  # then prepared and trained


def test_sbatch_outside_slurm_fails():
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    proc = _run(['bash', 'launch/gpu_slurm.sbatch', *MAIN_FLAGS], env=env)
    assert proc.returncode == 2 and 'not inside a SLURM job' in proc.stderr


# ------------------------------------------------------------------ local_multihost.sh

@pytest.mark.parametrize('args', [['2'], ['0', '2'], ['2', 'x'], ['-1', '2']])
def test_local_multihost_rejects_bad_counts(args):
    proc = _run(['bash', 'launch/local_multihost.sh', *args, '--config', 'configs/smoke.py'])
    assert proc.returncode == 2 and 'usage' in proc.stderr


def test_local_multihost_stops_every_process_when_one_fails(tmp_path):
    """Process 1 fails at once; process 0 would wait forever for it (as a real one waits for its
    peers): the launcher must exit with process 1's status and kill process 0's group."""
    fake_python = tmp_path / 'python'
    fake_python.write_text(textwrap.dedent(f"""
        #!/usr/bin/env bash
        for a in "$@"; do case $a in --process_id=*) id=${{a#--process_id=}} ;; esac; done
        echo "$@" > {tmp_path}/args_$id
        if [ "$id" = 1 ]; then
          # fail once process 0 is up (its child started), so the launcher has something to stop
          for _ in $(seq 100); do [ -s {tmp_path}/child_pid ] && break; sleep 0.1; done
          echo "process 1 broke" >&2; exit 3
        fi
        sleep 300 & echo $! > {tmp_path}/child_pid.tmp; \
mv {tmp_path}/child_pid.tmp {tmp_path}/child_pid
        wait
    """).lstrip())
    fake_python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake_python), JIMA_COORDINATOR_PORT='12345')
    t0 = time.time()
    proc = _run(['bash', 'launch/local_multihost.sh', '2', '3', '--config', 'configs/smoke.py',
                 '--workdir', str(tmp_path / 'w')], env=env, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert time.time() - t0 < 30
    assert 'process 1 broke' in proc.stderr  # its log tail is shown
    assert (tmp_path / 'w' / 'logs' / 'process_1.log').exists()
    args = (tmp_path / 'args_0').read_text().split()
    assert args[:2] == ['-m', 'jima_jax.main'] and args[-4:] == [
        '--coordinator_address=127.0.0.1:12345', '--num_processes=2', '--process_id=0',
        '--num_cpu_devices=3']
    child = int((tmp_path / 'child_pid').read_text())
    for _ in range(50):  # the whole process group of process 0 is gone
        if not _alive(child):
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail('process 0 (its child) survived the failure of process 1')


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(')', 1)[1].split()[0] != 'Z'


# ------------------------------------------------------------------ benchmarks runner (make bench)

def test_cpu_suite_covers_every_benchmark_with_simulated_device_counts():
    from benchmarks import run
    jobs = run.suite_jobs('cpu')
    assert {j['benchmark'] for j in jobs} == set(run.BENCHMARKS)
    variants = [j for j in jobs if j['benchmark'] == 'step_variants']
    assert len(variants) == 1 and variants[0]['devices'] == 8
    assert variants[0]['variants'] == ['fused_jit', 'pmap', 'unfused']
    scaling = sorted(j['devices'] for j in jobs if j['benchmark'] == 'scaling')
    assert scaling == [1, 2, 4]  # 8 devices: the fused row of step_variants
    assert {j['dtype'] for j in jobs if j['benchmark'] == 'dtype'} == {'float32', 'bfloat16'}
    for suite in ('gpu', 'tpu'):
        assert {j['benchmark'] for j in run.suite_jobs(suite)} == set(run.BENCHMARKS) - {
            'paper_model'}  # the accelerator suites run the paper shape everywhere
    with pytest.raises(ValueError, match='expected cpu, gpu or tpu'):
        run.suite_jobs('fpga')


def test_child_environment_sets_exactly_the_simulated_device_count(monkeypatch):
    from benchmarks import run
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=3 --xla_foo=1')
    env = run.child_env('cpu', {'devices': 8})
    assert env['XLA_FLAGS'].split() == ['--xla_foo=1', '--xla_force_host_platform_device_count=8']
    assert env['JAX_PLATFORMS'] == 'cpu'
    assert run.child_env('cpu', {'devices': 1})['XLA_FLAGS'] == '--xla_foo=1'
    gpu = run.child_env('gpu', {'devices': 'all'})
    assert gpu['XLA_FLAGS'] == os.environ['XLA_FLAGS']  # real devices: left alone
    assert gpu.get('JAX_PLATFORMS') == os.environ.get('JAX_PLATFORMS')
    quick = run.quick(run.suite_jobs('gpu'))
    assert {j['shape'] for j in quick} == {'tiny'} and max(j['steps'] for j in quick) == 2
    assert not any('batch' in j for j in quick)


def test_mfu_from_peaks_and_cost_analysis(monkeypatch):
    import jax
    import jax.numpy as jnp
    from benchmarks import hardware
    monkeypatch.delenv('JIMA_PEAK_TFLOPS', raising=False)
    assert hardware.peak_flops('NVIDIA H200', 'bfloat16') == 989e12
    assert hardware.peak_flops('NVIDIA H100 PCIe', 'float32') == 378e12
    assert hardware.peak_flops('TPU v5 lite', 'float32') == 197e12
    assert hardware.peak_flops('cpu', 'float32') is None
    u = hardware.utilisation(4e12, 0.01, 'NVIDIA H200', 'bfloat16')
    assert u['tflops_per_sec_per_device'] == pytest.approx(400)
    assert u['mfu'] == pytest.approx(400e12 / 989e12)
    assert hardware.utilisation(4e12, 0.01, 'cpu', 'float32')['mfu'] is None
    monkeypatch.setenv('JIMA_PEAK_TFLOPS', '100')
    assert hardware.utilisation(1e12, 0.02, 'cpu', 'float32')['mfu'] == pytest.approx(0.5)
    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((8, 16)), jnp.ones((16, 32))).compile()
    assert hardware.program_flops(compiled) == pytest.approx(2 * 8 * 16 * 32, rel=0.05)
    assert hardware.machine_tag({'platform': 'cpu', 'machine': 'x86_64', 'host_cpus': 2}) == \
        'x86_64-2cpu'
    assert hardware.machine_tag({'platform': 'gpu', 'device_kind': 'NVIDIA H200',
                                 'devices': 1}) == 'nvidia-h200x1'


def _row(benchmark, case, devices, step_s, losses=None, dtype='float32', batch=16):
    hw = {'platform': 'cpu', 'device_kind': 'cpu', 'host_cpus': 2, 'machine': 'x86_64',
          'jax_version': '0', 'python': '3', 'date': '2026-01-01', 'load_avg_1m': 1.0}
    return dict(benchmark=benchmark, case=case, shape='tiny', dtype=dtype, batch=batch,
                devices=devices, step_seconds=step_s, examples_per_sec=2 * batch / step_s,
                images_per_sec=4 * batch / step_s, first_step_losses=losses or {},
                hardware=hw)


def test_report_checks_compare_variants_devices_and_dtypes(tmp_path):
    from benchmarks import report, run
    rows = [_row('step_variants', 'fused_jit', 8, 0.5, {'loss/entity': 1.0, 'loss/report': 4.0}),
            _row('step_variants', 'pmap', 8, 1.0, {'loss/entity': 1.0, 'loss/report': 4.4}),
            _row('scaling', 'fused_jit', 1, 0.25, {'loss/entity': 1.0, 'loss/report': 2.0}),
            _row('dtype', 'fused_jit', 1, 1.0), _row('dtype', 'fused_jit', 1, 2.0,
                                                     dtype='bfloat16'),
            dict(benchmark='beam_search', case='beam_search', error='exit 1: Boom\nOOM here')]
    text = report.markdown(rows, 'title')
    assert 'fused jit vs pmap (8 devices, tiny): 2.00x the examples/s (500.0 vs 1000.0 ms' in text
    assert 'entity 0.0e+00, report 1.0e-01' in text  # |4.4 - 4.0| / 4.0 (fused = reference)
    assert '8 devices vs 1 (tiny, global batch 16): 0.50x the examples/s' in text
    assert 'report 1.0e+00' in text  # |4 - 2| / 2
    assert 'bfloat16 vs float32 (tiny, batch 16): 0.50x the examples/s.' in text
    assert '| beam_search | beam_search | failed: OOM here |' in text
    assert 'simulated CPU devices' in text
    paths = run.write_results(rows, tmp_path, 'cpu')
    assert [p.name for p in paths] == [f'bench_cpu_2026-01-01_x86_64-2cpu.{e}'
                                       for e in ('jsonl', 'md', 'png')]
    assert len(paths[0].read_text().splitlines()) == len(rows)
    assert paths[2].read_bytes()[:4] == b'\x89PNG'


def test_a_failing_job_becomes_an_error_row():
    from benchmarks import run
    (row,) = run.run_job('cpu', {'benchmark': 'scaling', 'case': 'no_such_case'}, timeout_s=120)
    assert row['benchmark'] == 'scaling' and 'no_such_case' in row['error']
