"""The configs ship with the package (jima_jax.configs) and load by name from any directory;
configs/<name>.py in the repository are thin entry points to the same modules."""

import os
import subprocess
import sys

import pytest
import setuptools

import configs
from jima_jax import configs as packaged
from tests.conftest import REPO

EXPECTED = ('default', 'demo', 'iu_phantom', 'iu_xray', 'mimic_cxr', 'smoke')


@pytest.mark.parametrize('name', EXPECTED)
def test_entry_point_and_packaged_config_are_the_same(name):
    import importlib
    entry = importlib.import_module(f'configs.{name}')
    module = importlib.import_module(f'jima_jax.configs.{name}')
    assert entry.get_config is module.get_config and entry.__doc__ == module.__doc__
    assert module.get_config().to_dict() == entry.get_config().to_dict()


def test_every_config_is_packaged_and_installed():
    assert packaged.NAMES == EXPECTED
    repo_entries = sorted(p.stem for p in (REPO / 'configs').glob('*.py') if p.stem != '__init__')
    assert tuple(repo_entries) == EXPECTED
    assert 'jima_jax.configs' in setuptools.find_packages(str(REPO), include=['jima_jax*'])
    assert configs.__file__  # the repository's thin package still imports


def test_names_resolve_to_packaged_files_and_paths_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = packaged.HERE / 'demo.py'
    assert packaged.resolve('demo') == str(demo)
    assert packaged.resolve('demo:long') == f'{demo}:long'
    assert packaged.resolve('configs/smoke.py') == str(packaged.HERE / 'smoke.py')  # not here
    (tmp_path / 'mine.py').write_text('')
    assert packaged.resolve('mine.py:x') == 'mine.py:x'  # a file that exists is kept
    assert packaged.resolve('nosuch') == 'nosuch'  # ml_collections reports the missing file
    assert packaged.resolve_argv(['m', '--config=demo:tiny', '--mode', 'x']) == [
        'm', f'--config={demo}:tiny', '--mode', 'x']
    assert packaged.resolve_argv(['m', '--config', 'smoke']) == [
        'm', '--config', str(packaged.HERE / 'smoke.py')]


def _main_from(cwd, *args):
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)  # the installed package only, not the repository
    return subprocess.run([sys.executable, '-m', 'jima_jax.main', *args], cwd=str(cwd),
                          env=env, capture_output=True, text=True, timeout=120)


def test_main_loads_packaged_configs_by_name_from_any_directory(tmp_path):
    # the config loads (its own checks pass); the run then stops at the missing --workdir
    proc = _main_from(tmp_path, '--config', 'demo:long', '--mode', 'train')
    assert proc.returncode == 2 and '--workdir is required' in proc.stderr, proc.stderr[-2000:]
    # the variant reaches demo.py's get_config
    proc = _main_from(tmp_path, '--config=demo:bogus')
    assert proc.returncode == 2
    assert ("expected no variant, ':uncached', ':more_pretraining', ':long', ':wide' or ':tiny'"
            in proc.stderr)
    proc = _main_from(tmp_path, '--config', 'smoke', '--config.input.batch_size=0',
                      '--workdir', str(tmp_path / 'run'))
    assert proc.returncode == 2 and 'config input.batch_size=0 is out of range' in proc.stderr
    proc = _main_from(tmp_path, '--config', 'nosuch', '--mode', 'train')
    assert proc.returncode == 2 and 'packaged name (default, demo, iu_phantom' in proc.stderr
