"""``nhl-jax make-lists``, and a folder of images that trains.

A folder trains with ``--dataset=folder`` in-process, and the list files
that make-lists writes from it give ``--dataset=listfile`` the same split.
"""

import os

import numpy as np
import pytest
from absl import flags

from nhl_jax import cli, data
from nhl_jax.cli import make_lists
from nhl_jax.cli import train as train_command
from nhl_jax.errors import UsageError
from tests.support import command_line
from tests.support.folders import write_tree

COUNTS = {'ant': 8, 'bee': 8, 'cat': 9}
SMALL = data.DataOptions(image_size=8)


def _make_lists(*args) -> list[str]:
    """``nhl-jax make-lists *args`` in-process; the paths written."""
    flag_values = flags.FlagValues()
    make_lists.define_flags(flag_values)
    flag_values(['make-lists', *args])
    return make_lists.run(flag_values)


def _assert_same_split(a: data.Splits, b: data.Splits) -> None:
    for x, y in zip(a, b):
        np.testing.assert_array_equal(
            [os.path.realpath(p) for p in x.paths],
            [os.path.realpath(p) for p in y.paths])
        np.testing.assert_array_equal(x.labels, y.labels)
        assert (x.resize, x.crop) == (y.resize, y.crop) == (9, 8)


def test_a_folder_trains_and_its_lists_give_the_same_split(tmp_path,
                                                            capsys):
    root = tmp_path / 'photos'
    write_tree(root, COUNTS)
    config, _, _ = train_command.parse(command_line.flags_of(
        '--dataset=folder', f'--data_dir={root}', '--backbone=mlp',
        '--bits=8', '--epochs=1', '--config.image_size=8', '--seed=3',
        '--config.batch_size=8', '--config.folder_query_fraction=0.25'))
    config.backbone_kwargs = {'hidden': (16,)}
    results = cli.train_and_evaluate(config, str(tmp_path / 'run'))
    assert results['dataset'] == 'folder' and results['top_k'] is None
    assert set(results['map']) == {'8'}
    # --config.image_size and the folder's split fields reach the run.
    assert results['image_shape'] == [8, 8, 3]
    assert results['split_sizes'] == {'train': 19, 'query': 6,
                                      'database': 19}
    assert 'folder: mAP@all' in capsys.readouterr().out

    written = _make_lists(f'--folder={root}', '--seed=3',
                          '--query_fraction=0.25')
    assert [os.path.basename(p) for p in written] == [
        'train.txt', 'test.txt', 'database.txt', 'classes.txt']
    assert (root / 'classes.txt').read_text() == 'ant\nbee\ncat\n'
    assert (root / 'test.txt').read_text().splitlines()[0].endswith(
        '.png 1 0 0')
    options = SMALL._replace(folder_query_fraction=0.25)
    by_folder = data.load_splits('folder', seed=3, data_dir=str(root),
                                 options=options)
    by_lists = data.load_splits('listfile', data_dir=str(root),
                                options=SMALL)
    assert [len(ds.ids) for ds in by_folder] == [6, 19, 19]
    _assert_same_split(by_folder, by_lists)


def test_lists_elsewhere_name_the_images_relative_to_out(tmp_path):
    write_tree(tmp_path / 'photos', COUNTS)
    _make_lists(f'--folder={tmp_path}/photos', f'--out={tmp_path}/lists',
                '--train_per_class=2')
    line = (tmp_path / 'lists' / 'train.txt').read_text().splitlines()[0]
    assert line.startswith('../photos/ant/') and line.endswith('.png 1 0 0')
    lists = data.load_splits('listfile', data_dir=str(tmp_path / 'lists'),
                             options=SMALL)
    assert len(lists.train.ids) == 6
    _assert_same_split(lists, data.load_splits(
        'folder', data_dir=str(tmp_path / 'photos'),
        options=SMALL._replace(folder_train_per_class=2)))


def test_csv_of_single_labels_is_split_per_class(tmp_path):
    write_tree(tmp_path, {'x': 6})
    rows = ['path,label', *(f'x/{i:03d}.png,{10 if i % 2 else 2}'
                            for i in range(6))]
    (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
    _make_lists(f'--csv={tmp_path}/labels.csv', '--query_fraction=0.34')
    # Classes sorted as numbers: 2 before 10.
    assert (tmp_path / 'classes.txt').read_text() == '2\n10\n'
    test = (tmp_path / 'test.txt').read_text().splitlines()
    assert sorted(line.split(' ', 1)[1] for line in test) == ['0 1', '1 0']
    splits = data.load_splits('listfile', data_dir=str(tmp_path))
    assert [len(ds.ids) for ds in splits] == [2, 4, 4]


def test_csv_of_several_labels_is_split_over_all_rows(tmp_path):
    write_tree(tmp_path, {'x': 10})
    rows = [f'x/{i:03d}.png,sky,{"sea" if i % 2 else "sun"}'
            for i in range(10)]
    (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
    _make_lists(f'--csv={tmp_path}/labels.csv', '--train_per_class=3',
                f'--out={tmp_path}/out')
    assert (tmp_path / 'out' / 'classes.txt').read_text() == 'sea\nsky\nsun\n'
    splits = data.load_splits('listfile', data_dir=str(tmp_path / 'out'))
    assert [len(ds.ids) for ds in splits] == [1, 3, 9]
    assert (splits.database.labels.sum(1) == 2).all()


def _spaced(tmp):
    write_tree(tmp, {'x y': 2, 'z': 2})
    return [f'--folder={tmp}']


def _twice(tmp):
    write_tree(tmp, {'x': 2, 'y': 2})
    _make_lists(f'--folder={tmp}')
    return [f'--folder={tmp}']


def _csv(tmp, *rows):
    write_tree(tmp, {'x': 3})
    (tmp / 'l.csv').write_text(''.join(f'{row}\n' for row in rows))
    return [f'--csv={tmp}/l.csv']


@pytest.mark.parametrize('setup, message', [
    (lambda tmp: [], 'pass one of --folder=<class folders> or --csv='),
    (lambda tmp: [f'--folder={tmp}', f'--csv={tmp}/l.csv'], 'pass one of'),
    (_spaced, ("image path 'x y/000.png' holds whitespace, which list "
               'files cannot (their fields are split on it; 2 path(s) in '
               'all)')),
    (_twice, '<tmp>/train.txt already exists; pass --overwrite'),
    (lambda tmp: _csv(tmp, 'x/000.png'),
     "<tmp>/l.csv:1: expected path,label[,label...], got 'x/000.png'."),
    (lambda tmp: _csv(tmp, 'x/000.png,a', 'x/009.png,b'),
     "<tmp>/l.csv:2: image 'x/009.png' not found"),
    (lambda tmp: _csv(tmp, 'x/000.png,a', 'x/000.png,b'),
     "<tmp>/l.csv:2: image 'x/000.png' is listed again (first on line 1)"),
    (lambda tmp: _csv(tmp, 'x/000.png,a', 'x/001.png,a', 'x/002.png,b'),
     "<tmp>/l.csv: class 'b' has 1 image; every class needs at least 2"),
    (lambda tmp: _csv(tmp, 'path,label'), "CSV '<tmp>/l.csv' has no rows"),
    (lambda tmp: [f'--folder={tmp}', '--query_fraction=2'],
     'folder_query_fraction must be a number in (0, 1)'),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, setup, message):
    args = setup(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UsageError) as error:
        _make_lists(*args)
    text = str(error.value)
    assert text.startswith(message.replace('<tmp>', str(tmp_path))), text
    assert '\n' not in text and sorted(os.listdir(tmp_path)) == before

