"""Every public module, class and function of nhl_jax has a docstring.

The API reference (docs/api) is generated from them. Walks the sources
with ``ast`` (nothing is imported, so it takes milliseconds); public means
no path part, class or function name starting with an underscore.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / 'nhl_jax'


def _public_modules():
    for path in sorted(ROOT.rglob('*.py')):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith('_') and p != '__init__.py' for p in parts):
            continue
        yield path


def _undocumented(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT.parent).as_posix()
    if ast.get_docstring(tree) is None:
        yield f'{rel}: module'

    def walk(node, prefix):
        for child in node.body:
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                      ast.ClassDef)):
                continue
            if child.name.startswith('_'):
                continue
            if ast.get_docstring(child) is None:
                yield f'{rel}:{child.lineno}: {prefix}{child.name}'
            if isinstance(child, ast.ClassDef):
                yield from walk(child, f'{prefix}{child.name}.')

    yield from walk(tree, '')


def test_every_public_object_has_a_docstring():
    missing = [m for path in _public_modules() for m in _undocumented(path)]
    assert not missing, 'no docstring:\n' + '\n'.join(missing)
