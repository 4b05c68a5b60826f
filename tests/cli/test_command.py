"""``command.as_process``: a command line ends at once, nothing lost."""

import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent('''
    import atexit, sys, threading, time
    from nhl_jax.cli import command

    atexit.register(lambda: print('exit handler ran', flush=True))

    def slow_writer():  # a non-daemon thread still writing at the end
        time.sleep(0.3)
        with open(sys.argv[1], 'w') as f:
            f.write('written')

    def call():
        threading.Thread(target=slow_writer).start()
        print('output', end='')  # unflushed
        {ending}

    command.as_process(call)
    print('unreachable')
''')


@pytest.mark.parametrize('ending, code, stderr', [
    ('sys.exit(3)', 3, ''),
    ("sys.exit('error: bad flag')", 1, 'error: bad flag\n'),
])
def test_as_process_ends_after_threads_handlers_and_output(tmp_path, ending,
                                                          code, stderr):
    path = tmp_path / 'out.txt'
    done = subprocess.run(
        [sys.executable, '-c', _SCRIPT.format(ending=ending), str(path)],
        check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert done.stdout == 'outputexit handler ran\n'
    assert done.stderr == stderr
    assert path.read_text() == 'written'
