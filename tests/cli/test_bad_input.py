"""Bad input a user might give: one line, before the workdir is touched.

Every case of the table is a command line of experiments/run.py, run
in-process through ``run.run`` on its own ``FlagValues``; some set up a
file first (a pretrained ``.npz`` with NaN, a corrupt image, a workdir
whose config.json was deleted). Each must end in a one-line
``UsageError`` that starts with the expected text, and leave every file
under the case's directory exactly as it was (or never created). One
subprocess checks what only the real command shows: the ``error:`` line,
the exit status and no traceback.
"""

import hashlib
import inspect
import os
import shutil
import stat
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx
from PIL import Image

from nhl_jax import cli, data, models, parallel, retrieval
from nhl_jax.cli import encode, export, export_splits, search
from nhl_jax.cli import train as run
from nhl_jax.cli.config import UsageError
from nhl_jax.data import files, listfile
from nhl_jax.models import pretrained
from tests.support import ROOT, command_line
from tests.support import cifar_archive as cifar_writer
from tests.support.folders import write_tree

# The smallest run that trains: digits (8x8), the MLP, one epoch.
TINY = ['--dataset=digits', '--backbone=mlp', '--bits=8', '--epochs=1',
        '--method=dpn']
# A backbone with a pretrained loader, on digits (only its shapes are
# built: every pretrained case fails before any weight is allocated).
RESNET = ['--dataset=digits', '--backbone=resnet18', '--bits=8',
          '--epochs=1']
MULTI_HOST_ENV = ('NHL_COORDINATOR_ADDRESS', 'NHL_NUM_PROCESSES',
                  'NHL_PROCESS_ID')


@pytest.fixture(autouse=True)
def _single_host(monkeypatch):
    """No NHL_* multi-host variables from the caller's environment."""
    for name in MULTI_HOST_ENV:
        monkeypatch.delenv(name, raising=False)


def _flags(args) -> flags.FlagValues:
    """run.py's flags parsed from ``run.py *args``."""
    return command_line.flags_of(*args)


def _usage_error(args) -> str:
    """The message of the UsageError ``run.py *args`` stops with."""
    with pytest.raises(UsageError) as error:
        run.run(_flags(args))
    return str(error.value)


def _tree(root) -> dict:
    """sha256 (None for a folder) and mode of every path under ``root``."""
    listing = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            digest = None
            if name in names:
                with open(path, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            listing[os.path.relpath(path, root)] = (
                digest, stat.S_IMODE(os.lstat(path).st_mode))
    return listing


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    """A finished TINY run in an empty directory that existed before it.

    An existing empty workdir must be taken as a fresh run; this run
    also checks ``~`` in --workdir (HOME is its parent).
    """
    home = tmp_path_factory.mktemp('home')
    (home / 'run').mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('HOME', str(home))
        for name in MULTI_HOST_ENV:
            patch.delenv(name, raising=False)
        run.run(_flags([*TINY, '--workdir=~/run']))
    workdir = home / 'run'
    assert (workdir / 'results.json').is_file()
    assert os.listdir(workdir / 'checkpoints')
    return workdir


# Setups: each makes what its case needs under ``tmp`` (the case's root).

def _weights(tmp, change=None):
    """A resnet18 state dict as .npz in ``tmp/w.npz``, maybe spoiled."""
    abstract = nnx.eval_shape(lambda: models.get_backbone(
        'resnet18', (8, 8, 1), rngs=nnx.Rngs(0)))
    shapes = pretrained.torchvision_shapes(abstract)
    sd = {k: np.ones(s, np.float32) for k, s in shapes.items()}
    if change == 'nan':
        sd['layer2.0.conv1.weight'][0, 0, 0, 0] = np.nan
    elif change == 'inf':
        sd['bn1.running_var'][3] = np.inf
    elif change == 'shape':
        sd['conv1.weight'] = np.ones((64, 3, 3, 3), np.float32)
    path = tmp / 'w.npz'
    np.savez(path, **sd)
    if change == 'truncated':
        path.write_bytes(path.read_bytes()[:5000])


def _text_weights(tmp):
    (tmp / 'w.npz').write_text('these are not weights\n')


def _array_weights(tmp):
    with open(tmp / 'w.npz', 'wb') as f:  # np.save: one bare array
        np.save(f, np.ones(3))


def _copy_run(tmp, finished, *remove):
    """A copy of the finished run in ``tmp/run``, less ``remove``."""
    shutil.copytree(finished, tmp / 'run')
    for name in remove:
        path = tmp / 'run' / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)  # plots/: only with matplotlib


def _log_only(tmp, finished):
    """A run stopped before its first checkpoint: config and a log."""
    _copy_run(tmp, finished, 'checkpoints', 'results.json', 'plots')


def _corrupt_config(tmp, finished):
    _copy_run(tmp, finished)
    (tmp / 'run' / 'config.json').write_text('{"method": ')


def _read_only(tmp):
    (tmp / 'run').mkdir()
    (tmp / 'run').chmod(0o555)


def _read_only_parent(tmp):
    (tmp / 'parent').mkdir()
    (tmp / 'parent').chmod(0o555)


def _images(root, n=4, size=(12, 10)):
    """``n`` PNGs and the three list files of nuswide_21 naming them."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(
            root / f'{i}.png')
        labels = ['0'] * 21
        labels[i % 21] = '1'
        lines.append(f'{i}.png ' + ' '.join(labels))
    for name in listfile.SPLIT_FILES.values():
        (root / name).write_text('\n'.join(lines) + '\n')
    return lines


def _bad_list_line(tmp):
    lines = _images(tmp)
    lines[1] = lines[1].replace(' 0', ' 2', 1)
    (tmp / 'train.txt').write_text('\n'.join(lines) + '\n')


def _missing_image(tmp):
    _images(tmp)
    (tmp / '2.png').unlink()


def _text_image(tmp):
    _images(tmp)
    (tmp / '2.png').write_text('not an image\n')


def _truncated_image(tmp):
    _images(tmp, size=(64, 64))
    raw = (tmp / '3.png').read_bytes()
    (tmp / '3.png').write_bytes(raw[:len(raw) // 2])


def _home(tmp):
    (tmp / 'home').mkdir()  # HOME, for the cases of ~ in a path


def _home_file(tmp):
    _home(tmp)
    (tmp / 'home' / 'file').write_text('')


def _cifar_folder(tmp):
    """A CIFAR-10 python-version folder of 12 rows under ``tmp``."""
    images, class_ids = cifar_writer.random_rows(12)
    return cifar_writer.write_folder(tmp, 'cifar10', images, class_ids, 10)


def _truncated_cifar_archive(tmp):
    folder = _cifar_folder(tmp)
    archive = cifar_writer.write_archive(folder)
    shutil.rmtree(folder)
    raw = (tmp / 'cifar-10-python.tar.gz').read_bytes()
    (tmp / 'cifar-10-python.tar.gz').write_bytes(raw[:len(raw) // 2])
    return archive


def _lists(tmp, test_line='0.png 1 0 0'):
    """PNGs and listfile's three files; test.txt's line ``test_line``."""
    _images(tmp)
    lines = {'train.txt': '0.png 1 0 0\n1.png 0 1 1\n',
             'test.txt': f'{test_line}\n',
             'database.txt': '2.png 0 0 1\n3.png 1 0 0\n'}
    for name, text in lines.items():
        (tmp / name).write_text(text)


def _foreign_cifar_pickle(tmp):
    folder = _cifar_folder(tmp)
    with open(os.path.join(folder, 'data_batch_1'), 'wb') as f:
        f.write(b"cos\nsystem\n(S'echo owned'\ntR.")


LIST = ['--dataset=nuswide_21', '--data_dir=<tmp>', '--backbone=mlp',
        '--bits=8', '--epochs=1']
NPZ = '<tmp>/w.npz'
CIFAR = ['--dataset=cifar10-1', '--backbone=mlp', '--bits=8', '--epochs=1']
CIFAR_GZ = 'cifar-10-python.tar.gz'
OWN = ['--data_dir=<tmp>', '--backbone=mlp', '--bits=8', '--epochs=1']
MULTI = ['--coordinator_address=localhost:1234', '--num_processes=2']


# (id, arguments, setup, start of the message). <tmp> is the case's root,
# <run> its workdir (tmp/run unless --workdir is given), <home> HOME.
CASES = [
    # Already handled: still one line, still before any write.
    ('no_batch', ['--dataset=digits', '--config.batch_size=100000'], None,
     ('batch_size 100000 is larger than the 1000 training images of digits, '
      'so a train round has no batch; pass --config.batch_size=1000 or less.')),
    ('no_batch_odh', ['--method=odh', '--dataset=digits', '--bits=8',
                      '--config.batch_size=4000'], None,
     'batch_size 4000 is larger than the 1000 training images of digits'),
    ('unknown_field', ['--config.nofield=1'], None,
     ("unknown config field 'nofield' (--config.nofield); the valid fields "
      'are listed in nhl_jax/cli/configs/default.py.')),
    ('workdir_is_file', ['--workdir=<tmp>/file'],
     lambda tmp: (tmp / 'file').write_text('x\n'),
     ("workdir '<tmp>/file' is a file, not a directory; choose another "
      '--workdir.')),
    ('negative_seed', ['--seed=-1'], None,
     'seed must be an int in [0, 2**63), got -1; pass e.g. --seed=0.'),
    ('missing_config', ['--config=<tmp>/nope.py'], None,
     "config file '<tmp>/nope.py' does not exist; pass an existing one"),
    ('loss_kwarg_name', ['--config.loss_kwargs.margin2=1.0'], None,
     "loss 'dpn' has no hyperparameter(s) ['margin2']; valid:"),
    ('loss_kwarg_type', ['--config.loss_kwargs.margin=abc'], None,
     "loss 'dpn' hyperparameter margin must be a number, got 'abc'"),
    # Values of loss options and weights: declared choices and ranges.
    ('loss_kwarg_choice', ['--method=dsh', '--config.loss_kwargs.pairs=foo'],
     None,
     ("loss 'dsh' hyperparameter pairs must be one of ['bank', 'batch'], "
      "got 'foo'; pass e.g. --config.loss_kwargs.pairs=bank.")),
    ('loss_kwarg_negative', ['--config.loss_kwargs.margin=-5'], None,
     "loss 'dpn' hyperparameter margin must be >= 0, got -5"),
    ('loss_kwarg_range', ['--config.loss_kwargs.p=1.5'], None,
     "loss 'dpn' hyperparameter p must lie in [0, 1], got 1.5"),
    ('distill_weight_huge', ['--distill_weight=1e30'], None,
     ('NHL hyperparameter distill_weight must lie in [0, 1000], got 1e+30; '
      'pass e.g. --distill_weight=0.1.')),
    # 1. Pretrained files: read and checked up front.
    ('pretrained_nan', [*RESNET, f'--config.pretrained={NPZ}'],
     lambda tmp: _weights(tmp, 'nan'),
     (f"pretrained file '{NPZ}': tensor 'layer2.0.conv1.weight' has "
      'non-finite values (NaN or inf); export the weights again')),
    ('pretrained_inf', [*RESNET, f'--config.pretrained={NPZ}'],
     lambda tmp: _weights(tmp, 'inf'),
     f"pretrained file '{NPZ}': tensor 'bn1.running_var' has non-finite"),
    ('pretrained_truncated', [*RESNET, f'--config.pretrained={NPZ}'],
     lambda tmp: _weights(tmp, 'truncated'),
     f"pretrained file '{NPZ}' cannot be read as .npz (BadZipFile: "),
    ('pretrained_text', [*RESNET, f'--config.pretrained={NPZ}'],
     _text_weights,
     f"pretrained file '{NPZ}' cannot be read as .npz (ValueError: "),
    ('pretrained_one_array', [*RESNET, f'--config.pretrained={NPZ}'],
     _array_weights,
     (f"pretrained file '{NPZ}' cannot be read as .npz (ValueError: one "
      'array, not a state dict')),
    ('pretrained_shape', [*RESNET, f'--config.pretrained={NPZ}'],
     lambda tmp: _weights(tmp, 'shape'),
     (f"pretrained file '{NPZ}' does not match the model: key "
      "'conv1.weight': expected shape (64, 1, 7, 7), got (64, 3, 3, 3) (1 "
      "problem(s) in all); use the weights of torchvision's resnet18.")),
    ('pretrained_no_backbone', ['--dataset=digits', '--bits=8',
                                f'--config.pretrained={NPZ}'],
     _weights,
     "backbone 'mlp' has no pretrained weights loader"),
    ('odh_classifier_nan', [
        '--method=odh', '--dataset=digits', '--bits=8',
        '--config.odh.classifier_backbone=resnet18',
        f'--config.odh.classifier_pretrained={NPZ}'],
     lambda tmp: _weights(tmp, 'nan'),
     (f"pretrained file '{NPZ}': tensor 'layer2.0.conv1.weight' has "
      'non-finite values')),
    # 2. Resume safety (setups get the finished run).
    ('no_config_resume', [*TINY, '--method=csq', '--resume'],
     lambda tmp, finished: _copy_run(tmp, finished, 'config.json'),
     ('workdir <run> has checkpoints but no config.json, so this config '
      "cannot be checked against the run's; restore its config.json or "
      'choose another --workdir.')),
    ('no_config', [*TINY, '--method=csq'],
     lambda tmp, finished: _copy_run(tmp, finished, 'config.json'),
     ('<run> already holds a run; pass --resume to continue it or choose '
      'another --workdir.')),
    ('no_checkpoints', TINY,
     lambda tmp, finished: _copy_run(tmp, finished, 'checkpoints'),
     ('<run> already holds a run (results.json, metrics.jsonl) whose '
      'checkpoints are gone, so it cannot be continued; choose another '
      '--workdir.')),
    ('no_checkpoints_resume', [*TINY, '--resume'],
     lambda tmp, finished: _copy_run(tmp, finished, 'checkpoints'),
     ('workdir <run> holds results.json but no checkpoints, so there is '
      'nothing to resume (a new run would replace the results); choose '
      'another --workdir.')),
    ('log_only', TINY, _log_only,
     ('<run> already holds a run (metrics.jsonl) that stopped before its '
      'first checkpoint; pass --resume to start it again with the same '
      'config, or choose another --workdir.')),
    ('log_only_no_config_resume', [*TINY, '--resume'],
     lambda tmp, finished: _log_only(tmp, finished) or (
         tmp / 'run' / 'config.json').unlink(),
     'workdir <run> has metrics.jsonl but no config.json'),
    ('other_config_resume', [*TINY, '--method=csq', '--resume'],
     _copy_run,
     ("<run> holds a run with a different config (fields ['method']); "
      'resume with the same config or use another --workdir.')),
    ('corrupt_config_resume', [*TINY, '--resume'], _corrupt_config,
     '<run>/config.json cannot be read as a run config (Expecting value'),
    # 5. Workdirs: read-only, and ~ in every path flag.
    ('read_only', TINY, _read_only,
     ("workdir '<run>' is not writable; fix its permissions or choose "
      'another --workdir.')),
    ('read_only_parent', [*TINY, '--workdir=<tmp>/parent/run'],
     _read_only_parent,
     "workdir parent '<tmp>/parent' is not writable"),
    ('home_workdir', [*TINY, '--workdir=~/file/run'], _home_file,
     "workdir parent '<home>/file' is a file, not a directory"),
    ('home_data_dir', ['--dataset=nuswide_21', '--data_dir=~/lists'],
     _home, "list file '<home>/lists/train.txt' does not exist"),
    ('home_pretrained', [*RESNET, '--config.pretrained=~/w.npz'],
     _home, "pretrained weights file '<home>/w.npz' does not exist"),
    ('home_classifier', [
        '--method=odh', '--dataset=digits', '--bits=8',
        '--config.odh.classifier_backbone=resnet18',
        '--config.odh.classifier_pretrained=~/w.npz'], _home,
     "odh.classifier_pretrained file '<home>/w.npz' does not exist"),
    ('home_config', ['--config=~/c.py'], _home,
     "config file '<home>/c.py' does not exist"),
    # 4. List-file datasets: lines and images checked before the workdir.
    ('list_bad_line', LIST, _bad_list_line,
     "<tmp>/train.txt:2: label values must be 0 or 1, got '2'"),
    ('list_missing_image', LIST, _missing_image,
     "<tmp>/train.txt:3: image '2.png' not found under root '<tmp>'."),
    ('list_text_image', LIST, _text_image,
     ("image '<tmp>/2.png' (in train.txt) cannot be read as an image "
      '(UnidentifiedImageError: ')),
    ('list_truncated_image', LIST, _truncated_image,
     ("image '<tmp>/3.png' (in train.txt) cannot be read as an image "
      '(OSError: ')),
    # 7. Your own data: CIFAR archives, list files and folders.
    ('cifar_truncated_archive', [*CIFAR, '--data_dir=<tmp>/' + CIFAR_GZ],
     _truncated_cifar_archive,
     (f"'<tmp>/{CIFAR_GZ}' cannot be read as the CIFAR-10 python-version "
      'archive (')),
    ('cifar_foreign_pickle', [*CIFAR, '--data_dir=<tmp>'],
     _foreign_cifar_pickle,
     ('<tmp>/cifar-10-batches-py/data_batch_1 holds os.system, which a '
      'CIFAR-10 batch file never does; it was not unpickled')),
    ('listfile_empty', [*OWN, '--dataset=listfile'],
     lambda tmp: _lists(tmp) or (tmp / 'train.txt').write_text('\n'),
     ("list file '<tmp>/train.txt' has no samples; expected one line "
      "'<relative image path> <C values, each 0 or 1>' per image.")),
    ('listfile_inconsistent', [*OWN, '--dataset=listfile'],
     lambda tmp: _lists(tmp, '1.png 0 1'),
     ('<tmp>/test.txt:1: 2 label values, but 3 classes expected (as in '
      'train.txt); every line needs one 0/1 per class.')),
    ('folder_one_class', [*OWN, '--dataset=folder'],
     lambda tmp: write_tree(tmp, {'cat': 3}),
     ("folder '<tmp>' has 1 class folder(s) ['cat']; a retrieval split "
      'needs at least 2 classes: put the images of each class in a folder '
      'of its own, <data_dir>/<class>/<image>.')),
    ('folder_empty_class', [*OWN, '--dataset=folder'],
     lambda tmp: write_tree(tmp, {'cat': 3, 'dog': 0}),
     "class folder '<tmp>/dog' holds 0 image(s) (.bmp, .gif, .jpeg, .jpg"),
    ('folder_query_fraction', [*OWN, '--dataset=folder',
                               '--config.folder_query_fraction=1.5'],
     lambda tmp: write_tree(tmp, {'cat': 3, 'dog': 3}),
     ('folder_query_fraction must be a number in (0, 1), the share of each '
      'class that are queries, got 1.5; pass e.g. '
      '--config.folder_query_fraction=0.1.')),
    ('image_size_of_arrays', [*TINY, '--config.image_size=8'], None,
     ("image_size does not apply to dataset 'digits': it sizes the images "
      'decoded from files (list-file and folder datasets); arrays keep '
      'their size')),
    ('folder_option_elsewhere', [*TINY, '--config.folder_train_per_class=5'],
     None, ("folder_train_per_class does not apply to dataset 'digits': it "
            'sizes the split of --dataset=folder; leave '
            '--config.folder_train_per_class unset.')),
    # 6. Multi-host flags, before jax.distributed is touched.
    ('processes_zero', ['--num_processes=0'], None,
     '--num_processes (or NHL_NUM_PROCESSES) must be >= 1 (or auto), got 0'),
    ('processes_text', ['--num_processes=two'], None,
     "--num_processes (or NHL_NUM_PROCESSES) must be an integer, got 'two'."),
    ('rank_too_big', [*MULTI, '--process_id=2'], None,
     ('--process_id (or NHL_PROCESS_ID) must be in [0, 2) for 2 processes, '
      'got 2.')),
    ('rank_negative', [*MULTI, '--process_id=-1'], None,
     '--process_id (or NHL_PROCESS_ID) must be in [0, 2)'),
    ('no_rank', MULTI, None,
     ('--num_processes=2 needs --coordinator_address (or '
      'NHL_COORDINATOR_ADDRESS) (host:port of process 0) and --process_id (or '
      'NHL_PROCESS_ID) (0 to 1); or use --num_processes=auto')),
    ('address_no_port', ['--coordinator_address=localhost',
                         '--num_processes=2', '--process_id=0'], None,
     ('--coordinator_address (or NHL_COORDINATOR_ADDRESS) must be host:port '
      "with a port in 1..65535, got 'localhost'; pass e.g. 10.0.0.1:1234.")),
    ('address_bad_port', ['--coordinator_address=host:99999',
                          '--num_processes=2', '--process_id=0'], None,
     ('--coordinator_address (or NHL_COORDINATOR_ADDRESS) must be host:port '
      "with a port in 1..65535, got 'host:99999'")),
    ('rank_alone', ['--process_id=1'], None,
     ('--coordinator_address (or NHL_COORDINATOR_ADDRESS) and --process_id '
      '(or NHL_PROCESS_ID) need --num_processes')),
    ('auto_with_rank', ['--num_processes=auto', '--process_id=0'], None,
     '--num_processes (or NHL_NUM_PROCESSES)=auto detects the coordinator'),
]


def _needs_run(setup) -> bool:
    """Whether a setup copies the finished run (its ``finished`` argument)."""
    return (setup is not None
            and 'finished' in inspect.signature(setup).parameters)


def _emulate_permissions(monkeypatch):
    """``os.access`` as a non-root user sees it (root may write anywhere)."""
    real = os.access

    def access(path, mode):
        if (mode & os.W_OK and os.path.exists(path)
                and not os.stat(path).st_mode & stat.S_IWUSR):
            return False
        return real(path, mode)

    monkeypatch.setattr(os, 'access', access)


@pytest.mark.parametrize('args, setup, message',
                         [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_before_any_write(args, setup, message,
                                                tmp_path, monkeypatch,
                                                request):
    monkeypatch.chdir(ROOT)  # config files are named relative to the repo
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    if os.geteuid() == 0:
        _emulate_permissions(monkeypatch)
    if _needs_run(setup):
        setup(tmp_path, request.getfixturevalue('finished_run'))
    elif setup is not None:
        setup(tmp_path)
    fill = {'<tmp>': str(tmp_path), '<run>': str(tmp_path / 'run'),
            '<home>': str(tmp_path / 'home')}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    if not any(a.startswith('--workdir=') for a in args):
        args.append(f'--workdir={tmp_path / "run"}')
    before = _tree(tmp_path)
    error = _usage_error(args)
    assert error.startswith(message) and '\n' not in error, error
    assert _tree(tmp_path) == before  # nothing written, created or removed


def test_cli_prints_one_error_line(tmp_path):
    """The real command: ``error: ...`` last, no traceback, nothing made."""
    _weights(tmp_path, 'nan')
    workdir = tmp_path / 'run'
    env = {k: v for k, v in os.environ.items() if k not in MULTI_HOST_ENV}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'), *RESNET,
         f'--config.pretrained={tmp_path}/w.npz', f'--workdir={workdir}'],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"error: pretrained file '{tmp_path}/w.npz': tensor "
        "'layer2.0.conv1.weight' has non-finite values"), result.stderr
    assert 'Traceback' not in result.stderr
    assert not workdir.exists()


class _ZeroedNaN(nnx.Module):
    """An MLP whose ReLU is a where (NaN -> 0) and one of its weights NaN.

    What a fused max can do to NaN features: the loss stays finite while
    the parameters are not, so only a check of the parameters sees it.
    """

    def __init__(self, input_shape, *, rngs, dtype=None):
        del dtype
        width = int(np.prod(input_shape))
        self.linear = nnx.Linear(width, 16, rngs=rngs)
        self.linear.kernel.set_value(
            self.linear.kernel.get_value().at[0, 0].set(jnp.nan))
        self.features = 16

    def __call__(self, x):
        x = self.linear(x.reshape(x.shape[0], -1))
        return jnp.where(x > 0, x, 0.0).astype(jnp.float32)


def test_nan_parameters_stop_the_run_although_the_loss_is_finite(
        tmp_path, monkeypatch):
    monkeypatch.setitem(models.BACKBONES, 'zeroed_nan', _ZeroedNaN)
    flag_values = _flags([*TINY, '--backbone=zeroed_nan',
                          f'--workdir={tmp_path / "run"}'])
    with pytest.raises(FloatingPointError) as error:
        run.run(flag_values)
    assert str(error.value).startswith(
        'parameters became non-finite at step 1 (epoch 1) while the loss '
        'stayed finite (NaN/inf weights or features); no checkpoint was '
        'saved yet'), error.value


def test_image_corrupt_past_its_header_fails_mid_epoch_in_one_line(
        tmp_path, monkeypatch):
    """Beyond FULL_CHECK_LIMIT only headers are read up front."""
    monkeypatch.setattr(listfile, 'FULL_CHECK_LIMIT', 0)
    _truncated_image(tmp_path)
    args = [a.replace('<tmp>', str(tmp_path)) for a in LIST]
    config = run.parse(_flags(args))[0]
    config.backbone_kwargs = {'hidden': (8,)}  # a 224x224x3 input
    config.batch_size = 2
    with pytest.raises(files.ImageError) as error:
        cli.train_and_evaluate(config, str(tmp_path / 'run'))
    message = str(error.value)
    assert message.startswith(
        f"cannot read image '{tmp_path}/3.png': ") and '\n' not in message
    assert message.endswith('remove its line from the list files, then '
                            '--resume.')


def test_bad_multi_host_environment_is_one_line(monkeypatch):
    """The NHL_* variables get the checks of the flags they stand for."""
    monkeypatch.setenv('NHL_COORDINATOR_ADDRESS', 'localhost:1234')
    monkeypatch.setenv('NHL_NUM_PROCESSES', '2')
    monkeypatch.setenv('NHL_PROCESS_ID', 'one')
    with pytest.raises(UsageError) as error:
        parallel.initialize()
    assert str(error.value) == (
        "--process_id (or NHL_PROCESS_ID) must be an integer, got 'one'.")


@pytest.mark.parametrize('workdir', [[], ['--workdir=new/deep/run']])
def test_missing_workdir_parents_are_made_only_after_every_check(
        tmp_path, monkeypatch, workdir):
    """Without --workdir the run goes to ./runs/<name>, and a --workdir's
    missing parents are made too (mkdir -p); a bad flag must not leave an
    empty ./runs or ./new behind."""
    monkeypatch.chdir(tmp_path)
    config = os.path.join(ROOT, 'experiments', 'configs', 'default.py')
    error = _usage_error([f'--config={config}', *TINY, *workdir,
                          '--seed=-1'])
    assert error.startswith('seed must be'), error
    assert os.listdir(tmp_path) == []


# The other commands: in-process on their own FlagValues, like run.py.

def _codes(tmp, name='run/codes/database.npz', run_id='a1', lengths=(8, 16)):
    """A nested codes file of 6 items (3 classes) from run ``run_id``."""
    rng = np.random.default_rng(0)
    signs = rng.choice(np.array([-1, 1], np.int8), size=(6, lengths[-1]))
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    retrieval.save_codes(str(path), retrieval.CodeSet(
        {lengths[-1]: retrieval.pack_codes(signs)}, lengths,
        np.eye(3, dtype=np.float32)[np.arange(6) % 3],
        np.arange(6, dtype=np.int64), 'last', True,
        {'run': run_id, 'dataset': 'digits'}))


def _encoded(tmp):
    """A run directory's database and query codes, as encode writes them."""
    _codes(tmp)
    _codes(tmp, 'run/codes/query.npz')


def _grey_images(tmp):
    _encoded(tmp)
    np.save(tmp / 'x.npy', np.zeros((2, 8, 8), np.uint8))


def _other_config(tmp):
    """The database of run a1, and a run directory of another config."""
    _encoded(tmp)
    (tmp / 'run' / 'config.json').write_text(
        '{"method": "dpn", "dataset": "digits", "bits": [8, 16]}')


SEARCH = ['--database=<run>/codes/database.npz']
QUERY = [*SEARCH, '--query_codes=<run>/codes/query.npz']

# (id, command module, arguments, setup, start of the message).
COMMAND_CASES = [
    ('search_bits_zero', search, [*QUERY, '--bits=0'], _encoded,
     ('--bits=0 is not a length of the run of <run>/codes/database.npz '
      '([8, 16]); pass one of them, or leave it unset for the longest')),
    ('search_bits_untrained', search, [*QUERY, '--bits=12'], _encoded,
     '--bits=12 is not a length of the run of'),
    ('search_other_run', search, [*SEARCH, '--query_codes=<tmp>/q.npz'],
     lambda tmp: _encoded(tmp) or _codes(tmp, 'q.npz', run_id='b2'),
     ("query codes '<tmp>/q.npz' come from another run than the database "
      '(run b2, dataset digits; database: run a1, dataset digits)')),
    ('search_other_lengths', search, [*SEARCH, '--query_codes=<tmp>/q.npz'],
     lambda tmp: _encoded(tmp) or _codes(tmp, 'q.npz', lengths=(8, 32)),
     ("query codes '<tmp>/q.npz' are codes of lengths [8, 32], the database "
      'of [8, 16]: another run')),
    ('search_other_workdir', search,
     [*SEARCH, '--workdir=<run>', '--query_split=query'], _other_config,
     ("queries encoded by --workdir '<run>' come from another run than the "
      'database')),
    ('search_empty_index', search, [*QUERY, '--query_index='], _encoded,
     '--query_index is empty; pass rows, e.g. --query_index=0,1,2'),
    ('search_database_text', search,
     ['--database=<tmp>/README.md', '--query_codes=<tmp>/README.md'],
     lambda tmp: (tmp / 'README.md').write_text('# not codes\n'),
     ("'<tmp>/README.md' is not a codes file (an .npz written by nhl-jax "
      'encode): NumPy cannot read it as .npy or .npz.')),
    ('search_grey_images', search,
     [*SEARCH, '--workdir=<run>', '--query_images=<tmp>/x.npy'],
     _grey_images,
     ("--query_images '<tmp>/x.npy' holds uint8 of shape (2, 8, 8), not "
      '[N, H, W, C] uint8 images')),
    ('search_output_under_file', search,
     [*QUERY, '--output=<tmp>/file/hits.json'],
     lambda tmp: _encoded(tmp) or (tmp / 'file').write_text(''),
     ("--output '<tmp>/file/hits.json': '<tmp>/file' is a file, not a "
      'folder; choose another --output.')),
    ('search_output_folder', search, [*QUERY, '--output=<run>'], _encoded,
     "--output '<run>' is a folder; name a file in it"),
    ('encode_batch_negative', encode, ['--workdir=<run>', '--batch_size=-5'],
     None,
     ("--batch_size must be a positive int, or unset for the run's eval "
      'batch size; got -5.')),
    ('encode_batch_zero', encode, ['--workdir=<run>', '--batch_size=0'],
     None, '--batch_size must be a positive int'),
    ('export_batch_zero', export,
     ['--workdir=<run>', '--out=<tmp>/b', '--batch_size=0'], None,
     '--batch_size must be a positive int'),
    ('splits_out_under_file', export_splits,
     ['--dataset=digits', '--out=<tmp>/file/s.npz'],
     lambda tmp: (tmp / 'file').write_text(''),
     "--out '<tmp>/file/s.npz': '<tmp>/file' is a file, not a folder"),
]


def _command_flags(module, args) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    flag_values([module.__name__, *args])
    return flag_values


@pytest.mark.parametrize('module, args, setup, message',
                         [case[1:] for case in COMMAND_CASES],
                         ids=[case[0] for case in COMMAND_CASES])
def test_bad_command_input_is_one_line_before_any_work(module, args, setup,
                                                       message, tmp_path):
    if setup is not None:
        setup(tmp_path)
    fill = {'<tmp>': str(tmp_path), '<run>': str(tmp_path / 'run')}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    before = _tree(tmp_path)
    with pytest.raises(UsageError) as error:
        module.run(_command_flags(module, args))
    assert str(error.value).startswith(message), error.value
    assert '\n' not in str(error.value)
    assert _tree(tmp_path) == before


def test_search_makes_a_missing_output_folder(tmp_path, capsys):
    _encoded(tmp_path)
    out = tmp_path / 'new' / 'deep' / 'hits.json'
    args = [a.replace('<run>', str(tmp_path / 'run')) for a in QUERY]
    result = search.run(_command_flags(search, [*args, '--k=2',
                                                f'--output={out}']))
    assert len(result) == 6 and out.is_file()
    assert f'wrote {out}' in capsys.readouterr().out


def test_export_splits_makes_a_missing_out_folder(tmp_path, monkeypatch):
    ids = types.SimpleNamespace(ids=np.arange(3))  # all export_split_ids reads
    monkeypatch.setattr(export_splits, '_load',
                        lambda *_: data.Splits(ids, ids, ids))
    out = tmp_path / 'new' / 's.npz'
    _, written = export_splits.run(_command_flags(
        export_splits, ['--dataset=digits', f'--out={out}']))
    assert written == str(out) and out.is_file()
