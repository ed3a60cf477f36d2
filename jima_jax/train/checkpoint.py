"""Orbax checkpoints: train state, config, and an "extra" JSON (curriculum, data position).

One `CheckpointManager` under `<workdir>/checkpoints` (or `train.checkpoint_dir`, gs:// too),
saving asynchronously. Preserved: the last `train.keep_checkpoints` steps plus the best one by
`train.best_metric` (only checkpoints saved with that metric compete). Orbax writes each step
into a temporary directory and renames it when complete, so a crash mid-save never leaves a
checkpoint that `restore` would pick up.

A checkpoint that was committed but later damaged (a bad disk, a half-finished copy to a shared
filesystem) is another matter. Once a save has finished, `jima_checksums.json` in its folder
records the SHA-256 of every file (Orbax's zstd finds some damage, but stores incompressible
float data raw and unchecked, so a changed byte there would load silently). `restore()` checks
them, then lets Orbax read; a damaged checkpoint is moved aside to `corrupt-<step>-<time>/` (never
deleted) with one line naming the step and the file, and the next newest is taken. An explicitly
requested step that is damaged raises `CheckpointError` instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import re
import sys
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jima_jax import atomic

log = logging.getLogger(__name__)

ITEMS = ('state', 'extra', 'config')
CHECKSUMS = 'jima_checksums.json'  # {"files": {relative path: sha256 hex}} of a finished step
_UNCHECKED = ('_CHECKPOINT_METADATA',)  # Orbax may rewrite it; it holds only metrics and times


class CheckpointError(ValueError):
    """A committed checkpoint that cannot be read back; names the step and the file."""

    def __init__(self, message: str, step: Optional[int] = None, path: Any = None):
        super().__init__(message)
        self.step, self.path = step, path


def _jsonable(tree: Any) -> Any:
    """Extra state may hold numpy arrays/scalars; JSON gets lists and Python numbers."""
    if isinstance(tree, dict):
        return {str(k): _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return tree.tolist()
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def checkpoint_dir(workdir: str | pathlib.Path, train_cfg):
    """`train.checkpoint_dir` (a local path or a gs:// URL), or `<workdir>/checkpoints`."""
    where = str(train_cfg.get('checkpoint_dir', '') or '')
    if not where:
        return pathlib.Path(workdir).absolute() / 'checkpoints'
    if where.startswith('gs://'):
        from etils import epath  # Orbax's own path type; handles gs:// through tensorstore/gcs
        return epath.Path(where)
    if '://' in where:
        raise ValueError(f'train.checkpoint_dir={where!r}: only local paths and gs:// URLs are '
                         'supported.')
    return pathlib.Path(where).absolute()


class Checkpointer:
    """Saves and restores (state, extra) pairs; `config` is written with every step for
    provenance."""

    def __init__(self, directory: str | pathlib.Path, train_cfg, *, async_save: bool = True):
        self.directory = (directory if str(directory).startswith('gs://')
                          else pathlib.Path(directory).absolute())
        self.metric = train_cfg.best_metric
        if train_cfg.best_mode not in ('min', 'max'):
            raise ValueError(f"train.best_mode={train_cfg.best_mode!r}: expected 'min' or 'max'.")
        metric = self.metric
        policies = [checkpoint_managers.LatestN(n=max(int(train_cfg.keep_checkpoints), 1)),
                    checkpoint_managers.BestN(
                        get_metric_fn=lambda m: m[metric], reverse=train_cfg.best_mode == 'min',
                        n=1, keep_checkpoints_without_metrics=False)]
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_names=ITEMS)
        self._unsealed: list[int] = []  # saved by this object, checksums not yet written

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, extra: dict, config_json: dict,
             metrics: Optional[dict] = None) -> None:
        """Starts an (asynchronous) save; `metrics` with `best_metric` makes it a best candidate."""
        if step in self.manager.all_steps():
            return  # already saved (e.g. a preemption right after a periodic save)
        if metrics is not None and self.metric not in metrics:
            metrics = None
        self.wait()  # Orbax waits for the previous save here anyway; then it gets its checksums
        self._unsealed.append(step)
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    extra=ocp.args.JsonSave(_jsonable(extra)),
                                    config=ocp.args.JsonSave(_jsonable(config_json))),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True)

    def restore(self, abstract_state, step: Optional[int] = None):
        """(state, extra) of `step`, or of the newest intact checkpoint when `step` is None.

        Without a step, damaged checkpoints met on the way (newest first) are moved aside with a
        one-line warning, so a long run goes on from the last good one; an explicit `step` that
        is damaged raises `CheckpointError` and is left in place.
        """
        if step is not None:
            try:
                return self._restore(abstract_state, step)
            except CheckpointError as e:
                raise CheckpointError(f'{e} Choose another step, or --checkpoint=latest for the '
                                      'newest intact one.', e.step, e.path) from e
        damaged = []
        for candidate in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self._restore(abstract_state, candidate)
            except CheckpointError as e:
                moved = self.move_aside(candidate)
                warn(f'{e} Moved it to {moved}; trying the previous checkpoint.')
                damaged.append(candidate)
        if damaged:
            raise CheckpointError(
                f'no intact checkpoint left in {self.directory}: steps {damaged} were damaged and '
                'are kept in its corrupt-* folders. Train again (the same command now starts '
                'afresh), or copy an intact checkpoint folder back.', damaged[0], self.directory)
        return None

    def _restore(self, abstract_state, step: int):
        _drop_orbax_read_echoes()
        damage = self._check_sums(step)
        if damage is not None:
            raise damage
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                              extra=ocp.args.JsonRestore(),
                                              config=ocp.args.JsonRestore()))
            for item in ('extra', 'config'):
                if not isinstance(restored[item], dict):
                    raise ValueError(f'{item}: expected a JSON object')
        except Exception as e:
            damage = self.find_damage(step)
            if damage is not None:
                raise damage from e
            if isinstance(e, (ValueError, KeyError, TypeError)):
                raise ValueError(
                    f'checkpoint step {step} in {self.directory} is intact but does not fit this '
                    f'config ({_short(e)}). Resume with the config it was trained with (saved in '
                    f'{self.step_dir(step) / "config"}), or use a new --workdir.') from e
            raise
        log.info('restored checkpoint step %d from %s', step, self.directory)
        return restored['state'], restored['extra']

    def find_damage(self, step: int) -> Optional[CheckpointError]:
        """Reads every item of `step` on its own (arrays to host memory, whatever the sharding):
        the error for the first unreadable one, or None when all read back."""
        step_dir = self.step_dir(step)
        damage = self._check_sums(step)
        if damage is not None:
            return damage
        for item in ('extra', 'config'):
            try:
                value = self.manager.restore(step, args=ocp.args.Composite(
                    **{item: ocp.args.JsonRestore()}))[item]
                if not isinstance(value, dict):
                    raise ValueError(f'expected a JSON object, found {type(value).__name__}')
            except Exception as e:  # noqa: BLE001 - any failure to read means damage here
                return _damaged(step, _item_file(step_dir / item), e)
        try:
            _read_arrays(step_dir / 'state')
        except Exception as e:  # noqa: BLE001
            return _damaged(step, step_dir / 'state', e)
        return None

    def step_dir(self, step: int):
        return self.directory / str(step)

    def _check_sums(self, step: int) -> Optional[CheckpointError]:
        """The first file of `step` that is missing or differs from its recorded checksum. A step
        without (readable) checksums, e.g. one cut off by SIGKILL before they were written, is
        left to Orbax's own checks."""
        folder = self.step_dir(step)
        if not isinstance(folder, pathlib.Path):
            return None
        try:
            recorded = json.loads((folder / CHECKSUMS).read_text())['files']
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning('%s unreadable (%s); checking step %d by reading it', folder / CHECKSUMS,
                        e, step)
            return None
        for name, digest in recorded.items():
            path = folder / name
            if not path.is_file():
                return CheckpointError(f'checkpoint step {step} is damaged: {path} is missing.',
                                       step, path)
            if _sha256(path) != digest:
                return CheckpointError(
                    f'checkpoint step {step} is damaged: {path} differs from the checksum '
                    'recorded when it was saved.', step, path)
        return None

    def move_aside(self, step: int):
        """Renames the folder of `step` to corrupt-<step>-<time> (process 0), never deletes it."""
        source = self.step_dir(step)
        target = self.directory / f'corrupt-{step}-{time.strftime("%Y%m%d-%H%M%S")}'
        n = 1
        while target.exists():
            target = self.directory / f'corrupt-{step}-{time.strftime("%Y%m%d-%H%M%S")}-{n}'
            n += 1
        failure = None
        if jax.process_index() == 0:
            try:
                source.rename(target)
            except Exception as e:  # noqa: BLE001 - OSError locally, other types on gs://
                failure = e
        if jax.process_count() > 1:  # every process sees the same folders from here on
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f'jima_move_aside_{step}')
        if failure is not None:
            raise CheckpointError(
                f'checkpoint step {step} is damaged and could not be moved aside ({failure}); '
                f'move {source} out of {self.directory} by hand and rerun.', step, source
            ) from failure
        self.manager.reload()
        return target

    def best_record(self) -> dict:
        """The `best` entry of the newest checkpoint whose extra JSON reads back ({} if none);
        checkpoints with an unreadable extra are moved aside with a warning."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.read_extra(step).get('best', {})
            except Exception as e:  # noqa: BLE001
                damage = _damaged(step, _item_file(self.step_dir(step) / 'extra'), e)
                warn(f'{damage} Moved it to {self.move_aside(step)}; reading the previous one.')
        return {}

    def read_extra(self, step: int) -> dict:
        extra = self.manager.restore(step, args=ocp.args.Composite(
            extra=ocp.args.JsonRestore()))['extra']
        if not isinstance(extra, dict):
            raise ValueError(f'expected a JSON object, found {type(extra).__name__}')
        return extra

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def _seal(self) -> None:
        """Writes the checksum file of each finished step this object saved (process 0; local
        folders only, a gs:// checkpoint relies on Orbax's own checks)."""
        unsealed, self._unsealed = self._unsealed, []
        if isinstance(self.directory, pathlib.Path) and jax.process_index() == 0:
            for step in unsealed:
                folder = self.step_dir(step)
                if step in self.manager.all_steps() and folder.is_dir():
                    atomic.write_text(folder / CHECKSUMS, json.dumps(
                        {'files': _checksums(folder)}, indent=0, sort_keys=True) + '\n')


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with shardings: the restore target for `Checkpointer.restore`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def warn(message: str) -> None:
    """One line on stderr (process 0 only): what happened to which checkpoint."""
    if jax.process_index() == 0:
        print(f'warning: {message}', file=sys.stderr, flush=True)


def checkpoint_step(workdir: pathlib.Path, train_cfg, which: str) -> Optional[int]:
    """The step `run_setup.setup` should restore for --checkpoint=`which` (eval, predict,
    export): 'latest' -> None (the newest intact one; damaged ones are moved aside there), 'best'
    (by train.best_metric, recorded during training; damaged -> moved aside with a warning, then
    None), 'auto' ('best' when one was recorded, else 'latest') or a step number."""
    ck = Checkpointer(checkpoint_dir(workdir, train_cfg), train_cfg)
    latest = ck.latest_step()
    try:
        if latest is None:
            raise FileNotFoundError(
                f'{ck.directory} holds no checkpoint; train first '
                f'(python -m jima_jax.main --config ... --workdir {workdir}).')
        if which == 'auto':
            which = 'best' if 'step' in ck.best_record() else 'latest'
        if which == 'latest':
            return None
        if which == 'best':
            best = ck.best_record()
            if 'step' not in best:
                raise ValueError(f'{workdir}: no best checkpoint was recorded (train.best_metric='
                                 f'{train_cfg.best_metric!r} never evaluated); use '
                                 '--checkpoint=latest.')
            step = int(best['step'])
            problem = (None if step in ck.manager.all_steps() else
                       f'best checkpoint step {step} is no longer in {ck.directory}.')
            if problem is None and (damage := ck.find_damage(step)) is not None:
                problem = f'{damage} Moved it to {ck.move_aside(step)}.'
            if problem is None:
                return step
            warn(f'{problem} Using the newest intact checkpoint instead.')
            return None
        if not which.isdigit() or int(which) not in ck.manager.all_steps():
            raise ValueError(f'--checkpoint={which!r}: expected latest, best or one of the saved '
                             f'steps {sorted(ck.manager.all_steps())} (or auto: best when one '
                             'was recorded, else latest).')
        return int(which)
    finally:
        ck.close()


def checkpoint_label(which: str, step: Optional[int]):
    """What results.json calls the checkpoint `checkpoint_step(..., which)` chose: 'latest' (None:
    the newest intact one), 'best', or the step number asked for."""
    if step is None:
        return 'latest'
    return 'best' if which in ('best', 'auto') else int(step)


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _checksums(folder: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob('*'))
            if p.is_file() and p.name not in _UNCHECKED + (CHECKSUMS,)}


def _read_arrays(path) -> None:
    """Every array of a saved state into host numpy, independent of the saved sharding."""
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    if metadata is None or metadata.item_metadata is None:
        raise FileNotFoundError(f'its array index ({path}/_METADATA, manifest.ocdbt) is missing '
                                'or unreadable')
    metadata = metadata.item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def _item_file(item_dir):
    """The one data file of a JSON item (`<step>/extra/metadata`), else the item folder."""
    try:
        files = [p for p in pathlib.Path(item_dir).iterdir() if p.name != 'commit_success.txt']
    except OSError:
        return item_dir
    return files[0] if len(files) == 1 else item_dir


_TENSORSTORE_READ = re.compile(r'Error reading "([^"/]+)[^"]*" in OCDBT database at [^:]*"[^"]*": '
                               r'(.*)')


def _short(error: BaseException) -> str:
    """The innermost cause of `error` in one line: what failed, without Orbax's TensorStore spec."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r'^[A-Z_]+: ', '', text)  # absl status codes (FAILED_PRECONDITION: ...)
    match = _TENSORSTORE_READ.search(text)
    if match:
        text = f'array {match.group(1)}: {match.group(2).split(";")[0]}'
    text = text.split(' Truncating/padding is disabled')[0]  # Orbax's hint about strict=False
    if isinstance(error, OSError) and error.strerror and not text.startswith(error.strerror):
        text = f'{error.strerror}: {error.filename}' if error.filename else text
    return text[:300]


def _damaged(step: int, where, error: BaseException) -> CheckpointError:
    return CheckpointError(f'checkpoint step {step} is damaged: {where} cannot be read '
                           f'({_short(error)}).', step, where)


_ECHOES_DROPPED = False


def _drop_orbax_read_echoes() -> None:
    """Silences the echoes of one failed Orbax read, keeping the error itself.

    Orbax reads arrays on an asyncio loop; when one read fails the loop closes while TensorStore
    still completes the others, and each completion prints a traceback ("Event loop is closed",
    "Exception ignored in ... _read_array_index_and_device_put") long after the real error was
    raised to the caller. Installed once, by the first restore; all other output passes.
    """
    global _ECHOES_DROPPED
    if _ECHOES_DROPPED:
        return
    _ECHOES_DROPPED = True
    previous = sys.unraisablehook

    def unraisablehook(unraisable):
        code = getattr(unraisable.object, 'cr_code', None)
        if (code is not None and 'orbax' in code.co_filename) or (
                unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == 'Event loop is closed'):
            return
        previous(unraisable)

    sys.unraisablehook = unraisablehook
