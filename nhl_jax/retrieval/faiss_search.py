"""faiss binary indexes: the 'faiss' backend of ``index``.

``FaissSearch`` holds one faiss index over packed codes and returns its
results in the NumPy backend's layout and order; ``index.faiss_index``
checks the codes and queries and wraps it as a ``HammingIndex``. faiss
(the optional ``faiss`` extra) is imported on first use, so this module
imports without it.

Kinds (``FAISS_KINDS``): 'flat' is ``IndexBinaryFlat`` (exact); 'hnsw' is
``IndexBinaryHNSW`` (an approximate graph; top-k only); 'multihash' is
``IndexBinaryMultiHash`` (``tables`` hash tables on disjoint substrings:
exact for radius < tables, approximate top-k).

faiss indexes whole bytes: a K-bit code with K % 8 != 0 is indexed as
8 ceil(K / 8) bits. The padding bits are 0 in every packed code
(``codes.check_packed`` enforces it), so distances are unchanged. faiss's
``range_search`` keeps distances strictly below its radius; the radius
here is inclusive (<=), so faiss gets radius + 1. Results are re-sorted by
(distance, row); the top-k set at a tied k-th distance may still differ
from the NumPy backend's lowest-row choice.
"""

import numpy as np


def load_faiss():
    """The faiss module, or an ImportError that says how to get it."""
    try:
        import faiss
    except ImportError:
        raise ImportError("the faiss backend needs faiss: pip install "
                          "'nhl_jax[faiss]' (faiss-cpu), or use "
                          "backend='numpy'") from None
    return faiss


# kind -> (constructor(faiss, d, options), has range search)
FAISS_KINDS = {
    'flat': (lambda faiss, d, o: faiss.IndexBinaryFlat(d), True),
    'hnsw': (lambda faiss, d, o: faiss.IndexBinaryHNSW(d, o['neighbors']),
             False),
    'multihash': (lambda faiss, d, o: faiss.IndexBinaryMultiHash(
        d, o['tables'], min(64, d // o['tables'])), True),
}


class FaissSearch:
    """One faiss binary index of a database, searched with checked queries.

    Attributes:
      size: N, the number of indexed codes.
    """

    def __init__(self, db, bits: int, kind: str, *, neighbors: int,
                 tables: int, index=None):
        """Builds the index and adds the database, or takes a built one.

        Args:
          db: [N, B] uint8 C-contiguous packed codes, checked, N >= 1.
          bits: K, for messages.
          kind: a key of ``FAISS_KINDS``.
          neighbors: HNSW's M, links per node.
          tables: multi-hash tables, 1..8 B.
          index: a faiss index of ``kind`` that already holds ``db`` (e.g.
            read by ``faiss.read_index_binary``), or None to build one.
        """
        if kind not in FAISS_KINDS:
            raise ValueError(f'Unknown faiss index kind {kind!r}; choose one '
                             f'of {sorted(FAISS_KINDS)}')
        if kind == 'multihash' and not 1 <= tables <= 8 * db.shape[1]:
            raise ValueError(f'tables must be in 1..{8 * db.shape[1]} for '
                             f'{bits}-bit codes, got {tables}')
        make, self.ranged = FAISS_KINDS[kind]
        self.kind = kind
        if index is None:
            index = make(load_faiss(), 8 * db.shape[1],
                         {'neighbors': neighbors, 'tables': tables})
            index.add(db)
        elif (index.d, index.ntotal) != (8 * db.shape[1], len(db)):
            raise ValueError(
                f'the faiss index holds {index.ntotal} codes of {index.d} '
                f'bits, not the {len(db)} codes of {8 * db.shape[1]} bits '
                f'({bits}-bit codes) it is given with; rebuild it')
        self.index = index
        self.size = index.ntotal

    def top_k(self, q, k: int):
        """([Q, k] rows, [Q, k] distances), sorted by (distance, row).

        Args:
          q: [Q, B] uint8 C-contiguous packed queries.
          k: 1 <= k <= N.
        """
        dist, ids = self.index.search(q, k)
        # Approximate kinds pad missing neighbours with id -1: keep them
        # last, as the only way to say "not found" in a fixed shape.
        missing = ids < 0
        dist = np.where(missing, np.iinfo(np.int32).max, dist)
        order = np.lexsort((np.where(missing, self.size, ids), dist))
        return (np.take_along_axis(ids, order, axis=1),
                np.take_along_axis(dist, order, axis=1))

    def within(self, q, radius: int):
        """Items at distance <= radius, each query's by (distance, row).

        Args:
          q: [Q, B] uint8 C-contiguous packed queries.
          radius: r >= 0.

        Returns:
          ([Q + 1] int64 lims, [T] rows, [T] distances): query q's items
          are ``rows[lims[q]:lims[q + 1]]``.
        """
        if not self.ranged:
            raise ValueError(f"faiss index kind {self.kind!r} has no range "
                             "search; use kind='flat' or 'multihash'")
        lims, dist, ids = self.index.range_search(q, radius + 1)  # strict <
        lims = lims.astype(np.int64)
        rows = np.repeat(np.arange(len(q)), np.diff(lims))
        order = np.lexsort((ids, dist, rows))
        return lims, ids[order], dist[order]
