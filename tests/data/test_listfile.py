"""List-file datasets: parsing, validation with file:line errors, fuzzing."""

import os

import numpy as np
import pytest

from nhl_jax.data import listfile


def _tree(tmp_path, lines_by_file, images=('a.jpg', 'b/c.jpg', 'd.jpg')):
    for image in images:
        path = tmp_path / image
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'')
    for name, lines in lines_by_file.items():
        (tmp_path / name).write_text(''.join(line + '\n' for line in lines))
    return str(tmp_path)


GOOD = {'train.txt': ['a.jpg 1 0 0', 'b/c.jpg 0 1 1'],
        'test.txt': ['d.jpg 0 0 1', ''],
        'database.txt': ['a.jpg 1 0 0', 'b/c.jpg 0 1 1', 'd.jpg 0 0 1']}


def test_reads_the_three_splits(tmp_path):
    root = _tree(tmp_path, GOOD)
    splits = listfile.read_list_splits(root)
    assert set(splits) == {'train', 'query', 'database'}
    np.testing.assert_array_equal(splits['train'].labels,
                                  [[1, 0, 0], [0, 1, 1]])
    assert splits['train'].labels.dtype == np.float32
    assert splits['train'].paths[1] == os.path.join(root, 'b/c.jpg')
    assert len(splits['query'].paths) == 1  # the blank line is skipped
    assert len(splits['database'].paths) == 3


@pytest.mark.parametrize('line, match', [
    ('a.jpg', r'train.txt:2: expected'),
    ('a.jpg 1 2 0', r"train.txt:2: label values must be 0 or 1, got '2'"),
    ('a.jpg 1 0', r'train.txt:2: 2 label values, but 3 classes'),
    ('a.jpg 0 0 0', r'train.txt:2: no class is set'),
    ('missing.jpg 1 0 0', r"train.txt:2: image 'missing.jpg' not found"),
    ('a.jpg 1 0 x', r"train.txt:2: label values must be 0 or 1, got 'x'"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, match):
    files = dict(GOOD, **{'train.txt': ['a.jpg 1 0 0', line]})
    with pytest.raises(listfile.ListFileError, match=match):
        listfile.read_list_splits(_tree(tmp_path, files))


def test_class_count_must_agree_across_files(tmp_path):
    files = dict(GOOD, **{'test.txt': ['d.jpg 0 1']})
    with pytest.raises(listfile.ListFileError, match=r'test.txt:1: 2 label'):
        listfile.read_list_splits(_tree(tmp_path, files))


def test_missing_and_empty_list_files(tmp_path):
    files = {k: v for k, v in GOOD.items() if k != 'database.txt'}
    with pytest.raises(listfile.ListFileError,
                       match=r"database.txt' does not exist"):
        listfile.read_list_splits(_tree(tmp_path, files))
    files = dict(GOOD, **{'database.txt': ['', '  ']})
    with pytest.raises(listfile.ListFileError, match='has no samples'):
        listfile.read_list_splits(_tree(tmp_path, files))


def test_configured_class_count_is_enforced(tmp_path):
    with pytest.raises(listfile.ListFileError, match='3 label values, but 80'):
        listfile.read_list_splits(_tree(tmp_path, GOOD), num_classes=80)


def _random_line(rng):
    tokens = [rng.choice(['a.jpg', 'b/c.jpg', 'd.jpg', 'nope.jpg', '0', '1',
                          '', '2', '-1', '1.0', 'é.jpg', '\t'])
              for _ in range(rng.integers(0, 6))]
    return ' '.join(tokens)


def test_fuzzed_list_files_fail_only_with_list_file_errors(tmp_path):
    rng = np.random.default_rng(0)
    outcomes = {'ok': 0, 'error': 0}
    for case in range(200):
        root = tmp_path / str(case)
        root.mkdir()
        lines = {name: [_random_line(rng) if rng.random() < 0.3 else good
                        for good in GOOD[name]] for name in GOOD}
        try:
            listfile.read_list_splits(_tree(root, lines))
            outcomes['ok'] += 1
        except listfile.ListFileError as e:
            message = str(e)
            assert '\n' not in message and '.txt' in message
            outcomes['error'] += 1
    assert outcomes['ok'] > 10 and outcomes['error'] > 50


def test_registered_list_dataset_gives_file_splits(tmp_path):
    from PIL import Image

    from nhl_jax import data
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), np.uint8)).save(
            tmp_path / f'{i}.png')
        labels = ['0'] * 21
        labels[i % 21] = labels[(i + 5) % 21] = '1'
        lines.append(f'{i}.png ' + ' '.join(labels))
    for name in ('train.txt', 'test.txt', 'database.txt'):
        (tmp_path / name).write_text('\n'.join(lines) + '\n')
    splits = data.load_splits('nuswide_21', data_dir=str(tmp_path))
    assert isinstance(splits.query, data.FileDataset)
    assert splits.train.labels.shape == (6, 21)
    assert data.image_shape(splits.train) == (224, 224, 3)
    batch = next(data.train_batches(splits.train, 3, seed=0, epoch=1))
    assert batch['image'].shape == (3, 224, 224, 3)
    assert data.get_spec('nuswide_21', str(tmp_path)).top_k == 5000


# --- any list files: --dataset=listfile ------------------------------------


def _png_tree(tmp_path, lines_by_file):
    """GOOD's images as real 10x12 PNGs, and the given list files."""
    from PIL import Image
    root = _tree(tmp_path, lines_by_file)
    for image in ('a.jpg', 'b/c.jpg', 'd.jpg'):
        Image.new('RGB', (12, 10), (9, 99, 199)).save(tmp_path / image,
                                                      format='PNG')
    return root


def test_listfile_takes_its_class_count_from_the_files(tmp_path):
    from nhl_jax import data
    root = _png_tree(tmp_path, GOOD)
    spec = data.get_spec('listfile', root)
    assert spec.num_classes == 3 and spec.top_k is None
    assert spec.image_shape == (224, 224, 3)
    assert '3 classes (from the files)' in spec.description
    splits = data.load_splits('listfile', data_dir=root,
                              options=data.DataOptions(image_size=16))
    assert [len(ds.ids) for ds in splits] == [1, 2, 3]
    for ds in splits:
        assert ds.labels.shape[1] == 3 and (ds.resize, ds.crop) == (18, 16)
    assert data.image_shape(splits.train) == (16, 16, 3)


def test_presets_keep_their_crop_unless_image_size_is_set(tmp_path):
    from nhl_jax import data
    lines = {name: ['a.jpg ' + ' '.join(['1'] + ['0'] * 20)]
             for name in GOOD}
    root = _png_tree(tmp_path, lines)
    default = data.load_splits('nuswide_21', data_dir=root).train
    assert (default.resize, default.crop) == (256, 224)
    small = data.load_splits('nuswide_21', data_dir=root,
                             options=data.DataOptions(image_size=32)).train
    assert (small.resize, small.crop) == (37, 32)


@pytest.mark.parametrize('files, message', [
    ({'test.txt': ['d.jpg 0 1']},
     r'test.txt:1: 2 label values, but 3 classes expected'),
    ({'train.txt': ['', ' ']}, r"train.txt' has no samples"),
    ({'database.txt': []}, r"database.txt' has no samples"),
])
def test_listfile_errors_before_any_image_is_read(tmp_path, files, message):
    from nhl_jax import data
    root = _tree(tmp_path, dict(GOOD, **files))  # empty image files
    with pytest.raises(listfile.ListFileError, match=message) as error:
        data.load_splits('listfile', data_dir=root)
    assert '\n' not in str(error.value)
