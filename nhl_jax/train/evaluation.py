"""The one evaluation path of every system: encode splits, score by name.

A system's encoder maps images to one row of continuous outputs [B, W];
``CodeLayout`` says which columns are the code of each length (a prefix of
a nested layer, or the block of one of MAH's heads). Evaluators are chosen
by name, as big_vision chooses its evaluators::

    maps = evaluate_lengths(encode, params, rest, splits, layout,
                            evaluators=('symmetric',), top_k=None,
                            mesh=mesh)
    maps['symmetric']['16']  # mAP of the 16-bit codes

- ``'symmetric'``: sign(net(query)) against sign(net(database)), the
  standard protocol of every dataset, ties ordered by database index;
- ``'symmetric_expected'``: the same codes, scored by the exact expectation
  of mAP over random orders of equal-distance items (``ties='expected'`` of
  ``nhl_jax.retrieval.ranking``), which does not depend on the database order;
- ``'asymmetric'``: sign(net(query)) against learned database codes V of
  the rows that own one (ADSH / MAH; ``extra_codes`` and their labels).

Encoding runs on the training mesh when one is given: every global batch
is split over all devices of all processes, each process loading only its
rows (``parallel.process_slice``); the signs are taken on the devices,
packed, and each process copies its rows of a batch to the host while the
next batch encodes, then the processes all-gather their rows once. No
program depends on the number of batches (one operand per batch made the
gather of a 1M-row database take 24 s to compile). Without a mesh, one
device encodes.

A run scores its first evaluator at every evaluation (best parameters,
patience) and the others only where their numbers are reported: the
lengths whose best parameters an evaluation replaced, and every length at
the last evaluation (``scorer``, ``scheduled_lengths``).

The JAX ranking (on a GPU or TPU) splits its query chunks over the
mesh's devices of this process.

Evaluation reads only parameters and batch statistics; it never touches a
loss state or memory bank.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import grain
import jax
import numpy as np

from nhl_jax import compiler, data, parallel, runlog
from nhl_jax.data import pipeline
from nhl_jax.retrieval import codes
from nhl_jax.retrieval.metrics import mean_average_precision


class CodeLayout(NamedTuple):
    """Where each length's code sits in an encoder's output row.

    Attributes:
      bits: the sorted code lengths.
      nested: True when length b is the first b columns (NHL, ODH); False
        when the lengths are consecutive blocks (MAH's flat / cascade heads
        give sum(bits) columns).
    """

    bits: tuple[int, ...]
    nested: bool = True

    def columns(self, b: int) -> slice:
        """The columns of length ``b`` in an output row."""
        if self.nested:
            return slice(0, b)
        end = int(np.cumsum(self.bits)[self.bits.index(b)])
        return slice(end - b, end)


def encode_outputs(encode: Callable, params, rest, ds, batch_size: int, *,
                   workers: int = 0, mesh=None,
                   desc: str = 'encode') -> np.ndarray:
    """Continuous outputs [N, W] of a whole dataset, in its row order.

    Args:
      encode: jitted ``(params, rest, images [B, H, W, C]) -> [B, W]``.
      params: the parameters (host arrays, or device arrays replicated
        over ``mesh``).
      rest: the other model variables.
      ds: an ``ArrayDataset`` or ``FileDataset``.
      batch_size: images per forward pass (the last batch is padded);
        with a mesh, the global batch, rounded up to a multiple of its
        devices.
      workers: decoding processes for file datasets (0: inline).
      mesh: a data mesh (``parallel.make_mesh``) to split every batch
        over, with each process loading only its rows; None encodes on
        one device.
      desc: the label of its progress bar (on a terminal).
    """
    if mesh is not None:
        return _encode_sharded(encode, params, rest, ds, batch_size,
                               workers, mesh, signs=False, desc=desc)
    outputs = []
    batches = data.eval_batches(ds, batch_size, workers=workers)
    for batch in runlog.bar(batches, total=-(-len(ds.labels) // batch_size),
                            desc=desc):
        h = np.asarray(encode(params, rest, batch['image']))
        outputs.append(h[: batch['valid']])
    return np.concatenate(outputs)


def encode_codes(encode: Callable, params, rest, ds, batch_size: int, *,
                 workers: int = 0, mesh=None,
                 desc: str = 'encode') -> np.ndarray:
    """±1 codes [N, W] of a whole dataset: ``sign_codes`` of its outputs.

    With a mesh, the signs are taken on the devices and gathered as
    packed bits, 1/32 of the float32 outputs. Arguments as
    ``encode_outputs``.

    Returns:
      [N, W] int8 codes of -1 and +1 (+1 where an output is 0).

    Raises:
      ValueError: if an output is NaN (a diverged model has no sign).
    """
    if mesh is None:
        return codes.sign_codes(encode_outputs(
            encode, params, rest, ds, batch_size, workers=workers,
            desc=desc))
    packed, nan, width = _encode_sharded(encode, params, rest, ds,
                                         batch_size, workers, mesh,
                                         signs=True, desc=desc)
    if nan.any():  # the same error as sign_codes
        codes.sign_codes(np.array([np.nan]))
    return codes.unpack_codes(packed, width)


def _encode_sharded(encode, params, rest, ds, batch_size, workers, mesh, *,
                    signs, desc='encode'):
    """``encode_outputs`` / ``encode_codes`` over the devices of ``mesh``.

    Returns:
      [N, W] outputs, or ([N, ceil(W / 8)] uint8 packed signs, [N] bool
      NaN rows, W) when ``signs``.
    """
    pipeline.check_source(ds)
    devices = mesh.devices.size
    batch = -(-batch_size // devices) * devices
    fn = _sharded_encoder(encode, mesh, signs)
    params, rest = parallel.replicate((params, rest), mesh)
    blocks, pending = [], None
    for local in runlog.bar(_process_images(ds, batch, workers),
                            total=-(-len(ds.labels) // batch), desc=desc):
        images = parallel.global_batch({'image': local}, mesh, batch)['image']
        running = fn(params, rest, images)
        if pending is not None:  # copied while ``running`` runs
            blocks.append(_local_rows(pending))
        pending = running
    blocks.append(_local_rows(pending))
    # The padding rows are all at the end.
    gathered = _across_processes(
        jax.tree.map(lambda *rows: np.concatenate(rows), *blocks),
        batch // jax.process_count())
    num_rows = len(ds.labels)
    if not signs:
        return gathered[:num_rows]
    packed, nan = gathered
    width = jax.eval_shape(encode, params, rest, images).shape[1]
    return packed[:num_rows], nan[:num_rows], width


def _process_images(ds, batch: int, workers: int):
    """This process's rows of every global batch, in order, padded.

    The last global batch is padded with copies of the last row (as
    ``data.eval_batches``), so every batch has one shape.
    """
    num_rows = len(ds.labels)
    rows = parallel.process_slice(batch)
    indices = [np.pad(np.arange(start, min(start + batch, num_rows)),
                      (0, max(0, start + batch - num_rows)),
                      mode='edge')[rows]
               for start in range(0, num_rows, batch)]
    dataset = grain.MapDataset.source(indices).map(_images_fn(ds))
    return pipeline.iterate(dataset, workers, source=ds)


def _images_fn(ds):
    # A closure, not a partial: grain names transforms by their repr.
    return lambda index: pipeline.gather_batch(ds, index)['image']


@functools.lru_cache(maxsize=16)
def _sharded_encoder(encode, mesh, signs: bool):
    """``encode`` jitted with the batch split over ``mesh``."""
    post = codes.pack_jax if signs else (lambda h: h)
    return compiler.jit(lambda p, r, x: post(encode(p, r, x)), mesh=mesh,
                        in_shardings=(parallel.replicated(mesh),
                                      parallel.replicated(mesh),
                                      parallel.batch_sharding(mesh)),
                        out_shardings=parallel.batch_sharding(mesh))


def _local_rows(tree):
    """This process's rows of a batch-sharded pytree, as host arrays.

    Its devices hold consecutive rows (``parallel.process_slice``), here
    put in row order.
    """
    def rows(x):
        shards = sorted(x.addressable_shards,
                        key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards])

    return jax.tree.map(rows, tree)


def _across_processes(local, rows_per_batch: int):
    """Every process's rows of every batch, in the global row order.

    Args:
      local: a pytree of this process's [num_batches * r, ...] rows, r =
        ``rows_per_batch``, r rows of each batch in turn.
      rows_per_batch: r, each process's share of a global batch.

    Returns:
      The pytree of [num_batches * r * P, ...] rows of the P processes,
      ordered by batch and then by process (each batch's global order).
    """
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils
    every = multihost_utils.process_allgather(local)  # [P, batches * r]

    def interleave(x):
        by_batch = x.reshape(x.shape[0], -1, rows_per_batch, *x.shape[2:])
        return np.swapaxes(by_batch, 0, 1).reshape(-1, *x.shape[2:])

    return jax.tree.map(interleave, every)


class EvalInputs(NamedTuple):
    """What an evaluator reads: binarised codes and labels of each side.

    Attributes:
      layout: the ``CodeLayout`` of the encoder.
      query: [Q, W] ±1 codes of the query split.
      query_labels: [Q, C].
      database: [N, W] ±1 codes of the database split (None if no
        evaluator needs them).
      database_labels: [N, C].
      learned: per length, [N_v, b_k] learned database codes (MAH's V), or
        None for systems without them.
      learned_labels: [N_v, C] labels of the rows that own them.
      devices: the devices the JAX ranking spreads its query chunks
        over (``nhl_jax.retrieval.ranking_jax``); None: every local one.
    """

    layout: CodeLayout
    query: np.ndarray
    query_labels: np.ndarray
    database: np.ndarray | None
    database_labels: np.ndarray
    learned: tuple[np.ndarray, ...] | None = None
    learned_labels: np.ndarray | None = None
    devices: tuple | None = None


def symmetric(inputs: EvalInputs, *, top_k=None, bits=None
              ) -> dict[str, float]:
    """mAP per length: network codes of the query vs of the database.

    Args:
      inputs: the ``EvalInputs``.
      top_k: mAP cut-off (None: all).
      bits: the lengths to score (None: all of ``inputs.layout``).
    """
    return _symmetric(inputs, top_k, bits, 'stable')


def symmetric_expected(inputs: EvalInputs, *, top_k=None, bits=None
                       ) -> dict[str, float]:
    """``symmetric``'s mAP, ties='expected': its exact expectation over
    random orders of equal-distance items (``nhl_jax.retrieval``)."""
    return _symmetric(inputs, top_k, bits, 'expected')


def _symmetric(inputs, top_k, bits, ties):
    layout = inputs.layout
    return {str(b): float(mean_average_precision(
        inputs.query[:, layout.columns(b)], inputs.query_labels,
        inputs.database[:, layout.columns(b)], inputs.database_labels,
        top_k=top_k, ties=ties, devices=inputs.devices))
        for b in _lengths(layout, bits)}


def asymmetric(inputs: EvalInputs, *, top_k=None, bits=None
               ) -> dict[str, float]:
    """mAP per length: network codes of the query vs learned codes V.

    Args: as ``symmetric``'s.

    References:
      ADSH (Jiang and Li, AAAI 2018) and MAH, arXiv 1809.09329: queries are
      encoded by the network, the database is its learned discrete codes.
    """
    if inputs.learned is None:
        raise ValueError('the asymmetric evaluator needs learned database '
                         'codes (MAH); use the symmetric one.')
    layout = inputs.layout
    learned = dict(zip(layout.bits, inputs.learned))
    return {str(b): float(mean_average_precision(
        inputs.query[:, layout.columns(b)], inputs.query_labels,
        codes.sign_codes(learned[b]), inputs.learned_labels, top_k=top_k,
        devices=inputs.devices)) for b in _lengths(layout, bits)}


def _lengths(layout, bits) -> tuple[int, ...]:
    """The layout's lengths among ``bits`` (None: all), in its order."""
    return layout.bits if bits is None else tuple(
        b for b in layout.bits if b in set(bits))


# name -> evaluator(inputs, *, top_k) -> {str(bits): mAP}.
EVALUATORS = {
    'symmetric': symmetric,
    'symmetric_expected': symmetric_expected,
    'asymmetric': asymmetric,
}

# Evaluators that need the database split encoded by the network.
_NEEDS_DATABASE = frozenset({'symmetric', 'symmetric_expected'})


def get_evaluator(name: str) -> Callable:
    """The evaluator ``name``; raises listing the valid names."""
    if name not in EVALUATORS:
        raise ValueError(f'Unknown evaluator {name!r}; choose one of '
                         f'{sorted(EVALUATORS)}.')
    return EVALUATORS[name]


def evaluate_lengths(encode: Callable, params, rest, splits, layout, *,
                     evaluators: Sequence[str] = ('symmetric',),
                     batch_size: int = 500, top_k=None, workers: int = 0,
                     learned=None, learned_labels=None, mesh=None
                     ) -> Mapping[str, dict[str, float]]:
    """Every named evaluator's mAP per length, each split encoded once.

    Args:
      encode: jitted ``(params, rest, images) -> [B, W]``.
      params: parameters.
      rest: other model variables.
      splits: ``data.Splits`` (query and database are read).
      layout: a ``CodeLayout`` (or a bits tuple: nested prefixes).
      evaluators: keys of ``EVALUATORS``.
      batch_size: images per forward pass.
      top_k: mAP cut-off (None: all).
      workers: decoding processes for file datasets.
      learned: per length, learned database codes [N_v, b_k] (MAH's V).
      learned_labels: [N_v, C] their labels.
      mesh: the data mesh to encode over (``encode_outputs``) and to
        rank on (its devices of this process); None encodes on one
        device and ranks on every local one.

    Returns:
      {evaluator name: {str(bits): mAP}}.
    """
    if not isinstance(layout, CodeLayout):
        layout = CodeLayout(tuple(layout))
    run = scorer(encode, params, rest, splits, layout, batch_size=batch_size,
                 top_k=top_k, workers=workers, learned=learned,
                 learned_labels=learned_labels, mesh=mesh)
    return run(dict.fromkeys(evaluators, layout.bits))


def scorer(encode: Callable, params, rest, splits, layout: CodeLayout, *,
           batch_size: int = 500, top_k=None, workers: int = 0,
           learned=None, learned_labels=None, mesh=None) -> Callable:
    """``evaluate_lengths`` in parts: one encoding, scored in several calls.

    Arguments as ``evaluate_lengths``'s. A split is encoded when an
    evaluator first needs it (the database only for the symmetric ones),
    and then kept, so a run can score its first evaluator, decide which
    lengths the others need (``scheduled_lengths``) and score those
    without encoding again.

    Returns:
      A function ``{evaluator name: lengths} -> {name: {str(bits): mAP}}``
      (names with no lengths are left out); unknown names raise before
      anything is encoded.
    """
    @functools.cache
    def codes_of(split):
        return encode_codes(encode, params, rest, getattr(splits, split),
                            batch_size, workers=workers, mesh=mesh,
                            desc=f'encode {split}')

    devices = None if mesh is None else tuple(
        d for d in mesh.devices.flat if d.process_index == jax.process_index())
    learned = None if learned is None else tuple(np.asarray(v)
                                                 for v in learned)

    def run(lengths: Mapping[str, Sequence[int]]):
        fns = {name: get_evaluator(name) for name in lengths}
        wanted = {name: bits for name, bits in lengths.items() if bits}
        if not wanted:
            return {}
        inputs = EvalInputs(
            layout, codes_of('query'), splits.query.labels,
            codes_of('database') if _NEEDS_DATABASE & set(wanted) else None,
            splits.database.labels, learned, learned_labels, devices)
        return {name: fns[name](inputs, top_k=top_k, bits=bits)
                for name, bits in wanted.items()}

    return run


def scheduled_lengths(evaluators: Sequence[str], bits: Sequence[int], *,
                      improved: Sequence[int], final: bool
                      ) -> dict[str, tuple[int, ...]]:
    """The lengths each of a run's other evaluators scores at an evaluation.

    The first evaluator scores every length first: it alone selects the
    best parameters and drives patience. The others are reported for
    the parameters kept as best (``map_<name>``) and at the last
    evaluation (``map_<name>_last``), so they score only the lengths
    whose best parameters this evaluation replaced, and every length at
    the last one (the last round, or the one that stops the run early).

    Args:
      evaluators: the run's evaluator names, the first the primary.
      bits: the run's lengths.
      improved: the lengths whose best first-evaluator mAP this
        evaluation raised.
      final: whether this evaluation is the run's last.

    Returns:
      {name: lengths} of the evaluators after the first, in ``bits``'
      order (empty where nothing is needed).
    """
    improved = set(improved)
    wanted = tuple(b for b in bits if final or b in improved)
    return dict.fromkeys(evaluators[1:], wanted)
