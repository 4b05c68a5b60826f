"""The records of an offline W&B run file (``run-<id>.wandb``), for tests.

The file is W&B's header (':W&B', 2 magic bytes, a version byte) and then
LevelDB's log format: 32 KiB blocks of chunks, each a 7-byte header
(CRC32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last)
and its bytes; a block's tail shorter than a header is padding. Each
record is a ``wandb_internal_pb2.Record``.
"""

import glob
import json
import os

_BLOCK, _HEADER = 32768, 7


def records(path: str) -> list:
    """Every ``Record`` of the file, in order."""
    from wandb.proto import wandb_internal_pb2
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:4] == b':W&B', path
    pos, chunks, out = 7, b'', []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], 'little')
        kind = data[pos + 6]
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunks += data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b''
    return out


def _run_file(workdir: str) -> str:
    """The one offline run file under ``workdir``."""
    (path,) = glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*',
                                     'run-*.wandb'))
    return path


def history(workdir: str) -> list[dict]:
    """The logged rows of the run's offline files under ``workdir``."""
    rows = []
    for record in records(_run_file(workdir)):
        if record.WhichOneof('record_type') == 'history':
            rows.append({item.key or '/'.join(item.nested_key):
                         json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def config(workdir: str) -> dict:
    """The run's config as W&B recorded it."""
    found = {}
    for record in records(_run_file(workdir)):
        kind = record.WhichOneof('record_type')
        updates = (record.run.config.update if kind == 'run'
                   else record.config.update if kind == 'config' else ())
        found.update({item.key: json.loads(item.value_json)
                      for item in updates})
    return found
