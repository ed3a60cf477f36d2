"""Writing files so a reader never sees half of one: a temporary file beside the target, renamed.

`os.replace` is atomic on POSIX within one filesystem, so a crash or a kill leaves either the old
file or the new one. Every file jima_jax writes goes through here (checkpoints go through Orbax,
which commits the same way). No JAX imports: the data stage uses it too.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Callable


def write_with(path: str | os.PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Calls `write(tmp_path)` to produce the file, then renames it to `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; keep results readable as usual
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    return write_with(path, lambda tmp: pathlib.Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    return write_with(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding='utf-8'))


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> pathlib.Path:
    """A matplotlib figure as PNG, atomically."""
    return write_with(path, lambda tmp: fig.savefig(tmp, format='png', **savefig_kwargs))
