"""Run outputs: progress bars, metrics.jsonl, results.json, a final table."""

import contextlib
import json
import os
import sys
import tempfile

import tqdm


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'w', *, suffix: str = '.tmp'):
    """Yields a file object whose content replaces ``path`` on success.

    ``path`` is always either the old or the new file: the content goes to a
    temporary file in the same directory, renamed over ``path`` only when
    the ``with`` block finishes; on any error it is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=suffix)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        _chmod_as_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` so that ``path`` is either the old or the new file."""
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: str, payload) -> None:
    """Writes JSON so that ``path`` is either the old or the new file."""
    with atomic_file(path, suffix='.json') as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write('\n')


def append_jsonl(path: str, record) -> None:
    """Appends one JSON record as a line."""
    with open(path, 'a') as f:
        f.write(json.dumps(record, sort_keys=True) + '\n')


def _chmod_as_umask(path: str) -> None:
    """The mode ``open`` would give: mkstemp makes files owner-only."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def read_jsonl(path: str, *, kind: str | None = 'round',
               torn: list | None = None) -> list[dict]:
    """The records of a metrics.jsonl.

    Args:
      path: the file.
      kind: 'round' (one record per finished epoch / outer iteration),
        'step' (the step scalars logged every ``log_every`` steps), or None
        for both.
      torn: if a list, a last line that is not JSON (a write cut short by
        a kill or a full disk) is dropped and appended to it; else it is
        an error like any other bad line.

    Raises:
      ValueError: a line that is not a JSON record, naming the file and
        the line.
    """
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError('not a record')
        except ValueError:
            if torn is not None and i == len(lines) - 1:
                torn.append(n)
                continue
            raise ValueError(
                f'{path} line {n} is not a JSON record; restore the file '
                'or delete that line.') from None
        records.append(record)
    if kind is None:
        return records
    return [r for r in records if r.get('kind', 'round') == kind]


def truncate_jsonl(path: str, *, max_epoch: int,
                   max_step: int | None = None) -> list[int]:
    """Keeps what a resumed run has not done again (used on resume).

    Round records with ``epoch <= max_epoch`` and step records with
    ``step <= max_step`` (all of them if None) stay; a torn last line is
    dropped.

    Returns:
      The numbers of the torn lines dropped (none or one).
    """
    if not os.path.exists(path):
        return []
    torn = []
    records = read_jsonl(path, kind=None, torn=torn)

    def kept_record(r):
        if r.get('kind') == 'step':
            return max_step is None or r['step'] <= max_step
        return r.get('epoch', 0) <= max_epoch

    kept = [r for r in records if kept_record(r)]
    with atomic_file(path) as f:
        f.write(''.join(json.dumps(r, sort_keys=True) + '\n' for r in kept))
    return torn


def _live(stream) -> bool:
    """Bars only on a terminal: logs and pipes get whole lines."""
    return bool(getattr(stream, 'isatty', lambda: False)())


def bar(iterable, *, total: int, desc: str, stream=None):
    """``iterable`` with a transient tqdm bar on a terminal (else as is).

    For the inner loops of a run (encoding a split): the bar disappears
    when done, under the run's own bar.
    """
    stream = stream or sys.stderr
    if not _live(stream):
        return iterable
    return tqdm.tqdm(iterable, total=total, desc=desc, file=stream,
                     leave=False, unit='batch', dynamic_ncols=True)


class RunProgress:
    """The whole run's progress: one bar with the loss and an ETA.

    On a terminal a tqdm bar counts every training step of the run
    (evaluations take their time from its rate, so the ETA includes
    them) and each finished round or evaluation prints one line above
    it; elsewhere (logs, CI) only those lines are printed, on ``stream``.
    """

    def __init__(self, total: int, *, done: int = 0, stream=None,
                 quiet: bool = False):
        """Opens the bar.

        Args:
          total: the run's training steps, all rounds.
          done: the steps already done (a resumed run).
          stream: where to write (default: stderr).
          quiet: write nothing (processes other than the first).
        """
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = _live(self.stream) and not quiet
        self._bar = (tqdm.tqdm(total=total, initial=done, file=self.stream,
                               unit='step', dynamic_ncols=True)
                     if self.live else None)

    def round(self, desc: str) -> None:
        """A round begins: the bar's description."""
        if self._bar is not None:
            self._bar.set_description(desc, refresh=False)

    def update(self, steps: int) -> None:
        """``steps`` more steps done."""
        if self._bar is not None:
            self._bar.update(steps)

    def loss(self, value: float) -> None:
        """The latest loss, shown beside the bar."""
        if self._bar is not None:
            self._bar.set_postfix(loss=f'{value:.4f}', refresh=False)

    def line(self, text: str) -> None:
        """One line of the log (a round or an evaluation), above the bar."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + '\n')
            self.stream.flush()

    def close(self) -> None:
        """Ends the bar."""
        if self._bar is not None:
            self._bar.close()


def format_table(bits, maps, best, *, title: str) -> str:
    """A per-length table of the last and best mAP."""
    lines = [title, f'{"bits":>6} {"mAP (last)":>11} {"mAP (best)":>11}']
    for b in bits:
        lines.append(f'{b:>6} {maps[str(b)]:>11.4f} {best[str(b)]:>11.4f}')
    return '\n'.join(lines)
