"""Shared test set-up: compilation cache, a prepared smoke dataset, subprocess helpers."""

import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(REPO / '.cache' / 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    """A session-wide JIMA_DATA_DIR so the smoke dataset is prepared once per test process."""
    path = tmp_path_factory.mktemp('jima_data')
    os.environ['JIMA_DATA_DIR'] = str(path)
    return path


@pytest.fixture(scope='session')
def smoke_dataset(data_dir):
    """The prepared smoke phantom dataset (configs/smoke.py)."""
    from configs import smoke
    from jima_jax.data import prepare
    return prepare.load_prepared(smoke.get_config().data)
