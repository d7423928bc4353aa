"""In-graph Hungarian matching equals scipy's linear_sum_assignment (STYLE.md)."""

import zlib

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from deeplab2_vkmax.model.loss.matchers import hungarian_matching

_GRAPH = tf.function(hungarian_matching)
_XLA = tf.function(hungarian_matching, jit_compile=True)
_MODES = {'eager': hungarian_matching, 'graph': _GRAPH, 'xla': _XLA}


def _random_costs(rng, kind, batch, rows, cols):
  if kind == 'uniform':
    return rng.random((batch, rows, cols))
  if kind == 'ties':  # Few distinct integers: many optimal assignments.
    return rng.integers(0, 3, (batch, rows, cols)).astype(np.float64)
  if kind == 'negative':  # The loss feeds costs in [-1, 0].
    return -rng.random((batch, rows, cols)) * rng.random((batch, rows, cols))
  raise ValueError(kind)


def _assert_optimal(cost, assignment):
  """Checks a valid assignment whose total cost equals scipy's optimum."""
  rows, cols = cost.shape[1:]
  for b in range(cost.shape[0]):
    a = assignment[b]
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert a.sum() == min(rows, cols)
    assert a.sum(axis=0).max() <= 1 and a.sum(axis=1).max() <= 1
    r, c = linear_sum_assignment(cost[b])
    np.testing.assert_allclose((cost[b] * a).sum(), cost[b][r, c].sum(),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('mode', sorted(_MODES))
@pytest.mark.parametrize('shape', [(7, 7), (4, 9), (9, 4), (1, 5), (5, 1),
                                   (16, 16)])
@pytest.mark.parametrize('kind', ['uniform', 'ties', 'negative'])
def test_matches_scipy_total_cost(mode, shape, kind):
  seed = zlib.crc32(repr((mode, shape, kind)).encode())
  rng = np.random.default_rng(seed)
  cost = _random_costs(rng, kind, 40, *shape)  # 40 matrices per case.
  assignment = _MODES[mode](tf.constant(cost, tf.float64)).numpy()
  _assert_optimal(cost, assignment)


def test_float32_and_all_equal_costs():
  cost = np.zeros((3, 6, 6), np.float32)
  assignment = _GRAPH(tf.constant(cost)).numpy()
  assert assignment.dtype == np.float32
  for a in assignment:
    np.testing.assert_array_equal(a.sum(0), np.ones(6))
    np.testing.assert_array_equal(a.sum(1), np.ones(6))
  rng = np.random.default_rng(3)
  cost = rng.integers(-5, 5, (50, 10, 12)).astype(np.float32)
  _assert_optimal(cost.astype(np.float64), _XLA(tf.constant(cost)).numpy())


def test_dynamic_batch_size_and_large_square():
  fn = tf.function(hungarian_matching, input_signature=[
      tf.TensorSpec([None, 128, 128], tf.float64)])
  rng = np.random.default_rng(4)
  cost = rng.random((2, 128, 128))
  _assert_optimal(cost, fn(tf.constant(cost)).numpy())


def test_no_gradient_flows_and_bad_shape_raises():
  cost = tf.Variable(tf.random.uniform([2, 3, 3]))
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(hungarian_matching(cost) * cost)
  grad = tape.gradient(total, cost)
  # Gradient only through the explicit product, i.e. equals the assignment.
  np.testing.assert_array_equal(grad.numpy(), hungarian_matching(cost).numpy())
  with pytest.raises(ValueError, match='static N'):
    hungarian_matching(tf.zeros([3, 3]))
