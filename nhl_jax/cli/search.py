"""Searches a run's encoded database: top-k or radius, at any code length.

The two-command flow from a trained run to a working search::

    nhl-jax train --method=dpn --workdir=runs/dpn      # train
    nhl-jax encode --workdir=runs/dpn                 # 1
    nhl-jax search --workdir=runs/dpn --query_split=query \
        --query_index=0,1,2 --bits=32 --k=5                         # 2

Queries are images or codes:

- ``--query_split=query --query_index=0,1,2``: images of a split of the
  run's dataset, encoded by the trained model (``--params``, default the
  database codes' own);
- ``--query_images=x.npy``: [Q, H, W, C] uint8 images, encoded the same way;
- ``--query_codes=codes/query.npz`` (a file written by encode.py; with
  ``--query_index`` to pick rows) or an ``.npy`` of [Q, K] ±1 codes or
  [Q, ceil(K / 8)] packed uint8 bytes.

The database is ``workdir/codes/database.npz`` (or ``--database``). Nested
codes are cut to ``--bits`` (default: the longest) without re-encoding.
``--radius=r`` returns every item at Hamming distance <= r instead of the
top ``--k``. ``--backend=faiss`` uses a faiss binary index (``pip install
'.[faiss]'``; ``--faiss_kind=flat|hnsw|multihash``). It prints a small table
and, with ``--output=hits.json``, writes every hit as JSON.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from nhl_jax import retrieval
from nhl_jax.errors import UsageError

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory, encoded.')
_DATABASE = flags.DEFINE_string(
    'database', None, 'Database codes (default: workdir/codes/database.npz).')
_QUERY_CODES = flags.DEFINE_string('query_codes', None,
                                   'Query codes: .npz (encode.py) or .npy.')
_QUERY_IMAGES = flags.DEFINE_string('query_images', None,
                                    'Query images: .npy [Q, H, W, C] uint8.')
_QUERY_SPLIT = flags.DEFINE_enum('query_split', None,
                                 ['query', 'train', 'database'],
                                 'Query images from this split.')
_QUERY_INDEX = flags.DEFINE_list('query_index', None,
                                 'Rows of the split or codes file.')
_BITS = flags.DEFINE_integer('bits', None, 'Code length (default: longest).')
_K = flags.DEFINE_integer('k', 10, 'Neighbours per query (top-k search).')
_RADIUS = flags.DEFINE_integer('radius', None,
                               'Radius search: distance <= radius.')
_BACKEND = flags.DEFINE_enum('backend', 'numpy',
                             sorted(retrieval.INDEX_BACKENDS),
                             'Search backend.')
_FAISS_KIND = flags.DEFINE_enum('faiss_kind', 'flat',
                                sorted(retrieval.FAISS_KINDS),
                                'faiss index type (--backend=faiss).')
_PARAMS = flags.DEFINE_enum('params', None, ['last', 'best'],
                            'Parameters that encode query images.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write the hits as JSON here.')
_SHOW = flags.DEFINE_integer('show', 5, 'Hits per query in the table.')


def _rows(count):
    if _QUERY_INDEX.value is None:
        return np.arange(count)
    try:
        rows = np.array([int(r) for r in _QUERY_INDEX.value])
    except ValueError:
        raise UsageError(f'--query_index must be integers, got '
                         f'{_QUERY_INDEX.value}') from None
    if rows.min() < 0 or rows.max() >= count:
        raise UsageError(f'--query_index must lie in [0, {count}), got '
                         f'{_QUERY_INDEX.value}')
    return rows


def _queries(database, bits):
    """(packed [Q, ceil(bits / 8)], labels [Q, C] or None, names [Q])."""
    sources = [_QUERY_CODES.value, _QUERY_IMAGES.value, _QUERY_SPLIT.value]
    if sum(s is not None for s in sources) != 1:
        raise UsageError('pass exactly one of --query_codes, --query_images, '
                         '--query_split')
    if _QUERY_CODES.value:
        packed, ids = retrieval.read_query_codes(_QUERY_CODES.value, bits)
        rows = _rows(len(packed))
        labels = None
        if _QUERY_CODES.value.endswith('.npz'):
            labels = retrieval.load_codes(_QUERY_CODES.value).labels[rows]
        names = ids[rows] if ids is not None else rows
        return packed[rows], labels, [f'id {n}' for n in names]
    if not _WORKDIR.value:
        raise UsageError('query images are encoded by a run: pass --workdir')
    from nhl_jax.cli import inference
    config = inference.read_config(_WORKDIR.value)
    if _QUERY_SPLIT.value:
        ds = getattr(inference.load_data(config), _QUERY_SPLIT.value)
        rows = _rows(len(ds.labels))
        images, labels = ds.images[rows], ds.labels[rows]
        names = [f'{_QUERY_SPLIT.value} id {i}' for i in ds.ids[rows]]
    else:
        images = np.load(_QUERY_IMAGES.value, allow_pickle=False)
        rows = _rows(len(images))
        images, labels = images[rows], None
        names = [f'image {r}' for r in rows]
    run = inference.load_run(_WORKDIR.value,
                             params=_PARAMS.value or database.params,
                             input_shape=images.shape[1:])
    return inference.encode_images(run, images, bits), labels, names


def _table(result, database, labels, names, bits, shown):
    print(f'{bits}-bit codes, {len(database.ids)} database items')
    print(f'{"query":>16} {"rank":>4} {"row":>7} {"id":>7} {"dist":>4} '
          f'{"class":>5} {"same":>4}')
    for q, (rows, dist) in enumerate(result):
        for rank, (row, d) in enumerate(zip(rows[:shown], dist[:shown])):
            item = database.labels[row]
            same = ('-' if labels is None
                    else 'yes' if np.dot(labels[q], item) > 0 else 'no')
            print(f'{names[q]:>16} {rank + 1:>4} {row:>7} '
                  f'{database.ids[row]:>7} {d:>4} {int(item.argmax()):>5} '
                  f'{same:>4}')
        if len(rows) == 0:
            print(f'{names[q]:>16}    (nothing within the radius)')


def _search():
    path = _DATABASE.value or (_WORKDIR.value and os.path.join(
        _WORKDIR.value, 'codes', 'database.npz'))
    if not path or not os.path.isfile(path):
        raise UsageError(f'no database codes at {path!r}; run '
                         'nhl-jax encode --workdir=... first, or pass '
                         '--database')
    database = retrieval.load_codes(path)
    bits = _BITS.value or max(database.lengths)
    db_packed = retrieval.codes_of_length(database, bits)
    q_packed, labels, names = _queries(database, bits)
    options = {'kind': _FAISS_KIND.value} if _BACKEND.value == 'faiss' else {}
    searcher = retrieval.build_index(db_packed, bits, backend=_BACKEND.value,
                                     **options)
    if _RADIUS.value is not None:
        found = searcher.range_search(q_packed, _RADIUS.value)
        result = [found.of(q) for q in range(len(q_packed))]
    else:
        found = searcher.search(q_packed, _K.value)
        result = list(zip(found.indices, found.distances))
    _table(result, database, labels, names, bits, _SHOW.value)
    return database, names, bits, result


def main(argv):
    del argv
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore
    try:
        database, names, bits, result = _search()
    except (ValueError, ImportError) as e:  # UsageError is a ValueError
        sys.exit(f'error: {e}')
    if _OUTPUT.value:
        hits = [{'query': name, 'rows': rows.tolist(),
                 'ids': database.ids[rows].tolist(),
                 'distances': dist.tolist()}
                for name, (rows, dist) in zip(names, result)]
        with open(_OUTPUT.value, 'w') as f:
            json.dump({'bits': bits, 'backend': _BACKEND.value,
                       'radius': _RADIUS.value,
                       'k': None if _RADIUS.value is not None else _K.value,
                       'hits': hits}, f, indent=1)
        print(f'wrote {_OUTPUT.value}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    app.run(main, argv=argv)


if __name__ == '__main__':
    cli()
