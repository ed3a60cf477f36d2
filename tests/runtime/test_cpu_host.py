"""CPU-only start-up settings (`cpu_host.configure_cpu_host`): applied only when JAX will run on
the CPU, and the XLA:CPU scheduler flag only when the installed jaxlib knows it (XLA aborts the
process on an unknown flag). The bit-for-bit and page-fault effects are in tests/train/test_step.py.
"""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from jima_jax.runtime import cpu_host
from tests.conftest import REPO


def _pcfg(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(dict(cpu_scheduler='memory', cpu_malloc='reuse'), **kw))


@pytest.fixture
def no_plugins(monkeypatch):
    """A Python with no GPU/TPU plugin, whatever is installed here."""
    monkeypatch.delenv('JAX_PLATFORMS', raising=False)
    monkeypatch.setattr(cpu_host, '_ACCELERATOR_MODULES', ('jima_no_such_plugin',))
    monkeypatch.setattr(cpu_host.importlib.metadata, 'entry_points', lambda **kw: [])


@pytest.mark.parametrize('platforms,on_cpu', [
    ('cpu', True), (' CPU ', True), ('cpu,cpu', True),
    ('cuda', False), ('gpu', False), ('tpu', False), ('tpu,cpu', False), ('cpu,cuda', False)])
def test_jax_platforms_decides(monkeypatch, platforms, on_cpu):
    monkeypatch.setenv('JAX_PLATFORMS', platforms)
    assert cpu_host.jax_runs_on_cpu() is on_cpu


def test_without_jax_platforms_an_installed_plugin_decides(no_plugins, monkeypatch, tmp_path):
    assert cpu_host.jax_runs_on_cpu()
    (tmp_path / 'jax_cuda12_plugin').mkdir()
    (tmp_path / 'jax_cuda12_plugin' / '__init__.py').write_text('')
    monkeypatch.setattr(cpu_host, '_ACCELERATOR_MODULES', ('jax_cuda12_plugin',))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not cpu_host.jax_runs_on_cpu()


def test_a_plugin_registered_by_entry_point_counts(monkeypatch, tmp_path):
    monkeypatch.delenv('JAX_PLATFORMS', raising=False)
    monkeypatch.setattr(cpu_host, '_ACCELERATOR_MODULES', ('jima_no_such_plugin',))
    dist = tmp_path / 'fake_accelerator_plugin-1.0.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: fake-accelerator-plugin\n'
                                   'Version: 1.0\n')
    (dist / 'entry_points.txt').write_text('[jax_plugins]\nfake = fake_accelerator_plugin\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not cpu_host.jax_runs_on_cpu()


def test_accelerator_runs_keep_xla_flags_and_the_allocator(monkeypatch):
    monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
    assert cpu_host.use_cpu_scheduler(_pcfg()) is False
    assert cpu_host.use_cpu_malloc(_pcfg()) is False
    cpu_host.configure_cpu_host(_pcfg())
    assert os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=2'


def test_cpu_runs_get_the_scheduler_flag(no_plugins, monkeypatch):
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
    assert cpu_host.use_cpu_scheduler(_pcfg()) is True
    assert os.environ['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=2 '
                                       '--xla_cpu_enable_concurrency_optimized_scheduler=false')


def test_xla_knows_flag_reads_the_installed_jaxlib():
    # A flag this suite relies on, one that does not exist, and a prefix of a real one.
    assert cpu_host.xla_knows_flag('--xla_force_host_platform_device_count=8')
    assert not cpu_host.xla_knows_flag('--xla_cpu_jima_no_such_flag')
    assert not cpu_host.xla_knows_flag('--xla_force_host_platform_device')


_UNKNOWN_FLAG_PROBE = """
import json, os
from jima_jax.runtime import cpu_host
cpu_host._SCHEDULER_FLAG = '--xla_cpu_jima_no_such_flag'  # as if jaxlib had dropped the real one
added = cpu_host.use_cpu_scheduler({'cpu_scheduler': 'memory'})
import jax.numpy as jnp
print(json.dumps(dict(added=added, total=float(jnp.arange(4.0).sum()),
                      flags=os.environ.get('XLA_FLAGS', ''))))
"""


def _python(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', script], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_jaxlib_without_the_flag_still_runs():
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env['JAX_PLATFORMS'] = 'cpu'
    # What the check prevents: XLA stops the process on a flag it does not know.
    crash = _python('import jax.numpy as jnp; print(jnp.ones(2).sum())',
                    dict(env, XLA_FLAGS='--xla_cpu_jima_no_such_flag=false'))
    assert crash.returncode != 0 and 'xla_cpu_jima_no_such_flag' in crash.stderr
    proc = _python(_UNKNOWN_FLAG_PROBE, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == dict(added=False, total=6.0, flags='')
    assert 'does not know --xla_cpu_jima_no_such_flag' in proc.stderr
