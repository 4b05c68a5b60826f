"""A trained run, exported, used where none of the training code is.

``nhl-jax export --workdir=runs/x --out=bundle`` writes a self-contained
directory (``bundle``: the encoder as ``jax.export`` StableHLO, the
database codes, a faiss index per length and a manifest with checksums).
This package reads it with jax, numpy and (if installed) faiss only: no
flax, optax, orbax or model code::

    from nhl_jax import serving
    searcher = serving.load('bundle')
    searcher.encode(images)                  # {bits: packed codes [Q, B]}
    searcher.search(images, k=10, bits=32)   # ids, distances [Q, 10]
    searcher.range_search(codes, radius=2, bits=32)

Without nhl_jax at all, ``faiss.read_index_binary('bundle/faiss_32.index')``
searches the same codes, and ``jax.export.deserialize`` of
``encoder.jaxexport`` encodes images.
"""

from nhl_jax.serving.bundle import read_manifest
from nhl_jax.serving.bundle import verify
from nhl_jax.serving.searcher import BACKENDS
from nhl_jax.serving.searcher import Neighbours
from nhl_jax.serving.searcher import RangeNeighbours
from nhl_jax.serving.searcher import Searcher
from nhl_jax.serving.searcher import load

__all__ = [
    'BACKENDS',
    'Neighbours',
    'RangeNeighbours',
    'Searcher',
    'load',
    'read_manifest',
    'verify',
]
