"""The configurations, shipped with the installed package so they work from any directory.

  from jima_jax.configs import demo; c = demo.get_config('long')
  python -m jima_jax.main --config demo:long --workdir runs/demo_long   # from any directory

`configs/<name>.py` in the repository are thin entry points to these modules, so
`--config configs/demo.py:long` and `from configs import demo` keep working there.
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

HERE = pathlib.Path(__file__).resolve().parent
NAMES = tuple(sorted(p.stem for p in HERE.glob('*.py') if not p.stem.startswith('_')))


def path(name: str) -> pathlib.Path:
    """The file of the packaged config `name` (e.g. 'demo')."""
    if name not in NAMES:
        raise ValueError(f'no packaged config {name!r}; the packaged configs are '
                         f'{", ".join(NAMES)} (or pass a config file path).')
    return HERE / f'{name}.py'


def resolve(value: str) -> str:
    """A --config value with a packaged name resolved to its file: 'demo:long' ->
    '<package>/configs/demo.py:long'. A path to an existing file is kept as it is, and so is
    anything that is neither (ml_collections then reports the missing file); a path
    'configs/<name>.py' that does not exist from here (another working directory) is taken as the
    packaged config of that name."""
    file, sep, arg = value.partition(':')
    if not file or pathlib.Path(file).is_file():
        return value
    candidate = pathlib.PurePath(file)
    name: Optional[str] = None
    if not candidate.suffix and len(candidate.parts) == 1:
        name = file
    elif candidate.suffix == '.py' and candidate.parts[:-1] == ('configs',):
        name = candidate.stem
    if name is None or name not in NAMES:
        return value
    return f'{path(name)}{sep}{arg}'


def resolve_argv(argv: Sequence[str], flag: str = 'config') -> list[str]:
    """`argv` with the value of --<flag> (either `--config X` or `--config=X`) resolved."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == f'--{flag}' and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
        elif arg.startswith(f'--{flag}='):
            out[i] = f'--{flag}=' + resolve(arg[len(flag) + 3:])
    return out
