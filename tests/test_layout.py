"""The package's architecture: layers, no import cycle, every module imports.

Layers, lowest first; a module imports only its own package and lower
layers (lazy imports inside functions included):

0. ``types``, ``errors``, ``checks``, ``compiler``, ``parallel``,
   ``runlog``, ``hparams``, ``_version``, ``_started``;
1. ``data``, ``losses``, ``models``, ``retrieval`` (independent of each
   other);
2. ``train``: the generic trainer, which knows no system; ``serving``:
   an exported bundle's encoder and search, on ``retrieval`` alone (no
   model or training code, so that it runs without flax, optax or orbax);
3. ``nhl``, ``mah``, ``odh``: each a ``System`` beside its maths;
4. ``cli`` (the registry of systems and the commands) and the package's
   face (``nhl_jax/__init__.py``, ``__main__``).
"""

import ast
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

PACKAGE = os.path.join(ROOT, 'nhl_jax')
LAYERS = {
    **dict.fromkeys(('_version', '_started', 'types', 'errors', 'checks',
                     'compiler', 'parallel', 'runlog', 'hparams'), 0),
    **dict.fromkeys(('data', 'losses', 'models', 'retrieval'), 1),
    **dict.fromkeys(('train', 'serving'), 2),
    **dict.fromkeys(('nhl', 'mah', 'odh'), 3),
    **dict.fromkeys(('cli', '__init__', '__main__'), 4),
}


def _modules() -> dict[str, str]:
    """Dotted name -> path of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == '__init__' and len(parts) > 2:
                parts = parts[:-1]
            found['.'.join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: str) -> set[str]:
    """The nhl_jax modules ``path`` imports, anywhere in the file.

    ``from a import b`` counts as an import of ``a.b`` when that is a
    module, else of ``a``.
    """
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                sub = f'{node.module}.{alias.name}'
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m.split('.')[0] == 'nhl_jax'}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _top(module: str) -> str:
    """The top-level part of ``nhl_jax.<part>...`` ('__init__' for the face)."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def test_every_top_level_part_has_a_layer():
    assert {_top(m) for m in MODULES} == set(LAYERS)


# Layers whose packages must not import each other.
_INDEPENDENT = frozenset({1, 2, 3})


def test_no_module_imports_a_higher_layer_or_a_sibling_package():
    wrong = []
    for module, imported in GRAPH.items():
        mine = _top(module)
        for other in imported:
            theirs = _top(other)
            if theirs == mine:
                continue
            if LAYERS[theirs] > LAYERS[mine] or (
                    LAYERS[theirs] == LAYERS[mine]
                    and LAYERS[mine] in _INDEPENDENT):
                wrong.append(f'{module} -> {other}')
    assert not wrong, wrong


def _cycle(graph) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 'done'
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_module_graph_has_no_cycle():
    assert _cycle(GRAPH) is None, ' -> '.join(_cycle(GRAPH))


def test_package_graph_has_no_cycle():
    """Top-level parts (``data``, ``train``, ``cli``, ...) as nodes."""
    packages = {}
    for module, imported in GRAPH.items():
        packages.setdefault(_top(module), set()).update(
            _top(m) for m in imported if _top(m) != _top(module))
    assert _cycle(packages) is None, ' -> '.join(_cycle(packages))


def test_cycle_finder_finds_a_cycle():
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c',
                                                            'a']
    assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_every_module_imports_first_in_a_fresh_process():
    """The order of first imports decides whether a cycle breaks an import
    (``import nhl_jax.odh.step`` once failed only in a new interpreter)."""
    worker = os.path.join(ROOT, 'tests', 'support', 'import_worker.py')
    result = subprocess.run([sys.executable, worker, *sorted(MODULES)],
                            capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize('module', sorted(MODULES))
def test_module_imports_in_a_new_interpreter(module):
    """The same in a whole new interpreter per module (slow: about 2 s of
    CPU each, for the imports of JAX and flax)."""
    subprocess.run([sys.executable, '-c', f'import {module}'], check=True,
                   timeout=300, cwd=ROOT)
