"""The Sphinx site builds with no warning (slow: about a minute on 2 cores).

Run with ``python -m pytest -m slow tests/test_docs_build.py`` after
``pip install -e ".[docs]"``.
"""

import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.slow
def test_the_docs_build_with_warnings_as_errors(tmp_path):
    pytest.importorskip('sphinx')
    pytest.importorskip('myst_parser')
    done = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '-q', '-b', 'html', 'docs',
         str(tmp_path / 'html')], cwd=ROOT, capture_output=True, text=True,
        timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    api = tmp_path / 'html' / 'api' / 'generated'
    losses = (api / 'nhl_jax.losses.html').read_text()
    from nhl_jax import losses as losses_lib
    for name in losses_lib.LOSSES:
        assert f'nhl_jax.losses.{name}' in losses, name
    for system in ('nhl', 'mah', 'odh'):
        assert (tmp_path / 'html' / f'{system}.html').exists()
