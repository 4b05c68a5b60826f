"""An exported bundle: the same codes and neighbours as the run, without it.

One tiny digits run (1 epoch of the MLP) is exported once by ``nhl-jax
export`` in-process; a fresh interpreter that imports only
``nhl_jax.serving`` encodes and searches with it.
"""

import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest

from nhl_jax import cli, retrieval, serving
from nhl_jax.cli import bundle, inference
from nhl_jax.errors import UsageError
from tests.support import ROOT, systems

K = 10
_HEAVY = ('flax', 'optax', 'orbax', 'grain', 'ml_collections', 'absl')
_TRAINING = ('nhl_jax.models', 'nhl_jax.train', 'nhl_jax.cli',
             'nhl_jax.data', 'nhl_jax.losses', 'nhl_jax.nhl')


def _export(*flags):
    """``nhl-jax export`` in this process: (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli.main(['nhl-jax', 'export', *flags])
    return done.value.code, out.getvalue()


class Run(NamedTuple):
    workdir: str
    bundle: str  # exported by the command
    images: np.ndarray  # [Q, 8, 8, 1] uint8 query images
    query: retrieval.CodeSet  # nhl-jax encode's codes of them
    database: retrieval.CodeSet  # and of the database
    stdout: str  # of nhl-jax export


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A 1-epoch digits run, exported and encoded."""
    root = tmp_path_factory.mktemp('serving')
    workdir, out = str(root / 'run'), str(root / 'bundle')
    # A higher rate than the default: one epoch at 1e-3 gives one code.
    cli.train_and_evaluate(
        systems.tiny_config('nhl', epochs=1, learning_rate=1e-2), workdir)
    code, stdout = _export(f'--workdir={workdir}', f'--out={out}')
    assert code is None, code
    encoded = inference.export_codes(workdir)['paths']
    images = inference.load_data(inference.read_config(workdir)).query.images
    return Run(workdir, out, images, retrieval.load_codes(encoded['query']),
               retrieval.load_codes(encoded['database']), stdout)


_CHILD = '''
import json, sys
import numpy as np
from nhl_jax import serving
searcher = serving.load(sys.argv[1])
images = np.load(sys.argv[2])
codes = searcher.encode(images)
found = {b: searcher.search(images, K, bits=b) for b in searcher.bits}
np.savez(sys.argv[3], backend=searcher.backend,
         **{f'codes_{b}': c for b, c in codes.items()},
         **{f'ids_{b}': f.ids for b, f in found.items()},
         **{f'dist_{b}': f.distances for b, f in found.items()})
print(json.dumps(sorted(sys.modules)))
'''


@pytest.fixture(scope='module')
def served(run, tmp_path_factory):
    """What a fresh interpreter with only nhl_jax.serving gets: (arrays of
    its codes and top-k, the modules it imported)."""
    root = tmp_path_factory.mktemp('child')
    np.save(root / 'images.npy', run.images)
    done = subprocess.run(
        [sys.executable, '-c', f'K = {K}' + _CHILD, run.bundle,
         str(root / 'images.npy'),
         str(root / 'served.npz')], cwd=ROOT, capture_output=True,
        text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(root / 'served.npz') as f:
        arrays = dict(f)
    return arrays, json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_interpreter_encodes_as_nhl_jax_encode(run, served):
    arrays, _ = served
    assert len(np.unique(arrays['codes_16'], axis=0)) > 10  # not collapsed
    for b in run.query.lengths:
        np.testing.assert_array_equal(
            arrays[f'codes_{b}'], retrieval.codes_of_length(run.query, b))


def test_chunks_of_any_size_give_the_same_codes(run):
    """Five chunks of 64, the last padded, in order."""
    codes = serving.load(run.bundle).encode(run.images, batch_size=64)
    for b in run.query.lengths:
        np.testing.assert_array_equal(codes[b],
                                      retrieval.codes_of_length(run.query, b))


def test_a_fresh_interpreter_searches_as_the_library(run, served):
    query, database = run.query, run.database
    arrays, _ = served
    assert str(arrays['backend']) == 'faiss'  # the faiss files, read back
    for b in query.lengths:
        found = retrieval.build_index(
            retrieval.codes_of_length(database, b), b).search(
                retrieval.codes_of_length(query, b), K)
        np.testing.assert_array_equal(arrays[f'dist_{b}'], found.distances)
        np.testing.assert_array_equal(arrays[f'ids_{b}'],
                                      database.ids[found.indices])


def test_the_fresh_interpreter_loads_no_training_code(served):
    _, modules = served
    assert 'nhl_jax.serving' in modules and 'jax' in modules
    heavy = [m for m in modules if m.split('.')[0] in _HEAVY
             or m.startswith(_TRAINING)]
    assert not heavy, heavy


def test_the_numpy_backend_gives_the_faiss_neighbours(run, served):
    arrays, _ = served
    searcher = serving.load(run.bundle, backend='numpy')
    for b in searcher.bits:
        found = searcher.search(run.images, K, bits=b)
        np.testing.assert_array_equal(found.ids, arrays[f'ids_{b}'])
        np.testing.assert_array_equal(found.distances, arrays[f'dist_{b}'])


def _true_distances(q_packed, db_packed):
    """[Q, N] Hamming distances by unpacked bits, the slow way."""
    bits = np.unpackbits(q_packed[:, None] ^ db_packed[None], axis=2)
    return bits.sum(2)


def test_faiss_alone_reads_the_index_files(run):
    faiss = pytest.importorskip('faiss')
    searcher = serving.load(run.bundle)
    for b in searcher.bits:
        index = faiss.read_index_binary(
            os.path.join(run.bundle, searcher.manifest['faiss'][str(b)]))
        q = retrieval.codes_of_length(run.query, b)
        dist, rows = index.search(q, K)
        found = searcher.search(q, K, bits=b)
        np.testing.assert_array_equal(dist, found.distances)
        true = _true_distances(q, retrieval.codes_of_length(run.database,
                                                            b))
        # The same neighbours, ties at the k-th distance in any order.
        np.testing.assert_array_equal(np.take_along_axis(true, rows, 1),
                                      dist)
        for r in range(len(q)):
            closer = true[r] < dist[r, -1]
            assert set(rows[r][dist[r] < dist[r, -1]]) == set(
                np.flatnonzero(closer))


def test_range_search_returns_every_code_within_the_radius(run):
    searcher = serving.load(run.bundle)
    q = retrieval.codes_of_length(run.query, 16)[:20]
    found = searcher.range_search(q, 2, bits=16)
    true = _true_distances(q, run.database.packed[16])
    for r in range(len(q)):
        ids, dist = found.of(r)
        within = np.flatnonzero(true[r] <= 2)
        within = within[np.lexsort((within, true[r][within]))]
        np.testing.assert_array_equal(ids, run.database.ids[within])
        np.testing.assert_array_equal(dist, true[r][within])


def test_the_manifest_describes_the_bundle(run):
    out = run.bundle
    manifest = serving.read_manifest(out)
    assert manifest['bits'] == [8, 16]
    assert manifest['input'] == {'shape': ['B', 8, 8, 1], 'dtype': 'uint8'}
    assert manifest['source']['workdir'] == os.path.abspath(run.workdir)
    assert manifest['source']['dataset'] == 'digits'
    assert 'cpu' in manifest['encoder']['platforms']
    assert sorted(manifest['files']) == sorted(
        n for n in os.listdir(out) if n != 'manifest.json')
    assert not [n for n in os.listdir(os.path.dirname(out))
                if n.startswith('.bundle.tmp')]


def _copy(run, tmp_path):
    copy = str(tmp_path / 'copy')
    shutil.copytree(run.bundle, copy)
    return copy


def _one_line(error) -> str:
    text = str(error.value)
    assert '\n' not in text, text
    return text


def test_a_changed_byte_is_refused_naming_the_file(run, tmp_path):
    copy = _copy(run, tmp_path)
    path = pathlib.Path(copy, 'faiss_16.index')
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError) as e:
        serving.load(copy)
    assert 'faiss_16.index' in _one_line(e) and 'SHA-256' in str(e.value)


def test_a_missing_file_is_refused_naming_it(run, tmp_path):
    copy = _copy(run, tmp_path)
    os.remove(os.path.join(copy, 'encoder.jaxexport'))
    with pytest.raises(UsageError) as e:
        serving.load(copy)
    assert 'lacks encoder.jaxexport' in _one_line(e)
    with pytest.raises(UsageError) as e:
        serving.load(str(tmp_path))
    assert 'no manifest.json' in _one_line(e)


def test_a_platform_the_bundle_lacks_is_refused(run, tmp_path):
    copy = _copy(run, tmp_path)
    path = pathlib.Path(copy, 'manifest.json')
    manifest = json.loads(path.read_text())
    manifest['encoder']['platforms'] = ['tpu']
    path.write_text(json.dumps(manifest))
    with pytest.raises(UsageError) as e:
        serving.load(copy)
    assert "not for 'cpu'" in _one_line(e) and '--platforms=cpu' in str(
        e.value)


@pytest.mark.parametrize('images', [
    np.zeros((2, 8, 8, 1), np.float32),
    np.zeros((2, 8, 8), np.uint8),
    np.zeros((2, 7, 8, 1), np.uint8),
    np.zeros((0, 8, 8, 1), np.uint8),
])
def test_images_of_another_shape_or_dtype_are_refused(run, images):
    with pytest.raises(UsageError) as e:
        serving.load(run.bundle).encode(images)
    assert 'must be uint8 [Q, 8, 8, 1]' in _one_line(e)


def test_unknown_bits_and_bad_codes_are_refused(run):
    searcher = serving.load(run.bundle)
    codes = searcher.encode(run.images[:3])
    with pytest.raises(UsageError) as e:
        searcher.search(codes[16], K, bits=12)
    assert 'no 12-bit codes' in _one_line(e) and '[8, 16]' in str(e.value)
    with pytest.raises(ValueError, match='2 bytes per code but 8-bit'):
        searcher.search(codes[16], K, bits=8)
    with pytest.raises(UsageError, match="Unknown search backend 'annoy'"):
        serving.load(run.bundle, backend='annoy')


def test_export_refuses_an_existing_out_in_one_line(run):
    assert f'wrote {run.bundle}' in run.stdout
    assert '8, 16 bits' in run.stdout
    code, _ = _export(f'--workdir={run.workdir}', f'--out={run.bundle}')
    assert code == (f'error: {run.bundle!r} exists and is not empty; export '
                    'into a new directory, or remove it first.')


def test_a_failed_export_leaves_nothing(run, tmp_path, monkeypatch):
    def fail(*args):
        raise OSError('disk full')

    monkeypatch.setattr(bundle, '_write_faiss', fail)
    out = tmp_path / 'bundle'
    with pytest.raises(OSError, match='disk full'):
        bundle.export_run(run.workdir, str(out))
    assert os.listdir(tmp_path) == []


def test_any_image_set_can_be_the_database(run, tmp_path):
    images, labels = run.images[:20], np.eye(10, dtype=np.float32)[
        np.arange(20) % 10]
    np.save(tmp_path / 'images.npy', images)
    np.save(tmp_path / 'labels.npy', labels)
    out = tmp_path / 'bundle'
    code, _ = _export(f'--workdir={run.workdir}', f'--out={out}',
                      f'--images={tmp_path / "images.npy"}',
                      f'--labels={tmp_path / "labels.npy"}')
    assert code is None, code
    searcher = serving.load(str(out))
    assert searcher.manifest['database']['split'] == 'images'
    np.testing.assert_array_equal(searcher.ids, np.arange(20))
    np.testing.assert_array_equal(searcher.labels, labels)
    # The first 20 queries were encoded by nhl-jax encode: the same codes.
    hits = searcher.search(
        retrieval.codes_of_length(run.query, 16)[:20], 1, bits=16)
    assert (hits.distances[:, 0] == 0).all()
    grey = tmp_path / 'grey.npy'
    np.save(grey, images[..., 0])
    code, _ = _export(f'--workdir={run.workdir}', f'--out={tmp_path / "x"}',
                      f'--images={grey}')
    assert 'not [N, H, W, C] uint8 images' in code
    with pytest.raises(UsageError, match=r'the run encodes \(8, 8, 1\)'):
        bundle.export_run(run.workdir, str(tmp_path / 'y'),
                          images=np.zeros((2, 4, 4, 1), np.uint8))
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()
