"""A trained run as an encoder: restore it, export codes, score retrieval.

A run directory (``nhl-jax train``, any system) holds ``config.json``
and orbax checkpoints; ``load_run`` resolves the config into its
``RunSpec``, rebuilds the system's model and restores either the final
parameters (``params='last'``: ONE model; for a nested system every length
is a prefix of one code) or each length's best model (``'best'``, the ones
results.json's ``map`` reports, with their own batch statistics).
``export_codes`` then writes packed codes per split and a retrieval
summary::

    run = load_run('runs/mnist5k_dpn', params='last',
                   input_shape=(28, 28, 1))
    query = encode_dataset(run, splits.query)        # a retrieval.CodeSet
    summary = code_set_metrics(query, database, top_k=None)

Per system: NHL and ODH codes come from their network (ODH's binary
hasher); MAH's database is what its asymmetric protocol searches, the
learned codes V of the rows that own them (``mah.v_split``), while queries
are encoded by its network.
"""

import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from nhl_jax import checks, data, retrieval, runlog, train
from nhl_jax.cli import config as config_lib
from nhl_jax.cli import registry as systems
from nhl_jax.errors import UsageError
from nhl_jax.retrieval.codes import pack_jax
from nhl_jax.train import checkpoint, evaluation


class _Part(NamedTuple):
    """One restored training run: the joint run, or one ``len_<b>``."""

    bits: tuple[int, ...]
    encode: Callable[..., Any]  # jitted (params, rest, images) -> [B, W]
    params: dict[int, Any]  # length -> nnx.State parameters
    rest: dict[int, Any]  # length -> nnx.State of the other variables
    directory: str  # where its checkpoints are


class TrainedRun(NamedTuple):
    """A run restored for inference (``load_run``).

    Attributes:
      config: the run's ConfigDict (from config.json).
      spec: its resolved ``RunSpec``.
      bits: every trained length, sorted.
      params: 'last' or 'best'.
      parts: the restored models: one for a joint run, one per length for a
        ``single_length`` run.
      layout: where each length's code is in the encoder output.
    """

    config: ml_collections.ConfigDict
    spec: train.RunSpec
    bits: tuple[int, ...]
    params: str
    parts: tuple[_Part, ...]
    layout: evaluation.CodeLayout

    @property
    def system(self) -> train.System:
        """The run's training system."""
        return systems.SYSTEMS[self.spec.system]

    @property
    def nested(self) -> bool:
        """True when all lengths are prefixes of one model's code."""
        return (self.params == 'last' and len(self.parts) == 1
                and self.layout.nested)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of the NHL run in ``workdir``.

    Raises:
      UsageError: if ``workdir`` holds no run, or a run of another system.
    """
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
        raise UsageError(f'{workdir!r} holds no run (no config.json); pass '
                         'the --workdir of a finished nhl-jax train run.')
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except (ValueError, TypeError) as e:
        raise UsageError(f'{path} is not a run config ({e}); was it '
                         'written by nhl-jax train?') from None
    if config.get('method') not in systems.methods():
        raise UsageError(
            f'{path} names method {config.get("method")!r}, which this '
            f'version does not know; choose a run of one of '
            f'{sorted(systems.methods())}.')
    with config.unlocked():
        config.bits = tuple(int(b) for b in config.bits)
    return config


def load_data(config, *, dataset: str | None = None,
              data_dir: str | None = None) -> data.Splits:
    """The splits to encode: the run's dataset, or ``dataset`` instead."""
    try:
        return data.load_splits(dataset or config.dataset, seed=config.seed,
                                data_dir=data_dir or config.get('data_dir'),
                                options=data.DataOptions.of(config))
    except UsageError:
        raise
    except ValueError as e:  # unknown dataset, missing data_dir, ...
        raise UsageError(str(e)) from None


def load_run(workdir: str, *, params: str = 'last', input_shape,
             num_classes: int | None = None) -> TrainedRun:
    """Rebuilds a run's model and restores its latest checkpoint.

    Args:
      workdir: the run directory.
      params: 'last' (final parameters) or 'best' (best model per length).
      input_shape: (H, W, C) of the images to encode (the training ones).
      num_classes: C (default: the run's dataset's); shapes ODH's
        classifier and centres.

    Returns:
      The ``TrainedRun``.

    Raises:
      UsageError: no run, no checkpoint, or weights that do not fit.
    """
    if params not in retrieval.PARAMS:
        raise UsageError(f'Unknown params {params!r}; choose one of '
                         f'{list(retrieval.PARAMS)}.')
    config = read_config(workdir)
    with config.unlocked():
        config.pretrained = None  # restored below; never read the file
        config.devices = None  # any device count can encode
        if 'odh' in config:
            config.odh.classifier_pretrained = None
    spec = config_lib.resolve(config)
    if num_classes is None:
        num_classes = data.get_spec(spec.dataset, spec.data_dir).num_classes
    info = train.DataInfo(tuple(input_shape), num_classes,
                          dict.fromkeys(data.Splits._fields, 1))
    parts = tuple(_restore(spec, run_dir, bits, params, info)
                  for bits, run_dir in train.training_runs(spec, workdir))
    return TrainedRun(config, spec, spec.bits, params, parts,
                      systems.SYSTEMS[spec.system].layout(spec.bits))


def _restore(spec, run_dir, bits, params, info):
    setup, model = _abstract_model(spec, bits, info)
    wanted = {'state': model}
    if params == 'best':
        wanted = {'best': {str(b): model for b in bits}}
    restored = _read(run_dir, wanted, tuple(info.image_shape))
    if params == 'best':
        per_length = {b: restored['best'][str(b)] for b in bits}
    else:
        per_length = dict.fromkeys(bits, restored['state'])
    return _Part(bits, train.compile_encode(setup),
                 {b: m['params'] for b, m in per_length.items()},
                 {b: m['rest'] for b, m in per_length.items()}, run_dir)


def _read(run_dir, wanted, input_shape=None):
    """Restores the subtrees ``wanted`` of the latest checkpoint items."""
    with checkpoint.manager(run_dir) as mngr:
        latest = mngr.latest_step()
        if latest is None:
            raise UsageError(f'{run_dir!r} holds no checkpoint; train it '
                             'first (nhl-jax train).')
        try:
            meta = checkpoint.read_meta(mngr, latest)
            where = checkpoint.stored_best(meta, wanted.get('best', {}))
            request = dict(wanted)
            if 'best' in wanted:  # each entry as it was saved, once
                request['best'] = {where[k]: v
                                   for k, v in wanted['best'].items()}
            for name, tree in request.items():
                _check_shapes(mngr.directory / str(latest) / name, tree,
                              input_shape)
            restored = checkpoint.restore_items(mngr, latest, **{
                name: _partial_restore(tree)
                for name, tree in request.items()})
            checkpoint.verify(meta, restored)
        except checkpoint.Unverified as e:
            raise UsageError(
                f'checkpoint {latest} of {run_dir!r} fails verification '
                f'({e}); nhl-jax train --resume on the run restores the '
                'newest one that verifies, or retrain it.') from None
    if 'best' in wanted:
        restored['best'] = {k: restored['best'][where[k]] for k in where}
    return restored


def learned_codes(run: TrainedRun) -> dict[int, np.ndarray] | None:
    """The learned database codes per length (MAH's V), or None.

    With ``params='best'`` each length's V is the one saved with its best
    model; with 'last' the final V.
    """
    if run.system.learned_split(run.spec) is None:
        return None
    codes = {}
    for part in run.parts:
        item = 'best' if run.params == 'best' else 'state'
        saved = _saved_tree(pathlib.Path(part.directory), item)
        if run.params == 'best':
            where = _stored_best(part.directory, part.bits)
            wanted = {'best': {str(b): {
                'codes': _like(saved[where[str(b)]]['codes'])}
                for b in part.bits}}
            got = _read(part.directory, wanted)['best']
            codes.update({b: got[str(b)]['codes'] for b in part.bits})
        else:
            wanted = {'state': {'extra': {'codes': [
                _like(c) for c in saved['extra']['codes']]}}}
            got = _read(part.directory, wanted)['state']['extra']['codes']
            codes.update(dict(zip(part.bits, got)))
    return {b: np.asarray(v) for b, v in codes.items()}


def _stored_best(run_dir, bits) -> dict[str, str]:
    """``checkpoint.stored_best`` of the latest checkpoint of ``run_dir``."""
    with checkpoint.manager(str(run_dir)) as mngr:
        try:
            meta = checkpoint.read_meta(mngr, mngr.latest_step())
        except checkpoint.Unverified:
            meta = {}  # the read that follows names the failure
    return checkpoint.stored_best(meta, [str(b) for b in bits])


def _saved_tree(run_dir: pathlib.Path, item: str):
    with checkpoint.manager(str(run_dir)) as mngr:
        directory = mngr.directory / str(mngr.latest_step()) / item
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return handler.metadata(directory).tree
    finally:
        handler.close()


def _like(meta):
    return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype)


def _check_shapes(item_dir, tree, input_shape=None) -> None:
    """Compares the model's shapes with the saved ones, before restoring.

    A failed orbax restore leaves pending reads behind, so a model built
    for other images is refused here from the checkpoint's metadata.
    """
    handler = ocp.PyTreeCheckpointHandler()
    try:
        saved = handler.metadata(item_dir).tree
    finally:
        handler.close()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = saved
        for key in path:
            name = checkpoint.leaf_name((key,))
            if isinstance(node, (list, tuple)) and name.isdigit():
                node = node[int(name)] if int(name) < len(node) else None
            else:
                node = node.get(name) if isinstance(node, dict) else None
        shape = getattr(node, 'shape', None)
        if shape is None or tuple(shape) != tuple(leaf.shape):
            raise UsageError(
                f'the checkpoint in {os.path.dirname(str(item_dir))!r} does '
                f'not fit the model for images of shape {input_shape} '
                f'({jax.tree_util.keystr(path)}: saved '
                f'{None if shape is None else tuple(shape)}, model '
                f'{tuple(leaf.shape)}); encode the dataset it was trained '
                'on, or one with the same image shape.')


def _abstract_model(spec, bits, info):
    """The system's setup and the shapes of its params and rest.

    Traced by ``jax.eval_shape``, so nothing is initialised or compiled
    (the loss states alone took seconds to build on a CPU); the static
    setup is taken out of the trace.
    """
    setup = []

    def build():
        s, state = systems.create_train_state(spec, info, bits)
        setup.append(s)
        return {'params': state.params, 'rest': state.rest}

    shapes = jax.eval_shape(build)
    return setup[0], shapes


def _partial_restore(tree):
    """Restores just ``tree``'s leaves of a saved item, on one device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        tree)
    return ocp.args.PyTreeRestore(
        item=abstract, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))


def encode_dataset(run: TrainedRun, ds, *,
                   batch_size: int | None = None) -> retrieval.CodeSet:
    """Packed codes of every length for a whole dataset, in order.

    Args:
      run: from ``load_run``.
      ds: an ``ArrayDataset`` or ``FileDataset``.
      batch_size: images per forward pass (default: the run's
        ``eval_batch_size``).

    Returns:
      An ``retrieval.CodeSet``: for a nested run only the longest code is
      stored (``retrieval.codes_of_length`` cuts the others).
    """
    checks.positive_or_unset(batch_size, 'batch_size',
                             "the run's eval_batch_size")
    batch_size = batch_size or run.spec.eval_batch_size
    packed = {}
    for lengths, encode, params, rest in _models(run):
        h = evaluation.encode_outputs(encode, params, rest, ds, batch_size,
                                      workers=run.spec.data_workers)
        codes = retrieval.sign_codes(h)  # [N, W] ±1
        kept = lengths[-1:] if run.nested else lengths
        packed.update({b: retrieval.pack_codes(
            codes[:, run.layout.columns(b)]) for b in kept})
    return retrieval.CodeSet(packed, run.bits,
                             np.asarray(ds.labels, np.float32),
                             np.asarray(ds.ids, np.int64), run.params,
                             run.nested)


def learned_code_set(run: TrainedRun, ds) -> retrieval.CodeSet:
    """The learned database codes of ``ds``'s rows as a ``CodeSet`` (MAH)."""
    codes = learned_codes(run)
    packed = {b: retrieval.pack_codes(retrieval.sign_codes(v))
              for b, v in codes.items()}
    return retrieval.CodeSet(packed, run.bits,
                             np.asarray(ds.labels, np.float32),
                             np.asarray(ds.ids, np.int64), run.params, False)


def packed_codes_fn(run: TrainedRun) -> Callable:
    """``encode_dataset``'s codes as one traceable function of images.

    For ``jax.jit`` or ``jax.export``: the same models and columns as
    ``encode_dataset``, with ``pack_jax`` for ``pack_codes(sign_codes(h))``.

    Returns:
      ``images [B, H, W, C] uint8 -> (codes, nan)``: ``codes`` a tuple of
      [B, ceil(b / 8)] uint8 packed codes, one per ``run.bits`` in order;
      ``nan`` [B] bool, the rows whose outputs hold NaN (no sign).
    """
    return codes_function(list(_models(run)), run.layout, run.bits)


def codes_function(models, layout: evaluation.CodeLayout,
                   bits: Sequence[int]) -> Callable:
    """``packed_codes_fn`` of models given directly (e.g. a fresh init).

    Args:
      models: (lengths, encode, params, rest) per model, ``encode`` as
        ``train.compile_encode``'s: ``(params, rest, images) -> [B, W]``.
      layout: where each length's code is in the outputs.
      bits: the lengths, in the order of the returned codes.
    """
    def codes_of(images):
        packed, nan = {}, []
        for lengths, encode, params, rest in models:
            h = encode(params, rest, images)  # [B, W]
            for b in lengths:
                packed[b], bad = pack_jax(h[:, layout.columns(b)])
                nan.append(bad)
        return tuple(packed[b] for b in bits), jnp.stack(nan).any(0)

    return codes_of


def _models(run: TrainedRun):
    """(lengths, encode, params, rest) of each distinct model of a run."""
    for part in run.parts:
        for lengths, (params, rest) in _distinct(part):
            yield lengths, part.encode, params, rest


def _distinct(part: _Part):
    """Groups lengths with identical models: one forward pass each."""
    groups = []
    for b in sorted(part.params):
        model = (part.params[b], part.rest[b])
        for lengths, seen in groups:
            if _same(seen, model):
                lengths.append(b)
                break
        else:
            groups.append(([b], model))
    return [(tuple(lengths), model) for lengths, model in groups]


def _same(a, b) -> bool:
    return a is b or all(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(a), jax.tree.leaves(b)))


def image_dataset(images, labels=None, *, what: str = 'images'):
    """An ``ArrayDataset`` of raw images [N, H, W, C] uint8, ids 0..N-1.

    Args:
      images: [N, H, W, C] uint8.
      labels: [N, C] labels, or None (a column of ones: unlabelled).
      what: what they are, for ``data.check_dataset``'s messages.
    """
    images = np.asarray(images)
    count = len(images)
    labels = (np.ones((count, 1), np.float32) if labels is None
              else np.asarray(labels, np.float32))
    if labels.ndim != 2 or len(labels) != count:
        raise UsageError(f'labels of {what} must be [N, C] with N = '
                         f'{count}, got shape {labels.shape}.')
    return data.check_dataset(data.ArrayDataset(
        images, labels, np.arange(count, dtype=np.int64)), what)


def encode_images(run: TrainedRun, images, bits: int, *,
                  batch_size: int | None = None) -> np.ndarray:
    """[Q, ceil(bits / 8)] packed codes of raw images [Q, H, W, C] uint8."""
    ds = image_dataset(images, what='query images')
    return retrieval.codes_of_length(
        encode_dataset(run, ds, batch_size=batch_size), bits)


def code_set_metrics(query: retrieval.CodeSet, database: retrieval.CodeSet, *,
                     top_k=None, map_at: Sequence[int] = (100, 1000),
                     precision_at: Sequence[int] = (1, 10, 100, 1000),
                     radius: int = 2) -> dict[str, dict]:
    """The retrieval summary of every trained length (``retrieval_metrics``).

    Per length: ``map`` (mAP@``top_k``, the run's protocol), ``map@<k>``,
    ``precision@<k>`` (ties by database row), precision and recall within
    ``radius`` (``precision@r2``: distance <= 2, the DCH protocol) and the
    precision-recall curve over Hamming radii 0..K.

    Returns:
      {str(bits): {...}}, JSON-serialisable.
    """
    cutoffs = tuple(dict.fromkeys((top_k, *map_at)))  # unique, in order
    summary = {}
    for b in query.lengths:
        codes = [retrieval.unpack_codes(retrieval.codes_of_length(s, b), b)
                 for s in (query, database)]
        values = retrieval.retrieval_metrics(
            codes[0], query.labels, codes[1], database.labels,
            map_at=cutoffs, precision_at=tuple(precision_at),
            radius=(radius,), pr_curve=True)
        precision, recall = values.pop('pr_curve')
        summary[str(b)] = dict(
            values, map=values[f'map@{"all" if top_k is None else top_k}'],
            pr_curve={'precision': np.asarray(precision).tolist(),
                      'recall': np.asarray(recall).tolist()})
    return summary


def export_codes(workdir: str, *, params: str = 'last',
                 dataset: str | None = None, data_dir: str | None = None,
                 splits: Sequence[str] = ('query', 'database'),
                 batch_size: int | None = None) -> dict:
    """Encodes splits of a dataset with a trained run; writes its outputs.

    Writes ``workdir/codes/<split>.npz`` (``retrieval.save_codes``) and, when
    both query and database are encoded, ``workdir/codes/metrics.json``.
    For a system with learned database codes (MAH) the 'database' export
    of its own dataset is those codes, of the rows that own them.

    Returns:
      {'paths': {split: path}, 'metrics': summary or None, 'top_k': k}.
    """
    config = read_config(workdir)
    checks.positive_or_unset(batch_size, 'batch_size',
                             "the run's eval_batch_size")
    unknown = sorted(set(splits) - set(data.Splits._fields))
    if unknown or not splits:
        raise UsageError(f'Unknown split(s) {unknown or splits}; choose from '
                         f'{list(data.Splits._fields)}.')
    sets = load_data(config, dataset=dataset, data_dir=data_dir)
    run = load_run_for(workdir, getattr(sets, splits[0]), params=params)
    out = os.path.join(workdir, 'codes')
    os.makedirs(out, exist_ok=True)
    codes, paths = {}, {}
    own_data = dataset in (None, config.dataset)
    # What `nhl-jax search` checks its queries against.
    source = retrieval.code_source(config.to_dict(),
                                   dataset or config.dataset)
    for name in splits:
        codes[name] = split_code_set(run, sets, name, own_data=own_data,
                                     batch_size=batch_size)._replace(
                                         source=source)
        paths[name] = os.path.join(out, f'{name}.npz')
        retrieval.save_codes(paths[name], codes[name])
    top_k = _top_k(config, dataset, data_dir)
    summary = None
    if {'query', 'database'} <= set(codes):
        summary = code_set_metrics(codes['query'], codes['database'],
                                   top_k=top_k)
        runlog.write_json_atomic(os.path.join(out, 'metrics.json'), {
            'params': params, 'dataset': dataset or config.dataset,
            'top_k': top_k, 'lengths': summary})
    return {'paths': paths, 'metrics': summary, 'top_k': top_k}


def load_run_for(workdir: str, ds, *, params: str = 'last') -> TrainedRun:
    """``load_run`` for images and labels shaped as those of ``ds``."""
    return load_run(workdir, params=params, input_shape=data.image_shape(ds),
                    num_classes=ds.labels.shape[1])


def split_code_set(run: TrainedRun, sets: data.Splits, name: str, *,
                   own_data: bool = True,
                   batch_size: int | None = None) -> retrieval.CodeSet:
    """The codes a split is searched by: encoded, or learned (MAH).

    Args:
      run: from ``load_run``.
      sets: the splits (``load_data``).
      name: the split, a field of ``data.Splits``.
      own_data: whether ``sets`` are the run's own dataset; only then is a
        system's 'database' its learned codes V, of the rows that own them.
      batch_size: as ``encode_dataset``.
    """
    learned = run.system.learned_split(run.spec)
    if name == 'database' and learned is not None and own_data:
        # The asymmetric protocol searches the learned codes V.
        return learned_code_set(run, getattr(sets, learned))
    return encode_dataset(run, getattr(sets, name), batch_size=batch_size)


def _top_k(config, dataset, data_dir):
    """The mAP cut-off: the run's, else the dataset's protocol."""
    if config.get('top_k') is not None and dataset in (None, config.dataset):
        return config.top_k
    return data.get_spec(dataset or config.dataset,
                         data_dir or config.get('data_dir')).top_k


def format_summary(summary: dict, *, top_k=None, radius: int = 2) -> str:
    """A per-length table of ``code_set_metrics``'s main numbers."""
    k = 'all' if top_k is None else top_k
    head = (f'{"bits":>6} {"mAP@" + str(k):>10} {"P@10":>8} '
            f'{f"P(r<={radius})":>9} {f"R(r<={radius})":>9}')
    lines = [head]
    for bits, entry in sorted(summary.items(), key=lambda kv: int(kv[0])):
        cells = [entry['map'], entry.get('precision@10'),
                 entry.get(f'precision@r{radius}'),
                 entry.get(f'recall@r{radius}')]
        lines.append(f'{bits:>6} ' + ' '.join(
            f'{v:>{w}.4f}' if v is not None else f'{"-":>{w}}'
            for v, w in zip(cells, (10, 8, 9, 9))))
    return '\n'.join(lines)
