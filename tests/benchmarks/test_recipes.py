"""benchmarks/recipes.py: the records of a sweep and the tables from them."""

import argparse
import json
import os
import sys

import pytest

from tests.support import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import recipes as sweep_script

BITS = (8, 16)


def _args(records, **kwargs):
    return argparse.Namespace(**{'dataset': 'digits', 'epochs': 6,
                                 'records': str(records),
                                 'from_records': True, **kwargs})


def _record(value, history=((5, 0.1), (10, 0.2))):
    setting = {'epochs': 6, 'bits': list(BITS)}
    return {'map': {'8': value, '16': value + 0.1}, 'train_seconds': 2.0,
            'one_sided': 0.5, 'distinct': 7, 'setting': setting,
            'map_history': {str(b): [list(h) for h in history]
                            for b in BITS}}


def test_records_round_trip_and_refuse_another_setting(tmp_path):
    path = str(tmp_path / 'r.json')
    assert sweep_script.read_record(path, {'epochs': 6}) is None
    sweep_script.write_record(path, _record(0.5))
    assert os.listdir(tmp_path) == ['r.json']  # no temporary left
    assert sweep_script.read_record(
        path, {'epochs': 6, 'bits': [8, 16]}) == _record(0.5)
    with pytest.raises(SystemExit, match='another --records folder'):
        sweep_script.read_record(path, {'epochs': 7, 'bits': [8, 16]})


def test_from_records_tables_what_is_there_and_trains_nothing(tmp_path):
    for recipe, value in (('library', 0.5), ('reference', 0.7)):
        path = sweep_script.record_path(str(tmp_path), 'digits', 'dpn',
                                        recipe, 0)
        with open(path, 'w') as f:
            json.dump(_record(value), f)
    rows = sweep_script.sweep(_args(tmp_path), ['dpn', 'csq'], BITS, [0, 1])
    assert [len(runs) for runs in rows.values()] == [1, 1, 0, 0]
    assert sweep_script.verdicts(rows, ['dpn', 'csq'], BITS) == [
        '- dpn: reference (library 0.550, reference 0.750)']
    assert len(sweep_script.table(rows, BITS)) == 4  # csq has no rows
    assert sweep_script.seed_counts(rows, [0, 1])[-1] == (
        '- csq reference: 0 of 2 seeds')


def test_rising_names_rows_that_gained_over_the_last_interval():
    rows = {('dpn', 'library'): [_record(0.5)],
            ('csq', 'library'): [_record(0.5, ((5, 0.3), (10, 0.305)))],
            ('dsh', 'library'): [_record(0.5, ((10, 0.3),))]}
    assert sweep_script.rising(rows, BITS) == ['- dpn library: +0.100']
