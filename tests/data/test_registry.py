"""The dataset registry (jima_jax/data/builders/__init__.py) and the shape of the data package:
one list of names, every data module importable on its own, without JAX (import circles:
tests/test_layout.py)."""

import inspect
import pathlib
import re
import subprocess
import sys

import pytest

from configs import default, demo, iu_phantom, iu_xray, mimic_cxr, smoke
from jima_jax.data import builders
from jima_jax.data.builders.base import StudyBuilder
from tests.conftest import REPO

DATA = REPO / 'jima_jax' / 'data'


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


DATA_MODULES = sorted(_module_name(p) for p in DATA.rglob('*.py'))


def test_registry_names_are_the_accepted_data_names():
    """The names the default config documents for data.name, the names the shipped configs use,
    and the registry are one list; each name's builder serves that name and reads a source."""
    documented = re.search(r"c\.data\.name = '\w+'\s+#\s*([\w |]+)",
                           inspect.getsource(default.get_config)).group(1)
    assert sorted(n.strip() for n in documented.split('|')) == sorted(builders.NAMES)
    shipped = {m.get_config().data.name for m in (default, demo, iu_phantom, iu_xray, mimic_cxr,
                                                  smoke)}
    assert shipped <= set(builders.NAMES)
    for name in builders.NAMES:
        cls = builders.builder_class(name)
        assert issubclass(cls, StudyBuilder) and cls.name == name
        assert cls.read_studies.__func__ is not StudyBuilder.read_studies.__func__


def test_an_unknown_name_is_refused_with_the_accepted_ones():
    cfg = default.get_config().data
    with cfg.unlocked():
        cfg.name = 'cifar10'
    for call in (lambda: builders.builder_class('cifar10'), lambda: builders.get_studies(cfg)):
        with pytest.raises(ValueError, match="data.name='cifar10'.*'phantom', 'iu_phantom'"):
            call()


@pytest.mark.parametrize('module', DATA_MODULES)
def test_each_data_module_imports_first_in_a_fresh_interpreter(module):
    """Imported before any other jima_jax module (so an import circle that depends on the order
    would fail here), and without JAX (house rule: data/ never imports it)."""
    code = f'import sys\nimport {module}\nprint("jax" in sys.modules)'
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=str(REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['False'], f'{module} imports JAX'
