"""Evaluation as a run's schedule needs it: one encoding, scored in parts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import cli, data, runlog
from nhl_jax.cli.configs import default
from nhl_jax.train import evaluation

BITS = (8, 16)
NAMES = ('symmetric', 'symmetric_expected')


def _split(rng, rows):
    images = rng.integers(0, 256, (rows, 4, 4, 1), dtype=np.uint8)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, rows)]
    return data.ArrayDataset(images, labels, np.arange(rows))


@pytest.fixture(scope='module')
def splits():
    rng = np.random.default_rng(0)
    return data.Splits(_split(rng, 30), _split(rng, 10), _split(rng, 200))


@jax.jit
def _project(params, rest, images):
    # A fixed random projection of the pixels: no model needed.
    del rest
    flat = images.reshape(images.shape[0], -1).astype(jnp.float32)
    return flat @ params  # [B, 16]


def _scorer(splits, calls):
    """A scorer whose encoder appends each batch's split size to calls."""
    pixels = int(np.prod(splits.query.images.shape[1:]))
    params = np.random.default_rng(0).normal(size=(pixels, 16))

    def encode(params, rest, images):
        calls.append(len(images))
        return _project(params, rest, images)

    return evaluation.scorer(encode, params, None, splits,
                             evaluation.CodeLayout(BITS), batch_size=256)


def test_parts_score_as_the_whole_and_encode_each_split_once(splits):
    calls = []
    run = _scorer(splits, calls)
    first = run({'symmetric': BITS})
    assert len(calls) == 2  # query and database, one batch each
    rest = run({'symmetric_expected': (16,), 'symmetric': ()})
    assert len(calls) == 2  # nothing encoded again
    assert {k: set(v) for k, v in rest.items()} == {
        'symmetric_expected': {'16'}}
    whole = _scorer(splits, [])(dict.fromkeys(NAMES, BITS))
    assert first['symmetric'] == whole['symmetric']
    assert rest['symmetric_expected']['16'] == (
        whole['symmetric_expected']['16'])


def test_the_database_is_encoded_only_when_an_evaluator_needs_it(splits):
    calls = []
    run = _scorer(splits, calls)
    assert run({'symmetric': ()}) == {}
    assert calls == []
    with pytest.raises(ValueError, match='Unknown evaluator'):
        run({'nope': BITS})
    assert calls == []


@pytest.mark.parametrize('improved, final, want', [
    ((), False, ()),  # no gain: the others wait
    ((16,), False, (16,)),  # the best parameters of 16 bits changed
    ((16, 8), False, (8, 16)),  # in the run's order
    ((), True, BITS),  # the last evaluation scores every length
])
def test_scheduled_lengths(improved, final, want):
    got = evaluation.scheduled_lengths(('asymmetric', *NAMES), BITS,
                                       improved=improved, final=final)
    assert got == dict.fromkeys(NAMES, want)


@pytest.mark.slow  # three rounds and evaluations: 7 s of CPU
def test_a_run_scores_the_others_where_its_numbers_need_them(tmp_path):
    config = default.get_config()
    config.update(dict(dataset='digits', bits=BITS, epochs=3, eval_every=1,
                       batch_size=32, patience=5, log_every=None,
                       plots=False))
    results = cli.train_and_evaluate(config, str(tmp_path))
    evaluations = [r for r in runlog.read_jsonl(tmp_path / 'metrics.jsonl')
                   if 'evaluated' in r]
    assert [r['epoch'] for r in evaluations] == [1, 2, 3]
    best, at_best = {}, {}
    for record in evaluations:
        assert record['evaluated']['symmetric'] == list(BITS)
        improved = [b for b in BITS
                    if record['map'][str(b)] > best.get(b, -1)]
        final = record['epoch'] == 3
        want = list(BITS) if final else improved
        assert record['evaluated']['symmetric_expected'] == want
        assert set(record['map_symmetric_expected']) == {str(b)
                                                         for b in want}
        for b in improved:
            best[b] = record['map'][str(b)]
            at_best[str(b)] = record['map_symmetric_expected'][str(b)]
    # Tie-aware mAP: of the parameters kept as best, and of the last ones.
    assert results['map_symmetric_expected'] == at_best
    assert results['map_symmetric_expected_last'] == (
        evaluations[-1]['map_symmetric_expected'])
