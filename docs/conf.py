"""Sphinx configuration of the nhl_jax documentation.

Build: ``pip install -e ".[docs]"`` then
``python -m sphinx -b html docs docs/_build/html``.
"""

import os
import re
import sys

sys.path.insert(0, os.path.abspath('..'))

from nhl_jax import __version__

project = 'nhl_jax'
author = 'the nhl_jax authors'
copyright = '2026, the nhl_jax authors'
release = __version__
version = __version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

myst_enable_extensions = ['colon_fence', 'deflist']
myst_heading_anchors = 3

# The API reference: one page per public module, generated from the
# Google-style docstrings.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {
    'members': True,
    'undoc-members': False,
    'show-inheritance': True,
    # A package's re-exports (its __all__) are documented where they are
    # defined, once; the loss functions would otherwise also collide with
    # their modules of the same name (nhl_jax.losses.csq).
    'ignore-module-all': True,
}
autodoc_typehints = 'description'
autodoc_member_order = 'bysource'
# Optional extras the API pages need not install.
autodoc_mock_imports = ['faiss', 'wandb', 'torch', 'torchvision',
                        'tensorflow', 'tensorflow_datasets', 'xprof']
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_attr_annotations = True
# Attributes as fields of their class: autodoc documents NamedTuple fields
# itself, so attribute directives would describe them twice.
napoleon_use_ivar = True

# Docstrings name many objects in ``double backticks`` that are not
# cross-references; only broken links that Sphinx can check are reported.
nitpicky = False
# ref.python: a field name (``bits``, ``rows``) that several NamedTuples
# share makes napoleon's type links ambiguous; the first target is kept.
suppress_warnings = ['myst.header', 'myst.xref_missing', 'ref.python']

html_theme = 'furo'
html_title = f'nhl_jax {release}'


_PIPE = re.compile(r'(?<!\\)\|')
_LIST_ITEM = re.compile(r'^\s*([-*+] |\d+[.)] |:)')


def _indent(line):
    return len(line) - len(line.lstrip())


def _escape_plain_text(app, what, name, obj, options, lines):
    """Keep the docstrings' plain text from reading as broken reST.

    The docstrings are written for ``help()``: they write absolute values
    and norms as ``|x|``, tables in Markdown and formulas as indented
    lines right under a sentence. Here each ``|`` outside inline literals
    is escaped, a Markdown table becomes a literal block, and an indented
    formula gets the blank lines reST needs around it.
    """
    out = []
    literal = False
    literal_indent = 0
    for line in lines:
        stripped = line.strip()
        if literal and stripped and _indent(line) <= literal_indent:
            literal = False
        if literal:
            out.append(line)
            continue
        if stripped.startswith('|') and stripped.endswith('|') and \
                stripped.count('|') > 2:  # a Markdown table row
            if not (out and out[-1].strip().startswith('    |')):
                out.extend(['', '::', ''])
            out.append('    ' + line)
            continue
        if out and out[-1].strip().startswith('|') and stripped:
            out.append('')
        prev = out[-1] if out else ''
        if stripped and prev.strip():
            deeper = (_indent(line) > _indent(prev)
                      and not _LIST_ITEM.match(prev)
                      and not prev.rstrip().endswith('::'))
            shallower = (_indent(line) < _indent(prev)
                         and not _LIST_ITEM.match(line))
            if deeper or shallower:
                out.append('')
        parts = line.split('``')  # odd parts are inline literals
        out.append('``'.join(part if k % 2 else _PIPE.sub(r'\\|', part)
                             for k, part in enumerate(parts)))
        if stripped.endswith('::'):
            literal = True
            literal_indent = _indent(line)
    lines[:] = out


def setup(app):
    """Register the docstring filter."""
    app.connect('autodoc-process-docstring', _escape_plain_text)
