"""The Python examples of the README and the docs guides run as written.

Every ```python block of a page runs, in order, in one namespace per page
(as a reader pasting them one after the other would), on the tiny random
data the examples build themselves.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
BLOCK = re.compile(r'^```python\n(.*?)^```', re.M | re.S)


def _blocks(page):
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize(
    'page', [p for p in PAGES if _blocks(p)],
    ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(page, capsys):
    namespace = {'__name__': '__docs__'}
    for i, code in enumerate(_blocks(page)):
        exec(compile(code, f'{page.name}[block {i}]', 'exec'), namespace)
