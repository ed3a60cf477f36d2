"""Installs per platform: the setup.cfg extras and Makefile targets for CUDA 12 and TPU (printed
with `make -n`: their wheels are not installed here), and `python -m jima_jax.accelerator`, the
check the launch scripts run (its use from the scripts is in tests/test_launch.py). This suite
runs on the CPU-only jax, so every accelerator expectation must fail, naming the fix.
"""

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from jima_jax import accelerator
from jima_jax.runtime import cpu_host
from tests.conftest import REPO


def _extras() -> dict[str, list[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / 'setup.cfg')
    return {name: [line.strip() for line in value.splitlines() if line.strip()]
            for name, value in cfg['options.extras_require'].items()}


def test_setup_cfg_has_an_extra_per_accelerator_at_the_tested_jax():
    extras = _extras()
    assert extras['cuda12'] == ['jax[cuda12]>=0.10.2']
    assert extras['tpu'] == ['jax[tpu]>=0.10.2']
    cfg = configparser.ConfigParser()
    cfg.read(REPO / 'setup.cfg')
    assert 'jax>=0.10.2' in cfg['options']['install_requires']  # the same lower bound


@pytest.mark.skipif(shutil.which('make') is None, reason='make not installed')
@pytest.mark.parametrize('target, extra, platform', [('install-cuda', 'cuda12', 'gpu'),
                                                     ('install-tpu', 'tpu', 'tpu')])
def test_make_targets_install_the_extra_on_top_of_the_pinned_set(target, extra, platform):
    venv = sys.prefix  # this Python's venv, so the lock file is the one of this Python
    proc = subprocess.run(['make', '-n', target, f'VENV={venv}'], cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lock = f'requirements/py{sys.version_info[0]}{sys.version_info[1]}-cpu.txt'
    lines = proc.stdout.splitlines()
    pip = [shlex.split(line) for line in lines if '-m pip install' in line and extra in line]
    assert pip == [[f'{venv}/bin/python', '-m', 'pip', 'install', '--quiet', '-c', lock, '-e',
                    f'.[{extra}]']]
    # it says what it installs, and how to check it on the accelerator
    assert any(f'{target}: installs jax[{extra}]' in line and lock in line for line in lines)
    assert any(f'jima_jax.accelerator {platform}' in line for line in lines)
    # the pinned set is installed first (printed when the venv's stamp is older than the lock)
    extra_at = next(i for i, line in enumerate(lines) if '-m pip install' in line and extra in line)
    assert all(i < extra_at for i, line in enumerate(lines) if line.endswith(f'-r {lock}'))


def test_cpu_expectation_passes_on_the_cpu(monkeypatch):
    import jax
    assert jax.default_backend() == 'cpu'
    assert re.match(r'JAX computes on cpu: \d+ local device\(s\)', accelerator.check('cpu'))


@pytest.mark.parametrize('platform, fix', [('gpu', 'make install-cuda'),
                                           ('tpu', 'make install-tpu')])
def test_accelerator_expectations_fail_naming_the_platform_and_the_install(
        monkeypatch, platform, fix):
    monkeypatch.setattr(accelerator, '_installed', lambda p: [])
    with pytest.raises(accelerator.AcceleratorError) as e:
        accelerator.check(platform)
    message = str(e.value)
    assert f"expected JAX to compute on {platform}, but jax.default_backend() is 'cpu'" in message
    assert fix in message and f".[{'cuda12' if platform == 'gpu' else 'tpu'}]" in message


def test_a_plugin_that_finds_no_device_is_told_apart(monkeypatch):
    monkeypatch.delenv('JAX_PLATFORMS', raising=False)
    monkeypatch.setattr(accelerator, '_installed', lambda p: ['jax_cuda12_plugin'])
    with pytest.raises(accelerator.AcceleratorError, match='jax_cuda12_plugin is installed, but '
                                                          'JAX found no gpu'):
        accelerator.check('gpu')
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
    with pytest.raises(accelerator.AcceleratorError, match="JAX_PLATFORMS='cpu' keeps JAX off "
                                                          'the gpu; unset it'):
        accelerator.check('gpu')


def _cli(*args, **env):
    full = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
    full.update(env)
    return subprocess.run([sys.executable, '-m', 'jima_jax.accelerator', *args], cwd=str(REPO),
                          env=full, capture_output=True, text=True, timeout=120)


def test_cli_exit_statuses():
    gpu = _cli('gpu')
    assert gpu.returncode == accelerator.MISMATCH == 3
    assert gpu.stderr.count('error: expected JAX to compute on gpu') == 1
    assert _cli('cpu').returncode == 0
    usage = _cli('fpga')
    assert usage.returncode == 2 and 'usage: python -m jima_jax.accelerator' in usage.stderr
    # a JAX that cannot start the platform it was told to use is a mismatch too, not a traceback
    broken = _cli('gpu', JAX_PLATFORMS='cuda')
    assert broken.returncode == 3 and 'JAX failed to start' in broken.stderr
    assert 'Traceback' not in broken.stderr


def test_cpu_only_settings_follow_the_backend_jax_really_uses(monkeypatch):
    """cpu_host.jax_runs_on_cpu (which gates the XLA:CPU flag and the allocator) agrees with
    the backend JAX picked in this CPU-only install; on an accelerator install the gate is
    tested in tests/train/test_parallel_host.py."""
    import jax
    monkeypatch.delenv('JAX_PLATFORMS', raising=False)
    assert cpu_host.jax_runs_on_cpu() is (jax.default_backend() == 'cpu')
