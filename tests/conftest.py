"""Shared test set-up: compilation cache, a prepared smoke dataset, subprocess helpers."""

import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(REPO / '.cache' / 'jax'))
# Cache every compiled program, however quick: both xdist workers and every process the suite
# starts (which inherits this) compile the same small programs, e.g. the ~45 eager ops of a
# model's initialisation, each under the 0.5 s this was. A second smoke `python -m jima_jax.main`
# run took 12.6 s of CPU instead of 16.0 s (2 shared cores, 2026-12-07).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
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


# The slowest modules (compilations of the train step, subprocess trainings), slowest first.
# Under `pytest -n 2 --dist loadfile --no-loadscope-reorder` xdist hands each free worker the
# next whole module in collection order, so these start first and the two workers finish
# together (instead of one worker starting test_sharding.py's six compilations near the end),
# and a module's module-scoped fixtures (test_main.py's training run, ...) are built on one
# worker only. (`--dist loadgroup` would be the finer tool, but xdist 3.8 cannot rename the
# test ids of pytest 9, so its groups fall apart into single tests.)
SLOW_FIRST = (
    'tests/train/test_sharding.py',
    'tests/test_multihost.py',
    'tests/test_main.py',
    'tests/train/test_joint_and_baseline.py',
    'tests/train/test_step.py',
    'tests/test_export.py',
    'tests/train/test_difficulty.py',
    'tests/test_faults.py',
    'tests/train/test_baseline_run.py',
    'tests/train/test_feature_cache.py',
    'tests/train/test_release_dropout.py',
    'tests/train/test_pretrain.py',
    'tests/evaluation/test_phantom_truth.py',
    'tests/test_decode.py',
)


def _scheduled_by_module(config) -> bool:
    """Whether this is an xdist worker of a run that schedules whole modules (or classes)."""
    argv = list(getattr(config, 'workerinput', {}).get('mainargv', ()))
    dist = [a.split('=', 1)[1] if a.startswith('--dist=') else b
            for a, b in zip(argv, argv[1:] + ['']) if a == '--dist' or a.startswith('--dist=')]
    return bool(dist) and dist[-1] in ('loadfile', 'loadscope')


def pytest_collection_modifyitems(config, items):
    """SLOW_FIRST's modules first, each module's tests together and in their order. Only when
    xdist schedules by module: its default `load` sends each worker a long run of consecutive
    tests at the start, which would put every slow module on the first worker."""
    if not _scheduled_by_module(config):
        return
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.nodeid.split('::')[0], len(rank)),
                                 order[id(item)]))
