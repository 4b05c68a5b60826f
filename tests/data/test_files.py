"""Image-file datasets: decoding, crops, augmentation, worker processes."""

import numpy as np
import pytest
from PIL import Image

from nhl_jax import data
from nhl_jax.data import files


def _write_images(tmp_path, sizes):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f'img{i}.png'
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path)
        paths.append(str(path))
    return np.array(paths, dtype=object)


@pytest.fixture()
def dataset(tmp_path):
    paths = _write_images(tmp_path, [(40, 30), (30, 50), (64, 64), (33, 31),
                                     (50, 40), (31, 45)])
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    return files.FileDataset(paths, labels, np.arange(6), resize=32, crop=28)


def test_centre_crop_follows_resize_then_centre(dataset):
    image = files.decode(dataset.paths[0], 32, 28, decoder='full')
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    with Image.open(dataset.paths[0]) as raw:  # 40x30 -> 43x32
        expected = np.asarray(raw.convert('RGB').resize(
            (43, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(image, expected[2:30, 8:36])


def _write_jpeg(path, w, h, mode='RGB'):
    """A photograph-like JPEG: a smooth colour field with pixel noise."""
    rng = np.random.default_rng(w * h)
    field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8))
    pixels = np.asarray(field.resize((w, h), Image.Resampling.BICUBIC),
                        np.int16) + rng.integers(-8, 9, (h, w, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(
        mode).save(path, quality=90)
    return str(path)


@pytest.mark.parametrize('rng', [None, 3])
def test_draft_decoder_is_close_to_full_decoding(tmp_path, rng):
    def both(path):
        return [files.decode(path, 32, 28, None if rng is None else
                             np.random.default_rng(rng), decoder=d)
                .astype(np.int16) for d in ('draft', 'full')]

    # 200x150 -> 43x32: the JPEG decodes at 1/4 scale (50x38).
    reduced, full = both(_write_jpeg(tmp_path / 'big.jpg', 200, 150))
    assert reduced.shape == full.shape == (28, 28, 3)
    # Resampling the crop alone differs by ~0.01 on average: more shows
    # the reduced scale was used.
    assert 0.2 < np.abs(reduced - full).mean() < 2
    # 60x45 -> 43x32: no smaller scale keeps 32 rows; only the resize of
    # the crop alone differs, by rounding.
    reduced, full = both(_write_jpeg(tmp_path / 'small.jpg', 60, 45))
    assert np.abs(reduced - full).max() <= 1


def test_draft_decoder_keeps_the_target_size_at_the_limit(tmp_path):
    # 129x97 -> 64x48 at 1/2 scale is 65x49: one row above the limit.
    path = _write_jpeg(tmp_path / 'limit.jpg', 129, 97)
    grey = _write_jpeg(tmp_path / 'grey.jpg', 300, 200, mode='L')
    for p in (path, grey):
        image = files.decode(p, 48, 42, np.random.default_rng(0))
        assert image.shape == (42, 42, 3) and image.dtype == np.uint8
    full = files.decode(path, 48, 42, decoder='full').astype(np.int16)
    assert 0.2 < np.abs(files.decode(path, 48, 42) - full).mean() < 2


def test_unknown_decoder_is_refused_before_decoding(dataset):
    with pytest.raises(ValueError, match=r"unknown decoder 'fast'; use one"):
        data.eval_batches(dataset._replace(decoder='fast'), 2)


def test_training_crops_are_random_but_seeded(dataset):
    a = files.gather(dataset, np.arange(6), (0, 1))
    b = files.gather(dataset, np.arange(6), (0, 1))
    c = files.gather(dataset, np.arange(6), (0, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (6, 28, 28, 3)


def test_batches_match_with_and_without_workers(dataset):
    inline = list(data.train_batches(dataset, 2, seed=0, epoch=1))
    pooled = list(data.train_batches(dataset, 2, seed=0, epoch=1, workers=2))
    assert len(inline) == len(pooled) == 3
    for x, y in zip(inline, pooled):
        for key in ('image', 'label', 'index'):
            np.testing.assert_array_equal(x[key], y[key])
    evals = list(data.eval_batches(dataset, 4))
    assert [b['valid'] for b in evals] == [4, 2]
    np.testing.assert_array_equal(
        evals[0]['image'][0], files.decode(dataset.paths[0], 32, 28))
    assert data.image_shape(dataset) == (28, 28, 3)


def test_unreadable_image_is_named(dataset, tmp_path):
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png')
    paths = dataset.paths.copy()
    paths[3] = str(broken)
    bad = dataset._replace(paths=paths)
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png"):
        list(data.eval_batches(bad, 6))


def test_file_dataset_checks(dataset):
    with pytest.raises(ValueError, match='crop 40 must be'):
        data.eval_batches(dataset._replace(crop=40), 2)
    with pytest.raises(ValueError, match='6 paths, 5 label rows'):
        data.eval_batches(dataset._replace(labels=dataset.labels[:5]), 2)
