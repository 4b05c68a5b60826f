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

The database is ``workdir/codes/database.npz`` (or ``--database``).
``--bits`` (default: the longest) is one of the run's lengths; nested
codes are cut to it without re-encoding. Queries must be codes of the
database's run and dataset: codes files say where they came from
(``retrieval.check_compatible``), and a ``--workdir`` that encodes query
images must be the database's run. ``--radius=r`` returns every item at
Hamming distance <= r instead of the top ``--k``. ``--backend=faiss`` uses
a faiss binary index (``pip install '.[faiss]'``;
``--faiss_kind=flat|hnsw|multihash``). It prints a small table and, with
``--output=hits.json``, writes every hit as JSON (its folder is made if
missing). Every bad flag or file is one ``error:`` line, before any
encoding or search.
"""

import json
import os
import sys

import numpy as np
from absl import flags, logging

from nhl_jax import checks, retrieval
from nhl_jax.cli import command
from nhl_jax.errors import UsageError

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS) -> None:
    """Defines the command's flags on ``flag_values``."""
    fv = {'flag_values': flag_values}
    flags.DEFINE_string('workdir', None, 'A run directory, encoded.', **fv)
    flags.DEFINE_string(
        'database', None,
        'Database codes (default: workdir/codes/database.npz).', **fv)
    flags.DEFINE_string('query_codes', None,
                        'Query codes: .npz (encode.py) or .npy.', **fv)
    flags.DEFINE_string('query_images', None,
                        'Query images: .npy [Q, H, W, C] uint8.', **fv)
    flags.DEFINE_enum('query_split', None, ['query', 'train', 'database'],
                      'Query images from this split.', **fv)
    flags.DEFINE_list('query_index', None,
                      'Rows of the split or codes file.', **fv)
    flags.DEFINE_integer('bits', None,
                         "Code length, one of the run's (default: longest).",
                         **fv)
    flags.DEFINE_integer('k', 10, 'Neighbours per query (top-k search).',
                         **fv)
    flags.DEFINE_integer('radius', None, 'Radius search: distance <= radius.',
                         **fv)
    flags.DEFINE_enum('backend', 'numpy', sorted(retrieval.INDEX_BACKENDS),
                      'Search backend.', **fv)
    flags.DEFINE_enum('faiss_kind', 'flat', sorted(retrieval.FAISS_KINDS),
                      'faiss index type (--backend=faiss).', **fv)
    flags.DEFINE_enum('params', None, ['last', 'best'],
                      'Parameters that encode query images.', **fv)
    flags.DEFINE_string('output', None, 'Write the hits as JSON here.', **fv)
    flags.DEFINE_integer('show', 5, 'Hits per query in the table.', **fv)


def _index_rows(values) -> np.ndarray | None:
    """``--query_index`` as ints (None: every row), checked up front."""
    if values is None:
        return None
    try:
        rows = np.array([int(r) for r in values], np.int64)
    except ValueError:
        raise UsageError(f'--query_index must be integers, got '
                         f'{values}') from None
    if rows.size == 0:
        raise UsageError('--query_index is empty; pass rows, e.g. '
                         '--query_index=0,1,2, or leave it unset for all')
    return rows


def _pick(rows, count, what):
    """The rows of ``what`` (``count`` of them) that ``--query_index``
    names."""
    if rows is None:
        return np.arange(count)
    if rows.min() < 0 or rows.max() >= count:
        raise UsageError(f'--query_index must lie in [0, {count}) for '
                         f'{what}, got {rows.tolist()}')
    return rows


def _database(flag_values):
    """The database ``CodeSet`` and its path."""
    workdir = flag_values['workdir'].value
    path = flag_values['database'].value or (workdir and os.path.join(
        workdir, 'codes', 'database.npz'))
    if not path or not os.path.isfile(path):
        raise UsageError(f'no database codes at {path!r}; run '
                         'nhl-jax encode --workdir=... first, or pass '
                         '--database')
    return retrieval.load_codes(path), path


def _bits(value, database, path) -> int:
    """``--bits``: one of the lengths the database's run trained."""
    if value is None:
        return max(database.lengths)
    if value not in database.lengths:
        raise UsageError(f'--bits={value} is not a length of the run of '
                         f'{path} ({list(database.lengths)}); pass one of '
                         'them, or leave it unset for the longest')
    return value


def _code_queries(flag_values, database, bits, rows):
    """(packed, labels or None, names) of ``--query_codes``."""
    path = flag_values['query_codes'].value
    packed, ids = retrieval.read_query_codes(path, bits, database=database)
    rows = _pick(rows, len(packed), path)
    labels = (retrieval.load_codes(path).labels[rows]
              if path.endswith('.npz') else None)
    names = ids[rows] if ids is not None else rows
    return packed[rows], labels, [f'id {n}' for n in names]


def _query_images(path, rows):
    """(images [Q, H, W, C] uint8, rows) of ``--query_images``."""
    images = checks.load_images(path, '--query_images')
    rows = _pick(rows, len(images), path)
    return images[rows], rows


def _run_queries(flag_values, database, bits, rows):
    """(packed, labels or None, names) of query images, encoded by the
    ``--workdir`` run, which must be the database's."""
    workdir = flag_values['workdir'].value
    if not workdir:
        raise UsageError('query images are encoded by a run: pass --workdir')
    split, image_file = (flag_values['query_split'].value,
                         flag_values['query_images'].value)
    if image_file:
        images, rows = _query_images(image_file, rows)
    from nhl_jax.cli import inference
    config = inference.read_config(workdir)
    source = retrieval.code_source(config.to_dict(), config.dataset)
    if image_file:
        del source['dataset']  # images of any dataset may be searched
    retrieval.check_source(source, database.source,
                           f'queries encoded by --workdir {workdir!r}')
    if split:
        ds = getattr(inference.load_data(config), split)
        rows = _pick(rows, len(ds.labels), f'the {split} split')
        images, labels = ds.images[rows], ds.labels[rows]
        names = [f'{split} id {i}' for i in ds.ids[rows]]
    else:
        labels, names = None, [f'image {r}' for r in rows]
    run = inference.load_run(
        workdir, params=flag_values['params'].value or database.params,
        input_shape=images.shape[1:])
    return inference.encode_images(run, images, bits), labels, names


def _queries(flag_values, database, bits):
    """(packed [Q, ceil(bits / 8)], labels [Q, C] or None, names [Q])."""
    sources = [flag_values[name].value
               for name in ('query_codes', 'query_images', 'query_split')]
    if sum(s is not None for s in sources) != 1:
        raise UsageError('pass exactly one of --query_codes, --query_images, '
                         '--query_split')
    rows = _index_rows(flag_values['query_index'].value)
    if flag_values['query_codes'].value:
        return _code_queries(flag_values, database, bits, rows)
    return _run_queries(flag_values, database, bits, rows)


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


def _search(flag_values, db_packed, q_packed, bits):
    """[(rows, distances)] per query."""
    backend, radius = (flag_values['backend'].value,
                       flag_values['radius'].value)
    options = ({'kind': flag_values['faiss_kind'].value}
               if backend == 'faiss' else {})
    searcher = retrieval.build_index(db_packed, bits, backend=backend,
                                     **options)
    if radius is not None:
        found = searcher.range_search(q_packed, radius)
        return [found.of(q) for q in range(len(q_packed))]
    found = searcher.search(q_packed, flag_values['k'].value)
    return list(zip(found.indices, found.distances))


def _write_hits(path, flag_values, database, names, bits, result) -> None:
    radius = flag_values['radius'].value
    hits = [{'query': name, 'rows': rows.tolist(),
             'ids': database.ids[rows].tolist(),
             'distances': dist.tolist()}
            for name, (rows, dist) in zip(names, result)]
    checks.make_folder(path)
    with open(path, 'w') as f:
        json.dump({'bits': bits, 'backend': flag_values['backend'].value,
                   'radius': radius,
                   'k': None if radius is not None else flag_values['k'].value,
                   'hits': hits}, f, indent=1)
    print(f'wrote {path}')


def run(flag_values=FLAGS) -> list:
    """The search of parsed flags, as ``main`` does it: prints the table
    and writes ``--output``; tests call it in-process.

    Returns:
      [(rows, distances)] per query.

    Raises:
      UsageError: a bad flag or file, before any encoding or search.
    """
    output = flag_values['output'].value
    if output:
        output = checks.writable_file(output, '--output')
    database, path = _database(flag_values)
    bits = _bits(flag_values['bits'].value, database, path)
    q_packed, labels, names = _queries(flag_values, database, bits)
    result = _search(flag_values, retrieval.codes_of_length(database, bits),
                     q_packed, bits)
    _table(result, database, labels, names, bits, flag_values['show'].value)
    if output:
        _write_hits(output, flag_values, database, names, bits, result)
    return result


def main(argv):
    """nhl-jax search: top-k or radius search of a run's database codes."""
    del argv
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore
    try:
        run()
    except (ValueError, ImportError) as e:  # UsageError is a ValueError
        sys.exit(f'error: {e}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    command.run(main, define_flags, argv, defines='query_codes')


if __name__ == '__main__':
    cli()
