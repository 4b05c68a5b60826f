"""Pieces shared by the base losses: similarity, norms, centres, checks."""

import typing
from collections.abc import Mapping
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax.checks import is_int
from nhl_jax.errors import UsageError
from nhl_jax.hparams import Range
from nhl_jax.types import Array, EmptyState, PRNGKey


class CentersState(NamedTuple):
    """State of a centre-based loss (CSQ, DPN, MDSH).

    Attributes:
      centers: [C, K] float32 in {-1, +1}, the target code of each class.
      fill: [K] float32 in {-1, +1}, the fixed random bits that fill the zero
        entries of a multi-label target ``sign(sum_c y_c centers_c)``.
    """

    centers: Array  # [C, K]
    fill: Array  # [K]


def stateless_init(key, *, num_train, num_classes, bits) -> EmptyState:
    """``init`` of the losses that keep no state (DTSH, LCDSH, DCH)."""
    del key, num_train, num_classes, bits
    return EmptyState()


def masked_mean(values: Array, mask: Array) -> Array:
    """The mean of ``values`` [B, K] over the columns ``mask`` [K] selects.

    ``jnp.mean(values[:, :b])`` for a mask of b leading ones, as the
    ``HashLoss.masked`` form of a loss needs it.
    """
    return jnp.sum(values * mask[None, :]) / (values.shape[0] * jnp.sum(mask))


def check_batch(codes: Array, labels: Array, index: Array, *,
                name: str = 'loss') -> None:
    """Static checks shared by every ``apply`` (free under jit): ranks, one
    batch size, integer rows.

    Raises:
      ValueError: one line naming the problem (``name``: the loss).
    """
    if jnp.ndim(codes) != 2 or jnp.ndim(labels) != 2 or jnp.ndim(index) != 1:
        raise ValueError(
            f'{name}: codes, labels and index must be [B, K], [B, C] and '
            f'[B], got shapes {jnp.shape(codes)}, {jnp.shape(labels)}, '
            f'{jnp.shape(index)}.')
    if not jnp.shape(codes)[0] == jnp.shape(labels)[0] == jnp.shape(index)[0]:
        raise ValueError(
            f'{name}: codes, labels and index disagree on the batch size: '
            f'{jnp.shape(codes)[0]}, {jnp.shape(labels)[0]}, '
            f'{jnp.shape(index)[0]}.')
    if not jnp.issubdtype(jnp.result_type(index), jnp.integer):
        raise ValueError(f'{name}: index must be integer rows, got dtype '
                         f'{jnp.result_type(index)}.')


def _state_sizes(state) -> tuple[int | None, int | None, int | None]:
    """(N, C, K) as the state's arrays fix them: banks [N, K] and labels
    [N, C], a ``CentersState``'s [C, K], a codebook [C, K]; None where the
    state does not say."""
    fields = getattr(state, '_asdict', dict)()
    n = c = k = None
    if 'labels' in fields:
        n, c = fields['labels'].shape
    if 'codes' in fields:
        n, k = fields['codes'].shape
    table = fields.get('centers') if isinstance(state, CentersState) else (
        fields.get('codebook'))
    if table is not None:
        c, k = table.shape
    return n, c, k


def check_sizes(name: str, **sizes) -> None:
    """The sizes ``init`` takes (num_train, num_classes, bits) as one-line
    errors: each a positive int, ``bits`` also a sequence of them.

    Raises:
      UsageError: naming the size and the fix.
    """
    for size, value in sizes.items():
        values = (tuple(value) if size == 'bits' and isinstance(
            value, (tuple, list)) else (value,))
        if not values or not all(is_int(v) and v > 0 for v in values):
            raise UsageError(
                f'{name}: init needs {size} to be a positive int, got '
                f'{value!r}; pass the {_SIZE_MEANINGS[size]}.')


_SIZE_MEANINGS = {'num_train': 'number of training samples N',
                  'num_classes': 'number of classes C of the labels',
                  'bits': 'code length K'}


def check_inputs(name: str, state, codes, labels, index) -> None:
    """Bad batches as one-line errors, before the loss runs.

    Shapes always (free under jit): ``check_batch``, and the class count
    and code width against the state. Values when they are concrete
    (eager calls; under jit the trainer checked its data at load): labels
    in {0, 1} and rows of ``index`` in [0, N).

    Raises:
      ValueError: naming the problem and the fix.
    """
    check_batch(codes, labels, index, name=name)
    n, c, k = _state_sizes(state)
    if k is not None and jnp.shape(codes)[1] != k:
        raise UsageError(
            f'{name}: codes have {jnp.shape(codes)[1]} bits, the state was '
            f'built for {k}; init with bits={jnp.shape(codes)[1]} or pass '
            f'[B, {k}] codes.')
    if c is not None and jnp.shape(labels)[1] != c:
        raise ValueError(
            f'{name}: labels have {jnp.shape(labels)[1]} classes, the state '
            f'was built for {c}; init with num_classes={jnp.shape(labels)[1]}'
            ' or pass [B, C] multi-hot labels.')
    if isinstance(labels, jax.core.Tracer) or isinstance(index,
                                                        jax.core.Tracer):
        return
    y = np.asarray(labels)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(
            f'{name}: labels must be multi-hot 0/1, got values '
            f'{np.unique(y)[:5].tolist()}; one-hot encode class ids first '
            '(jax.nn.one_hot).')
    idx = np.asarray(index)
    if idx.size and (idx.min() < 0 or (n is not None and idx.max() >= n)):
        raise ValueError(
            f'{name}: index must lie in [0, {n if n is not None else "N"}), '
            f'got {int(idx.min())}..{int(idx.max())}; pass each sample\'s '
            'row in the training set.')


def similarity(y1: Array, y2: Array) -> Array:
    """Label similarity s_ij = 1[y1_i . y2_j > 0] as float32.

    Args:
      y1: [B, C] multi-hot labels.
      y2: [N, C] multi-hot labels.

    Returns:
      [B, N] float32 in {0, 1}.
    """
    return (y1 @ y2.T > 0).astype(jnp.float32)


def safe_norm(x: Array, axis: int = -1, keepdims: bool = False) -> Array:
    """L2 norm whose gradient is 0 (not NaN) at x = 0."""
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Row-wise x / max(||x||, eps): torch ``F.normalize(x, dim=1)``."""
    return x / jnp.maximum(safe_norm(x, axis=-1, keepdims=True), eps)


def hadamard(k: int) -> np.ndarray:
    """Sylvester Hadamard matrix (the ordering of ``scipy.linalg.hadamard``).

    Args:
      k: order, a power of two.

    Returns:
      [k, k] float32 array in {-1, +1}.
    """
    if k < 1 or k & (k - 1):
        raise ValueError(f'Hadamard order must be a power of 2, got {k}.')
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < k:
        h = np.block([[h, h], [h, -h]])
    return h


def balanced_signs(key: PRNGKey, rows: int, bits: int, num_neg: int) -> Array:
    """Rows of ±1 with exactly ``num_neg`` entries -1 at random positions.

    Args:
      key: PRNG key.
      rows: number of rows R.
      bits: code length K.
      num_neg: entries set to -1 in every row.

    Returns:
      [R, K] float32 in {-1, +1}.
    """
    # The rank of i.i.d. uniforms is a uniform random permutation per row:
    # the inverse of their (stable) argsort, which a scatter gives exactly
    # as a second argsort would, with one sort fewer to compile and run.
    order = jnp.argsort(jax.random.uniform(key, (rows, bits)), axis=-1)
    ranks = jnp.put_along_axis(
        order, order, jnp.broadcast_to(jnp.arange(bits, dtype=order.dtype),
                                       order.shape), axis=-1, inplace=False)
    return jnp.where(ranks < num_neg, -1.0, 1.0).astype(jnp.float32)


def random_signs(key: PRNGKey, shape: tuple[int, ...]) -> Array:
    """Uniform random ±1 float32 entries."""
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0)


def pairwise_hamming(codes: Array) -> Array:
    """[R, R] Hamming distances between the ±1 rows of ``codes`` [R, K]."""
    k = codes.shape[-1]
    return 0.5 * (k - codes @ codes.T)


def hadamard_centers(
    key: PRNGKey, num_classes: int, bits: int, *, retries: int = 20
) -> Array:
    """CSQ hash centres: rows of [H_K; -H_K], balanced random rows beyond 2K.

    When C > 2K, rows 2K..C-1 get K/2 entries -1 at random positions. The
    draw is repeated ``retries`` times; the first draw whose pairwise
    Hamming distances have min > K/4 and mean >= K/2 is kept, else the last
    (CSQ, Yuan et al. CVPR 2020, Algorithm 1, as in DeepHash-pytorch). If K is
    not a power of two, all centres are uniform random signs (the NHL code's
    fallback).

    Args:
      key: PRNG key.
      num_classes: C.
      bits: K.
      retries: number of random fills to try.

    Returns:
      [C, K] float32 in {-1, +1}.
    """
    if bits & (bits - 1):
        return random_signs(key, (num_classes, bits))
    h = hadamard(bits)
    rows = jnp.asarray(np.concatenate([h, -h])[:num_classes])
    extra = num_classes - rows.shape[0]
    if extra <= 0:
        return rows
    candidates = filled_candidates(key, rows, extra, retries)
    return first_accepted(candidates, jax.vmap(csq_separated)(candidates))


def filled_candidates(key: PRNGKey, rows: Array, extra: int,
                      retries: int) -> Array:
    """``retries`` draws of ``rows`` [R0, K] followed by ``extra`` balanced
    random rows (K/2 entries -1), as [retries, R0 + extra, K]."""
    bits = rows.shape[1]
    keys = jax.random.split(key, retries)
    fills = jax.vmap(lambda k: balanced_signs(k, extra, bits, bits // 2))(keys)
    return jax.vmap(lambda f: jnp.concatenate([rows, f]))(fills)


def csq_separated(table: Array) -> Array:
    """CSQ's acceptance test (CVPR 2020, Alg. 1): min d > K/4, mean d >= K/2."""
    k = table.shape[1]
    off_diag = ~np.eye(table.shape[0], dtype=bool)
    d = pairwise_hamming(table)[off_diag]
    return (d.min() > k / 4) & (d.mean() >= k / 2)


def first_accepted(candidates: Array, ok: Array) -> Array:
    """``candidates[r]`` for the first r with ``ok[r]``, else the last one.

    Args:
      candidates: [R, ...] draws.
      ok: [R] bool, which draws pass.
    """
    last = ok.shape[0] - 1
    return candidates[jnp.where(ok.any(), jnp.argmax(ok), last)]


def centers_state(
    key: PRNGKey,
    num_classes: int,
    bits: int,
    build,
    centers: Array | np.ndarray | None,
) -> CentersState:
    """Builds a ``CentersState`` from ``build(key, C, K)`` or given centres.

    Args:
      key: PRNG key, split between the centres and the multi-label fill bits.
      num_classes: C.
      bits: K.
      build: ``build(key, num_classes, bits) -> [C, K]`` method-specific
        centre construction, used when ``centers`` is None.
      centers: optional precomputed centres in {-1, +1}: one [C, K] table,
        or a mapping {K: [C, K] table} so that one factory serves every
        length of a nested head.

    Returns:
      The initial state.
    """
    center_key, fill_key = jax.random.split(key)
    if centers is None:
        table = build(center_key, num_classes, bits)
    else:
        table = _checked_centers(centers, num_classes, bits)
    return CentersState(
        centers=jnp.asarray(table, jnp.float32),
        fill=random_signs(fill_key, (bits,)).astype(jnp.float32),
    )


def _checked_centers(centers, num_classes: int, bits: int) -> np.ndarray:
    if isinstance(centers, Mapping):
        if bits not in centers:
            raise ValueError(
                f'no centres given for {bits} bits (have {sorted(centers)}); '
                'add a [C, K] table for every code length.'
            )
        centers = centers[bits]
    table = np.asarray(centers, np.float32)
    if table.shape != (num_classes, bits):
        raise ValueError(
            f'centers has shape {table.shape}, expected (num_classes, bits) = '
            f'({num_classes}, {bits}); pass one [C, K] table per code length.'
        )
    if not np.all(np.abs(table) == 1):
        raise ValueError(
            'centers must contain only -1 and +1; binarise them with '
            'np.where(c >= 0, 1, -1) first.'
        )
    return table


def label_targets(state: CentersState, labels: Array) -> Array:
    """Per-sample target codes t_i = sign(sum_c y_ic h_c), zeros filled.

    For a one-hot label this is exactly the centre of its class (the
    reference's single-label ``argmax`` lookup); for multi-hot labels it is
    the CSQ/DPN multi-label rule, where ties (zero sums) take the fixed
    random ``fill`` bit.

    Args:
      state: the loss's centres and fill bits.
      labels: [B, C] multi-hot float labels.

    Returns:
      [B, K] float32 targets in {-1, +1}.
    """
    summed = labels @ state.centers  # [B, K]
    return jnp.where(summed == 0, state.fill[None, :], jnp.sign(summed))


class BankState(NamedTuple):
    """Memory bank of the latest code and label of every training sample.

    The pairwise losses with a bank (DHN, DBDH, DPSH, IDHN, ISDH) compare a
    batch against all N rows. Rows not yet written are zero: during the
    first epoch they act as samples with code 0 and no label (as in the
    reference code).

    Attributes:
      codes: [N, K] float32, the (transformed) codes last seen per sample.
      labels: [N, C] float32, their multi-hot labels.
      count: [] int32, the steps taken, kept only with a ``warmup`` (None,
        no leaf, otherwise).
    """

    codes: Array  # [N, K]
    labels: Array  # [N, C]
    count: Array | None = None  # []


# What the bank stores of each code: the relaxed code itself (the papers)
# or its sign.
BankCodes = Literal['relaxed', 'sign']
# Steps of in-batch pairs before the bank is used; 0: the bank from the
# first step (the papers).
Steps = Annotated[int, Range(0)]


class BankOptions(NamedTuple):
    """The bank-collapse remedies every bank loss takes (all off by default).

    Attributes:
      warmup: for the first ``warmup`` steps the pair term compares the
        batch with itself (B x B pairs against its detached codes) instead
        of the bank; the bank is written all along.
      bank_codes: ``'relaxed'`` stores sg(v), ``'sign'`` stores sign(v).
    """

    warmup: int = 0
    bank_codes: str = 'relaxed'


PAPER_BANK = BankOptions()  # the bank as the papers keep it


def bank_options(name: str, warmup: int, bank_codes: str) -> BankOptions:
    """Checked ``BankOptions`` for a factory called directly.

    Raises:
      ValueError: one line naming the bad option and its valid values.
    """
    if bank_codes not in typing.get_args(BankCodes):
        raise ValueError(f"{name}: bank_codes must be 'relaxed' or 'sign', "
                         f'got {bank_codes!r}.')
    if not is_int(warmup) or warmup < 0:
        raise ValueError(f'{name}: warmup must be an int >= 0 (steps), got '
                         f'{warmup!r}.')
    return BankOptions(int(warmup), bank_codes)


def bank_init_fn(options: BankOptions = PAPER_BANK):
    """``init`` of the bank losses: an all-zero [N, K] and [N, C] bank, and
    a step counter when ``options`` has a warm-up."""

    def init_fn(key, *, num_train, num_classes, bits) -> BankState:
        del key
        return BankState(
            codes=jnp.zeros((num_train, bits), jnp.float32),
            labels=jnp.zeros((num_train, num_classes), jnp.float32),
            count=jnp.zeros((), jnp.int32) if options.warmup else None,
        )

    return init_fn


bank_init = bank_init_fn()


def bank_write(state, codes: Array, labels: Array, index: Array):
    """Writes the batch into rows ``index`` of the bank (codes detached).

    ``state`` is any NamedTuple with ``codes`` [N, K] and ``labels`` [N, C];
    its other fields are kept.
    """
    return state._replace(
        codes=state.codes.at[index].set(jax.lax.stop_gradient(codes)),
        labels=state.labels.at[index].set(labels),
    )


def bank_pairs(state, v: Array, labels: Array, index: Array, pair_term,
               options: BankOptions = PAPER_BANK):
    """Writes the batch into the bank and evaluates the pair term on it.

    Args:
      state: a bank (``codes`` [N, K], ``labels`` [N, C], and ``count`` []
        with a warm-up).
      v: [B, K] the codes the loss compares (after its squashing).
      labels: [B, C] multi-hot labels.
      index: [B] rows of the batch in the training set.
      pair_term: ``pair_term(v, labels, others [R, K], other_labels [R, C])
        -> scalar``, the loss's mean over the [B, R] pairs.
      options: the remedies (``BankOptions``); the default is the paper's
        bank.

    Returns:
      ``(pair term, new bank)``.
    """
    stored = jnp.sign(v) if options.bank_codes == 'sign' else v
    bank = bank_write(state, stored, labels, index)
    value = pair_term(v, labels, bank.codes, bank.labels)
    if not options.warmup:
        return value, bank
    in_batch = pair_term(v, labels, jax.lax.stop_gradient(stored), labels)
    value = jnp.where(state.count < options.warmup, in_batch, value)
    return value, bank._replace(count=state.count + 1)


def pair_nll(theta: Array, s: Array) -> Array:
    """Pairwise logistic negative log-likelihood log(1 + e^theta) - s theta.

    Written as max(theta, 0) + log(1 + e^-|theta|) - s theta, which never
    overflows; ``s`` may be soft (in [0, 1]).
    """
    return jax.nn.softplus(theta) - s * theta


def cosine_label_similarity(y1: Array, y2: Array, eps: float = 1e-5) -> Array:
    """Soft similarity y1_i . y2_j / (||y1_i|| ||y2_j|| + eps), [B, N].

    All-zero label rows (unwritten bank rows) get similarity 0.
    """
    norms = safe_norm(y1, keepdims=True) * safe_norm(y2)[None, :]
    return (y1 @ y2.T) / (norms + eps)


def likelihood_term(v: Array, labels: Array, others: Array,
                    other_labels: Array) -> Array:
    """DPSH's pairwise likelihood of a batch against ``others``.

    With theta = v_i . U_j / 2 and s_ij the label similarity: mean_ij
    [log(1 + e^theta_ij) - s_ij theta_ij] over the [B, R] pairs (DPSH, DHN,
    DBDH).

    Args:
      v: [B, K] codes; labels: [B, C]; others: [R, K]; other_labels: [R, C].
    """
    s = similarity(labels, other_labels)  # [B, R]
    theta = 0.5 * v @ others.T  # [B, R]
    return jnp.mean(pair_nll(theta, s))


def bank_pair_likelihood(state, codes: Array, labels: Array, index: Array,
                         options: BankOptions = PAPER_BANK):
    """``likelihood_term`` of the batch against the whole bank, written
    first (``bank_pairs``).

    Returns:
      ``(likelihood, new bank state)``.
    """
    return bank_pairs(state, codes, labels, index, likelihood_term, options)


class SoftPairs(NamedTuple):
    """What IDHN and ISDH compute alike before their pair losses."""

    s: Array  # [B, R] cosine label similarity
    hard: Array  # [B, R] 1 for s > 0.99 or s < 0.01
    theta: Array  # [B, R] alpha v_i . U_j
    cross: Array  # [B, R] log(1 + e^theta) - s theta


def squash(codes: Array) -> Array:
    """IDHN / ISDH's v = u / (|u| + 1), elementwise."""
    return codes / (jnp.abs(codes) + 1.0)


def soft_pairs(v: Array, labels: Array, others: Array, other_labels: Array,
               alpha: float) -> SoftPairs:
    """The pair terms of IDHN / ISDH between v [B, K] and others [R, K]."""
    s = cosine_label_similarity(labels, other_labels)  # [B, R]
    hard = (s > 0.99).astype(jnp.float32) + (s < 0.01).astype(jnp.float32)
    theta = alpha * v @ others.T  # [B, R]
    return SoftPairs(s, hard, theta, pair_nll(theta, s))


def squashed_bank_apply(pair_term, lam: float, options):
    """``apply`` of IDHN and ISDH: v = squash(u), their pair term against
    the bank (``bank_pairs``), plus ``lam`` times mean | |v| - 1 |."""

    def apply_fn(state, codes, labels, index):
        check_batch(codes, labels, index)
        v = squash(codes)
        pair, bank = bank_pairs(state, v, labels, index, pair_term, options)
        quant = jnp.mean(jnp.abs(jnp.abs(v) - 1.0))
        return pair + lam * quant, bank

    return apply_fn


def squared_distances(u: Array, bank: Array) -> Array:
    """||u_i - U_j||^2 as [B, N] without the [B, N, K] difference tensor."""
    sq = (
        jnp.sum(u * u, -1)[:, None]
        - 2.0 * u @ bank.T
        + jnp.sum(bank * bank, -1)[None, :]
    )
    return jnp.maximum(sq, 0.0)
