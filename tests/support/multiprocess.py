"""Starting the two-process (gloo) runs of the multi-host tests."""

import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def run_two_workers(worker: str, out) -> None:
    """Runs ``worker process <rank> <port> <out>`` as ranks 0 and 1 of one
    run and asserts that both succeed (the log of rank 0 if not)."""
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, worker, 'process', str(i), str(port), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:]
