r"""Command line: prepare data, train, evaluate.

  python -m jima_jax.main --config configs/demo.py --workdir runs/demo [--config.key=value]
  python -m jima_jax.main --config configs/demo.py --workdir runs/demo --mode eval
  python -m jima_jax.main --config configs/iu_xray.py --mode prepare [--download]
"""

import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (see configs/).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['prepare', 'train', 'eval'], 'What to do.')
_SPLIT = flags.DEFINE_string('split', 'test', 'eval mode: the split to evaluate.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'latest',
                                  'eval mode: latest, best (by train.best_metric) or a step.')
_DOWNLOAD = flags.DEFINE_bool('download', False,
                              'prepare mode: allow fetching public archives (IU X-ray OpenI).')
_FORCE = flags.DEFINE_bool('force', False, 'prepare mode: rebuild an existing prepared dataset.')
flags.mark_flags_as_required(['config'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/tfds chatter; progress is printed
    config = _CONFIG.value
    if _MODE.value == 'prepare':
        from jima_jax.data import prepare
        path = prepare.prepare_dataset(config.data, download=_DOWNLOAD.value, force=_FORCE.value)
        print(f'prepared {config.data.name} at {path}')
        return
    if not _WORKDIR.value:
        raise app.UsageError(f'--workdir is required for --mode={_MODE.value}.')
    from jima_jax.train import loop
    if _MODE.value == 'train':
        print(loop.format_results(loop.train_and_evaluate(config, _WORKDIR.value)))
    else:
        from jima_jax.evaluation import report
        result = loop.evaluate(config, _WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
        dataset = config.data.name if config.data.name in ('iu_xray', 'mimic_cxr') else None
        print(report.format_results(result, dataset))
        print(f'written to {_WORKDIR.value}/eval/{_SPLIT.value}/')


if __name__ == '__main__':
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    app.run(main)
