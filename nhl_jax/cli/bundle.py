"""A trained run as a self-contained bundle: ``export_run``.

``nhl-jax export --workdir=runs/x --out=bundle`` restores the run
(``inference.load_run``, the final parameters by default), encodes its
database split as ``nhl-jax encode`` does and writes the directory that
``nhl_jax.serving.load`` reads (files: ``nhl_jax.serving.bundle``):

- the encoder, ``jax.export``-ed with a symbolic batch: uint8 images
  [B, H, W, C] in, the packed codes of every length out, the model's
  preprocessing (x / 255, the backbone's mean and std, its resize) inside;
  lowered for CPU, CUDA and TPU, or the ones of those that lower here;
- the database's packed codes, labels and ids, and one
  ``faiss.IndexBinaryFlat`` file per length;
- ``manifest.json`` with the SHA-256 of every file.

The bundle is written into a temporary sibling directory that is renamed
to ``out`` at the end, so a failed export leaves nothing behind.
"""

import contextlib
import importlib.metadata
import inspect
import json
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax import checks, data, models, retrieval
from nhl_jax._version import __version__
from nhl_jax.cli import inference
from nhl_jax.errors import UsageError
from nhl_jax.retrieval import faiss_search
from nhl_jax.serving import bundle

PLATFORMS = ('cpu', 'cuda', 'tpu')
# What jax.export can lower for.
_KNOWN_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def export_run(workdir: str, out: str, *, params: str = 'last',
               platforms=PLATFORMS, batch_size: int | None = None,
               images=None, labels=None) -> dict:
    """Writes the bundle of a trained run's encoder and database.

    Args:
      workdir: a finished ``nhl-jax train`` run.
      out: the bundle directory to create (absent or empty).
      params: 'last' (final parameters) or 'best' (each length's best).
      platforms: where the encoder may run; those that do not lower on
        this machine are left out (the manifest lists the rest).
      batch_size: images per forward pass, of the database encoding and
        of ``serving``'s encoder (default: the run's eval batch size).
      images: [N, H, W, C] uint8 images to be the database instead of the
        run's database split (ids 0..N-1), of the run's image shape.
      labels: [N, C] labels of ``images`` (None: unlabelled).

    Returns:
      The manifest.

    Raises:
      UsageError: ``out`` exists and is not empty, no run, an unknown
        platform, or no platform lowers.
      ImportError: faiss is not installed.
    """
    _check_out(out)
    _check_platforms(platforms)
    checks.positive_or_unset(batch_size, 'batch_size',
                             "the run's eval_batch_size")
    faiss = faiss_search.load_faiss()
    config = inference.read_config(workdir)
    sets = inference.load_data(config)
    shape = data.image_shape(sets.database)
    given = None if images is None else _given_images(images, labels, shape)
    run = inference.load_run_for(workdir, sets.database, params=params)
    batch_size = batch_size or run.spec.eval_batch_size
    database = (inference.split_code_set(run, sets, 'database',
                                         batch_size=batch_size)
                if given is None else
                inference.encode_dataset(run, given, batch_size=batch_size))
    exported, dropped = export_encoder(inference.packed_codes_fn(run), shape,
                                       platforms=platforms)
    with _staging(out) as tmp:
        _write_encoder(tmp, exported)
        retrieval.save_codes(os.path.join(tmp, bundle.DATABASE), database)
        for b in run.bits:
            _write_faiss(faiss, os.path.join(tmp, bundle.faiss_file(b)),
                         retrieval.codes_of_length(database, b))
        manifest = _manifest(tmp, workdir, run, shape, exported, dropped,
                             batch_size, database, given is not None)
        with open(os.path.join(tmp, bundle.MANIFEST), 'w') as f:
            json.dump(manifest, f, indent=2)
            f.write('\n')
    return manifest


def _given_images(images, labels, shape):
    """The dataset of ``--images``, checked against the run's images."""
    images = np.asarray(images)
    checks.check_images(images, 'images')
    if tuple(images.shape[1:]) != tuple(shape):
        raise UsageError(
            f'images are {tuple(images.shape[1:])}, but the run encodes '
            f'{tuple(shape)} images (H, W, C); resize them first.')
    return inference.image_dataset(images, labels, what='database images')


def export_encoder(codes_fn, input_shape, *, platforms=PLATFORMS):
    """``jax.export`` of a codes function, for every platform that lowers.

    Args:
      codes_fn: traceable ``images [B, H, W, C] uint8 -> outputs``
        (``inference.packed_codes_fn``).
      input_shape: (H, W, C).
      platforms: the platforms to lower for.

    Returns:
      (``jax.export.Exported`` with a symbolic batch B, {platform left out:
      why}).

    Raises:
      UsageError: if no platform lowers.
    """
    dims = ', '.join(map(str, input_shape))
    images = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'b, {dims}'),
                                  jnp.uint8)
    function = jax.jit(codes_fn)
    try:
        return jax.export.export(function, platforms=platforms)(images), {}
    except Exception:  # noqa: BLE001 (one platform failed; find which)
        pass
    dropped = {}
    for platform in platforms:
        try:
            jax.export.export(function, platforms=(platform,))(images)
        except Exception as e:  # noqa: BLE001 (lowering raises many types)
            dropped[platform] = f'{type(e).__name__}: {_first_line(e)}'
    kept = tuple(p for p in platforms if p not in dropped)
    if not kept:
        raise UsageError(f'the encoder lowers for none of {list(platforms)} '
                         f'here ({dropped}); check the jax installation.')
    return jax.export.export(function, platforms=kept)(images), dropped


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ''


def _check_out(out: str) -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f'{out!r} exists and is not empty; export into a '
                         'new directory, or remove it first.')


def _check_platforms(platforms) -> None:
    unknown = [p for p in platforms if p not in _KNOWN_PLATFORMS]
    if unknown or not platforms:
        raise UsageError(f'Unknown platform(s) {unknown or list(platforms)}; '
                         f'choose some of {list(_KNOWN_PLATFORMS)}.')


@contextlib.contextmanager
def _staging(out: str):
    """A temporary sibling of ``out``, renamed to it when the block ends.

    On an error it is removed, so ``out`` is the whole bundle or nothing.
    """
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out),
                           prefix=f'.{os.path.basename(out)}.tmp-')
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only
        os.replace(tmp, out)  # over an empty directory too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_encoder(directory: str, exported) -> None:
    with open(os.path.join(directory, bundle.ENCODER), 'wb') as f:
        f.write(exported.serialize())


def _write_faiss(faiss, path: str, packed) -> None:
    """An exact ``IndexBinaryFlat`` of [N, B] packed codes, to ``path``."""
    index = faiss.IndexBinaryFlat(8 * packed.shape[1])
    index.add(np.ascontiguousarray(packed))
    faiss.write_index_binary(index, path)


def _manifest(directory, workdir, run, shape, exported, dropped, batch_size,
              database, given: bool) -> dict:
    """What the bundle holds, where it came from, and its files' SHA-256."""
    spec = run.spec
    return {
        'format': bundle.FORMAT,
        'version': bundle.VERSION,
        'bits': list(run.bits),
        'input': {'shape': ['B', *shape], 'dtype': 'uint8'},
        'preprocessing': _preprocessing(spec),
        'encoder': {
            'file': bundle.ENCODER,
            'platforms': list(exported.platforms),
            'not_lowered': dropped,
            'outputs': ('(codes, nan): codes a tuple of [B, ceil(b / 8)] '
                        'uint8 packed codes, one per bits in order; nan '
                        '[B] bool, rows whose outputs hold NaN'),
            'batch_size': batch_size,
        },
        'database': {
            'file': bundle.DATABASE,
            'split': 'images' if given else 'database',
            'size': len(database.ids),
            'codes': ('learned' if run.system.learned_split(spec)
                      and not given else 'encoded'),
            'params': run.params,
        },
        'faiss': {str(b): bundle.faiss_file(b) for b in run.bits},
        'source': {
            'workdir': os.path.abspath(workdir),
            'method': spec.method,
            'dataset': spec.dataset,
            'system': spec.system,
            'backbone': spec.backbone,
            'commit': _commit(),
        },
        'versions': _versions(),
        'files': {name: bundle.sha256(os.path.join(directory, name))
                  for name in sorted(os.listdir(directory))},
    }


def _preprocessing(spec) -> dict:
    """What the encoder does to the uint8 images before the backbone."""
    backbone = models.BACKBONES[spec.backbone]
    defaults = {name: p.default for name, p in
                inspect.signature(backbone).parameters.items()
                if p.default is not inspect.Parameter.empty}
    resize = {**defaults, **dict(spec.backbone_kwargs)}.get('input_size')
    cls = getattr(backbone, 'func', backbone)  # ResNet50 is a partial
    mean, std = (getattr(cls, name, None) for name in ('input_mean',
                                                       'input_std'))
    return {
        'in_encoder': True,
        'scale': 'x / 255',
        'mean': None if mean is None else list(mean),
        'std': None if std is None else list(std),
        'resize': None if resize is None else {
            'to': [resize, resize], 'method': 'bilinear',
            'when': 'H x W differ'},
        'compute_dtype': spec.compute_dtype,
    }


def _commit() -> str | None:
    """The git commit of the nhl_jax checkout that exports, if it is one."""
    try:
        done = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10,
            check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _versions() -> dict:
    found = {'nhl_jax': __version__, 'jax': jax.__version__,
             'numpy': np.__version__}
    for package in ('jaxlib', 'faiss-cpu', 'flatbuffers'):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found
