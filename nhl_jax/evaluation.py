"""The one evaluation path of every system: encode splits, score by name.

A system's encoder maps images to one row of continuous outputs [B, W];
``CodeLayout`` says which columns are the code of each length (a prefix of
a nested layer, or the block of one of MAH's heads). Evaluators are chosen
by name, as big_vision chooses its evaluators::

    maps = evaluate_lengths(encode, params, rest, splits, layout,
                            evaluators=('symmetric',), top_k=None)
    maps['symmetric']['16']  # mAP of the 16-bit codes

- ``'symmetric'``: sign(net(query)) against sign(net(database)), the
  standard protocol of every dataset;
- ``'asymmetric'``: sign(net(query)) against learned database codes V of
  the rows that own one (ADSH / MAH; ``extra_codes`` and their labels).

Evaluation reads only parameters and batch statistics; it never touches a
loss state or memory bank.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from nhl_jax import data, evaluate


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


def encode_dataset(encode: Callable, params, rest, ds, batch_size: int, *,
                   workers: int = 0) -> np.ndarray:
    """Continuous outputs [N, W] of a whole dataset, in its row order.

    Args:
      encode: jitted ``(params, rest, images [B, H, W, C]) -> [B, W]``.
      params: the parameters (host or device arrays).
      rest: the other model variables.
      ds: an ``ArrayDataset`` or ``FileDataset``.
      batch_size: images per forward pass (the last batch is padded).
      workers: decoding processes for file datasets (0: inline).
    """
    outputs = []
    for batch in data.eval_batches(ds, batch_size, workers=workers):
        h = np.asarray(encode(params, rest, batch['image']))
        outputs.append(h[: batch['valid']])
    return np.concatenate(outputs)


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
    """

    layout: CodeLayout
    query: np.ndarray
    query_labels: np.ndarray
    database: np.ndarray | None
    database_labels: np.ndarray
    learned: tuple[np.ndarray, ...] | None = None
    learned_labels: np.ndarray | None = None


def symmetric(inputs: EvalInputs, *, top_k=None) -> dict[str, float]:
    """mAP per length: network codes of the query vs of the database."""
    layout = inputs.layout
    return {str(b): float(evaluate.mean_average_precision(
        inputs.query[:, layout.columns(b)], inputs.query_labels,
        inputs.database[:, layout.columns(b)], inputs.database_labels,
        top_k=top_k)) for b in layout.bits}


def asymmetric(inputs: EvalInputs, *, top_k=None) -> dict[str, float]:
    """mAP per length: network codes of the query vs learned codes V.

    References:
      ADSH (Jiang and Li, AAAI 2018) and MAH, arXiv 1809.09329: queries are
      encoded by the network, the database is its learned discrete codes.
    """
    if inputs.learned is None:
        raise ValueError('the asymmetric evaluator needs learned database '
                         'codes (MAH); use the symmetric one.')
    layout = inputs.layout
    return {str(b): float(evaluate.mean_average_precision(
        inputs.query[:, layout.columns(b)], inputs.query_labels,
        evaluate.sign_codes(v), inputs.learned_labels, top_k=top_k))
        for b, v in zip(layout.bits, inputs.learned)}


# name -> evaluator(inputs, *, top_k) -> {str(bits): mAP}.
EVALUATORS = {
    'symmetric': symmetric,
    'asymmetric': asymmetric,
}

# Evaluators that need the database split encoded by the network.
_NEEDS_DATABASE = frozenset({'symmetric'})


def get_evaluator(name: str) -> Callable:
    """The evaluator ``name``; raises listing the valid names."""
    if name not in EVALUATORS:
        raise ValueError(f'Unknown evaluator {name!r}; choose one of '
                         f'{sorted(EVALUATORS)}.')
    return EVALUATORS[name]


def evaluate_lengths(encode: Callable, params, rest, splits, layout, *,
                     evaluators: Sequence[str] = ('symmetric',),
                     batch_size: int = 500, top_k=None, workers: int = 0,
                     learned=None, learned_labels=None
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

    Returns:
      {evaluator name: {str(bits): mAP}}.
    """
    if not isinstance(layout, CodeLayout):
        layout = CodeLayout(tuple(layout))
    fns = {name: get_evaluator(name) for name in evaluators}

    def codes(ds):
        return evaluate.sign_codes(encode_dataset(
            encode, params, rest, ds, batch_size, workers=workers))

    inputs = EvalInputs(
        layout, codes(splits.query), splits.query.labels,
        codes(splits.database) if _NEEDS_DATABASE & set(fns) else None,
        splits.database.labels,
        None if learned is None else tuple(np.asarray(v) for v in learned),
        learned_labels)
    return {name: fn(inputs, top_k=top_k) for name, fn in fns.items()}
