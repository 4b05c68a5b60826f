"""Every base loss, selected by name through one registry.

The seven of the NHL code (dsh, dtsh, lcdsh, dch, csq, dpn, mdsh), the rest
of its list (dhn, dbdh, shcir) and DeepHash-pytorch's supervised methods
(hashnet, dpsh, idhn, dfh, qsmih, isdh, greedyhash, dshsd, dsdh, daph,
pcdh) and OrthoHash. CNNH is not here: its first stage learns target codes
by matrix factorisation, not by a loss on a batch of codes. Every entry is
a factory taking the method's hyperparameters as keyword arguments (the
reference code's defaults) and returning a ``HashLoss``; GreedyHash, DSHSD,
PCDH and OrthoHash (with a learned codebook) own trainable parameters, DSDH
and DAPH a per-epoch update, PCDH reads the backbone features
(``HashLoss``). Each factory's annotations declare its hyperparameters'
values (``nhl_jax.hparams``: term weights in [0, 1000], margins >= 0,
scales > 0, fractions in [0, 1], options one of a ``Literal``'s values),
which ``get`` checks in one line, as the command line does::

    from nhl_jax import losses
    loss = losses.get('dpn', margin=1.0)
    state = loss.init(key, num_train=5000, num_classes=10, bits=16)
    value, state = loss.apply(state, codes, labels, index)
"""

from nhl_jax.hparams import check_kwargs
from nhl_jax.losses import _common
from nhl_jax.losses._common import BankState
from nhl_jax.losses._common import CentersState
from nhl_jax.losses._common import hadamard_centers
from nhl_jax.losses._common import l2_normalize
from nhl_jax.losses._common import label_targets
from nhl_jax.losses._common import similarity
from nhl_jax.losses.csq import csq
from nhl_jax.losses.daph import DAPHState
from nhl_jax.losses.daph import daph
from nhl_jax.losses.dbdh import dbdh
from nhl_jax.losses.dch import dch
from nhl_jax.losses.dfh import DFHState
from nhl_jax.losses.dfh import dfh
from nhl_jax.losses.dhn import dhn
from nhl_jax.losses.dpn import dpn
from nhl_jax.losses.dpsh import dpsh
from nhl_jax.losses.dsh import DSHState
from nhl_jax.losses.dsdh import DSDHState
from nhl_jax.losses.dsdh import dsdh
from nhl_jax.losses.dsh import dsh
from nhl_jax.losses.dshsd import dshsd
from nhl_jax.losses.dtsh import dtsh
from nhl_jax.losses.greedyhash import greedyhash
from nhl_jax.losses.hashnet import HashNetState
from nhl_jax.losses.hashnet import hashnet
from nhl_jax.losses.idhn import idhn
from nhl_jax.losses.isdh import isdh
from nhl_jax.losses.lcdsh import lcdsh
from nhl_jax.losses.mdsh import mdsh
from nhl_jax.losses.orthohash import CodebookState
from nhl_jax.losses.orthohash import orthohash
from nhl_jax.losses.pcdh import pcdh
from nhl_jax.losses.qsmih import qsmih
from nhl_jax.losses.shcir import shcir
from nhl_jax.types import EmptyState, HashLoss

LOSSES = {
    'csq': csq,
    'daph': daph,
    'dbdh': dbdh,
    'dch': dch,
    'dfh': dfh,
    'dhn': dhn,
    'dpn': dpn,
    'dpsh': dpsh,
    'dsdh': dsdh,
    'dsh': dsh,
    'dshsd': dshsd,
    'dtsh': dtsh,
    'greedyhash': greedyhash,
    'hashnet': hashnet,
    'idhn': idhn,
    'isdh': isdh,
    'lcdsh': lcdsh,
    'mdsh': mdsh,
    'orthohash': orthohash,
    'pcdh': pcdh,
    'qsmih': qsmih,
    'shcir': shcir,
}


def get(name: str, **hparams) -> HashLoss:
    """Builds the loss registered as ``name`` with the given hyperparameters.

    The hyperparameters' names, types and ranges are checked against the
    factory first (``hparams.check_kwargs``: finite values; weights in
    [0, 1000], margins >= 0, scales > 0, fractions in [0, 1], options one
    of their values). The returned ``init`` checks its sizes and ``apply``
    its inputs against the state (``_common.check_inputs``).

    Args:
      name: a key of ``LOSSES``.
      **hparams: keyword arguments of that loss's factory.

    Returns:
      The ``HashLoss``.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones);
        ``UsageError`` (a ``ValueError``): an unknown hyperparameter or a
        value that does not fit.
    """
    if name not in LOSSES:
        raise ValueError(
            f'Unknown loss {name!r}; choose one of {sorted(LOSSES)}.'
        )
    check_kwargs(f'loss {name!r}', LOSSES[name], hparams, None)
    return _checked(name, LOSSES[name](**hparams))


def _checked(name: str, loss: HashLoss) -> HashLoss:
    """``loss`` whose public entries check their arguments in one line."""

    def init(key, *, num_train, num_classes, bits):
        _common.check_sizes(name, num_train=num_train,
                            num_classes=num_classes, bits=bits)
        return loss.init(key, num_train=num_train, num_classes=num_classes,
                         bits=bits)

    def init_lengths(key, *, num_train, num_classes, bits):
        _common.check_sizes(name, num_train=num_train,
                            num_classes=num_classes, bits=bits)
        return loss.init_lengths(key, num_train=num_train,
                                 num_classes=num_classes, bits=bits)

    def init_params(key, *, num_classes, bits):
        _common.check_sizes(name, num_classes=num_classes, bits=bits)
        return loss.init_params(key, num_classes=num_classes, bits=bits)

    def apply(state, codes, labels, index, **kw):
        _common.check_inputs(name, state, codes, labels, index)
        return loss.apply(state, codes, labels, index, **kw)

    return loss._replace(
        init=init, apply=apply,
        init_lengths=init_lengths if loss.init_lengths else None,
        init_params=init_params if loss.init_params else None)


__all__ = [
    'LOSSES',
    'BankState',
    'CentersState',
    'CodebookState',
    'DAPHState',
    'DSDHState',
    'DFHState',
    'DSHState',
    'EmptyState',
    'HashLoss',
    'HashNetState',
    'csq',
    'daph',
    'dbdh',
    'dch',
    'dfh',
    'dhn',
    'dpn',
    'dpsh',
    'dsdh',
    'dsh',
    'dshsd',
    'dtsh',
    'get',
    'greedyhash',
    'hadamard_centers',
    'hashnet',
    'idhn',
    'isdh',
    'l2_normalize',
    'label_targets',
    'lcdsh',
    'mdsh',
    'orthohash',
    'pcdh',
    'qsmih',
    'shcir',
    'similarity',
]
