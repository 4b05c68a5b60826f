"""Retrieval with binary codes: signs, packed bits, Hamming ranking, metrics.

The layers, lowest first: ``codes`` (signs, the one packed layout, nested
prefixes, the codes file), ``hamming`` (the host's popcount engine and
stable ranking), ``ties`` (exact expectations over tied items), ``stats``
(the float64 statistics both backends finish with), ``ranking``
(per-query statistics, NumPy or JAX backend, ``ranking_jax``), ``metrics``
(mAP, precision, recall, radius metrics) and ``index`` (top-k and radius
search, NumPy or faiss)::

    from nhl_jax import retrieval
    q = retrieval.sign_codes(h_query)            # [Q, K] int8 ±1
    db = retrieval.sign_codes(h_database)        # [N, K]
    retrieval.mean_average_precision(q, y_query, db, y_database, top_k=None)
"""

from nhl_jax.retrieval.codes import CodeSet
from nhl_jax.retrieval.codes import PARAMS
from nhl_jax.retrieval.codes import check_compatible
from nhl_jax.retrieval.codes import check_packed
from nhl_jax.retrieval.codes import check_source
from nhl_jax.retrieval.codes import code_source
from nhl_jax.retrieval.codes import codes_of_length
from nhl_jax.retrieval.codes import load_codes
from nhl_jax.retrieval.codes import pack_codes
from nhl_jax.retrieval.codes import prefix_codes
from nhl_jax.retrieval.codes import read_query_codes
from nhl_jax.retrieval.codes import save_codes
from nhl_jax.retrieval.codes import sign_codes
from nhl_jax.retrieval.codes import unpack_codes
from nhl_jax.retrieval.index import BACKENDS as INDEX_BACKENDS
from nhl_jax.retrieval.index import FAISS_KINDS
from nhl_jax.retrieval.index import HammingIndex
from nhl_jax.retrieval.index import RangeResult
from nhl_jax.retrieval.index import SearchResult
from nhl_jax.retrieval.index import build_index
from nhl_jax.retrieval.index import faiss_index
from nhl_jax.retrieval.index import numpy_index
from nhl_jax.retrieval._inputs import BACKENDS
from nhl_jax.retrieval._inputs import TIE_POLICIES
from nhl_jax.retrieval._inputs import ZERO_RELEVANT_POLICIES
from nhl_jax.retrieval.metrics import average_precisions
from nhl_jax.retrieval.metrics import hamming_distances
from nhl_jax.retrieval.metrics import mean_average_precision
from nhl_jax.retrieval.metrics import precision_recall_curve
from nhl_jax.retrieval.metrics import retrieval_metrics

__all__ = [
    # codes
    'CodeSet',
    'PARAMS',
    'check_compatible',
    'check_packed',
    'check_source',
    'code_source',
    'codes_of_length',
    'load_codes',
    'pack_codes',
    'prefix_codes',
    'read_query_codes',
    'save_codes',
    'sign_codes',
    'unpack_codes',
    # metrics
    'BACKENDS',
    'TIE_POLICIES',
    'ZERO_RELEVANT_POLICIES',
    'average_precisions',
    'hamming_distances',
    'mean_average_precision',
    'precision_recall_curve',
    'retrieval_metrics',
    # search
    'FAISS_KINDS',
    'INDEX_BACKENDS',
    'HammingIndex',
    'RangeResult',
    'SearchResult',
    'build_index',
    'faiss_index',
    'numpy_index',
]
