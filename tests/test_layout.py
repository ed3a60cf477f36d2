"""The shape of the package that reviews keep asking for, checked rather than promised: no import
circle anywhere in jima_jax (deferred, in-function imports included, since those still make two
modules depend on each other), and model code that never asks which backend it runs on (the CPU
kernels are chosen by `model.kernels`, jima_jax/kernel_choice.py)."""

import ast
import pathlib
import subprocess
import sys

from tests.conftest import REPO

PACKAGE = REPO / 'jima_jax'


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob('*.py')}


def _imports(path: pathlib.Path) -> set[str]:
    """The jima_jax modules `path` imports anywhere in its body, packages themselves excluded
    (importing `jima_jax.text.tables` runs `jima_jax/data/__init__.py`, which imports nothing)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f'{node.module}.{a.name}' for a in node.names)
    return {m for m in out if m in MODULES and MODULES[m].name != '__init__.py'}


def import_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of `graph` as [a, b, ..., a], or [] when there is none."""
    state: dict[str, str] = {}  # module -> 'open' while on the path, 'done' after

    def visit(module, path):
        if state.get(module) == 'open':
            return path[path.index(module):] + [module]
        if state.get(module) == 'done':
            return []
        state[module] = 'open'
        for other in sorted(graph.get(module, ())):
            found = visit(other, path + [module])
            if found:
                return found
        state[module] = 'done'
        return []

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return []


def test_the_circle_finder_finds_a_circle_and_only_a_circle():
    assert import_circle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert import_circle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) == []


def test_no_import_circle_in_the_package():
    graph = {name: _imports(path) for name, path in MODULES.items()}
    assert 'jima_jax.model.jima' in graph['jima_jax.export']  # the scan sees deferred imports
    assert 'jima_jax.data.phantom_corpus' in graph['jima_jax.data.builders.phantom']
    circle = import_circle(graph)
    assert not circle, 'import circle: ' + ' -> '.join(circle)


def test_model_code_does_not_ask_for_the_backend():
    asking = []
    for path in (PACKAGE / 'model').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            name = getattr(node, 'attr', None) or getattr(node, 'id', None)
            if name in ('default_backend', 'devices', 'local_devices'):
                asking.append(f'{path.relative_to(REPO)}:{node.lineno} {name}')
    assert not asking, asking


def test_the_text_package_stands_on_its_own():
    """Cleaning, tokenizer, labeler, lexicon, entities and tables serve both data preparation and
    evaluation, so they import no other part of the package (atomic file writes aside) and no
    JAX or TensorFlow: the labeler CLI and the metrics run without either."""
    text = sorted(m for m in MODULES if m.startswith('jima_jax.text.'))
    assert {'jima_jax.text.labeler', 'jima_jax.text.tables', 'jima_jax.text.symbols'} <= set(text)
    for module in text:
        outside = {m for m in _imports(MODULES[module])
                   if not m.startswith('jima_jax.text.') and m != 'jima_jax.atomic'}
        assert not outside, f'{module} imports {sorted(outside)}'
    code = ('import sys\n' + ''.join(f'import {m}\n' for m in text)
            + 'print(sorted(m for m in ("jax", "tensorflow") if m in sys.modules))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=str(REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['[]']
