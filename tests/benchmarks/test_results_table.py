"""benchmarks/results_table.py: method specs, the table, RESULTS.md's rows."""

import os
import re
import sys

import pytest

from nhl_jax import losses
from tests.support import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import results_table


@pytest.mark.parametrize('spec,expected', [
    ('dpn', ('dpn', {})),
    ('dsh:pairs=batch', ('dsh', {'pairs': 'batch'})),
    ('dpn:margin=2.0:centers=nested', ('dpn', {'margin': 2.0,
                                               'centers': 'nested'})),
])
def test_parse_method(spec, expected):
    assert results_table.parse_method(spec) == expected


def _run(value, seconds=2.0):
    return {'map': {'8': value, '16': value + 0.1},
            'map_last': {'8': value - 0.1, '16': value},
            'train_seconds': seconds, 'one_sided': 0.5, 'distinct': 7}


def test_table_reports_mean_and_std_over_seeds():
    lines = results_table.table({'dpn': [_run(0.5), _run(0.7, 4.0)]}, (8, 16))
    assert lines[0] == ('| method | 8 bits | 16 bits | train s | one-sided '
                        '(16) | distinct (8) |')
    assert lines[2] == ('| dpn | 0.600 ± 0.100 (0.500 ± 0.100) | 0.700 ± '
                        '0.100 (0.600 ± 0.100) | 3.0 | 50% | 7 |')


@pytest.mark.parametrize('dataset', ['digits', 'mnist5k'])
def test_results_have_a_row_per_registered_method(dataset):
    with open(os.path.join(ROOT, 'benchmarks', 'RESULTS.md')) as f:
        results = f.read()
    section = results.split(f'**Every method on {dataset}')[1]
    section = section.split('\n\n', 2)[1]  # the table after the command
    rows = set(re.findall(r'^\| ([a-z0-9:=_]+) \|', section, re.M))
    assert set(losses.LOSSES) <= rows
