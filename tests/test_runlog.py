"""Progress, metrics.jsonl on resume (torn lines), files' permissions."""

import io
import json
import os
import stat

import pytest

from nhl_jax import runlog


def _log(path, *lines):
    path.write_text(''.join(line + '\n' for line in lines))


def test_a_torn_last_line_is_dropped_and_reported(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    _log(path, '{"epoch": 1}', '{"epoch": 2}', '{"epo')
    torn = runlog.truncate_jsonl(str(path), max_epoch=1)
    assert torn == [3]
    assert runlog.read_jsonl(str(path)) == [{'epoch': 1}]


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    _log(path, '{"epoch": 1}', 'garbage', '{"epoch": 2}')
    before = path.read_text()
    with pytest.raises(ValueError, match=r'metrics.jsonl line 2 is not a '
                                         'JSON record'):
        runlog.truncate_jsonl(str(path), max_epoch=1)
    assert path.read_text() == before
    _log(path, '{"epoch": 1}', '[1, 2]')  # JSON, but not a record
    with pytest.raises(ValueError, match='line 2'):
        runlog.read_jsonl(str(path))


@pytest.mark.parametrize('mask', [0o022, 0o077, 0o002])
def test_rewritten_files_keep_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = tmp_path / 'metrics.jsonl'
        _log(path, json.dumps({'epoch': 1}))
        runlog.truncate_jsonl(str(path), max_epoch=1)
        runlog.write_json_atomic(str(tmp_path / 'results.json'), {})
    finally:
        os.umask(old)
    for name in ('metrics.jsonl', 'results.json'):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_run_has_one_bar_with_an_eta():
    stream = _Terminal()
    progress = runlog.RunProgress(100, done=20, stream=stream)
    progress.round('epoch 3/10')
    progress.update(30)
    progress.loss(0.25)
    progress.line('epoch 3/10 loss 0.2500 (1.00 s)')
    progress.close()
    out = stream.getvalue()
    assert 'epoch 3/10' in out and '50/100' in out and 'loss=0.2500' in out
    assert '<' in out  # tqdm's elapsed<remaining: the ETA
    assert 'epoch 3/10 loss 0.2500 (1.00 s)\n' in out
    assert list(runlog.bar(range(3), total=3, desc='encode', stream=stream)
                ) == [0, 1, 2]


def test_elsewhere_only_whole_lines_are_written():
    stream = io.StringIO()
    progress = runlog.RunProgress(100, stream=stream)
    progress.round('epoch 1/10')
    progress.update(10)
    progress.loss(1.0)
    progress.line('epoch 1/10 loss 1.0000 (1.00 s)')
    progress.close()
    assert stream.getvalue() == 'epoch 1/10 loss 1.0000 (1.00 s)\n'
    batches = iter(range(3))
    assert runlog.bar(batches, total=3, desc='encode',
                      stream=stream) is batches
    quiet = runlog.RunProgress(10, stream=_Terminal(), quiet=True)
    quiet.line('x')
    assert quiet._bar is None and not quiet.live
