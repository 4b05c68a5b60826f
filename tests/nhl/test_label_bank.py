"""One label bank for every length of the NHL objective."""

import chex
import jax
import numpy as np
import pytest

from nhl_jax import losses
from nhl_jax.nhl import label_bank
from nhl_jax.nhl.objective import nhl_objective
from tests.support import objective_setup as toy
from tests.support.objective_setup import BITS, C, N


def _label_bytes(states) -> int:
    return sum(s.labels.nbytes for s in states
               if getattr(s, 'labels', None) is not None)


@pytest.mark.parametrize('name', ['dpsh', 'dsdh', 'dsh'])
def test_the_state_keeps_one_label_bank_for_every_length(name):
    obj = nhl_objective(losses.get(name), BITS)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    assert len(states) == len(BITS) == 3
    assert _label_bytes(states) == N * C * 4  # one [N, C] float32
    assert all(s.labels is None for s in states[1:])
    full = label_bank.attach(states)
    assert _label_bytes(full) == len(BITS) * N * C * 4
    chex.assert_trees_all_equal(label_bank.detach(full), states)


def test_states_without_labels_are_left_alone():
    obj = nhl_objective(losses.get('dtsh'), BITS)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    assert not label_bank.shares_labels(states)
    assert label_bank.detach(states) is states
    assert label_bank.attach(states) is states


def test_bank_run_gives_the_losses_of_one_bank_per_length():
    """Two steps of dpsh (two lengths, tiny data) against each length's
    own full state, as the objective kept them before the sharing."""
    bits = BITS[:2]
    loss = losses.get('dpsh')
    obj = nhl_objective(loss, bits, distill_weight=0.0)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    own = [loss.init(jax.random.key(0), num_train=N, num_classes=C, bits=b)
           for b in bits]
    params, x, _, _ = toy.setup()
    apply, apply_one = jax.jit(obj.apply), jax.jit(loss.apply)
    for step in range(2):
        _, _, labels, index = toy.setup(step + 1)
        h = toy.forward(params, x)[1][:, :bits[-1]]
        _, (states, metrics) = apply(states, h, labels, index)
        expected = []
        for k, b in enumerate(bits):
            value, own[k] = apply_one(own[k], h[:, :b], labels, index)
            expected.append(value)
        np.testing.assert_allclose(metrics.losses, expected, rtol=1e-6)
    chex.assert_trees_all_close(label_bank.attach(states), tuple(own))
    assert states[1].labels is None


def test_epoch_update_sees_every_length_with_its_labels():
    # Two alternations: the second's B-step reads W, fitted to the labels.
    loss = losses.get('dsdh', dcc_iter=2)
    obj = nhl_objective(loss, BITS[:2])
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    _, _, labels, index = toy.setup()
    rng = np.random.default_rng(0)
    states = tuple(s._replace(codes=rng.standard_normal(
        s.codes.shape).astype(np.float32))
                   for s in states)
    states = (states[0]._replace(labels=states[0].labels.at[index].set(
        labels)), states[1])
    updated = jax.jit(obj.epoch_update)(states, None)
    # The second length's B and W come from the labels of the first's state.
    expected = jax.jit(loss.epoch_update)(label_bank.attach(states)[1], None)
    chex.assert_trees_all_close(label_bank.attach(updated)[1], expected)
    assert np.abs(expected.w).sum() > 0 and updated[1].labels is None
