r"""Command line: prepare data, train, evaluate.

  python -m jima_jax.main --config configs/demo.py --workdir runs/demo [--config.key=value]
  python -m jima_jax.main --config configs/demo.py --workdir runs/demo --mode eval
  python -m jima_jax.main --config configs/demo.py --workdir runs/demo --mode predict \
      --images frontal.png,lateral.png [--images ...] [--image_list studies.jsonl] [--output F]
  python -m jima_jax.main --config configs/iu_xray.py --mode prepare [--download]
  python -m jima_jax.main --config configs/demo.py --workdir runs/demo --mode export \
      [--export_dir DIR] [--force]
  python -m jima_jax.main --mode predict --model runs/demo/export --images frontal.png[,lateral.png]

--config takes a file or, from any directory, a packaged config by name (`--config demo:long`;
jima_jax/configs/). An export folder (jima_jax/export.py) holds everything predict needs: no
dataset, workdir or --config (also `python -m jima_jax.predict --model DIR ...`).

Several processes (see docs/scaling.md, launch/): every process runs the same command plus
  --coordinator_address=host:port --num_processes=N --process_id=i   (or SLURM / --distributed=tpu)

An error the user can fix (a bad flag or config value, a missing file, a damaged checkpoint, a
full disk) ends in one paragraph on stderr, `error: ...`, and exit status 2; --verbose adds the
traceback. docs/reliability.md lists the faults and what each one does.
"""

import _thread
import errno
import os
import signal
import sys
import threading
import traceback
from typing import Optional

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, or a packaged config by name, e.g. demo or demo:long '
    '(jima_jax/configs/). Not needed with --model.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, results.')
_MODE = flags.DEFINE_enum('mode', 'train',
                          ['prepare', 'pretrain', 'train', 'eval', 'predict', 'export'],
                          'What to do.')
_SPLIT = flags.DEFINE_string('split', None, 'eval: the split to score (default test); predict: '
                             'generate for a prepared split instead of image files.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'auto',
                                  'eval/predict: auto (best when one was recorded, else latest), '
                                  'latest, best (by train.best_metric) or a step.')
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
_FORCE = flags.DEFINE_bool('force', False, 'prepare mode: rebuild an existing prepared dataset; '
                           'export mode: replace an existing, different export.')
_EXPORT_DIR = flags.DEFINE_string('export_dir', None,
                                  'export mode: the folder to write (default <workdir>/export).')
_MODEL = flags.DEFINE_string('model', None, 'predict mode: an export folder (--mode export) to '
                             'predict with, instead of --config and --workdir.')
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
_VERBOSE = flags.DEFINE_bool('verbose', False, 'On an error, print the full traceback too, not '
                             'only the one-paragraph message.')


def _join_job() -> None:
    """Multi-process start-up; runs before anything touches a JAX backend."""
    from jima_jax.runtime import distributed
    try:
        cluster = distributed.resolve(
            _DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
            local_device_ids=_LOCAL_DEVICE_IDS.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    distributed.initialize(cluster, num_cpu_devices=_NUM_CPU_DEVICES.value)


def main(argv):
    """`_run`, with every error a user can cause turned into one paragraph and exit status 2."""
    try:
        _run(argv)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs right here
        message = user_error(e)
        if message is None:
            raise  # a bug: the full traceback, as Python prints it
        _fail(message, verbose=_VERBOSE.value)


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/tfds chatter; progress is printed
    if _MODEL.value or _MODE.value == 'predict' and _CONFIG.value is None:
        _predict_exported()
        return
    config = _CONFIG.value
    if config is None:
        raise app.UsageError('--config is required: a config file or a packaged name, e.g. '
                             '--config demo (jima_jax/configs/).')
    check_config_values(config)
    if _MODE.value == 'prepare':
        from jima_jax.data import prepare
        path = prepare.prepare_dataset(config.data, download=_DOWNLOAD.value, force=_FORCE.value)
        print(f'prepared {config.data.name} at {path}')
        return
    if not _WORKDIR.value:
        raise app.UsageError(f'--workdir is required for --mode={_MODE.value}.')
    if _MODE.value in ('eval', 'predict', 'export'):  # the run's model, not a re-typed one
        from jima_jax import run_config
        config, taken = run_config.apply_saved(config, _WORKDIR.value, sys.argv, _MODE.value)
        if taken:
            print(f'{_WORKDIR.value}/config.json: using the run\'s {", ".join(taken)}', flush=True)
    from jima_jax.runtime import cpu_host
    try:
        cpu_host.configure_cpu_host(config.parallel)  # before JAX starts its backends
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if _MODE.value == 'export':
        _export(config)
        return
    _join_job()
    import jax
    from jima_jax.data import prepare
    from jima_jax.runtime import distributed
    from jima_jax.train import evaluate, loop, reporting
    distributed.process_zero_first(lambda: prepare.prepare_dataset(config.data), 'prepare')
    main_process = jax.process_index() == 0
    if _MODE.value == 'pretrain':
        from jima_jax.train import pretrain
        pretrain.pretrain(config, _WORKDIR.value)
    elif _MODE.value == 'train':
        result = loop.train_and_evaluate(config, _WORKDIR.value)
        if main_process:
            print(reporting.results_table(result))
    elif _MODE.value == 'predict':
        _stop_on_sigterm('prediction')
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
        _stop_on_sigterm('evaluation')
        from jima_jax.evaluation import report
        split = _SPLIT.value or 'test'
        result = evaluate.evaluate(config, _WORKDIR.value, split, _CHECKPOINT.value)
        dataset = report.paper_dataset(config.data.name)
        if main_process:
            print(report.format_results(result, dataset))
            print(f'written to {_WORKDIR.value}/eval/{split}/')
            print(report.reads_images_line(result))  # last: what a new user should see


# Config keys checked before anything starts: (lowest, highest or None, what is expected).
_RANGES = {
    'data.num_views': (1, None, 'a positive integer'),
    'data.image_size': (1, None, 'a positive integer'),
    'data.max_len': (1, None, 'a positive integer'),
    'data.max_entities': (1, None, 'a positive integer'),
    'input.batch_size': (1, None, 'a positive integer'),
    'input.eval_batch_size': (1, None, 'a positive integer'),
    'input.image_size': (1, None, 'a positive integer'),
    'model.dropout': (0.0, 0.999, 'a rate in [0, 1)'),
    'optim.task1.lr': (0.0, None, 'a learning rate >= 0'),
    'optim.task2.lr': (0.0, None, 'a learning rate >= 0'),
    'train.num_epochs': (1, None, 'a positive integer'),
    'train.max_steps': (0, None, 'an integer >= 0 (0 = no limit)'),
    'train.steps_per_epoch': (0, None, 'an integer >= 0 (0 = a full pass)'),
    'train.log_every_steps': (1, None, 'a positive integer'),
    'train.checkpoint_every_steps': (0, None, 'an integer >= 0 (0 = every epoch only)'),
    'train.keep_checkpoints': (1, None, 'a positive integer'),
    'decode.beam_size': (1, None, 'a positive integer'),
    'decode.max_len': (1, None, 'a positive integer'),
}


def check_config_values(config) -> None:
    """Numbers outside their range fail here, naming the key, instead of deep inside a run."""
    for key, (low, high, expected) in _RANGES.items():
        node, *path = key.split('.')
        value = config.get(node)
        for part in path:
            value = value.get(part) if value is not None and hasattr(value, 'get') else None
        if value is None:
            continue  # a config without this key
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f'config {key}={value!r}: expected {expected}. Fix the config file '
                             f'or pass --config.{key}=...')
        if value < low or (high is not None and value > high):
            raise ValueError(f'config {key}={value!r} is out of range: expected {expected}. Fix '
                             f'the config file or pass --config.{key}=...')


def user_error(e: BaseException) -> Optional[str]:
    """The one-paragraph message for an error a user can fix, or None for a bug."""
    if isinstance(e, app.UsageError):
        return str(e)
    text = str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or (
            'No space left on device' in text):
        where = getattr(e, 'filename', None) or 'a file'
        return (f'the disk is full (writing {where}). Free space, or point --workdir, '
                'train.checkpoint_dir or JIMA_DATA_DIR at another disk, and rerun the same '
                'command: files already written are whole, and training resumes from its last '
                'checkpoint.')
    if isinstance(e, PermissionError):
        return f'{e.filename or text}: permission denied; check the path or its permissions.'
    if isinstance(e, (ValueError, FileNotFoundError)):
        return text
    if isinstance(e, OSError) and 'Failed loading config file' in text:  # no such --config
        from jima_jax import configs
        return (f'--config: cannot load the config file ({text.strip().splitlines()[-1].strip()}); '
                f'pass a config file or a packaged name ({", ".join(configs.NAMES)}), e.g. '
                '--config demo.')
    return None


def _fail(message: str, *, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    hint = '' if verbose else ' (--verbose shows the traceback)'
    print(f'error: {" ".join(message.split())}{hint}', file=sys.stderr, flush=True)
    sys.exit(2)


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override reported like any user error; a
    packaged config name (--config demo:long) is turned into its file first."""
    from jima_jax import configs
    argv = configs.resolve_argv(argv)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        _fail(_flag_error_message(e, argv), verbose='--verbose' in argv)


def _flag_error_message(e: BaseException, argv) -> str:
    """The last line of a config file's own error, or ml_collections' "did you mean" for a key."""
    while isinstance(e, (AttributeError, KeyError)) and e.args and isinstance(
            e.args[0], BaseException):
        e = e.args[0]
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return f'bad command line: {type(e).__name__}'
    if isinstance(e, (AttributeError, KeyError)):  # a config override naming no key
        name = lines[0].strip('\'"')
        given = [a.split('=')[0] for a in argv if a.startswith('--config.')
                 and a.split('=')[0].split('.')[-1] == name]
        return (f'{given[0] if given else "--config.*"}: no config key {name!r}. '
                f'{" ".join(lines[1:])} configs/default.py lists every key.').replace('  ', ' ')
    if 'Traceback' in text:  # an exception inside the config file: keep its last line
        lines = [lines[0].split(': Error whilst')[0] + ':', lines[-1]]
    return ' '.join(lines)


def _export(config) -> None:
    """--mode export: the checkpoint eval would score (--checkpoint), as one folder."""
    from jima_jax import export
    try:
        path, what = export.export(config, _WORKDIR.value, _EXPORT_DIR.value,
                                   which=_CHECKPOINT.value, force=_FORCE.value)
    except FileExistsError as e:
        raise app.UsageError(str(e)) from e
    if what == 'unchanged':
        print(f'{path} already holds this export (same weights, config and vocabulary); '
              'pass --force to write it again (e.g. to refresh its model card).')
    else:
        print(f'exported to {path} ({what}); predict with: python -m jima_jax.predict '
              f'--model {path} --images frontal.png[,lateral.png]')


def _predict_exported() -> None:
    """--mode predict --model DIR: reports from an export folder alone."""
    if _MODE.value != 'predict':
        raise app.UsageError(f'--model is for --mode predict, not --mode {_MODE.value}.')
    if not _MODEL.value:
        raise app.UsageError('--mode predict needs --config and --workdir (a training run), or '
                             '--model DIR (an export folder).')
    given = [a.split('=')[0] for a in sys.argv[1:] if a.startswith('--config.')]
    if given or _SPLIT.value:
        raise app.UsageError(f"--model {_MODEL.value} predicts with the folder's own config.json "
                             f'and image files; drop {", ".join(given) or "--split"}.')
    if _CONFIG.value is not None:
        print(f'--config is not used with --model: {_MODEL.value}/config.json is.',
              file=sys.stderr)
    _stop_on_sigterm('prediction')
    from jima_jax import predict
    output = _OUTPUT.value
    if output is None and _WORKDIR.value:
        output = f'{_WORKDIR.value}/predict/{predict.PREDICT_SPLIT}.jsonl'
    try:
        out = predict.predict_exported(_MODEL.value, images=_IMAGES.value,
                                       image_list=_IMAGE_LIST.value, output=output,
                                       with_token_logprobs=_TOKEN_LOGPROBS.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    if out is not None:
        print(f'written to {out}', file=sys.stderr)


def _stop_on_sigterm(what: str) -> None:
    """SIGTERM during eval/predict exits at once, through Python, so the temporary file of a write
    in progress is removed (atomic.write_with) and every file left is whole.

    Python runs the handler between any two bytecodes of the main thread, including inside an
    object's `__del__` (Orbax's async manager has one), where a raised SystemExit is printed as
    "Exception ignored" and the job runs on to the end. There the signal is delivered again a moment
    later, once the finalizer has returned, instead of being lost."""
    def handler(signum, frame):
        if _inside_finalizer(frame):
            threading.Timer(0.05, _thread.interrupt_main, args=(signum,)).start()
            return
        print(f'SIGTERM: {what} stopped; files it already wrote are whole, none is half-written. '
              'Rerun the same command to do it again.', file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def _inside_finalizer(frame) -> bool:
    """Whether `frame` runs inside a `__del__`, where exceptions are swallowed."""
    while frame is not None:
        if frame.f_code.co_name == '__del__':
            return True
        frame = frame.f_back
    return False


if __name__ == '__main__':
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    app.run(main, flags_parser=_parse_flags)
