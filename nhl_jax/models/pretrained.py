"""Loads torchvision ResNet state dicts (ImageNet weights) into NNX ResNets.

The file is read from local disk only: this package never downloads weights.
A torchvision state dict saved as ``.npz`` (keys exactly torchvision's, e.g.
``layer1.0.downsample.0.weight``) needs only NumPy; ``.pth`` / ``.pt`` files
need PyTorch. Make a file on a machine with internet access, e.g.::

    import torch, torchvision, numpy as np
    sd = torchvision.models.resnet50(weights='IMAGENET1K_V2').state_dict()
    np.savez('resnet50.npz', **{k: v.numpy() for k, v in sd.items()})

Layouts (torchvision -> Flax): conv ``weight [O, I, H, W]`` -> ``kernel
[H, W, I, O]``; BN ``weight``/``bias`` -> ``scale``/``bias``;
``running_mean``/``running_var`` -> the batch stats ``mean``/``var``. The
``fc.*`` classifier and ``num_batches_tracked`` counters are ignored.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

_HOW_TO_GET = (
    'Weights are never downloaded here. On a machine with internet access, '
    'save a torchvision state dict as .npz and copy it over, e.g.:\n'
    '  python -c "import torch, torchvision, numpy as np; '
    "sd = torchvision.models.resnet50(weights='IMAGENET1K_V2').state_dict(); "
    "np.savez('resnet50.npz', **{k: v.numpy() for k, v in sd.items()})\"\n"
    "(resnet18: weights='IMAGENET1K_V1')."
)

# torchvision BatchNorm2d entry -> NNX BatchNorm attribute.
_BN_FIELDS = (('weight', 'scale'), ('bias', 'bias'),
              ('running_mean', 'mean'), ('running_var', 'var'))


class WeightsNotFoundError(FileNotFoundError, ValueError):
    """The weights file does not exist.

    Both a FileNotFoundError and a ValueError, so either ``except`` works.
    """


class WeightsFileError(ValueError):
    """The weights file cannot be read, or holds NaN / inf values."""


class WeightsMismatchError(ValueError):
    """The file's keys or shapes do not match the model's."""


class _Target(NamedTuple):
    """Where one torchvision entry goes, and how its layout changes."""

    variable: nnx.Variable
    torch_shape: tuple[int, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _conv_to_flax(w: np.ndarray) -> np.ndarray:
    """[O, I, H, W] -> [H, W, I, O]."""
    return w.transpose(2, 3, 1, 0)


def _targets(model: nnx.Module) -> dict[str, _Target]:
    """torchvision key -> target for every Conv and BatchNorm of ``model``.

    The keys are the NNX attribute paths joined with dots, which equal
    torchvision's names because ``ResNet`` mirrors its module tree.
    """
    out = {}
    for path, module in nnx.iter_modules(model):
        prefix = ''.join(f'{p}.' for p in path)
        if isinstance(module, nnx.Conv):
            kernel = module.kernel
            h, w, i, o = kernel.shape
            out[prefix + 'weight'] = _Target(kernel, (o, i, h, w),
                                             _conv_to_flax)
            if module.bias is not None:
                out[prefix + 'bias'] = _Target(
                    module.bias, tuple(module.bias.shape), _identity)
        elif isinstance(module, nnx.BatchNorm):
            for torch_name, field in _BN_FIELDS:
                var = getattr(module, field)
                if var is not None:
                    out[prefix + torch_name] = _Target(
                        var, tuple(var.shape), _identity)
    return out


def torchvision_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """The torchvision state-dict keys and shapes that ``model`` expects.

    Args:
      model: a ``ResNet`` (or abstract one from ``nnx.eval_shape``).

    Returns:
      {key: torch-layout shape}, without ``fc.*`` and ``num_batches_tracked``.
    """
    return {k: t.torch_shape for k, t in _targets(model).items()}


def _ignored(key: str) -> bool:
    """Entries torchvision has that a featurising ResNet does not use."""
    return key.startswith('fc.') or key.endswith('num_batches_tracked')


def _problems(expected: Mapping[str, _Target],
              got: Mapping[str, np.ndarray]) -> list[str]:
    """Every mismatch between the model and the file, model order first."""
    problems = []
    for key, target in expected.items():
        want = target.torch_shape
        if key not in got:
            problems.append(f'missing key {key!r} (expected shape {want})')
        elif tuple(got[key].shape) != want:
            problems.append(f'key {key!r}: expected shape {want}, got '
                            f'{tuple(got[key].shape)}')
    for key in got:
        if key not in expected and not _ignored(key):
            problems.append(f'unexpected key {key!r} (shape '
                            f'{tuple(got[key].shape)})')
    return problems


# What NumPy raises for a file that is not a (whole) .npz archive: a
# truncated copy, a text file, a member cut short.
_NPZ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        # Opened here: np.load leaves a file it refuses open.
        with open(path, 'rb') as f:
            archive = np.load(f, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy
                raise ValueError('one array, not a state dict of named '
                                 'tensors')
            with archive:
                return {k: archive[k] for k in archive.files}
    except _NPZ_ERRORS as e:
        reason = (str(e).strip().splitlines() or [''])[0][:200]
        raise WeightsFileError(
            f'pretrained file {path!r} cannot be read as .npz '
            f'({type(e).__name__}: {reason}); the file is truncated or not '
            'a state dict: save it again with np.savez (see the README, '
            'pretrained backbones).') from None


def _read_torch(path: str) -> dict[str, np.ndarray]:
    """Reads a torch state dict; torch is imported only here."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        stem = os.path.splitext(path)[0]
        raise ImportError(
            f'Reading {path!r} needs PyTorch: `pip install torch`, or convert '
            'it to .npz once on a machine that has torch:\n'
            '  import torch, numpy as np\n'
            f"  sd = torch.load({path!r}, map_location='cpu')\n"
            f"  np.savez({stem + '.npz'!r}, "
            '**{k: v.numpy() for k, v in sd.items()})'
        ) from e
    obj = torch.load(path, map_location='cpu', weights_only=True)
    # Training checkpoints often wrap the weights as {'state_dict': ...}.
    if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
        obj = obj['state_dict']
    if not isinstance(obj, Mapping):
        raise TypeError(f'{path!r} holds a {type(obj).__name__}, not a '
                        'state dict (a mapping of names to tensors).')
    return {k: v.detach().cpu().numpy() for k, v in obj.items()
            if torch.is_tensor(v)}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a torchvision state dict from ``.npz`` or ``.pth`` / ``.pt``.

    Args:
      path: local file.

    Returns:
      {torchvision key: NumPy array in torch layout}.

    Raises:
      WeightsNotFoundError: the file does not exist (the message says how to
        make one).
      ImportError: a torch file, but torch is not installed.
      WeightsFileError: a ``.npz`` that cannot be read (truncated, text).
      ValueError: an unknown file suffix.
      TypeError: a torch file that holds no state dict.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise WeightsNotFoundError(
            f'Pretrained weights file {path!r} not found. {_HOW_TO_GET}')
    suffix = os.path.splitext(path)[1].lower()
    if suffix == '.npz':
        return _read_npz(path)
    if suffix in ('.pth', '.pt'):
        return _read_torch(path)
    raise ValueError(f'{path!r}: unknown weights format {suffix!r}; use a '
                     'torchvision state dict as .npz, .pth or .pt.')


def load_torchvision_resnet(model: nnx.Module, path: str | os.PathLike, *,
                            check_only: bool = False) -> nnx.Module:
    """Copies a torchvision ResNet state dict into ``model`` in place.

    Every key, shape and value is checked before anything is written, so
    on error the model is unchanged. Values are cast to each variable's
    dtype and put on its device / sharding.

    Args:
      model: a ``ResNet`` (e.g. ``ResNet50(...)``) whose architecture matches
        the file (``input_shape`` with 3 channels for ImageNet weights).
      path: ``.npz`` (NumPy only) or ``.pth`` / ``.pt`` (needs torch) holding
        torchvision's state dict; ``fc.*`` and ``num_batches_tracked`` are
        ignored.
      check_only: only check the file (``model`` may be abstract, from
        ``nnx.eval_shape``); nothing is written.

    Returns:
      ``model``, for chaining.

    Raises:
      WeightsNotFoundError: the file does not exist.
      WeightsFileError: the file cannot be read, or a tensor holds NaN/inf.
      ValueError: missing keys, unexpected keys or wrong shapes; the message
        names the file, the first offending key and expected vs got shapes.
      ImportError: a torch file, but torch is not installed.
    """
    write_checked(_targets(model), read_state_dict(path), path,
                  write=not check_only)
    return model


def write_checked(targets, state_dict, path, *, write: bool = True) -> None:
    """Writes ``state_dict`` into the targets' variables, all or nothing.

    Args:
      targets: {torchvision key: ``_Target``} of the model.
      state_dict: {torchvision key: array in torch layout}.
      path: the file it came from, for the error message.
      write: False only checks (the targets may be abstract).

    Raises:
      WeightsMismatchError: naming the file, the first problem and the
        count, before anything is written.
      WeightsFileError: a tensor the model uses holds NaN or inf.
    """
    problems = _problems(targets, state_dict)
    if problems:
        more = ''.join(f'\n  {p}' for p in problems[1:6])
        if len(problems) > 6:
            more += f'\n  ... and {len(problems) - 6} more'
        raise WeightsMismatchError(
            f'pretrained file {os.fspath(path)!r} does not match the model: '
            f'{problems[0]} ({len(problems)} problem(s) in all){more}')
    _check_finite(targets, state_dict, path)
    if not write:
        return
    for key, target in targets.items():
        _write(target.variable, target.to_flax(np.asarray(state_dict[key])))


def _check_finite(targets, state_dict, path) -> None:
    """Raises on the first NaN / inf tensor the model would load.

    NaN weights would train silently: a ReLU or max can map NaN features
    to finite values, so the loss alone may never show them.
    """
    for key in targets:
        value = np.asarray(state_dict[key])
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(
                value).all():
            raise WeightsFileError(
                f'pretrained file {os.fspath(path)!r}: tensor {key!r} has '
                'non-finite values (NaN or inf); export the weights again '
                'from the source model or use another file.')


def _write(variable: nnx.Variable, value: np.ndarray) -> None:
    """Replaces a variable's array, keeping its dtype and placement."""
    old = variable.get_value()
    value = np.asarray(value, dtype=old.dtype)
    if isinstance(old, jax.Array):
        value = jax.device_put(value, old.sharding)
    # A whole replacement (no index): ``var[...] = x`` would trace a scatter.
    variable.set_value(value)


def save_torchvision_npz(state_dict: Mapping[str, Any],
                         path: str | os.PathLike) -> None:
    """Saves a torch / NumPy state dict as the ``.npz`` this module reads.

    Args:
      state_dict: {key: torch tensor or array}, e.g. ``model.state_dict()``.
      path: output file (NumPy appends ``.npz`` if missing).
    """
    arrays = {}
    for key, value in state_dict.items():
        if hasattr(value, 'detach'):  # a torch tensor
            value = value.detach().cpu().numpy()
        arrays[key] = np.asarray(value)
    np.savez(path, **arrays)
