r"""Command line: prepare data, train, evaluate.

  python -m jima_jax.main --config configs/demo.py --workdir runs/demo [--config.key=value]
  python -m jima_jax.main --config configs/demo.py --workdir runs/demo --mode eval
  python -m jima_jax.main --config configs/demo.py --workdir runs/demo --mode predict \
      --images frontal.png,lateral.png [--images ...] [--image_list studies.jsonl] [--output F]
  python -m jima_jax.main --config configs/iu_xray.py --mode prepare [--download]

Several processes (see docs/scaling.md, launch/): every process runs the same command plus
  --coordinator_address=host:port --num_processes=N --process_id=i   (or SLURM / --distributed=tpu)
"""

import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (see configs/).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['prepare', 'train', 'eval', 'predict'],
                          'What to do.')
_SPLIT = flags.DEFINE_string('split', None, 'eval: the split to score (default test); predict: '
                             'generate for a prepared split instead of image files.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'latest',
                                  'eval/predict: latest, best (by train.best_metric) or a step.')
_IMAGES = flags.DEFINE_multi_string('images', [], 'predict: one study, its view files joined by '
                                    'commas (frontal first); repeat the flag per study.')
_IMAGE_LIST = flags.DEFINE_string('image_list', None, 'predict: a file of studies, JSON lines '
                                  '{"id": ..., "images": [...]} or lines path[,path].')
_OUTPUT = flags.DEFINE_string('output', None,
                              'predict: output JSONL (default <workdir>/predict/<name>.jsonl).')
_TOKEN_LOGPROBS = flags.DEFINE_bool('token_logprobs', False,
                                    'predict: add per-token log-probs to every line.')
_DOWNLOAD = flags.DEFINE_bool('download', False,
                              'prepare mode: allow fetching public archives (IU X-ray OpenI).')
_FORCE = flags.DEFINE_bool('force', False, 'prepare mode: rebuild an existing prepared dataset.')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', ['auto', 'off', 'slurm', 'tpu'],
                                  'How to join a multi-process job: auto = the explicit flags '
                                  'below, else a multi-task srun step, else one process.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 (multi-process runs).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_LOCAL_DEVICE_IDS = flags.DEFINE_list('local_device_ids', None,
                                      'Accelerators this process drives (default: all visible).')
_NUM_CPU_DEVICES = flags.DEFINE_integer('num_cpu_devices', 0,
                                        'Simulated CPU devices per process (0 = JAX default).')
flags.mark_flags_as_required(['config'])


def _join_job() -> None:
    """Multi-process start-up; runs before anything touches a JAX backend."""
    from jima_jax.train import distributed
    try:
        cluster = distributed.resolve(
            _DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
            local_device_ids=_LOCAL_DEVICE_IDS.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    distributed.initialize(cluster, num_cpu_devices=_NUM_CPU_DEVICES.value)


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
    from jima_jax.train import parallel
    try:
        parallel.configure_cpu_host(config.parallel)  # before JAX starts its backends
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    _join_job()
    import jax
    from jima_jax.data import prepare
    from jima_jax.train import distributed, loop
    distributed.process_zero_first(lambda: prepare.prepare_dataset(config.data), 'prepare')
    main_process = jax.process_index() == 0
    if _MODE.value == 'train':
        result = loop.train_and_evaluate(config, _WORKDIR.value)
        if main_process:
            print(loop.format_results(result))
    elif _MODE.value == 'predict':
        from jima_jax import predict
        try:
            out = predict.predict(config, _WORKDIR.value, images=_IMAGES.value,
                                  image_list=_IMAGE_LIST.value, split=_SPLIT.value,
                                  which=_CHECKPOINT.value, output=_OUTPUT.value,
                                  with_token_logprobs=_TOKEN_LOGPROBS.value)
        except ValueError as e:
            raise app.UsageError(str(e)) from e
        if main_process:
            print(f'written to {out}')
    else:
        from jima_jax.evaluation import report
        split = _SPLIT.value or 'test'
        result = loop.evaluate(config, _WORKDIR.value, split, _CHECKPOINT.value)
        dataset = config.data.name if config.data.name in ('iu_xray', 'mimic_cxr') else None
        if main_process:
            print(report.format_results(result, dataset))
            print(f'written to {_WORKDIR.value}/eval/{split}/')


if __name__ == '__main__':
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    app.run(main)
